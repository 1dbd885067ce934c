"""Checkpoint cost on the train loop: time per save (the part that blocks the loop, and until the
write is complete) and the slowdown of a run that saves every k steps.

    python benchmarks/checkpoint_overhead.py [--d-model 128 --layers 4 --vocab 50257 --steps 1000 --every 500]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import grain
import jax
import numpy as np

from jaxscale.checkpoint import RunCheckpoints
from jaxscale.config import ModelConfig, TrainConfig
from jaxscale.models import build_model, count_params
from jaxscale.step import compiled_steps, init_state, step_key


def run(steps, every, model, train, batch, directory: Path | None):
    state = init_state(model, train, steps, batch.shape[1] - 1, jax.random.key(0))
    step_fn = compiled_steps(model, step_key(train))[0]
    iterator = iter(grain.MapDataset.range(steps).to_iter_dataset())
    checkpoints = RunCheckpoints(directory, keep=2) if directory else None
    blocking = []
    start = time.perf_counter()
    for step in range(steps):
        next(iterator)
        state, metrics = step_fn(state, batch)
        float(metrics["loss"])
        if checkpoints and every and (step + 1) % every == 0 and step + 1 < steps:
            t0 = time.perf_counter()
            checkpoints.save(step + 1, state, iterator, {"records": [{"step": i} for i in range(step + 1)]})
            blocking.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    if checkpoints:
        checkpoints.close()
    return elapsed, blocking


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, nargs="+", default=[50, 20])
    parser.add_argument("--default-every", type=int, default=500, help="the config default, for the implied slowdown")
    args = parser.parse_args()
    cfg = ModelConfig(d_model=args.d_model, d_mlp=4 * args.d_model, n_layers=args.layers)
    train = TrainConfig()
    model = build_model(cfg, args.vocab, 64)
    batch = np.random.default_rng(0).integers(0, args.vocab, (16, 65), dtype=np.int32)
    n_params = count_params(cfg, args.vocab, 64)[0]
    run(20, 0, model, train, batch, None)  # compile

    # a save alone, waited for: what one checkpoint costs end to end
    tmp = Path(tempfile.mkdtemp())
    state = init_state(model, train, 10, 64, jax.random.key(0))
    iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
    checkpoints = RunCheckpoints(tmp / "one", keep=2)
    full = []
    for i in range(5):
        t0 = time.perf_counter()
        checkpoints.save(i + 1, state, iterator, {"records": []}, wait=True)
        full.append(time.perf_counter() - t0)
    checkpoints.close()

    lines = [f"model d{args.d_model}-l{args.layers}, vocab {args.vocab}: {n_params:,} parameters "
             f"({3 * n_params * 4 / 1e6:.0f} MB of state with Adam's moments), batch 16 x 64, {args.steps} steps",
             f"- one save, waited until written: median {np.median(full) * 1e3:.0f} ms (min {min(full) * 1e3:.0f}, max {max(full) * 1e3:.0f})"]
    base = [run(args.steps, 0, model, train, batch, None)[0] for _ in range(2)]
    lines.append(f"- no checkpoints: {min(base):.2f} s ({min(base) / args.steps * 1e3:.1f} ms/step; runs {', '.join(f'{b:.2f}' for b in base)})")
    for every in args.every:
        times, blocks = [], []
        for _ in range(2):
            shutil.rmtree(tmp / "run", ignore_errors=True)
            elapsed, blocking = run(args.steps, every, model, train, batch, tmp / "run")
            times.append(elapsed)
            blocks += blocking
        lines.append(f"- every {every} steps: {min(times):.2f} s, {100 * (min(times) / min(base) - 1):+.1f}% "
                     f"({len(blocks) // 2} saves per run, loop blocked {np.median(blocks) * 1e3:.0f} ms per save)")
    per_save = (min(times) - min(base)) / max(1, len(blocks) // 2)
    step_s = min(base) / args.steps
    lines.append(f"- implied at the default interval ({args.default_every} steps): "
                 f"{100 * per_save / (args.default_every * step_s):+.2f}% "
                 f"({per_save * 1e3:.0f} ms of loop time per save over {args.default_every} steps of {step_s * 1e3:.1f} ms)")
    shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
