"""Does the energy sampler slow training? Median step time with no sampler vs the sampler at 100 Hz.

A jitted step of a few matmuls (~20-50 ms on a 2-core CPU) runs with block_until_ready and, where a
sampler is on, sampler.mark() each step — as the train loop does. Conditions alternate in rotating
order block by block, so drift in the machine's load falls on all of them alike.

    python benchmarks/sampler_overhead.py [--n 1024] [--block 2] [--blocks 300] [--hz 100]

Conditions: "off" (no sampler); "off again" (the same: an A/A control that shows the noise);
"none meter" (a Sampler over the unavailable meter: marks, no thread); "nvml 10 Hz (default)" and
"nvml 100 Hz" (a Sampler at 10 Hz and at --hz over the scripted NVML stand-in, so the thread really
reads "a GPU" with counter, instant and average power through the real meter code).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxscale.energy import NoMeter, Sampler, open_meter
from jaxscale.testing.scripted_nvml import ScriptedGPU, ScriptedNVML, sine


@jax.jit
def train_like_step(a, b):
    h = jnp.tanh(a @ b)
    return jnp.tanh(h @ b.T) @ b


def run_steps(a, b, steps: int, sampler: Sampler | None) -> tuple[list[float], list[float]]:
    """Step times (s) including block_until_ready and mark, and mark times alone."""
    step_s, mark_s = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_like_step(a, b).block_until_ready()
        if sampler is not None:
            t1 = time.perf_counter()
            sampler.mark()
            mark_s.append(time.perf_counter() - t1)
        step_s.append(time.perf_counter() - t0)
    return step_s, mark_s


def sampler_cpu_ms_per_s(meter, hz: float, seconds: float = 3.0) -> float:
    """CPU time the sampler thread costs per second of wall time, measured while the main thread sleeps."""
    def cpu_per_s(sampler):
        c0, t0 = time.process_time(), time.perf_counter()
        if sampler is None:
            time.sleep(seconds)
        else:
            with sampler:
                time.sleep(seconds)
        return (time.process_time() - c0) / (time.perf_counter() - t0)
    return 1e3 * (cpu_per_s(Sampler(meter, hz=hz)) - cpu_per_s(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="matrix side")
    parser.add_argument("--block", type=int, default=2, help="steps per condition before switching")
    parser.add_argument("--blocks", type=int, default=300, help="blocks per condition")
    parser.add_argument("--hz", type=float, default=100.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampler_overhead.md"))
    args = parser.parse_args()

    a = jax.random.normal(jax.random.key(0), (args.n, args.n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (args.n, args.n), jnp.float32) / args.n**0.5
    run_steps(a, b, 10, None)  # compile and warm up

    nvml = ScriptedNVML([ScriptedGPU(sine(250.0, 100.0, hz=2.0))])
    nvml_name = f"nvml {args.hz:g} Hz"
    # "off again" is an A/A control: its change against "off" is the noise floor of this measurement.
    nvml_meter = open_meter("nvml", nvml=nvml)
    meters = {"off": None, "off again": None, "none meter": NoMeter("benchmark"),
              "nvml 10 Hz (default)": nvml_meter, nvml_name: nvml_meter}
    rates = {"none meter": 10.0, "nvml 10 Hz (default)": 10.0, nvml_name: args.hz}
    names = list(meters)
    steps: dict[str, list[float]] = {k: [] for k in names}
    marks: dict[str, list[float]] = {k: [] for k in names}
    block_medians: dict[str, list[float]] = {k: [] for k in names}
    achieved_hz = []
    started = time.perf_counter()
    for r in range(args.blocks):
        k = r % len(names)
        for name in names[k:] + names[:k]:  # rotate the order so drift falls on all alike
            meter = meters[name]
            if meter is None:
                s, m = run_steps(a, b, args.block, None)
            else:
                with Sampler(meter, hz=rates[name]) as sampler:
                    s, m = run_steps(a, b, args.block, sampler)
                if name == nvml_name:
                    achieved_hz.append(sampler.summary.sample_hz)
            steps[name] += s
            marks[name] += m
            block_medians[name].append(statistics.median(s))
    wall = time.perf_counter() - started
    thread_cpu_ms = sampler_cpu_ms_per_s(nvml_meter, args.hz)

    base = statistics.median(steps["off"])
    lines = [
        "# Sampler overhead on the median train step",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/sampler_overhead.py` "
        f"on {platform.machine()} ({jax.devices()[0].platform}, jax {jax.__version__}), a 2-core machine "
        f"shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end). Step: jitted "
        f"`tanh(tanh(a@b)@b.T)@b`, {args.n}x{args.n} float32, + block_until_ready (+ mark where a sampler is on). "
        f"{args.blocks} blocks x {args.block} steps per condition, conditions alternating block by block "
        f"in rotating order; {wall:.0f} s in all.",
        "",
        "| condition | steps | median step (ms) | change vs off | paired change (median over rounds of block ratios) "
        "| p10 step (ms) | median mark() (µs) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        med = statistics.median(steps[name])
        paired = statistics.median(x / y - 1 for x, y in zip(block_medians[name], block_medians["off"]))
        p10 = statistics.quantiles(steps[name], n=10)[0]
        mark = f"{statistics.median(marks[name]) * 1e6:.0f}" if marks[name] else "—"
        lines.append(f"| {name} | {len(steps[name])} | {med * 1e3:.2f} | {100 * (med / base - 1):+.2f}% | "
                     f"{100 * paired:+.2f}% | {p10 * 1e3:.2f} | {mark} |")
    change = {k: statistics.median(steps[k]) / base - 1 for k in names}
    lines += [
        "",
        f"Sampler thread rate achieved (asked {args.hz:g} Hz): median {statistics.median(achieved_hz):.1f} Hz, "
        f"lowest {min(achieved_hz):.1f} Hz over the {len(achieved_hz)} sampled blocks. "
        f"The sampler thread at {args.hz:g} Hz costs {thread_cpu_ms:.2f} ms of CPU per second "
        f"({thread_cpu_ms / 10:.2f}% of one core; process CPU time with the main thread asleep, "
        f"sampler on minus off).",
        f"Change in median step time with the sampler at {args.hz:g} Hz: {100 * change[nvml_name]:+.2f}% "
        f"(criterion: < 2%): {'met' if abs(change[nvml_name]) < 0.02 else 'NOT met'}. Noise floor of this run: "
        f"the A/A control moved {100 * change['off again']:+.2f}%, the none meter (no thread, a few-µs "
        f"mark) {100 * change['none meter']:+.2f}%.",
        "",
        "The scripted NVML stand-in answers in microseconds from Python; real NVML calls take from about a "
        "microsecond (power) to milliseconds (the energy counter on some boards), mostly in the sampler "
        "thread, except the one synchronous reading each mark() takes.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    nvml_meter.close()


if __name__ == "__main__":
    main()
