"""GPU acceptance check: one command, under 8 minutes on one H100/H200, downloading nothing.

    python3 benchmarks/gpu_check.py [--out DIR] [--budget-s 450] [--sections tinyllama,attention,energy,tiny_grid]
    python3 benchmarks/gpu_check.py --toy [--out DIR]   # CPU, toy sizes, ~40 s of CPU (tests/test_gpu_check.py)

Writes benchmarks/results/gpu/<gpu name>.md and .json (e.g. nvidia-h200.md): date (UTC), machine, command,
software versions, every figure, and each target met or not. Sections run in this order, each on its own (one
that fails is recorded with its error and the others still run), each skipped if the time budget left is
under its estimate:

- tinyllama (b): the real jaxscale train step (jaxscale.step) of TinyLlama-1.1B (configs/tinyllama_tokens.toml,
  bfloat16, batch 8 x 2048, random tokens from a 32,000 vocabulary: no tokenizer). Compile seconds, median step
  seconds over --steps steps after warm-up (each timed until the new state and metrics are ready), MFU =
  flops_per_token x tokens per step / step time / NVIDIA's published dense bfloat16 peak, peak device memory
  (memory_stats()["peak_bytes_in_use"]) against the plan: XLA's memory_analysis() of the same compiled step
  (arguments + outputs - aliased + temporaries). If batch 8 runs out of memory, it runs again with model.remat
  = true and says so. Target: MFU >= 55%. Runs first, so that the peak memory is this step's. Then, while the
  budget allows, the same step with model.remat = "dots" (step time and XLA's plan: is recomputing the
  elementwise work faster than keeping it?).
- attention (a): jax.nn.dot_product_attention, implementation "cudnn" vs "xla", at TinyLlama's shapes (batch 8,
  2048 positions, 32 query heads / 4 KV heads, head_dim 64, bfloat16, causal): forward and forward+backward
  time, XLA's temporary memory of each compiled program, and the largest absolute difference of the output and
  of the three gradients between the two, and of each against XLA in true float32 (not TF32). A program that does not
  fit (or a cuDNN that refuses the shape) is recorded, not raised.
- energy (c): a short real run of the tiny grid's largest shape (d128-l4, batch 16 x 64, GPT-2 vocabulary)
  under jaxscale.energy's Sampler over the real NVML meter, windows compile / steps / eval: per window the
  energy from NVML's counter against the trapezoid integral of the sampled power (the sampler's own
  integrator, fed the same readings), and the sampler's overhead: median step time with and without it
  (alternating blocks), mark()'s time and one NVML reading's time. Without NVML it says "unavailable" and why.
- tiny_grid (d): the tiny grid's 7 shapes (configs/tiny_grid.toml), steps/s of jaxscale against PyTorch eager
  and torch.compile on the same GPU, timed by benchmarks/step_time.py's bench_shape (interleaved rounds,
  median). PyTorch's float32 matmuls run as TF32 (torch.set_float32_matmul_precision("high")), as XLA's do by
  default on these GPUs. Target: jaxscale >= 2x PyTorch eager at every shape.
- loop (issue 16, item 4): benchmarks/loop_overhead.py on this GPU: the real training loop (python -m
  jaxscale.train on a d16-l1 model whose step takes about a millisecond) against a bare chain of its compiled
  step. Target: loop_efficiency >= 0.90; below it (budget allowing) the loop runs again with energy.meter =
  "none", to tell the per-step NVML reading apart from the rest. Needs grain and orbax (jaxscale.train's data
  and checkpoints): without them the section says "unavailable" and which is missing (bring grain's wheels as
  below).

Memory: JAX preallocates 75% of the GPU (XLA_PYTHON_CLIENT_MEM_FRACTION, left as it is); PyTorch, which runs
last, gets the rest, ample for the tiny shapes.

The check needs jax (with its CUDA plugin), flax, optax, numpy, scipy, nvidia-ml-py and torch (a CUDA build), and
not grain, orbax, tokenizers or sentencepiece (it imports nothing from jaxscale.data or jaxscale.checkpoint; the
test runs it with those hidden). A GPU machine that cannot download but has those (e.g. this workplace's H200
image: Python 3.12, jax 0.11 with jax-cuda13-plugin, torch 2.11+cu130) runs it as it is. To run jaxscale.train
there too (the loop section), bring the wheels of grain and tokenizers, made on a machine with the internet (7.6 MB;
jaxscale.train needs nothing else beyond what the check needs: safetensors, sentencepiece and matplotlib load only
for Hugging Face checkpoints, .model tokenizers and the sweep report; without matplotlib the report is not written,
with a warning):

    bash tools/gpu_wheels.sh .whl 3.12     # .whl/ is git-ignored: carry it to the GPU machine

(grain's own needs — `unzip -p .whl/grain-*.whl '*/METADATA' | grep ^Requires-Dist` — are absl-py,
array-record, cloudpickle, etils[epath,epy], numpy, portpicker and protobuf; array-record needs absl-py and
etils[epath], portpicker psutil: only array-record and portpicker are missing there. tokenizers needs
huggingface-hub only to download, which nothing here does.) Then, on the GPU machine, in the repository root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python3 benchmarks/gpu_check.py

and commit benchmarks/results/gpu/. Missing packages and versions are listed in the report's header.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import step_time  # noqa: E402
from jaxscale import runtime  # noqa: E402
from jaxscale.config import Config, DataConfig, expand, load_raw  # noqa: E402
from jaxscale.energy import Device, Sampler, open_meter  # noqa: E402
from jaxscale.energy.meters import gpus_of  # noqa: E402
from jaxscale.models import build_model, count_params, flops_per_token  # noqa: E402
from jaxscale.step import compiled_steps, init_state, step_key  # noqa: E402

MFU_TARGET = 0.55
EAGER_TARGET = 2.0
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "torch", "nvidia-ml-py", "grain",
            "tokenizers", "sentencepiece")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything the full run and the toy run differ in."""
    attention: tuple[int, int, int, int, int] = (8, 2048, 32, 4, 64)  # batch, positions, heads, KV heads, head_dim
    attention_reps: int = 20
    llama_set: tuple[str, ...] = ()  # overrides of configs/tinyllama_tokens.toml
    llama_steps: int = 20
    llama_warmup: int = 3
    llama_variants: tuple[str, ...] = ("dots",)  # model.remat policies timed too, after the config's own
    grid_set: tuple[str, ...] = ()  # overrides of configs/tiny_grid.toml
    grid_vocab: int = 50257
    grid_models: tuple[str, ...] = ()  # all
    grid_passes: tuple[tuple[str, float], ...] = (("torch_eager", 10), ("torch_compile", 45))  # (framework,
    # seconds its first shape is expected to take)
    grid_steps: int = 24
    grid_rounds: int = 3
    grid_warmup: int = 3
    energy_model: str = "d128-l4"  # a tiny-grid shape (the largest)
    energy_hz: float = 10.0  # energy.hz's default: what runs use
    energy_steps_s: float = 10.0
    energy_eval_s: float = 3.0
    overhead_blocks: int = 20
    overhead_block_steps: int = 25
    peak_n: int = 4096  # matmul side for a measured peak (where no published one applies)
    loop_args: tuple[str, ...] = ()  # benchmarks/loop_overhead.py's own defaults
    budget_s: float = 450.0
    estimates_s: tuple[tuple[str, float], ...] = (("tinyllama", 150), ("attention", 40), ("energy", 45),
                                                  ("tiny_grid", 60), ("loop", 45))


FULL = Sizes()
TOY = Sizes(
    attention=(1, 128, 4, 2, 16), attention_reps=3,
    llama_set=("model.n_layers=1", "model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.d_mlp=128",
               "data.seq_len=64", "train.batch_size=2", "tokenizer.vocab_size=512"),
    llama_steps=3, llama_warmup=1,
    grid_vocab=512, grid_models=("d16-l1",), grid_passes=(("torch_eager", 2),),
    grid_steps=4, grid_rounds=2, grid_warmup=1,
    energy_model="d16-l1", energy_steps_s=1.0, energy_eval_s=0.3, overhead_blocks=3, overhead_block_steps=5,
    loop_args=("--steps", "40", "--short", "10", "--rounds", "1"),
    peak_n=512, budget_s=600.0,  # generous: a slow, shared CI machine must not skip a toy section
    estimates_s=(("tinyllama", 10), ("attention", 5), ("energy", 5), ("tiny_grid", 10), ("loop", 10)))
SECTIONS = ("tinyllama", "attention", "energy", "tiny_grid", "loop")
LOOP_TARGET = 0.90


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def median_s(fn, *args, reps: int, warmup: int = 2) -> float:
    """Median seconds of fn(*args) with its outputs ready, after warm-up calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def is_oom(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}"
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OutOfMemory"))


def short(err: BaseException) -> str:
    lines = str(err).strip().splitlines() or [""]
    return f"{type(err).__name__}: {lines[0][:300]}"


def memory(compiled) -> dict:
    """XLA's plan for a compiled program (bytes); planned_bytes is what it holds at once at most."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    out["planned_bytes"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def device_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def random_batches(vocab: int, batch: int, seq_len: int, n: int = 2) -> list[jax.Array]:
    rng = np.random.default_rng(0)
    return [jax.device_put(rng.integers(0, vocab, (batch, seq_len + 1), dtype=np.int32)) for _ in range(n)]


def compiled_run(model_cfg, train, seq_len: int, vocab: int, batch, with_eval: bool = False) -> tuple:
    """(state, compiled train step, compiled eval step or None, compile seconds) for jaxscale's own steps, every
    `auto` resolved for the device as jaxscale.train resolves it."""
    config = runtime.resolve(Config(data=DataConfig(seq_len=seq_len), model=model_cfg, train=train),
                             runtime.hardware(jax.devices()[:1]), vocab)
    model_cfg, train = config.model, config.train
    model = build_model(model_cfg, vocab, seq_len)
    state = init_state(model, train, 10_000, seq_len, jax.random.key(0))
    jax.block_until_ready(state)
    step, evaluate = compiled_steps(model, step_key(train))
    t0 = time.perf_counter()
    step_c = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    eval_c = evaluate.lower(state.params, batch).compile() if with_eval else None
    return state, step_c, eval_c, compile_s


# --- (b) TinyLlama-1.1B ---------------------------------------------------------------------------------------


def tinyllama(sz: Sizes, budget: Budget) -> dict:
    cfg = expand(load_raw(ROOT / "configs" / "tinyllama_tokens.toml", list(sz.llama_set)))[0].config
    vocab, seq_len, batch = cfg.tokenizer.vocab_size, cfg.data.seq_len, cfg.train.batch_size
    cfg = runtime.resolve(cfg, runtime.hardware(jax.devices()[:1]), vocab)  # every auto, as jaxscale.train does
    m = cfg.model
    out = {"model": m.name, "n_layers": m.n_layers, "d_model": m.d_model, "n_heads": m.n_heads,
           "n_kv_heads": m.n_kv_heads, "d_mlp": m.d_mlp, "dtype": m.dtype, "batch": batch, "seq_len": seq_len,
           "vocab": vocab, "n_params": count_params(m, vocab, seq_len)[0],
           "flops_per_token": flops_per_token(m, vocab, seq_len), "tokens_per_step": batch * seq_len}
    for remat in dict.fromkeys((m.remat, "full")):
        try:
            out |= time_train_step(dataclasses.replace(m, remat=remat), cfg.train, seq_len, vocab, sz)
            out["remat"] = remat
            out["attention"], out["loss"] = m.attention, cfg.train.loss
            break
        except Exception as err:  # noqa: BLE001
            if remat == "full" or not is_oom(err):
                raise
            out["without_remat"] = f"out of memory ({short(err)}); ran again with model.remat = full"
            log(f"  {out['without_remat']}")
    out["remat_variants"] = remat_variants(m, cfg.train, seq_len, vocab, sz, budget, out)
    peak, source, published = peak_flops("bfloat16", sz)
    out |= {"peak_flops": peak, "peak_source": source, "peak_published": published,
            "model_flops_per_s": out["flops_per_token"] * out["tokens_per_step"] / out["step_s"]}
    out["mfu"] = out["model_flops_per_s"] / peak
    planned = out["memory_plan"].get("planned_bytes")
    out["peak_over_planned"] = out["peak_bytes"] / planned if out["peak_bytes"] and planned else None
    return out


def remat_variants(m, train, seq_len: int, vocab: int, sz: Sizes, budget: Budget, measured: dict) -> list[dict]:
    """The same step under the other remat policies of sz.llama_variants (e.g. is "dots" faster than "none"?),
    while the budget keeps room for the later sections; after the main figures, so its peak memory is theirs."""
    later = sum(s for name, s in sz.estimates_s if name != "tinyllama")
    rows = []
    for remat in (r for r in sz.llama_variants if r != measured["remat"]):
        if budget.left() < later + 1.5 * (measured["compile_s"] + measured["step_s"] * (sz.llama_steps + 3)):
            rows.append({"remat": remat, "status": "skipped", "reason": f"time budget ({budget.left():.0f} s left)"})
            continue
        try:
            x = time_train_step(dataclasses.replace(m, remat=remat), train, seq_len, vocab, sz)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: recorded, the section's figures stand
            rows.append({"remat": remat, "status": "error", "error": short(err)})
            continue
        log(f"  remat {remat}: {1e3 * x['step_s']:.1f} ms a step")
        rows.append({"remat": remat, "status": "ok", "compile_s": x["compile_s"], "step_s": x["step_s"],
                     "planned_bytes": x["memory_plan"].get("planned_bytes"), "loss_last": x["loss_last"],
                     "step_over_measured": x["step_s"] / measured["step_s"]})
    return rows


def time_train_step(model_cfg, train, seq_len: int, vocab: int, sz: Sizes) -> dict:
    batches = random_batches(vocab, train.batch_size, seq_len)
    state, step, _, compile_s = compiled_run(model_cfg, train, seq_len, vocab, batches[0])
    log(f"  compiled in {compile_s:.1f} s")
    times, losses = [], []
    for i in range(sz.llama_warmup + sz.llama_steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
        losses.append(float(metrics["loss"]))
    timed = times[sz.llama_warmup:]
    return {"compile_s": compile_s, "step_s": statistics.median(timed), "step_s_min": min(timed),
            "step_s_max": max(timed), "steps_timed": len(timed), "warmup_steps": sz.llama_warmup,
            "first_step_s": times[0], "loss_first": losses[0], "loss_last": losses[-1],
            "loss_finite": all(math.isfinite(x) for x in losses),
            "memory_plan": memory(step), "peak_bytes": device_peak_bytes()}


def peak_flops(dtype: str, sz: Sizes) -> tuple[float, str, bool]:
    """(FLOP/s, its source, whether published): NVIDIA's dense peak for this GPU, else the best matmul measured here."""
    kind = jax.devices()[0].device_kind
    published = step_time.published_peak(kind, dtype)
    if published:
        return published[0] * 1e9, published[1], True
    measured = step_time.measure_peak(dtype, n=sz.peak_n)
    source = f"no published peak for {kind}: best {sz.peak_n}^3 {dtype} matmul measured here ({', '.join(measured)})"
    return max(measured.values()) * 1e9, source, False


# --- (a) cuDNN vs XLA attention ---------------------------------------------------------------------------------


def attention(sz: Sizes, budget: Budget) -> dict:
    b, t, n, k, h = sz.attention
    keys = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(keys[0], (b, t, n, h), jnp.bfloat16)
    kv = [jax.random.normal(key, (b, t, k, h), jnp.bfloat16) for key in keys[1:3]]
    dout = jax.random.normal(keys[3], (b, t, n, h), jnp.bfloat16)
    args = (q, *kv)
    out = {"batch": b, "seq_len": t, "heads": n, "kv_heads": k, "head_dim": h, "dtype": "bfloat16", "causal": True,
           "forward_flops": 2 * b * n * t * t * h}  # QK^T and AV, 2 b n t^2 h each, halved by the mask
    results = {}
    for impl in ("xla", "cudnn"):
        if impl == "cudnn" and not on_gpu():
            out[impl] = {"status": "unavailable", "reason": f"cuDNN needs an NVIDIA GPU; this runs on {jax.default_backend()}"}
            continue
        out[impl], values = attention_impl(impl, args, dout, sz.attention_reps)
        if values is not None:
            results[impl] = values
    try:
        with jax.default_matmul_precision("highest"):  # true float32, not TF32 (XLA's default on these GPUs)
            reference = attention_programs("xla")[1](*(x.astype(jnp.float32) for x in args), dout.astype(jnp.float32))
    except Exception as err:  # noqa: BLE001
        reference = None
        out["reference"] = f"float32 reference failed: {short(err)}"
    for impl, res in results.items():
        if reference is not None:
            out[impl]["max_abs_diff_vs_float32"] = differences(res, reference)
    if len(results) == 2:
        out["max_abs_diff_cudnn_vs_xla"] = differences(results["cudnn"], results["xla"])
    return out


def attention_programs(impl: str):
    def forward(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)

    def forward_backward(q, k, v, dout):
        o, vjp = jax.vjp(forward, q, k, v)
        return (o, *vjp(dout.astype(o.dtype)))

    return jax.jit(forward), jax.jit(forward_backward)


def attention_impl(impl: str, args, dout, reps: int) -> tuple[dict, tuple | None]:
    """Timings and temporary memory of one implementation; its (output, dq, dk, dv) for comparison."""
    forward, forward_backward = attention_programs(impl)
    res: dict = {}
    values = None
    for name, fn, fn_args in (("forward", forward, args), ("forward_backward", forward_backward, (*args, dout))):
        try:
            compiled = fn.lower(*fn_args).compile()
            res[f"{name}_temp_bytes"] = memory(compiled).get("temp")
            res[f"{name}_s"] = median_s(compiled, *fn_args, reps=reps)
            if name == "forward_backward":
                values = compiled(*fn_args)
        except Exception as err:  # noqa: BLE001: does not fit, or cuDNN refuses the shape
            res[f"{name}_error"] = ("does not fit: " if is_oom(err) else "") + short(err)
            log(f"  {impl} {name}: {res[f'{name}_error']}")
    res["status"] = "ok" if values is not None and "forward_s" in res else "error"
    return res, values


def differences(a, b) -> dict:
    names = ("output", "dq", "dk", "dv")
    return {name: float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))) for name, x, y in zip(names, a, b)}


# --- (c) energy with real NVML ----------------------------------------------------------------------------------


class PowerView:
    """The meter as the sampler's integrator sees it with the counter hidden (so window energies are the
    trapezoid of sampled power), while every boundary reading's counters are kept for comparison."""

    def __init__(self, meter):
        self.meter, self.kind, self.reason = meter, meter.kind, meter.reason
        self.devices = tuple(Device(d.name, tuple(s for s in d.supports if s != "counter")) for d in meter.devices)
        self.boundaries: list[list[float | None]] = []  # counters (J) per device, one list per boundary reading

    @property
    def errors(self) -> int:
        return getattr(self.meter, "errors", 0)

    def read(self, counters: bool = True):
        readings = self.meter.read(counters=counters)
        if counters:  # start, mark, window edges, stop
            self.boundaries.append([c for _, c in readings])
        return [(p, None) for p, _ in readings]

    def counter_j(self, i: int, j: int) -> float | None:
        a, b = self.boundaries[i], self.boundaries[j]
        if not a or any(x is None for x in a + b):
            return None
        return sum(y - x for x, y in zip(a, b))

    def close(self) -> None:
        pass


def energy(sz: Sizes, budget: Budget, nvml=None) -> dict:
    """nvml: a pynvml stand-in (tests); None reads the real NVML."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        device = jax.devices()[0]  # the GPU this check runs on, by PCI bus id (NVML numbers GPUs differently)
        meter = open_meter("nvml", nvml=nvml, gpus=gpus_of([device.local_hardware_id]) if device.platform == "gpu"
                           else None)
    if meter.kind == "none":
        return {"status": "unavailable", "reason": meter.reason}
    try:
        return energy_run(meter, sz) | {"meter": "scripted NVML stand-in (not a measurement)" if nvml else "nvml"}
    finally:
        meter.close()


def energy_model(sz: Sizes):
    raw = load_raw(ROOT / "configs" / "tiny_grid.toml", list(sz.grid_set))
    models, train, seq_len = step_time.shapes_of(raw)
    return next(m for m in models if m.label == sz.energy_model), train, seq_len


def energy_run(meter, sz: Sizes) -> dict:
    model_cfg, train, seq_len = energy_model(sz)
    batches = random_batches(sz.grid_vocab, train.batch_size, seq_len)
    view = PowerView(meter)
    with Sampler(view, hz=sz.energy_hz) as sampler:
        with sampler.window("compile"):
            state, step, evaluate, _ = compiled_run(model_cfg, train, seq_len, sz.grid_vocab, batches[0], with_eval=True)
        state, n_steps, step_ms = run_steps(state, step, batches, sz.energy_steps_s, sampler)
        with sampler.window("eval"):
            n_eval = run_evals(state, evaluate, batches, sz.energy_eval_s)
    s = sampler.summary
    # Boundary readings: 0 start, 1-2 compile, 3 .. 2+n marks, then eval's two edges, then stop.
    spans = {"compile": (1, 2), "steps": (2, 2 + n_steps), "eval": (3 + n_steps, 4 + n_steps), "run": (0, -1)}
    windows = {}
    for name, (i, j) in spans.items():
        w = s.window(name)
        integrated, duration = (s.energy_j, s.duration_s) if name == "run" else (w.energy_j, w.duration_s)
        windows[name] = energy_row(view.counter_j(i, j), integrated, duration)
    out = {"model": model_cfg.label, "batch": train.batch_size, "seq_len": seq_len, "vocab": sz.grid_vocab,
           "devices": list(s.devices), "hz": sz.energy_hz, "sample_hz": s.sample_hz, "read_errors": s.read_errors,
           "steps": n_steps, "step_ms_median": step_ms, "eval_batches": n_eval, "windows": windows}
    return out | sampler_overhead(meter, state, step, batches, sz)


def energy_row(counter_j, integrated_j, duration_s) -> dict:
    diff = (integrated_j / counter_j - 1) if counter_j and integrated_j is not None else None
    return {"duration_s": duration_s, "counter_j": counter_j, "integrated_j": integrated_j,
            "integrated_vs_counter": diff, "mean_w": counter_j / duration_s if counter_j and duration_s else None}


def run_steps(state, step, batches, seconds: float, sampler=None, count: int | None = None):
    """Train steps for `seconds` (or `count` steps), each synchronised and marked: (state, steps, median ms)."""
    times, end = [], time.perf_counter() + seconds
    while (len(times) < count) if count is not None else (time.perf_counter() < end):
        t0 = time.perf_counter()
        state, metrics = step(state, batches[len(times) % len(batches)])
        jax.block_until_ready((state, metrics))
        if sampler is not None:
            sampler.mark()
        times.append(time.perf_counter() - t0)
    return state, len(times), 1e3 * statistics.median(times)


def run_evals(state, evaluate, batches, seconds: float) -> int:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end or n == 0:
        jax.block_until_ready(evaluate(state.params, batches[n % len(batches)]))
        n += 1
    return n


def sampler_overhead(meter, state, step, batches, sz: Sizes) -> dict:
    """Median step time without and with the sampler (mark() each step), in alternating blocks."""
    times = {"off": [], "on": []}
    for block in range(sz.overhead_blocks):
        for cond in (("off", "on") if block % 2 == 0 else ("on", "off")):
            if cond == "off":
                state, _, ms = run_steps(state, step, batches, 0, count=sz.overhead_block_steps)
            else:
                with Sampler(meter, hz=sz.energy_hz) as sampler:
                    state, _, ms = run_steps(state, step, batches, 0, sampler, count=sz.overhead_block_steps)
            times[cond].append(ms)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"overhead": {"blocks": sz.overhead_blocks, "steps_per_block": sz.overhead_block_steps,
                         "step_ms_off": off, "step_ms_on": on, "change": on / off - 1,
                         "mark_us": mark_us(meter, sz.energy_hz), "read_us": read_us(meter, counters=True),
                         "read_power_only_us": read_us(meter, counters=False)}}


def mark_us(meter, hz: float, n: int = 50) -> float:
    """Median time of one Sampler.mark(): the synchronous reading each step pays."""
    times = []
    with Sampler(meter, hz=hz) as sampler:
        for _ in range(n):
            t0 = time.perf_counter()
            sampler.mark()
            times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def read_us(meter, counters: bool, n: int = 50) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        meter.read(counters=counters)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


# --- (d) tiny grid: jaxscale vs PyTorch ---------------------------------------------------------------------------


def tiny_grid(sz: Sizes, budget: Budget) -> dict:
    """Two passes over the shapes: jaxscale against eager (cheap, so every shape gets its verdict), then against
    torch.compile (seconds of compilation a shape) while the budget lasts; each pass interleaves its two."""
    raw = load_raw(ROOT / "configs" / "tiny_grid.toml", list(sz.grid_set))
    models, train, seq_len = step_time.shapes_of(raw)
    if sz.grid_models:
        models = [m for m in models if m.label in sz.grid_models]
    out = {"batch": train.batch_size, "seq_len": seq_len, "vocab": sz.grid_vocab, "dtype": models[0].dtype,
           "steps": sz.grid_steps, "rounds": sz.grid_rounds, "warmup": sz.grid_warmup} | torch_setup()
    rows = {m.label: {"model": m.label, "d_model": m.d_model, "d_mlp": m.d_mlp, "n_layers": m.n_layers} for m in models}
    for torch_fw, first_s in sz.grid_passes:
        last_s = first_s  # what the pass's next shape is expected to take
        for cfg in models:
            if budget.left() < 1.3 * last_s:
                rows[cfg.label][f"{torch_fw}_skipped"] = f"time budget ({budget.left():.0f} s left)"
                continue
            t0 = time.perf_counter()
            log(f"  {cfg.label}: jax vs {torch_fw}")
            timed = step_time.bench_shape(cfg, train, seq_len, sz.grid_vocab, ["jax", torch_fw], sz.grid_steps,
                                          sz.grid_rounds, sz.grid_warmup, lambda msg: log("  " + msg))
            rows[cfg.label] |= pass_row(timed, torch_fw, rows[cfg.label])
            last_s = time.perf_counter() - t0
    out["shapes"] = list(rows.values())
    return out


def pass_row(timed: dict, torch_fw: str, row: dict) -> dict:
    """One pass's figures for a shape; jax_ms is the first pass's (each ratio takes its own pass's jax time)."""
    def ms(f):
        x = timed.get(f"{f}_ms", float("nan"))
        return None if math.isnan(x) else x

    jax_ms, torch_ms, name = ms("jax"), ms(torch_fw), torch_fw.split("_")[1]
    out = {f"jax_ms_{name}_pass": jax_ms, f"{torch_fw}_ms": torch_ms,
           f"{torch_fw}_steps_s": 1e3 / torch_ms if torch_ms else None,
           f"speedup_vs_{name}": torch_ms / jax_ms if torch_ms and jax_ms else None}
    if "jax_ms" not in row:
        out |= {"jax_ms": jax_ms, "jax_steps_s": 1e3 / jax_ms if jax_ms else None}
    return out


def torch_setup() -> dict:
    try:
        import torch
    except ImportError:
        return {"torch": "not installed: PyTorch columns unavailable"}
    if on_gpu():
        torch.set_float32_matmul_precision("high")  # TF32, as XLA's float32 matmuls on these GPUs by default
    return {"torch": torch.__version__, "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
            "jax_default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None))}


# --- the run, the targets, the report ------------------------------------------------------------------------------


def missing_modules(names) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def loop(sz: Sizes, budget: Budget) -> dict:
    """(e) benchmarks/loop_overhead.py: the real loop's steps/s against a bare chain of its compiled step."""
    if missing := missing_modules(("grain", "orbax.checkpoint", "tokenizers")):
        names = " and ".join(filter(None, (", ".join(missing[:-1]), missing[-1])))
        return {"status": "unavailable", "reason": f"jaxscale.train needs {names}, not installed "
                                                   "here (see this script's docstring for bringing the wheels)"}
    import loop_overhead
    t0 = time.perf_counter()
    out = loop_overhead.main(list(sz.loop_args))
    # below the target: the same loop without the energy meter (no NVML reading a step), to tell the two apart
    if out["loop_efficiency"] < LOOP_TARGET and budget.left() > 1.3 * (time.perf_counter() - t0):
        out["without_meter"] = loop_overhead.main([*sz.loop_args, "--meter", "none"])
    return out


def run_sections(names, sz: Sizes, budget: Budget) -> dict:
    estimates = dict(sz.estimates_s)
    fns = {"tinyllama": tinyllama, "attention": attention, "energy": energy, "tiny_grid": tiny_grid, "loop": loop}
    results = {}
    for name in names:
        if budget.left() < estimates[name]:
            results[name] = {"status": "skipped", "reason": f"time budget: {budget.left():.0f} s left, "
                                                            f"the section is estimated at {estimates[name]:.0f} s"}
            continue
        log(f"{name} ({budget.left():.0f} s of the budget left)")
        t0 = time.perf_counter()
        try:
            res = fns[name](sz, budget)
            res.setdefault("status", "ok")
        except Exception as err:  # noqa: BLE001: one section's failure must not stop the others
            res = {"status": "error", "error": short(err), "traceback": traceback.format_exc().splitlines()[-12:]}
            log(f"  error: {res['error']}")
        res["wall_s"] = time.perf_counter() - t0
        results[name] = res
    return results


def targets(sections: dict, toy: bool) -> list[dict]:
    why_not = "toy run on a CPU: no target applies" if toy else None
    llama = sections.get("tinyllama", {})
    mfu = llama.get("mfu")
    published = llama.get("peak_published", False)
    rows = [{"target": f"TinyLlama-1.1B MFU >= {MFU_TARGET:.0%}", "value": mfu, "shown": fmt(mfu, ".1%"),
             "met": None if why_not or mfu is None or not published else mfu >= MFU_TARGET,
             "note": why_not or ("" if mfu is not None and published else
                                 llama.get("error") or llama.get("reason") or "no published peak for this GPU")}]
    grid = sections.get("tiny_grid", {})
    shapes = grid.get("shapes", [])
    speedups = [s.get("speedup_vs_eager") for s in shapes]
    measured = bool(shapes) and all(x is not None for x in speedups)
    rows.append({"target": f"jaxscale >= {EAGER_TARGET:g}x PyTorch eager on every tiny shape",
                 "value": min(speedups) if measured else None,
                 "shown": f"lowest {min(speedups):.2f}×" if measured else "—",
                 "met": None if why_not or not measured or len(shapes) < 7 else min(speedups) >= EAGER_TARGET,
                 "note": why_not or ("" if measured and len(shapes) == 7 else
                                     grid.get("error") or "not every shape was measured against PyTorch eager")})
    looped = sections.get("loop", {})
    efficiency = looped.get("loop_efficiency")
    rows.append({"target": f"training loop >= {LOOP_TARGET:.2f} of a bare step chain", "value": efficiency,
                 "shown": fmt(efficiency, ".3f"),
                 "met": None if why_not or efficiency is None else efficiency >= LOOP_TARGET,
                 "note": why_not or ("" if efficiency is not None else
                                     looped.get("error") or looped.get("reason") or "not measured")})
    return rows


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    plugins = sorted(f"{d.metadata['Name']} {d.version}" for d in importlib.metadata.distributions()
                     if re.fullmatch(r"jax[-_]cuda\d+[-_]plugin", d.metadata["Name"] or ""))
    out["jax CUDA plugin"] = ", ".join(plugins) or None
    if not on_gpu():
        return out
    try:
        from jax._src.lib import cuda_versions
        out["cudnn"] = str(cuda_versions.cudnn_get_version()) if cuda_versions else None
    except Exception:  # noqa: BLE001: private API, best effort
        pass
    return out


def machine() -> dict:
    device = jax.devices()[0]
    out = {"backend": jax.default_backend(), "device_kind": device.device_kind, "devices": jax.device_count(),
           "host_cores": os.cpu_count(), "host": platform.node()}
    stats = device.memory_stats() or {}
    out["device_memory_bytes"] = stats.get("bytes_limit")
    try:
        import pynvml
        pynvml.nvmlInit()
        out["driver"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001: no NVML here
        out["driver"] = None
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="directory for the .md and .json (default benchmarks/results/gpu; with --toy, "
                                      "a gpu_check folder in the temporary directory)")
    parser.add_argument("--toy", action="store_true", help="toy sizes (a CPU is enough: ~30 s); the report says so")
    parser.add_argument("--budget-s", type=float, help="total time budget (default 450 s, toy 120 s)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    runtime.start()  # as jaxscale.train does: compilation cache; on a CPU, glibc keeps freed memory
    sz = TOY if args.toy else FULL
    if not args.toy and not on_gpu():
        parser.error(f"this runs on {jax.default_backend()}, not a GPU: the full sizes need one (--toy for a CPU check)")
    names = [s for s in args.sections.split(",") if s]
    if unknown := set(names) - set(SECTIONS):
        parser.error(f"--sections: {', '.join(sorted(unknown))} not among {', '.join(SECTIONS)}")
    budget = Budget(args.budget_s or sz.budget_s)
    report = {"check": "gpu_check", "toy": args.toy,
              "label": "TOY RUN: toy sizes, not an acceptance measurement" + ("" if on_gpu() else " (CPU)")
              if args.toy else "acceptance run",
              "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": " ".join(["python3", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "versions": versions(), "budget_s": budget.seconds,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "sections": {}}
    report["sections"] = run_sections(names, sz, budget)
    report["targets"] = targets(report["sections"], args.toy)
    report["wall_s"] = time.monotonic() - started
    name = slug(report["machine"]["device_kind"]) + ("-toy" if args.toy else "")
    out = Path(args.out or (Path(tempfile.gettempdir()) / "gpu_check" if args.toy else ROOT / "benchmarks" / "results" / "gpu"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    log(f"wrote {out / name}.md and .json in {report['wall_s']:.0f} s")
    return 0


# --- Markdown ------------------------------------------------------------------------------------------------------


def fmt(x, spec: str = ".3g", unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "—"
    return f"{x:{spec}}{unit}"


def gib(x) -> str:
    return fmt(x / 2**30 if x is not None else None, ".2f", " GiB")


def markdown(r: dict) -> str:
    m, v = r["machine"], r["versions"]
    lines = [f"# GPU check: {m['device_kind']}" + (" — TOY RUN (not a measurement of this check's sizes)" if r["toy"] else ""),
             "", f"{r['label']}. {r['date_utc']}; `{r['command']}`; {r['wall_s']:.0f} s of a {r['budget_s']:.0f} s budget.",
             f"Machine: {m['device_kind']} ({m['backend']}, {m['devices']} device(s), memory {gib(m['device_memory_bytes'])}, "
             f"driver {m['driver'] or '—'}), host {m['host_cores']} cores.",
             "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x) + ".",
             "Missing: " + (", ".join(k for k, x in v.items() if x is None) or "none") + ".", "",
             "## Targets", "", "| target | value | met | note |", "|---|---:|---|---|"]
    for t in r["targets"]:
        met = {True: "met", False: "NOT met", None: "—"}[t["met"]]
        lines.append(f"| {t['target']} | {t['shown']} | {met} | {t['note']} |")
    for name, render in (("tinyllama", md_tinyllama), ("attention", md_attention), ("energy", md_energy),
                         ("tiny_grid", md_grid), ("loop", md_loop)):
        if name in r["sections"]:
            s = r["sections"][name]
            lines += ["", f"## {TITLES[name]}", "", f"Status: {s['status']} ({s.get('wall_s', 0):.0f} s)."]
            if s["status"] == "ok":
                try:
                    lines += render(s)
                except Exception as err:  # noqa: BLE001: the figures are in the .json whatever happens here
                    lines.append(f"(could not render this section: {short(err)}; the .json has its figures)")
            else:
                lines.append(s.get("reason") or s.get("error", ""))
    return "\n".join(lines)


TITLES = {"tinyllama": "(b) TinyLlama-1.1B train step", "attention": "(a) cuDNN vs XLA attention",
          "energy": "(c) Energy with NVML", "tiny_grid": "(d) Tiny grid: jaxscale vs PyTorch",
          "loop": "(e) Training loop against a bare step chain"}


def md_tinyllama(s: dict) -> list[str]:
    p = s["memory_plan"]
    return [f"{s['model']}: {s['n_layers']} layers, d_model {s['d_model']}, {s['n_heads']}/{s['n_kv_heads']} heads, "
            f"d_mlp {s['d_mlp']}, {s['n_params']:,} parameters, {s['dtype']}, batch {s['batch']} x {s['seq_len']}, "
            f"vocab {s['vocab']:,}, remat {s['remat']}, attention {s['attention']}, loss {s['loss']}." + (f" {s['without_remat']}." if "without_remat" in s else ""),
            "", "| compile | step (median) | min–max | MFU | model TFLOP/s | peak memory | XLA's plan | peak / plan |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {s['compile_s']:.1f} s | {1e3 * s['step_s']:.1f} ms | {1e3 * s['step_s_min']:.1f}–{1e3 * s['step_s_max']:.1f} ms "
            f"| {100 * s['mfu']:.1f}% | {s['model_flops_per_s'] / 1e12:.3g} | {gib(s['peak_bytes'])} | {gib(p.get('planned_bytes'))} "
            f"| {fmt(s['peak_over_planned'], '.2f')} |", "",
            f"Median of {s['steps_timed']} steps after {s['warmup_steps']} warm-up (first step {s['first_step_s']:.2f} s); "
            f"loss {s['loss_first']:.3f} → {s['loss_last']:.3f}. MFU = {s['flops_per_token']:,} FLOPs/token × "
            f"{s['tokens_per_step']:,} tokens / step time / {s['peak_flops'] / 1e12:.3g} TFLOP/s ({s['peak_source']}). "
            f"XLA's plan: arguments {gib(p.get('argument'))} + outputs {gib(p.get('output'))} − aliased "
            f"{gib(p.get('alias'))} + temporaries {gib(p.get('temp'))}."] + md_remat_variants(s)


def md_remat_variants(s: dict) -> list[str]:
    rows = s.get("remat_variants", [])
    if not rows:
        return []
    lines = ["", f"The same step under other `model.remat` policies (timed as above, after it; remat {s['remat']}: "
                 f"{1e3 * s['step_s']:.1f} ms):", "", "| remat | compile | step (median) | step ÷ remat "
             f"{s['remat']}'s | XLA's plan |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['remat']} | {r['status']}: {r.get('reason') or r.get('error')} ||||")
            continue
        lines.append(f"| {r['remat']} | {r['compile_s']:.1f} s | {1e3 * r['step_s']:.1f} ms | "
                     f"{r['step_over_measured']:.2f}x | {gib(r['planned_bytes'])} |")
    return lines


def md_attention(s: dict) -> list[str]:
    lines = [f"batch {s['batch']}, {s['seq_len']} positions, {s['heads']} heads / {s['kv_heads']} KV heads, head_dim "
             f"{s['head_dim']}, {s['dtype']}, causal.", "",
             "| implementation | forward | forward TFLOP/s | forward+backward | temp (fwd) | temp (fwd+bwd) "
             "| max abs diff vs float32 (out, dq, dk, dv) |", "|---|---:|---:|---:|---:|---:|---|"]
    for impl in ("cudnn", "xla"):
        x = s.get(impl, {})
        if x.get("status") == "unavailable":
            lines.append(f"| {impl} | unavailable: {x['reason']} |||||||")
            continue
        errs = "; ".join(x[k] for k in ("forward_error", "forward_backward_error") if k in x)
        ref = x.get("max_abs_diff_vs_float32")
        tflops = s["forward_flops"] / x["forward_s"] / 1e12 if x.get("forward_s") else None
        lines.append(f"| {impl} | {fmt(x.get('forward_s') and 1e3 * x['forward_s'], '.3f', ' ms')} | {fmt(tflops, '.1f')} "
                     f"| {fmt(x.get('forward_backward_s') and 1e3 * x['forward_backward_s'], '.3f', ' ms')} "
                     f"| {gib(x.get('forward_temp_bytes'))} | {gib(x.get('forward_backward_temp_bytes'))} "
                     f"| {', '.join(fmt(e, '.2g') for e in ref.values()) if ref else '—'} |" + (f" {errs}" if errs else ""))
    if "reference" in s:
        lines += ["", s["reference"]]
    if "max_abs_diff_cudnn_vs_xla" in s:
        d = s["max_abs_diff_cudnn_vs_xla"]
        lines += ["", "cuDNN vs XLA, largest absolute difference: " + ", ".join(f"{k} {v:.3g}" for k, v in d.items()) + "."]
    return lines


def md_energy(s: dict) -> list[str]:
    o = s["overhead"]
    lines = [f"Meter: {s['meter']}, devices {', '.join(s['devices'])}; {s['model']} at batch {s['batch']} x {s['seq_len']}, "
             f"vocab {s['vocab']:,}; sampler at {s['hz']:g} Hz (achieved {fmt(s['sample_hz'], '.1f')} Hz), "
             f"{s['read_errors']} read errors; {s['steps']} steps (median {s['step_ms_median']:.2f} ms), "
             f"{s['eval_batches']} eval batches.", "",
             "| window | duration | counter | integrated power | integrated / counter − 1 | mean power |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, w in s["windows"].items():
        lines.append(f"| {name} | {w['duration_s']:.2f} s | {fmt(w['counter_j'], '.1f', ' J')} | "
                     f"{fmt(w['integrated_j'], '.1f', ' J')} | {fmt(w['integrated_vs_counter'] and 100 * w['integrated_vs_counter'], '+.2f', '%')} "
                     f"| {fmt(w['mean_w'], '.0f', ' W')} |")
    lines += ["", f"Sampler overhead ({o['blocks']} alternating blocks of {o['steps_per_block']} steps): median step "
                  f"{o['step_ms_off']:.3f} ms without, {o['step_ms_on']:.3f} ms with mark() each step "
                  f"({100 * o['change']:+.2f}%); mark() {o['mark_us']:.0f} µs; one NVML reading {o['read_us']:.0f} µs "
                  f"with the counter, {o['read_power_only_us']:.0f} µs power only."]
    return lines


def md_grid(s: dict) -> list[str]:
    lines = [f"batch {s['batch']} x {s['seq_len']}, vocab {s['vocab']:,}, {s['dtype']}; median of {s['steps']} steps in "
             f"{s['rounds']} interleaved rounds after {s['warmup']} warm-up (benchmarks/step_time.py); torch "
             f"{s['torch']}, float32 matmul precision torch {s.get('torch_float32_matmul_precision', '—')}, "
             f"jax {s.get('jax_default_matmul_precision', '—')}. Two passes: jaxscale interleaved with eager over every "
             f"shape, then with torch.compile; each ratio is against its own pass's jaxscale time.", "",
             "| model | jaxscale steps/s | eager steps/s | compile steps/s | vs eager | vs compile |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in s["shapes"]:
        def cell(key, fw, spec, unit=""):
            return f"skipped: {r[fw + '_skipped']}" if fw + "_skipped" in r else fmt(r.get(key), spec, unit)
        lines.append(f"| {r['model']} | {fmt(r.get('jax_steps_s'), '.0f')} "
                     f"| {cell('torch_eager_steps_s', 'torch_eager', '.0f')} "
                     f"| {cell('torch_compile_steps_s', 'torch_compile', '.0f')} "
                     f"| {cell('speedup_vs_eager', 'torch_eager', '.2f', '×')} "
                     f"| {cell('speedup_vs_compile', 'torch_compile', '.2f', '×')} |")
    return lines


def md_loop(s: dict) -> list[str]:
    lines = [f"{s['model']}: the loop {s['loop_steps_per_s']:.0f} steps/s, the bare chain "
             f"{s['bare_steps_per_s']:.0f} steps/s ({s['bare_step_ms']:.3f} ms a step): loop_efficiency "
             f"{s['loop_efficiency']:.3f}. Rounds: loop {s['rounds']['loop']}, bare {s['rounds']['bare']} "
             "(benchmarks/loop_overhead.py)."]
    if quiet := s.get("without_meter"):
        lines.append(f"The same loop with `energy.meter = \"none\"` (no energy reading a step): "
                     f"{quiet['loop_steps_per_s']:.0f} steps/s against {quiet['bare_steps_per_s']:.0f}: "
                     f"loop_efficiency {quiet['loop_efficiency']:.3f}.")
    return lines


if __name__ == "__main__":
    sys.exit(main())
