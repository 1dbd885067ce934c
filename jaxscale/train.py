"""`python -m jaxscale.train --config FILE [--out DIR] [--worker I/N] [key=value ...]`: the run loop
and the sweep loop. Everything with side effects lives here; the step itself (jaxscale.step) is a
pure jitted function. Rerunning the same command resumes: finished runs are skipped, interrupted
ones continue from their latest checkpoint."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jaxscale import hf, runtime, sharding
from jaxscale.checkpoint import RunCheckpoints
from jaxscale.config import Config, ConfigError, RunSpec, expand, load_raw, to_dict
from jaxscale.data.corpora import load_corpus
from jaxscale.data.loader import Budget, eval_batches, plan_budget, train_dataset, train_iterator
from jaxscale.data.tokenize import load_tokenizer, token_splits
from jaxscale.energy import Sampler, measure_idle, open_meter
from jaxscale.models import build_model, count_params, flops_per_token
from jaxscale.progress import Progress
from jaxscale.step import compiled_steps, init_state, step_key
from jaxscale.sweep import Sweep


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Token arrays and vocabulary for one (data, tokenizer) setting, shared by every run that uses it."""

    splits: dict
    vocab_size: int
    description: str


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


def prepare_data(config: Config, cache: dict) -> Prepared:
    key = (config.data.source, config.data.path, config.data.hf_name, config.tokenizer)
    if key not in cache:
        corpus = load_corpus(config.data)
        tokenizer = load_tokenizer(config.tokenizer, corpus)
        cache[key] = Prepared(token_splits(corpus, tokenizer), tokenizer.vocab_size, f"{corpus.name} / {tokenizer.name}")
    return cache[key]


_COMPILED: dict = {}


def compiled_for(model, config: Config, mesh, state, batch, eval_batch):
    """AOT-compiled train and eval steps for this shape: compiled once per process, and timed."""
    key = (model, step_key(config.train), mesh, batch.shape, eval_batch.shape)
    if key in _COMPILED:
        return (*_COMPILED[key], 0.0)
    start = time.perf_counter()
    train_fn, eval_fn = compiled_steps(model, step_key(config.train), mesh)
    _COMPILED[key] = (train_fn.lower(state, batch).compile(), eval_fn.lower(state.params, eval_batch).compile())
    return (*_COMPILED[key], time.perf_counter() - start)


def evaluate(eval_fn, params, batches) -> float:
    return float(np.mean(jax.device_get([eval_fn(params, b) for b in batches])))


def combine_energy(segments: list[dict]) -> dict:
    """One run's energy from the sampler rows of its segments (a resumed run has several): energies
    and durations (the whole segment's and each window's) add up — a window a segment did not open
    adds nothing, an unavailable value makes the total unavailable — the peak is the highest."""
    combined = dict(segments[-1])
    additive = {k for s in segments for k in s if k.endswith(("energy_j", "_s")) or k == "energy_above_idle_j"}
    for key in additive:
        values = [s.get(key, 0.0) for s in segments]
        combined[key] = None if None in values else sum(values)
    peaks = [s["power_peak_w"] for s in segments if s["power_peak_w"] is not None]
    combined["power_peak_w"] = max(peaks) if peaks else None
    energy, duration = combined["energy_j"], combined["duration_s"]
    combined["power_mean_w"] = energy / duration if energy is not None and duration else None
    combined["energy_segments"] = len(segments)
    return combined


def run_one(spec: RunSpec, data: Prepared, run_dir: Path, progress: Progress, stop: StopSignals, meter,
            heartbeat=lambda: None) -> dict:
    """Train one run, from its latest checkpoint if it has one; write config.json, metrics.jsonl,
    power.csv and summary.json; return the summary."""
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
    batches = train_iterator(train_dataset(data.splits["train"], seq_len, train.batch_size, budget.steps, train.seed,
                                           shard_index=index, shard_count=count),
                             place=functools.partial(sharding.shard_batch, mesh=mesh))
    held_out = [sharding.shard_batch(rows[index::count], mesh)
                for rows in eval_batches(data.splits["valid"], seq_len, train.batch_size, train.eval_tokens)]
    state = init_state(model, train, budget.steps, seq_len, jax.random.key(train.seed), mesh=mesh)
    if cfg.init_from:  # the optimizer state stays fresh
        state = state.replace(params=hf.place(hf.load_params(cfg, data.vocab_size), state.params))
    checkpoints = RunCheckpoints(run_dir / "checkpoints", config.checkpoint.keep)
    restored = checkpoints.restore(state, batches)
    book = {"records": [], "wall_s": 0.0, "eval_s": 0.0, "compile_s": 0.0, "resumed_at": [], "energy": []}
    if restored is not None:
        state, book = restored
        book["resumed_at"].append(len(book["records"]))
        print(f"{spec.run_id}: resuming at step {len(book['records'])} of {budget.steps}", file=sys.stderr)
    idle_w = measure_idle(meter, config.energy.idle_s, config.energy.hz)
    segment = len(book["energy"])
    power_csv = run_dir / ("power.csv" if not segment else f"power.{segment}.csv") if writer else None
    sampler = Sampler(meter, config.energy.hz, power_csv, idle_w)
    sampler.start()
    run = Run(spec, data, run_dir, progress, stop, heartbeat, model, mesh, budget, batches, held_out, checkpoints,
              sampler, wall_start)
    try:
        summary = _train(run, state, book)
    finally:
        if sampler.summary is None:
            sampler.stop()
    summary.update(n_params=n_params, n_params_nonembed=n_nonembed, flops=6 * n_params * budget.tokens,
                   flops_per_token_matmul=flops_per_token(cfg, data.vocab_size, seq_len),
                   attention=cfg.attention, loss_mode=train.loss, resolved=resolved)
    if writer:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@functools.lru_cache(maxsize=None)
def mesh_for(cfg):
    return sharding.make_mesh(cfg)


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


def _train(run: Run, state, book: dict) -> dict:
    spec, data, stop, mesh, budget, batches = run.spec, run.data, run.stop, run.mesh, run.budget, run.batches
    held_out, checkpoints, sampler, wall_start = run.held_out, run.checkpoints, run.sampler, run.wall_start
    config = spec.config
    cfg, train, seq_len = config.model, config.train, config.data.seq_len
    records = book["records"]
    with sampler.window("compile"):
        local_rows = np.zeros((train.batch_size // sharding.data_shard(mesh)[1], seq_len + 1), np.int32)
        train_step, eval_step, compile_s = compiled_for(
            run.model, config, mesh, state, sharding.shard_batch(local_rows, mesh), held_out[0])
    book["compile_s"] += compile_s

    def save(step: int, wait: bool = False) -> None:
        book["wall_s_at_save"] = book["wall_s"] + time.perf_counter() - wall_start
        checkpoints.save(step, state, batches, {**book, "wall_s": book["wall_s_at_save"]}, wait=wait)

    tokens_per_step = train.batch_size * seq_len
    failure = None

    def at_boundary(step: int) -> bool:
        """After this step the loop needs the state or the iterator as of the step (evaluation, a checkpoint,
        a stop, the end): it waits for the step instead of queueing the next one."""
        done = step + 1
        return (done == budget.steps or bool(stop.received)
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
        records.append(entry)
        if write:
            log.write(json.dumps(entry) + "\n")
        run.progress.step(step + 1, budget.steps, loss, tokens_per_step / step_s)
        run.heartbeat()
        return done_at

    with open(run.run_dir / "metrics.jsonl" if sharding.is_writer() else os.devnull, "w") as log:
        log.writelines(json.dumps(r) + "\n" for r in records)
        # One step in flight: step n+1 is dispatched and its batch placed before step n's metrics are awaited,
        # so the device never waits on the host; step n's time and energy mark are taken when it is seen
        # complete. Where the loop needs step n's own state (see at_boundary), it drains first.
        pending = None  # (step, metrics) dispatched, not yet recorded
        busy_since = time.perf_counter()
        batch = next(batches) if len(records) < budget.steps else None
        for step in range(len(records), budget.steps):
            dispatched_at = time.perf_counter()
            state, metrics = train_step(state, batch)
            boundary = at_boundary(step)
            if not boundary:
                batch = next(batches)
            if pending:
                busy_since = record(*pending, busy_since)
                if failure:
                    break
            busy_since = max(busy_since, dispatched_at)
            pending = (step, metrics)
            if not boundary:
                continue
            busy_since = record(*pending, busy_since, write=False)
            pending = None
            if not failure and train.eval_every and (step + 1) % train.eval_every == 0 and step + 1 < budget.steps:
                t0 = time.perf_counter()
                with sampler.window("eval"):
                    records[-1]["eval_loss"] = evaluate(eval_step, state.params, held_out)
                book["eval_s"] += time.perf_counter() - t0
            log.write(json.dumps(records[-1]) + "\n")
            if failure:
                break
            if stop.received:
                log.flush()
                book["energy"].append(sampler.stop().as_row())
                save(step + 1, wait=True)
                checkpoints.close()
                raise Interrupted(f"{stop.received} at step {step + 1}/{budget.steps} of run {spec.run_id}; "
                                  "checkpoint saved")
            if config.checkpoint.every and (step + 1) % config.checkpoint.every == 0 and step + 1 < budget.steps:
                save(step + 1)
            if step + 1 < budget.steps:
                batch = next(batches)
            busy_since = time.perf_counter()

    summary = {
        "run_id": spec.run_id, "model": cfg.label, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "n_layers": cfg.n_layers,
        "tokens": budget.tokens, "token_budget": train.tokens, "steps": budget.steps, "epochs": round(budget.epochs, 4),
        "repetition": spec.repetition, "seed": train.seed,
        "vocab_size": data.vocab_size, "data": data.description, "status": "ok", "failed_step": None, "reason": "",
        "resumed_at_steps": book["resumed_at"],
    }
    if failure:
        summary.update(status="failed", failed_step=failure[0], reason=failure[1])
    else:
        t0 = time.perf_counter()
        with sampler.window("eval"):
            summary["eval_loss"] = evaluate(eval_step, state.params, held_out)
        book["eval_s"] += time.perf_counter() - t0
        summary["eval_ppl"] = math.exp(min(summary["eval_loss"], 700))
    # energy first: the book's compile_s and eval_s below, not the sampler windows' durations, are the run's
    summary.update(combine_energy(book["energy"] + [sampler.stop().as_row()]))
    step_times = [r["step_s"] for r in records]
    losses = [r["loss"] for r in records]
    train_s = sum(step_times)
    summary.update(
        train_loss=float(np.mean(losses[-max(1, len(losses) // 10):])), final_loss=losses[-1],
        compile_s=round(book["compile_s"], 3), eval_s=round(book["eval_s"], 3), train_s=round(train_s, 3),
        step_s_median=float(np.median(step_times)), tokens_per_s=round(tokens_per_step * len(step_times) / train_s, 1),
        wall_s=round(book["wall_s"] + time.perf_counter() - wall_start, 3),
    )
    step_energy = [r.get("energy_j") for r in records]
    summary["train_energy_j"] = None if None in step_energy else sum(step_energy)
    if config.checkpoint.final and not failure:
        save(budget.steps, wait=True)
    checkpoints.close(remove=not config.checkpoint.final)
    return summary


def run_sweep(raw: dict, out: Path, worker: tuple[int, int] = (0, 1), quiet: bool = False) -> list[dict]:
    runs = expand(raw)
    data_cache: dict = {}
    for spec in runs:  # every corpus and tokenizer up front: a missing file stops before any training
        data = prepare_data(spec.config, data_cache)
        plan_budget(len(data.splits["train"]), spec.config.data.seq_len, spec.config.train.batch_size,
                    spec.config.train.tokens)
        runtime.resolve(spec.config, runtime.hardware(mesh_for(spec.config.mesh).devices.flat), data.vocab_size)
        if spec.config.model.init_from:
            hf.check_compatible(spec.config, data.vocab_size)
    sweep = Sweep(out, raw, runs, writer=sharding.is_writer(), claiming=jax.process_count() == 1)
    progress = Progress(len(runs), quiet=quiet)
    meters = {}
    with StopSignals() as stop:
        for spec in sweep.pending(worker):
            if stop.received:
                raise Interrupted(f"{stop.received} between runs")
            if not sweep.claim(spec.run_id):
                continue
            try:
                progress.begin_run(runs.index(spec) + 1, spec.run_id)
                kind = spec.config.energy.meter
                if kind not in meters:
                    meters[kind] = open_meter(kind)
                summary = run_one(spec, prepare_data(spec.config, data_cache), out / spec.run_id, progress, stop,
                                  meters[kind], heartbeat=lambda: sweep.heartbeat(spec.run_id))
                progress.end_run(summary)
            finally:
                sweep.release(spec.run_id)
                sweep.update()
    for meter in meters.values():
        meter.close()
    summaries = sweep.update()
    if len(summaries) == len(runs) and sharding.is_writer():  # the last worker to finish writes the report
        write_sweep_report(out, summaries)
    return summaries


def write_sweep_report(out: Path, summaries: list[dict]) -> None:
    from jaxscale.analyze import write_report  # matplotlib and the fits load only when a sweep is complete

    try:
        path = write_report(out, vocab_size=summaries[0].get("vocab_size", 50257))
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
    parser.add_argument("--worker", default="0/1", help="I/N: take every N-th run starting at I (e.g. a SLURM array task)")
    parser.add_argument("--quiet", action="store_true", help="one line per run instead of a progress display")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.tokens=1e4 data.path=DIR")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime.start()
    sharding.initialize_distributed()
    try:
        raw = load_raw(args.config, args.overrides)
        out = Path(args.out or Path("runs") / raw["name"])
        summaries = run_sweep(raw, out, worker=parse_worker(args.worker), quiet=args.quiet)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        command = " ".join(["python -m jaxscale.train", *(argv if argv is not None else sys.argv[1:])])
        print(f"interrupted: {stop}. Rerun the same command to resume:\n  {command}", file=sys.stderr)
        return 130 if "SIGINT" in str(stop) else 143
    failed = sum(s["status"] != "ok" for s in summaries)
    print(f"{len(summaries)} runs finished ({failed} failed); results in {out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
