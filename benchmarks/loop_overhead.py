"""How much of the device's time the training loop wastes: `python benchmarks/loop_overhead.py`.

On a model whose step takes about a millisecond, the real loop (`python -m jaxscale.train`: the Grain
batch, its placement, the metrics line, the progress line, the energy mark) is timed against a bare chain
of the same compiled step with no host work between the calls. The loop's own rate comes from two runs of
different lengths in one process (their fixed costs, start-up and evaluation, cancel in the difference);
rounds alternate with the bare chain, medians are reported. The last line is JSON:
{"loop_efficiency": loop steps/s / bare steps/s, ...}.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxscale import runtime  # noqa: E402

CONFIG = """
name = "loop_overhead"
[data]
seq_len = {seq_len}
[tokenizer]
vocab_size = 512
[model]
d_model = {d_model}
d_mlp = {d_mlp}
n_layers = 1
[train]
batch_size = {batch}
tokens = {tokens}
lr = 3e-3
eval_tokens = 2048
[checkpoint]
every = 0
[energy]
meter = "{meter}"
"""


def write_config(directory: Path, args, steps: int) -> Path:
    path = directory / f"loop_{steps}.toml"
    path.write_text(CONFIG.format(seq_len=args.seq_len, d_model=args.d_model, d_mlp=4 * args.d_model,
                                  batch=args.batch, tokens=steps * args.batch * args.seq_len, meter=args.meter))
    return path


def loop_seconds(directory: Path, args, steps: int, tag: str) -> float:
    from jaxscale.train import main
    start = time.perf_counter()
    code = main(["--config", str(write_config(directory, args, steps)), "--out", str(directory / f"out-{tag}"),
                 "--quiet"])
    if code != 0:
        raise SystemExit(f"jaxscale.train exited {code}")
    return time.perf_counter() - start


def bare_chain(directory: Path, args):
    """The compiled step of the same run, chained `args.steps` times on one placed batch: steps per second."""
    import jax
    import numpy as np

    from jaxscale.config import expand, load_raw
    from jaxscale.models import build_model
    from jaxscale.step import compiled_steps, init_state, step_key

    spec = expand(load_raw(write_config(directory, args, args.steps)))[0]
    config = runtime.resolve(spec.config, runtime.hardware(jax.devices()[:1]), 512)
    model = build_model(config.model, 512, args.seq_len)
    state = init_state(model, config.train, args.steps, args.seq_len, jax.random.key(0))
    batch = jax.device_put(np.random.default_rng(0).integers(0, 512, (args.batch, args.seq_len + 1), np.int32))
    step = compiled_steps(model, step_key(config.train))[0].lower(state, batch).compile()

    def run(n: int) -> float:
        nonlocal state
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(n):
            state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        return time.perf_counter() - start

    run(50)  # warm
    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps the long run has over the short one")
    parser.add_argument("--short", type=int, default=100, help="steps of the short run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--meter", default="auto", choices=("auto", "nvml", "rapl", "none"),
                        help="energy.meter of the loop (auto: as users run it; none: no energy mark a step)")
    args = parser.parse_args(argv)
    runtime.start()
    import jax

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        bare = bare_chain(directory, args)
        loop_seconds(directory, args, args.short, "warm")  # compiles the step and the evaluation once
        loop_rates, bare_rates = [], []
        for r in range(args.rounds):
            bare_rates.append(args.steps / bare(args.steps))
            short = loop_seconds(directory, args, args.short, f"s{r}")
            long = loop_seconds(directory, args, args.short + args.steps, f"l{r}")
            loop_rates.append(args.steps / (long - short))
            print(f"round {r}: bare {bare_rates[-1]:.0f} steps/s, loop {loop_rates[-1]:.0f} steps/s", file=sys.stderr)
    loop, bare_rate = statistics.median(loop_rates), statistics.median(bare_rates)
    result = {"loop_efficiency": round(loop / bare_rate, 3), "loop_steps_per_s": round(loop, 1),
              "bare_steps_per_s": round(bare_rate, 1), "bare_step_ms": round(1e3 / bare_rate, 3),
              "rounds": {"loop": [round(x, 1) for x in loop_rates], "bare": [round(x, 1) for x in bare_rates]},
              "meter": args.meter,
              "backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "machine": platform.processor()
              or platform.machine(), "model": f"d{args.d_model}-l1, batch {args.batch} x {args.seq_len}, vocab 512",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
