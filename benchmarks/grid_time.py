"""Wall time of the tiny-transformer grid: jaxscale's sweep against the same grid in PyTorch (eager).

    python benchmarks/grid_time.py [--config configs/tiny_grid.toml] [--tokens 5e3,5e4] [--models ...]
        [--frameworks jax,torch_eager] [--set key=value ...] [--full]

The full grid is 56 runs (~13,600 steps of 16 x 64 tokens); in PyTorch eager it takes over an hour
on a 2-core machine. So by default this runs a representative *subset* — every model shape at the
budgets of --tokens — in both frameworks, on the same data and batches (jaxscale's corpus,
tokenizer and Grain loader feed both), and extrapolates to the whole grid:

    grid ≈ Σ_shapes [ first-run setup (compile) + Σ_budgets ( steps × step time + per-run overhead ) ]

where, per framework and shape, step time is the median step of the subset's runs, per-run
overhead is a run's wall time beyond its steps (model init, held-out evaluation, files), averaged
over the subset's runs, and setup is the extra wall time of the shape's first run (jaxscale's
one compilation per shape). Data preparation (tokenising the corpus, cached on disk) is measured
once and added. The extrapolation is labelled as such; --full runs every run of the config
instead and reports measured wall times.

jaxscale runs through its own sweep (jaxscale.train.run_sweep, into a temporary directory);
PyTorch through a loop that mirrors jaxscale.train.run_one: a fresh model per run
(benchmarks/torch_models.py), AdamW with the run's own schedule, the loss fetched every step,
held-out loss on the same validation batches at the end.

Results: benchmarks/results/grid_time.csv (one row per measured run) and grid_time.md (summary).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jaxscale import hostmem, xla_cpu  # noqa: E402
from jaxscale.config import expand, load_raw  # noqa: E402
from jaxscale.data.loader import eval_batches, plan_budget, train_dataset, train_iterator  # noqa: E402
from jaxscale.train import prepare_data, run_sweep  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_SET = ["data.source=dir", f"data.path={SHARED / 'data' / 'enwiki-sample'}", f"tokenizer.path={SHARED / 'tokenizers' / 'gpt2' / 'tokenizer.json'}"]
COLUMNS = ["framework", "run_id", "model", "tokens", "steps", "wall_s", "step_s_median", "setup_s", "eval_loss"]


def subset(raw: dict, tokens: list[float] | None, models: list[str] | None) -> dict:
    """The config restricted to some budgets and model labels (a sweep config itself)."""
    raw = json.loads(json.dumps(raw))
    if tokens:
        raw.setdefault("train", {})["tokens"] = tokens
    if models:
        entries = raw["model"] if isinstance(raw.get("model"), list) else [raw.get("model", {})]
        raw["model"] = [m for m in entries if expand({**raw, "model": m})[0].config.model.label in models]
    return raw


def run_jax(raw: dict, log) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="grid_time_jax_") as out:
        start = time.perf_counter()
        summaries = run_sweep(raw, Path(out) / "sweep", quiet=True)
        log(f"jaxscale sweep: {len(summaries)} runs in {time.perf_counter() - start:.1f} s")
    return [{"framework": "jax", "run_id": s["run_id"], "model": s["model"], "tokens": s["tokens"], "steps": s["steps"],
             "wall_s": s["wall_s"], "step_s_median": s["step_s_median"], "setup_s": s["compile_s"],
             "eval_loss": s.get("eval_loss")} for s in summaries]


def run_torch(raw: dict, log) -> list[dict]:
    """The same runs in PyTorch eager, fed by jaxscale's data pipeline."""
    import torch

    import torch_models as tm
    rows, cache = [], {}
    for spec in expand(raw):
        config = spec.config
        cfg, train, seq_len = config.model, config.train, config.data.seq_len
        data = prepare_data(config, cache)
        start = time.perf_counter()
        budget = plan_budget(len(data.splits["train"]), seq_len, train.batch_size, train.tokens)
        torch.manual_seed(train.seed)
        model = tm.build_model(cfg, data.vocab_size, seq_len)
        opt = tm.optimizer(model, train)
        batches = train_iterator(train_dataset(data.splits["train"], seq_len, train.batch_size, budget.steps, train.seed))
        held_out = eval_batches(data.splits["valid"], seq_len, train.batch_size, train.eval_tokens)
        step_times = []
        for step in range(budget.steps):
            batch = torch.from_numpy(np.asarray(next(batches))).long()
            t0 = time.perf_counter()
            tm.train_step(model, model, opt, batch, step, train, budget.steps)
            step_times.append(time.perf_counter() - t0)
        with torch.no_grad():
            eval_loss = float(np.mean([model(b[:, :-1], b[:, 1:]).item()
                                       for b in (torch.from_numpy(np.asarray(x)).long() for x in held_out)]))
        wall = time.perf_counter() - start
        rows.append({"framework": "torch_eager", "run_id": spec.run_id, "model": cfg.label, "tokens": budget.tokens,
                     "steps": budget.steps, "wall_s": round(wall, 3), "step_s_median": statistics.median(step_times),
                     "setup_s": 0.0, "eval_loss": eval_loss})
        log(f"torch eager {spec.run_id}: {budget.steps} steps, {wall:.1f} s")
    return rows


def extrapolate(rows: list[dict], full_raw: dict, data_s: float) -> dict:
    """Estimated wall time of every run of full_raw, per framework, from the measured subset."""
    full = [(spec.config.model.label, plan_budget_steps(spec)) for spec in expand(full_raw)]
    out = {}
    for fw in sorted({r["framework"] for r in rows}):
        mine = [r for r in rows if r["framework"] == fw]
        by_model = defaultdict(list)
        for r in mine:
            by_model[r["model"]].append(r)
        total, missing = data_s, []
        for label, steps in full:
            runs = by_model.get(label)
            if not runs:
                missing.append(label)
                continue
            longest = max(runs, key=lambda r: r["steps"])
            step_s = longest["step_s_median"]
            overhead = statistics.mean(max(0.0, r["wall_s"] - r["setup_s"] - r["steps"] * step_s) for r in runs)
            total += steps * step_s + overhead
        total += sum(max(r["setup_s"] for r in runs) for runs in by_model.values())
        out[fw] = {"estimated_s": total, "missing_models": sorted(set(missing)),
                   "measured_runs": len(mine), "measured_wall_s": sum(r["wall_s"] for r in mine)}
    return out


def plan_budget_steps(spec) -> int:
    train, seq_len = spec.config.train, spec.config.data.seq_len
    return int(train.tokens) // (train.batch_size * seq_len)


def main(argv=None) -> int:
    hostmem.retain_freed_memory()  # as jaxscale.train does; PyTorch, in the same process, gets it too
    xla_cpu.prefer_wide_vectors()  # as jaxscale.train does (XLA's code generation; PyTorch is unaffected)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny_grid.toml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (default: the enwiki sample and GPT-2 tokenizer in ../shared)")
    parser.add_argument("--tokens", default="5e3,5e4", help="budgets of the measured subset (comma-separated)")
    parser.add_argument("--models", default="", help="model labels of the subset (default: all)")
    parser.add_argument("--frameworks", default="jax,torch_eager")
    parser.add_argument("--full", action="store_true", help="run the whole grid (PyTorch eager: over an hour)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    overrides = args.set or [s for s in DEFAULT_SET]
    full_raw = load_raw(args.config, overrides)
    raw = full_raw if args.full else subset(full_raw, [float(t) for t in args.tokens.split(",")],
                                            args.models.split(",") if args.models else None)
    start = time.perf_counter()
    cache: dict = {}
    for spec in expand(raw)[:1]:
        prepare_data(spec.config, cache)
    data_s = time.perf_counter() - start
    log(f"data ready in {data_s:.1f} s; {len(expand(raw))} runs per framework "
        f"({'the full grid' if args.full else 'subset'}); load average {os.getloadavg()[0]:.2f}")

    rows = []
    for fw in args.frameworks.split(","):
        rows += run_jax(raw, log) if fw == "jax" else run_torch(raw, log)
    summary = extrapolate(rows, full_raw, data_s) if not args.full else {
        fw: {"measured_wall_s": sum(r["wall_s"] for r in rows if r["framework"] == fw) + data_s}
        for fw in {r["framework"] for r in rows}}
    write(Path(args.out), rows, summary, args, full_raw)
    print((Path(args.out) / "grid_time.md").read_text())
    return 0


def write(out: Path, rows, summary, args, full_raw) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grid_time.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    n_full = len(expand(full_raw))
    steps_full = sum(plan_budget_steps(s) for s in expand(full_raw))
    lines = [f"Tiny grid wall time, {n_full} runs, {steps_full:,} steps; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end.", ""]
    if args.full:
        lines += ["| framework | measured wall |", "|---|---:|"]
        lines += [f"| {fw} | {v['measured_wall_s'] / 60:.1f} min |" for fw, v in summary.items()]
    else:
        lines += [f"Measured: budgets {args.tokens} for {'all shapes' if not args.models else args.models}; "
                  "the whole grid is extrapolated from them (see benchmarks/grid_time.py).", "",
                  "| framework | measured runs | their wall | whole grid (extrapolated) |", "|---|---:|---:|---:|"]
        lines += [f"| {fw} | {v['measured_runs']} | {v['measured_wall_s']:.0f} s | {v['estimated_s'] / 60:.1f} min |"
                  for fw, v in summary.items()]
        if len(summary) == 2:
            a, b = summary.get("jax"), summary.get("torch_eager")
            if a and b:
                lines += ["", f"jaxscale is {b['estimated_s'] / a['estimated_s']:.2f}× faster on the whole grid (estimated)."]
    (out / "grid_time.md").write_text("\n".join(lines) + "\n")
    (out / "grid_time.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
