"""`python -m jaxscale.train --config FILE [--out DIR] [--worker I/N [--help-others]] [key=value ...]`: the run loop
and the sweep loop. Everything with side effects lives here; the step itself (jaxscale.step) is a
pure jitted function. Rerunning the same command resumes: finished runs are skipped, interrupted
ones continue from their latest checkpoint."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jaxscale import hf, runtime, sharding
from jaxscale.branch import Branch, plan_branches, worker_share
from jaxscale.checkpoint import RunCheckpoints
from jaxscale.config import Config, ConfigError, RunSpec, load_raw, to_dict
from jaxscale.data.loader import Budget, eval_batches, plan_budget, train_dataset, train_iterator
from jaxscale.energy import Sampler, measure_idle, open_meter
from jaxscale.energy.meters import gpus_of
from jaxscale.events import open_events
from jaxscale.files import write_atomic
from jaxscale.models import build_model, count_params, flops_per_token
from jaxscale.precheck import Prepared, check_sweep, mesh_for, prepare_data
from jaxscale.progress import Progress
from jaxscale.runbook import RunBook
from jaxscale.step import abstract_state, compiled_steps, init_state, schedule_array, step_key
from jaxscale.sweep import STALE_CLAIM_S, ClaimLost, Sweep, run_path


class Interrupted(Exception):
    """A stop signal arrived; the run's state is checkpointed."""


class StopSignals:
    """SIGTERM / SIGINT ask the loop to checkpoint and stop at the next step boundary; a second
    signal falls back to the default behaviour."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_COMPILED: dict = {}


def compiled_for(model, config: Config, mesh, state, batch, eval_batch):
    """AOT-compiled train and eval steps for this shape: compiled once per process."""
    key = (model, step_key(config.train), mesh, batch.shape, eval_batch.shape)
    if key not in _COMPILED:
        train_fn, eval_fn = compiled_steps(model, step_key(config.train), mesh)
        _COMPILED[key] = (train_fn.lower(state, batch).compile(), eval_fn.lower(state.params, eval_batch).compile())
    return _COMPILED[key]


def evaluate(eval_fn, params, batches) -> float:
    return float(np.mean(jax.device_get([eval_fn(params, b) for b in batches])))


def combine_energy(segments: list[dict]) -> dict:
    """One run's energy from the sampler rows of its segments (a resumed run has several; one killed keeps its
    figures up to its last checkpoint): energies and durations (the whole segment's and each window's) add up — a window a segment did not open
    adds nothing, an unavailable value makes the total unavailable — the peak is the highest."""
    combined = dict(segments[-1])
    additive = {k for s in segments for k in s if k.endswith(("energy_j", "_s")) or k == "energy_above_idle_j"}
    for key in additive:
        values = [s.get(key, 0.0) for s in segments]
        combined[key] = None if None in values else sum(values)
    unmeasured = [i for i, s in enumerate(segments) if s.get("energy_j") is None]
    if unmeasured and len(segments) > 1:  # the total is unavailable: say which segment lacked it, and why
        first = segments[unmeasured[0]]
        combined["energy_source"] = "unavailable"
        combined["energy_reason"] = (f"segment {unmeasured[0] + 1} of {len(segments)} measured no energy: "
                                     f"{first.get('energy_reason') or first.get('energy_source')}")
    peaks = [s["power_peak_w"] for s in segments if s["power_peak_w"] is not None]
    combined["power_peak_w"] = max(peaks) if peaks else None
    energy, duration = combined["energy_j"], combined["duration_s"]
    combined["power_mean_w"] = energy / duration if energy is not None and duration else None
    combined["energy_segments"] = len(segments)
    return combined


def local_gpu_ordinals() -> list[int] | None:
    """The CUDA ordinals of this process's JAX devices; None when they are not GPUs."""
    devices = jax.local_devices()
    return [d.local_hardware_id for d in devices] if devices[0].platform == "gpu" else None


def open_process_meter(kind: str):
    """The meter of exactly this process's GPUs (by PCI bus id), or of whatever `kind` finds off GPUs. On GPUs,
    "auto" is NVML only: where NVML fails, energy is unavailable, not the CPU package's (RAPL) in its place."""
    ordinals = local_gpu_ordinals()
    if ordinals and kind == "auto":
        kind = "nvml"
    meter = open_meter(kind, gpus=gpus_of(ordinals) if ordinals else None)
    if meter.devices:
        print(f"energy: process {jax.process_index()} meters {meter.kind} "
              f"{', '.join(map(str, meter.devices))}", file=sys.stderr)
    return meter


TRUNK_GRACE_S = 60.0  # how long a branch waits for the worker whose share holds its unstarted trunk
HELD_POLL_S = 10.0  # how often a worker done with its share looks again at its runs that other workers' claims hold
ENERGY_ACROSS_PROCESSES = ("energy_j", "energy_above_idle_j", "idle_power_w", "power_peak_w")


def sum_over_processes(row: dict) -> dict:
    """One segment's energy figures summed over every process's GPUs (each process meters only its own); a
    figure any process lacks is unavailable. Durations stay the writer's (the processes step together). The
    peak is the sum of each process's peak, an upper bound on the peak of the sum."""
    if jax.process_count() == 1:
        return row
    from jax.experimental import multihost_utils

    summed = sorted(k for k in row if k.endswith(ENERGY_ACROSS_PROCESSES))
    keys = summed + sorted(k for k in row if k.endswith("_s"))
    mine = np.array([np.nan if row[k] is None else row[k] for k in keys], np.float64)
    # as int32 pairs: without jax_enable_x64 a float64 array would travel as float32
    every = np.asarray(multihost_utils.process_allgather(mine.view(np.int32))).view(np.float64)
    total = {**row, **{k: None if np.isnan(col).any() else float(col.sum())
                       for k, col in zip(summed, every.T[:len(summed)])}}
    energy, duration = total["energy_j"], total["duration_s"]
    total["power_mean_w"] = energy / duration if energy is not None and duration else None
    total["energy_processes"] = jax.process_count()
    if energy is None and row["energy_j"] is not None:  # another process measured nothing
        lacking = [i for i, values in enumerate(every) if np.isnan(values[summed.index("energy_j")])]
        total["energy_source"] = "unavailable"
        total["energy_reason"] = (f"process(es) {', '.join(map(str, lacking))} of {jax.process_count()} measured "
                                  "no energy")
    # each process's own figures (its windows start and end at its own times: one waits for another at start-up)
    total["by_process"] = [{k: None if np.isnan(x) else float(x) for k, x in zip(keys, values)} for values in every]
    return total


def run_one(spec: RunSpec, data: Prepared, run_dir: Path, progress: Progress, stop: StopSignals, meter,
            heartbeat=lambda: None, branch: Branch | None = None) -> dict:
    """Train one run, from its latest checkpoint if it has one (or, a branch, from its trunk's); write
    config.json, metrics.jsonl, power.csv and summary.json; return the summary."""
    wall_start = time.perf_counter()
    mesh = mesh_for(spec.config.mesh)
    config = runtime.resolve(spec.config, runtime.hardware(mesh.devices.flat), data.vocab_size)
    resolved = runtime.choices(spec.config, config)
    spec = dataclasses.replace(spec, config=config)
    cfg, train, seq_len = config.model, config.train, config.data.seq_len
    writer = sharding.is_writer()
    budget = plan_budget(len(data.splits["train"]), seq_len, train.batch_size, train.tokens)
    model = build_model(cfg, data.vocab_size, seq_len)
    n_params, n_nonembed = count_params(cfg, data.vocab_size, seq_len)
    run_dir.mkdir(parents=True, exist_ok=True)
    if writer:
        (run_dir / "config.json").write_text(json.dumps({"run_id": spec.run_id, "repetition": spec.repetition,
                                                          **to_dict(config), "resolved": resolved}, indent=2))

    index, count = sharding.data_shard(mesh)
    new_batches = lambda: train_iterator(  # noqa: E731
        train_dataset(data.splits["train"], seq_len, train.batch_size, budget.steps, train.seed,
                      shard_index=index, shard_count=count), place=functools.partial(sharding.shard_batch, mesh=mesh))
    eval_rows = eval_batches(data.splits["valid"], seq_len, train.batch_size, train.eval_tokens,
                             sharding.batch_shards(mesh))
    held_out = [sharding.shard_batch(rows[index::count], mesh) for rows in eval_rows]
    checkpoints = RunCheckpoints(run_dir / "checkpoints", config.checkpoint.keep)
    try:
        state, book, batches = _resume_or_start(spec, model, budget, mesh, checkpoints, new_batches, branch)
        idle_w = measure_idle(meter, config.energy.idle_s, config.energy.hz)
        power_csv = free_trace_path(run_dir) if writer else None
        sampler = Sampler(meter, config.energy.hz, power_csv, idle_w)
        sampler.start()
        run = Run(spec, data, run_dir, progress, stop, heartbeat, model, mesh, budget, batches, held_out, checkpoints,
                  sampler, wall_start, branch)
        try:
            summary = _train(run, state, book)
        finally:
            if sampler.summary is None:
                sampler.stop()
    finally:
        checkpoints.close()  # a no-op where _train closed them; else its async saves finish before the error shows
    summary.update(n_params=n_params, n_params_nonembed=n_nonembed, flops=6 * n_params * budget.tokens,
                   flops_per_token_matmul=flops_per_token(cfg, data.vocab_size, seq_len),
                   attention=cfg.attention, loss_mode=train.loss, resolved=resolved)
    if writer:
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))  # other workers read it
        if not config.checkpoint.final:  # only now: a run killed before its summary resumes from its last checkpoint
            shutil.rmtree(checkpoints.directory, ignore_errors=True)
    return summary


def free_trace_path(run_dir: Path) -> Path:
    """power.csv, else power.1.csv, power.2.csv ...: each segment of a run its own trace, none overwritten (a
    segment killed after its checkpoint left a trace that the next segment must not replace)."""
    return next(p for n in itertools.count() if not (p := run_dir / (f"power.{n}.csv" if n else "power.csv")).exists())


def _resume_or_start(spec: RunSpec, model, budget: Budget, mesh, checkpoints: RunCheckpoints, new_batches,
                     branch: Branch | None = None):
    """(state, book, batches): from the newest readable checkpoint, restored straight into its place on the
    devices; else, a branch, from its trunk's checkpoint at its cooldown start; else a fresh state and data
    iterator at step 0 (also when every checkpoint was unreadable)."""
    train, seq_len = spec.config.train, spec.config.data.seq_len
    if checkpoints.manager.all_steps():
        restored = checkpoints.restore(abstract_state(model, train, seq_len, mesh), new_batches)
        if restored is not None:
            state, meta, batches = restored
            book = RunBook.from_json(meta).resume()
            print(f"{spec.run_id}: resuming at step {len(book.records)} of {budget.steps}", file=sys.stderr)
            return state, book, batches
        print(f"{spec.run_id}: no checkpoint could be read (moved to {checkpoints.unreadable[0].parent}); "
              "starting again from step 0 with a fresh state and data order", file=sys.stderr)
    if branch and not branch.is_trunk:
        return _branch_off(spec, model, budget, mesh, new_batches, branch)
    book = RunBook()
    state = init_state(model, train, budget.steps, seq_len, jax.random.key(train.seed), mesh=mesh,
                       warmup=branch.warmup_steps if branch else None)
    if spec.config.model.init_from:  # a Hugging Face checkpoint's weights; the optimizer state stays fresh
        state = state.replace(params=hf.place(hf.load_params(spec.config.model, model.vocab_size), state.params))
    return state, book, new_batches()


def _branch_off(spec: RunSpec, model, budget: Budget, mesh, new_batches, branch: Branch):
    """The trunk's state, data position and records at this run's cooldown start, with this run's schedule."""
    train, seq_len = spec.config.train, spec.config.data.seq_len
    trunk = RunCheckpoints(branch.trunk_dir, keep=None)
    try:
        restored = trunk.restore(abstract_state(model, train, seq_len, mesh), new_batches, step=branch.start)
    finally:
        trunk.close()
    if restored is None:
        raise RuntimeError(f"the trunk checkpoint {branch.start_dir} cannot be read")
    state, meta, batches = restored
    schedule = schedule_array(train, budget.steps, branch.warmup_steps)
    state = state.replace(schedule=jax.device_put(schedule, state.schedule.sharding))
    print(f"{spec.run_id}: branching off {branch.trunk} at step {branch.start} of {budget.steps}", file=sys.stderr)
    return state, RunBook(records=meta["records"]), batches


@dataclasses.dataclass(frozen=True)
class Run:
    """What the step loop of one run works with, besides the state and the bookkeeping it updates."""
    spec: RunSpec
    data: Prepared
    run_dir: Path
    progress: Progress
    stop: StopSignals
    heartbeat: Callable[[], None]
    model: Any
    mesh: Any
    budget: Budget
    batches: Any  # the Grain iterator (its position is checkpointed)
    held_out: list
    checkpoints: RunCheckpoints
    sampler: Sampler
    wall_start: float
    branch: Branch | None = None


def _train(run: Run, state, book: RunBook) -> dict:
    """The step loop: from the book's step to the budget's, checkpointing, evaluating and stopping on the way."""
    spec, stop, mesh, budget, batches = run.spec, run.stop, run.mesh, run.budget, run.batches
    held_out, checkpoints, sampler, wall_start = run.held_out, run.checkpoints, run.sampler, run.wall_start
    config = spec.config
    train, seq_len = config.train, config.data.seq_len
    records = book.records
    with sampler.window("compile"):
        local_rows = np.zeros((train.batch_size // sharding.data_shard(mesh)[1], seq_len + 1), np.int32)
        train_step, eval_step = compiled_for(
            run.model, config, mesh, state, sharding.shard_batch(local_rows, mesh), held_out[0])

    def save(step: int, wait: bool = False, live: bool = True) -> None:
        """A checkpoint at a step boundary; `live`: with this segment's energy so far, which a run killed before
        its next checkpoint keeps (its steps after this one are trained again, their energy is not counted)."""
        run.heartbeat()  # a run another worker took over is theirs to checkpoint
        live_energy = sum_over_processes(sampler.snapshot().as_row()) if live else None
        meta = dataclasses.replace(book, wall_s=book.wall_s + time.perf_counter() - wall_start,
                                   energy_live=live_energy).to_json()
        with sampler.window("checkpoint") if live else contextlib.nullcontext():
            checkpoints.save(step, state, batches, meta, wait=wait)

    branch = run.branch
    trunk_points = set(branch.points) if branch and branch.is_trunk else set()
    trunk = RunCheckpoints(branch.trunk_dir, keep=None) if trunk_points else None

    def save_trunk_point(step: int) -> None:
        """The state where a smaller budget's cooldown starts: that branch trains from here."""
        if step not in trunk.manager.all_steps():
            with sampler.window("checkpoint"):
                trunk.save(step, state, batches, {"records": list(records)}, wait=True)

    tokens_per_step = train.batch_size * seq_len
    failure = None

    def at_boundary(step: int) -> bool:
        """After this step the loop needs the state or the iterator as of the step (evaluation, a checkpoint,
        a stop, the end): it waits for the step instead of queueing the next one."""
        done = step + 1
        return (done == budget.steps or bool(stop.received) or done in trunk_points
                or bool(train.eval_every and done % train.eval_every == 0)
                or bool(config.checkpoint.every and done % config.checkpoint.every == 0))

    def record(step: int, metrics, busy_since: float, write: bool = True) -> float:
        """Wait for `step`'s metrics (the device is busy with the next step meanwhile) and keep them (and
        write their line, unless an evaluation is to join it); returns when the step was seen complete."""
        nonlocal failure
        loss, lr = map(float, jax.device_get((metrics["loss"], metrics["lr"])))
        done_at = time.perf_counter()
        step_s = done_at - busy_since
        entry = {"step": step + 1, "loss": loss, "lr": lr, "step_s": round(step_s, 6),
                 "tokens_per_s": round(tokens_per_step / step_s, 1), "energy_j": sampler.mark()}
        if not math.isfinite(loss):
            failure = (step + 1, f"loss became {loss} at step {step + 1}")
        run.heartbeat()
        records.append(entry)
        if write:
            log.write(json.dumps(entry) + "\n")
        run.progress.step(step + 1, budget.steps, loss, tokens_per_step / step_s)
        return done_at

    events = open_events(run.run_dir, len(records)) if sharding.is_writer() else None
    # line-buffered: a line is on disk once its step is recorded (and nothing is left to flush into a run that
    # another worker has taken over)
    with open(run.run_dir / "metrics.jsonl" if sharding.is_writer() else os.devnull, "w", buffering=1) as log:
        log.writelines(json.dumps(r) + "\n" for r in records)
        # One step in flight: step n+1 is dispatched and its batch placed before step n's metrics are awaited,
        # so the device never waits on the host; step n's time and energy mark are taken when it is seen
        # complete. Where the loop needs step n's own state (see at_boundary), it drains first.
        # A step's time (and its energy) runs from the previous step's completion, or the end of the window
        # before it, to its own: together the steps' times are the loop's time outside its windows.
        pending = None  # (step, metrics) dispatched, not yet recorded
        sampler.skip()  # what came before the loop (the restored log) is no step's
        busy_since = time.perf_counter()
        batch = next(batches) if len(records) < budget.steps else None
        for step in range(len(records), budget.steps):
            state, metrics = train_step(state, batch)
            boundary = at_boundary(step)
            if not boundary:
                batch = next(batches)
            if pending:
                busy_since = record(*pending, busy_since)
                if failure:
                    break
            pending = (step, metrics)
            if not boundary:
                continue
            busy_since = record(*pending, busy_since, write=False)
            pending = None
            if not failure and train.eval_every and (step + 1) % train.eval_every == 0 and step + 1 < budget.steps:
                with sampler.window("eval"):
                    records[-1]["eval_loss"] = evaluate(eval_step, state.params, held_out)
            log.write(json.dumps(records[-1]) + "\n")
            if events:
                events.write(records)
            if failure:
                break
            if step + 1 in trunk_points:  # before a stop: a branch starts here, and the resumed loop starts after it
                save_trunk_point(step + 1)
            if stop.received and step + 1 < budget.steps:  # (at the last step the run ends as usual: nothing is left)
                log.flush()
                book.energy.append(sum_over_processes(sampler.stop().as_row()))
                save(step + 1, wait=True, live=False)
                checkpoints.close()
                if events:
                    events.close()
                if trunk:
                    trunk.close()
                raise Interrupted(f"{stop.received} at step {step + 1}/{budget.steps} of run {spec.run_id}; "
                                  "checkpoint saved")
            if config.checkpoint.every and (step + 1) % config.checkpoint.every == 0 and step + 1 < budget.steps:
                save(step + 1)
            busy_since = time.perf_counter()
            if step + 1 < budget.steps:
                batch = next(batches)

    summary = _summarise(run, book, state, eval_step, failure, events)
    run.heartbeat()  # a run another worker has taken over meanwhile: its checkpoints and summary are theirs
    if config.checkpoint.final and not failure and budget.steps not in checkpoints.manager.all_steps():
        save(budget.steps, wait=True, live=False)  # (a segment killed after this save left it: the same state)
    checkpoints.close()
    if trunk:
        trunk.close()
    if events:
        events.close()
    return summary


def _summarise(run: Run, book: RunBook, state, eval_step, failure, events) -> dict:
    """summary.json: what the run trained, its losses (with a last held-out evaluation unless it failed), and its
    time and energy over every segment. Stops the sampler."""
    spec, data, budget, sampler, branch = run.spec, run.data, run.budget, run.sampler, run.branch
    held_out, wall_start = run.held_out, run.wall_start
    cfg, train = spec.config.model, spec.config.train
    tokens_per_step, records = train.batch_size * spec.config.data.seq_len, book.records
    summary = {
        "run_id": spec.run_id, "model": cfg.label, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "n_layers": cfg.n_layers,
        "tokens": budget.tokens, "token_budget": train.tokens, "steps": budget.steps, "epochs": round(budget.epochs, 4),
        "repetition": spec.repetition, "seed": train.seed,
        "vocab_size": data.vocab_size, "data": data.description, "status": "ok", "failed_step": None, "reason": "",
        "resumed_at_steps": book.resumed_at,
        # what this row's own training added: a branch only its cooldown; the trunk counted on the trunk run's row
        "compute_tokens": (budget.steps - branch.start) * tokens_per_step if branch else budget.tokens,
        "branched_at_step": branch.start if branch and not branch.is_trunk else None,
    }
    if failure:
        summary.update(status="failed", failed_step=failure[0], reason=failure[1])
    else:
        with sampler.window("eval"):
            summary["eval_loss"] = evaluate(eval_step, state.params, held_out)
        summary["eval_ppl"] = math.exp(min(summary["eval_loss"], 700))
        if events:
            events.scalar("eval/loss", summary["eval_loss"], budget.steps)
    # every segment's windows (steps, compile, eval, checkpoint): energy and duration, summed; this segment's row
    # joins the book, so a final checkpoint saved after this carries it
    book.energy.append(sum_over_processes(sampler.stop().as_row()))
    summary.update(combine_energy(book.energy))
    step_times = [r["step_s"] for r in records]
    losses = [r["loss"] for r in records]
    summary.update(
        train_loss=float(np.mean(losses[-max(1, len(losses) // 10):])), final_loss=losses[-1],
        step_s_median=float(np.median(step_times)),
        tokens_per_s=round(tokens_per_step * len(step_times) / sum(step_times), 1),
        wall_s=round(book.wall_s + time.perf_counter() - wall_start, 3),
    )
    return summary


def failed_summary(spec: RunSpec, err: Exception, run_dir: Path) -> dict:
    """The record of a run that raised: the sweep goes on; deleting its summary.json retries it."""
    cfg = spec.config
    reason = " ".join(f"{type(err).__name__}: {err}".split())[:500]
    if sharding.is_writer():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text("".join(traceback.format_exception(err)))
    print(f"run {spec.run_id} failed ({reason}); traceback in {run_dir / 'error.txt'}", file=sys.stderr)
    return {"run_id": spec.run_id, "model": cfg.model.label, "d_model": cfg.model.d_model, "d_mlp": cfg.model.d_mlp,
            "n_layers": cfg.model.n_layers, "token_budget": cfg.train.tokens, "repetition": spec.repetition,
            "seed": cfg.train.seed, "status": "failed", "failed_step": None, "reason": reason}


def run_sweep(raw: dict, out: Path, worker: tuple[int, int] = (0, 1), quiet: bool = False,
              help_others: bool = False) -> list[dict]:
    """Train this worker's share of the sweep (`help_others`: then the other shares' runs no worker holds)."""
    runs, data_cache = check_sweep(raw)
    sweep = Sweep(out, raw, runs, writer=sharding.is_writer(), claiming=jax.process_count() == 1)
    progress = Progress(len(runs), quiet=quiet)
    meters = {}
    branches = plan_branches(runs, out)
    by_id = {spec.run_id: spec for spec in runs}

    def step_flops(spec: RunSpec) -> float:
        c = spec.config
        vocab = prepare_data(c, data_cache).vocab_size
        return flops_per_token(c.model, vocab, c.data.seq_len) * c.train.batch_size * c.data.seq_len

    share = worker_share(runs, branches, worker, step_flops)
    mine = {spec.run_id for spec in share}
    if help_others and not sweep.claiming:
        print("warning: --help-others is ignored in a multi-host job (it takes no claims, so it trains only its own "
              "share)", file=sys.stderr)
        help_others = False

    def needs_trunk(spec: RunSpec) -> bool:
        """A branch not yet started whose trunk checkpoint does not exist yet."""
        branch = branches.get(spec.run_id)
        return bool(branch and not branch.is_trunk and not (sweep.run_dir(spec.run_id) / "checkpoints").is_dir()
                    and not branch.start_dir.is_dir())

    def train(spec: RunSpec) -> None:
        if not sweep.claim(spec.run_id):
            return
        try:
            progress.begin_run(runs.index(spec) + 1, spec.run_id)
            kind = spec.config.energy.meter
            if kind not in meters:
                meters[kind] = open_process_meter(kind)
            try:
                branch = branches.get(spec.run_id)
                if needs_trunk(spec):
                    wait_for_trunk(branch, spec)
                    progress.begin_run(runs.index(spec) + 1, spec.run_id)  # a trunk trained meanwhile took the line
                summary = run_one(spec, prepare_data(spec.config, data_cache), sweep.run_dir(spec.run_id),
                                  progress, stop, meters[kind], heartbeat=lambda: sweep.heartbeat(spec.run_id),
                                  branch=branch)
            except (ConfigError, Interrupted):
                raise
            except ClaimLost as lost:
                print(f"warning: {lost}", file=sys.stderr)
                return
            except Exception as err:  # one run's failure (a bug, damaged files, memory) must not stop the sweep
                summary = failed_summary(spec, err, sweep.run_dir(spec.run_id))
                if sharding.is_writer():
                    write_atomic(sweep.summary_path(spec.run_id), json.dumps(summary, indent=2))
            progress.end_run(summary)
        finally:
            sweep.release(spec.run_id)
            sweep.update()

    def wait_for_trunk(branch: Branch, spec: RunSpec) -> None:
        """Until the trunk checkpoint this branch starts from exists: train the trunk run here if no worker has
        it, else wait for the worker that does (claims keep any run, trunks included, from training twice). A
        trunk of another worker's share gets TRUNK_GRACE_S for that worker to take it, then is trained here."""
        since = time.monotonic()
        while not branch.start_dir.is_dir():
            state = sweep.state(branch.trunk)
            if state in ("ok", "failed"):
                raise RuntimeError(f"the trunk run {branch.trunk} ended ({state}) without the checkpoint at step "
                                   f"{branch.start} that this branch starts from")
            ours = branch.trunk in mine or time.monotonic() - since > TRUNK_GRACE_S
            if state in ("pending", "interrupted") and ours:
                train(by_id[branch.trunk])
            else:
                time.sleep(2.0)
                sweep.heartbeat(spec.run_id)
            if stop.received:
                raise Interrupted(f"{stop.received} while waiting for trunk {branch.trunk}")

    def train_share() -> None:
        """This worker's share, to its end. Runs that another worker's claim holds are waited for until they end,
        or until the claim goes stale (its worker died, e.g. killed at a time limit) and they are trained here: a
        resubmitted array task must not exit with its share undone. A multi-host job takes no claims: one pass."""
        told = set()
        while True:
            for spec in sorted(sweep.pending(share), key=trunks_first):  # again: claims gone stale meanwhile
                if stop.received:
                    raise Interrupted(f"{stop.received} between runs")
                train(spec)
            if help_others:
                help_other_shares()
            if not sweep.claiming:
                return
            states = {s.run_id: sweep.state(s.run_id) for s in share}
            held = [s for s in share if states[s.run_id] == "running"]
            if all(state in ("ok", "failed") for state in states.values()):  # (pending again: a claim went stale)
                return
            for spec in held:
                if spec.run_id not in told:
                    told.add(spec.run_id)
                    owner = sweep.claim_owner(spec.run_id) or {}
                    print(f"{spec.run_id}: claimed by {owner.get('host', '?')} pid {owner.get('pid', '?')}; waiting "
                          f"for it to end (taken over here if that worker sends no heartbeat for "
                          f"{STALE_CLAIM_S:.0f} s)", file=sys.stderr)
            time.sleep(HELD_POLL_S)
            if stop.received:
                raise Interrupted(f"{stop.received} while waiting for runs claimed by other workers")

    def help_other_shares() -> None:
        """Runs of other workers' shares that no worker holds and that can start now (a branch once its trunk's
        checkpoint exists), the last in the sweep first: their own workers would reach those last."""
        tried = set()  # each at most once: a run whose claim another worker won meanwhile is theirs
        while ready := [s for s in reversed(sweep.pending())
                        if s.run_id not in mine and s.run_id not in tried and not needs_trunk(s)]:
            if stop.received:
                raise Interrupted(f"{stop.received} between runs")
            tried.add(ready[0].run_id)
            train(ready[0])

    trunks_first = lambda spec: 0 if spec.run_id not in branches or branches[spec.run_id].is_trunk else 1  # noqa: E731

    with StopSignals() as stop:
        train_share()
    for meter in meters.values():
        meter.close()
    summaries = sweep.update()
    if len(summaries) == len(runs) and sharding.is_writer():  # the last worker to finish writes the report
        write_sweep_report(out)
    return summaries


def write_sweep_report(out: Path) -> None:
    try:
        from jaxscale.analyze import write_report  # matplotlib and the fits load only when a sweep is complete

        path = write_report(out)  # the vocabulary comes from results.csv
    except Exception as err:  # the results are safe on disk; a report can be rebuilt with jaxscale.analyze
        print(f"warning: report not written ({type(err).__name__}: {err}); "
              f"run: python -m jaxscale.analyze {out}", file=sys.stderr)
    else:
        print(f"report: {path}", file=sys.stderr)


def parse_worker(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--worker {text!r}: expected I/N with 0 <= I < N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ConfigError(f"--worker {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return index, count


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m jaxscale.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="TOML config; lists are sweep axes")
    parser.add_argument("--out", help="sweep directory (default: runs/<config name>)")
    parser.add_argument("--worker", default="0/1", help="I/N: worker I of N (e.g. a SLURM array task) takes its share, balanced by compute")
    parser.add_argument("--help-others", action="store_true",
                        help="with --worker: after its own share, train other shares' runs that no worker has taken")
    parser.add_argument("--quiet", action="store_true", help="one line per run instead of a progress display")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.tokens=1e4 data.path=DIR")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime.start()
    sharding.initialize_distributed()
    try:
        raw = load_raw(args.config, args.overrides)
        out = Path(args.out) if args.out else run_path(Path("runs"), raw["name"])
        summaries = run_sweep(raw, out, worker=parse_worker(args.worker), quiet=args.quiet,
                              help_others=args.help_others)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        command = shlex.join(["python", "-m", "jaxscale.train", *(argv if argv is not None else sys.argv[1:])])
        print(f"interrupted: {stop}. Rerun the same command to resume:\n  {command}", file=sys.stderr)
        return 130 if "SIGINT" in str(stop) else 143
    failed = sum(s["status"] != "ok" for s in summaries)
    print(f"{len(summaries)} runs finished ({failed} failed); results in {out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
