"""`python -m jaxscale.train --config FILE [--out DIR] [key=value ...]`: the run loop and the sweep loop.

Everything with side effects lives here; the step itself (jaxscale.step) is a pure jitted function.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxscale.config import Config, ConfigError, RunSpec, expand, load_raw, to_dict
from jaxscale.data.corpora import load_corpus
from jaxscale.data.loader import eval_batches, plan_budget, train_dataset, train_iterator
from jaxscale.data.tokenize import load_tokenizer, token_splits
from jaxscale.models import build_model, count_params, flops_per_token
from jaxscale.progress import Progress
from jaxscale.step import compiled_steps, init_state, step_key

RESULT_COLUMNS = [
    "run_id", "model", "d_model", "d_mlp", "n_layers", "n_params", "n_params_nonembed", "tokens", "flops",
    "train_loss", "eval_loss", "wall_s", "step_s_median", "tokens_per_s", "status", "repetition", "seed",
    "steps", "epochs", "compile_s", "eval_s", "failed_step", "reason",
]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Token arrays and vocabulary for one (data, tokenizer) setting, shared by every run that uses it."""

    splits: dict
    vocab_size: int
    description: str


def prepare_data(config: Config, cache: dict) -> Prepared:
    key = (config.data.source, config.data.path, config.data.hf_name, config.tokenizer)
    if key not in cache:
        corpus = load_corpus(config.data)
        tokenizer = load_tokenizer(config.tokenizer, corpus)
        cache[key] = Prepared(token_splits(corpus, tokenizer), tokenizer.vocab_size, f"{corpus.name} / {tokenizer.name}")
    return cache[key]


def _compiled(model, config: Config, state, batch, eval_batch):
    """AOT-compiled train and eval steps for this shape, compiled once per process and timed."""
    key = (model, step_key(config.train), batch.shape, eval_batch.shape)
    if key not in _COMPILED:
        start = time.perf_counter()
        train_fn, eval_fn = compiled_steps(model, step_key(config.train))
        _COMPILED[key] = (train_fn.lower(state, batch).compile(), eval_fn.lower(state.params, eval_batch).compile(),
                          time.perf_counter() - start)
        return _COMPILED[key]
    train_c, eval_c, _ = _COMPILED[key]
    return train_c, eval_c, 0.0


_COMPILED: dict = {}


def evaluate(eval_fn, params, batches) -> float:
    losses = [eval_fn(params, b) for b in batches]
    return float(np.mean(jax.device_get(losses)))


def run_one(spec: RunSpec, data: Prepared, run_dir: Path, progress: Progress) -> dict:
    """Train one run from scratch; write config.json, metrics.jsonl and summary.json; return the summary."""
    config = spec.config
    cfg, train, seq_len = config.model, config.train, config.data.seq_len
    wall_start = time.perf_counter()
    budget = plan_budget(len(data.splits["train"]), seq_len, train.batch_size, train.tokens)
    model = build_model(cfg, data.vocab_size, seq_len)
    n_params, n_nonembed = count_params(cfg, data.vocab_size, seq_len)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"run_id": spec.run_id, "repetition": spec.repetition,
                                                      **to_dict(config)}, indent=2))

    dataset = train_dataset(data.splits["train"], seq_len, train.batch_size, budget.steps, train.seed)
    batches = train_iterator(dataset)
    held_out = eval_batches(data.splits["valid"], seq_len, train.batch_size, train.eval_tokens)
    state = init_state(model, train, budget.steps, seq_len, jax.random.key(train.seed))
    first = next(batches)
    train_step, eval_step, compile_s = _compiled(model, config, state, first, held_out[0])

    summary = {
        "run_id": spec.run_id, "model": cfg.label, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "n_layers": cfg.n_layers,
        "n_params": n_params, "n_params_nonembed": n_nonembed, "tokens": budget.tokens, "token_budget": train.tokens,
        "flops": 6 * n_params * budget.tokens, "flops_per_token_matmul": flops_per_token(cfg, data.vocab_size, seq_len),
        "steps": budget.steps, "epochs": round(budget.epochs, 4), "repetition": spec.repetition, "seed": train.seed,
        "vocab_size": data.vocab_size, "data": data.description, "compile_s": round(compile_s, 3),
        "status": "ok", "failed_step": None, "reason": "",
    }
    losses, step_times, eval_s = [], [], 0.0
    tokens_per_step = train.batch_size * seq_len
    with open(run_dir / "metrics.jsonl", "w") as log:
        batch = first
        for step in range(budget.steps):
            start = time.perf_counter()
            state, metrics = train_step(state, batch)
            loss = float(metrics["loss"])  # the host sync that makes the step time (and energy) honest
            step_s = time.perf_counter() - start
            if step + 1 < budget.steps:
                batch = next(batches)
            losses.append(loss)
            step_times.append(step_s)
            record = {"step": step + 1, "loss": loss, "lr": float(metrics["lr"]), "step_s": round(step_s, 6),
                      "tokens_per_s": round(tokens_per_step / step_s, 1)}
            if not math.isfinite(loss):
                summary.update(status="failed", failed_step=step + 1, reason=f"loss became {loss} at step {step + 1}")
                log.write(json.dumps(record) + "\n")
                break
            if train.eval_every and (step + 1) % train.eval_every == 0 and step + 1 < budget.steps:
                t0 = time.perf_counter()
                record["eval_loss"] = evaluate(eval_step, state.params, held_out)
                eval_s += time.perf_counter() - t0
            log.write(json.dumps(record) + "\n")
            progress.step(step + 1, budget.steps, loss, tokens_per_step / step_s)

    tail = losses[-max(1, len(losses) // 10):]
    if summary["status"] == "ok":
        t0 = time.perf_counter()
        summary["eval_loss"] = evaluate(eval_step, state.params, held_out)
        eval_s += time.perf_counter() - t0
        summary["eval_ppl"] = math.exp(min(summary["eval_loss"], 700))
    train_s = sum(step_times)
    summary.update(
        train_loss=float(np.mean(tail)), final_loss=losses[-1], eval_s=round(eval_s, 3), train_s=round(train_s, 3),
        step_s_median=float(np.median(step_times)), tokens_per_s=round(tokens_per_step * len(step_times) / train_s, 1),
        wall_s=round(time.perf_counter() - wall_start, 3),
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_results(out: Path, summaries: list[dict]) -> Path:
    path = out / "results.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for s in summaries:
            writer.writerow({k: ("" if s.get(k) is None else s.get(k)) for k in RESULT_COLUMNS})
    tmp.replace(path)
    return path


def prepare_out_dir(out: Path, raw: dict) -> None:
    """A fresh directory, or one this same config wrote before (its finished runs are kept)."""
    marker = out / "sweep.json"
    if out.exists() and any(out.iterdir()):
        if not marker.is_file() or json.loads(marker.read_text()).get("config") != raw:
            raise ConfigError(f"output directory {out} already holds other results; choose another --out or remove it")
        return
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"config": raw}, indent=2))


def run_sweep(raw: dict, out: Path, quiet: bool = False) -> list[dict]:
    runs = expand(raw)
    data_cache: dict = {}
    for spec in runs:  # load every corpus and tokenizer up front: a missing file stops before any training
        prepare_data(spec.config, data_cache)
        plan_budget(len(prepare_data(spec.config, data_cache).splits["train"]), spec.config.data.seq_len,
                    spec.config.train.batch_size, spec.config.train.tokens)
    prepare_out_dir(out, raw)
    progress = Progress(len(runs), quiet=quiet)
    summaries = []
    for i, spec in enumerate(runs):
        run_dir = out / spec.run_id
        done = run_dir / "summary.json"
        if done.is_file():
            summaries.append(json.loads(done.read_text()))
            continue
        progress.begin_run(i + 1, spec.run_id)
        summary = run_one(spec, prepare_data(spec.config, data_cache), run_dir, progress)
        progress.end_run(summary)
        summaries.append(summary)
        write_results(out, summaries)
    write_results(out, summaries)
    return summaries


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m jaxscale.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="TOML config; lists are sweep axes")
    parser.add_argument("--out", help="sweep directory (default: runs/<config name>)")
    parser.add_argument("--quiet", action="store_true", help="one line per run instead of a progress display")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.tokens=1e4 data.path=DIR")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        raw = load_raw(args.config, args.overrides)
        out = Path(args.out or Path("runs") / raw["name"])
        summaries = run_sweep(raw, out, quiet=args.quiet)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = sum(s["status"] != "ok" for s in summaries)
    print(f"{len(summaries)} runs ({failed} failed); results in {out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
