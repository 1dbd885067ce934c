"""Train-step time of jaxscale against PyTorch (eager and torch.compile), with MFU against a measured peak.

    python benchmarks/step_time.py [--config configs/tiny_grid.toml] [--json] [--steps 24] [--rounds 3]
                                   [--host-memory retain|default]

For every model shape in the config (its [[model]] list; the tiny grid by default), at the config's
batch and sequence length, in the models' dtype (float32 unless the config or --set model.dtype=bfloat16
says otherwise), the vocabulary of --vocab (GPT-2's 50,257 by default):

- jaxscale: the jitted, AOT-compiled train step the run loop uses (jaxscale.step), state donated;
- PyTorch eager and torch.compile: the same model, init and AdamW (benchmarks/torch_models.py),
  written as a PyTorch user would (full logits into F.cross_entropy); torch.compile wraps the
  model's forward + loss, the optimizer step stays eager.

Each step is timed as the training loop times it: from the call to the loss back on the host.
After --warmup steps per framework, the frameworks take turns in --rounds rounds of
steps/rounds steps each (so load from other processes falls on all of them alike); the reported
time is the median over all timed steps, and *_ms_lo / *_ms_hi are the lowest and highest
per-round medians (the noise). The peak is the best of large matmuls (4096^3, the models' dtype) in
JAX and in PyTorch, measured in the same process, before and after the steps. On a GPU whose dense
bfloat16 peak NVIDIA publishes (jaxscale.laws.inference.GPU_PEAK_FLOPS), bfloat16 MFU is taken against that figure
instead, and PyTorch runs on the GPU too (a CUDA build of torch; with a CPU build its rows are
"unavailable"), under torch.autocast when the dtype is bfloat16. On GPUs, bfloat16 attention runs
cuDNN's fused kernel where it can (model.attention = auto; jaxscale.models.attention.choose_attention).

FLOPs per step = jaxscale.models.flops_per_token x batch x seq_len: every matmul of the forward
and backward pass (3 x forward) — q, k, v, output and MLP projections, attention's QK^T and AV
(halved for the causal mask) and the output layer — and not the embedding lookup. MFU = FLOPs per
step / step time / peak. The blocked loss recomputes the output layer's logits in the backward
pass; that extra matmul is not counted (MFU counts the model's FLOPs, not the work done).

Host memory: jaxscale.train makes glibc keep freed memory (jaxscale.hostmem), which spares every step
the page faults of re-allocating its large buffers. PyTorch's eager step materialises the same large
logits and gains as much from it, so by default (--host-memory retain) every framework in the process
runs with it: the like-for-like comparison. --host-memory default measures all of them with glibc's
defaults, as a plain PyTorch script runs. Like jaxscale.train, the benchmark also has XLA emit 512-bit
vector code on AVX-512 CPUs (jaxscale.xla_cpu; XLA_FLAGS is recorded with the results).

Results: benchmarks/results/step_time.csv and .md (step_time_default_malloc.* with --host-memory
default; --out DIR to change), rows as JSON with --json.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jaxscale import hostmem, runtime, xla_cpu  # noqa: E402
from jaxscale.config import Config, DataConfig, ModelConfig, TrainConfig, expand, load_raw  # noqa: E402
from jaxscale.laws.inference import GPU_PEAK_FLOPS  # noqa: E402
from jaxscale.models import build_model, count_params, flops_per_token  # noqa: E402
from jaxscale.step import compiled_steps, init_state, step_key  # noqa: E402

FRAMEWORKS = ("jax", "torch_eager", "torch_compile")
COLUMNS = ["model", "d_model", "d_mlp", "n_layers", "n_params", "gflop_per_step",
           "jax_ms", "torch_eager_ms", "torch_compile_ms",
           "jax_ms_lo", "jax_ms_hi", "torch_eager_ms_lo", "torch_eager_ms_hi", "torch_compile_ms_lo", "torch_compile_ms_hi",
           "jax_tokens_s", "torch_eager_tokens_s", "torch_compile_tokens_s",
           "jax_gflops", "jax_mfu", "torch_eager_mfu", "torch_compile_mfu",
           "speedup_vs_eager", "speedup_vs_compile", "peak_gflops", "load_avg"]


def shapes_of(raw: dict) -> tuple[list[ModelConfig], TrainConfig, int]:
    """The distinct model shapes of a config, its train settings and sequence length."""
    runs = expand(raw)
    models, seen = [], set()
    for spec in runs:
        key = dataclasses.replace(spec.config.model, name="")
        if key not in seen:
            seen.add(key)
            models.append(spec.config.model)
    return models, runs[0].config.train, runs[0].config.data.seq_len


def published_peak(device_kind: str, dtype: str) -> tuple[float, str] | None:
    """(GFLOP/s, where it comes from) for a GPU of jaxscale.laws.inference.GPU_PEAK_FLOPS named in
    jax.Device.device_kind (the longest name that matches: "H100 PCIe" before "H100"); None for float32
    (whose GPU matmuls may run as TF32), CPUs and GPUs not in the table."""
    if dtype != "bfloat16":
        return None
    names = [name for name in GPU_PEAK_FLOPS if name in device_kind]
    if not names:
        return None
    name = max(names, key=len)
    return GPU_PEAK_FLOPS[name]["bf16"] / 1e9, f"published dense bfloat16 peak of the {name} ({device_kind})"


def measure_peak(dtype: str = "float32", n: int = 4096, reps: int = 3) -> dict:
    """GFLOP/s of an n^3 matmul in dtype, best of reps, in JAX and (when it has the device) in PyTorch."""
    out = {}
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32)).astype(dtype)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    best = min(_timed(lambda: mm(a).block_until_ready()) for _ in range(reps))
    out["jax"] = 2 * n**3 / best / 1e9
    try:
        import torch
        device = torch_device()
        t = torch.from_numpy(np.array(a.astype(jnp.float32))).to(device=device, dtype=getattr(torch, dtype))
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        torch.mm(t, t)
        sync()
        out["torch"] = 2 * n**3 / min(_timed(lambda: (torch.mm(t, t), sync())) for _ in range(reps)) / 1e9
    except (ImportError, RuntimeError):  # no torch, or a CPU build of torch next to a GPU
        pass
    return out


def torch_device() -> str:
    """Where PyTorch runs: on the GPU when JAX runs on one (and this torch has CUDA), else the CPU."""
    import torch
    if jax.default_backend() != "gpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("JAX runs on a GPU but this PyTorch has no CUDA (a CPU build): install a CUDA "
                           "build of torch to compare on the GPU")
    return "cuda"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class JaxRunner:
    """The step jaxscale.train runs: compiled once per shape, state donated, loss fetched each step."""

    def __init__(self, cfg: ModelConfig, train: TrainConfig, batches: np.ndarray, steps: int):
        seq_len = batches.shape[2] - 1
        # every `auto` resolved for this process's device, as jaxscale.train resolves it
        config = runtime.resolve(Config(model=cfg, train=train, data=DataConfig(seq_len=seq_len)),
                                 runtime.hardware(jax.devices()[:1]), self.vocab)
        cfg, train = config.model, config.train
        self.model = build_model(cfg, self.vocab, seq_len)
        self.state = init_state(self.model, train, steps, seq_len, jax.random.key(0))
        step, _ = compiled_steps(self.model, step_key(train))
        self.step = step.lower(self.state, batches[0]).compile()
        self.batches, self.i = batches, 0

    def __call__(self) -> float:
        self.state, metrics = self.step(self.state, self.batches[self.i % len(self.batches)])
        self.i += 1
        return float(metrics["loss"])


class TorchRunner:
    def __init__(self, cfg: ModelConfig, train: TrainConfig, batches: np.ndarray, steps: int, compile: bool):
        import torch

        import torch_models as tm
        torch.manual_seed(0)
        device = torch_device()
        self.tm, self.train, self.steps = tm, train, steps
        self.model = tm.build_model(cfg, self.vocab, batches.shape[2] - 1).to(device)
        forward = torch.compile(self.model) if compile else self.model
        if cfg.dtype == "bfloat16":  # jaxscale's bfloat16: compute in bfloat16, parameters in float32
            forward = torch.autocast(device, dtype=torch.bfloat16)(forward)
        self.loss_fn = forward
        self.opt = tm.optimizer(self.model, train)
        self.batches, self.i = [torch.from_numpy(b).long().to(device) for b in batches], 0

    def __call__(self) -> float:
        loss = self.tm.train_step(self.model, self.loss_fn, self.opt, self.batches[self.i % len(self.batches)],
                                  self.i % self.steps, self.train, self.steps)
        self.i += 1
        return loss


def bench_shape(cfg, train, seq_len, vocab, frameworks, steps, rounds, warmup, log) -> dict:
    rng = np.random.default_rng(0)
    batches = rng.integers(0, vocab, (8, train.batch_size, seq_len + 1)).astype(np.int32)
    runners = {}
    for name in frameworks:
        t0 = time.perf_counter()
        try:
            cls = JaxRunner if name == "jax" else TorchRunner
            cls.vocab = vocab
            runner = cls(cfg, train, batches, 10_000) if name == "jax" else cls(
                cfg, train, batches, 10_000, compile=name == "torch_compile")
            for _ in range(warmup):
                runner()
            runners[name] = runner
            log(f"  {name}: ready in {time.perf_counter() - t0:.1f} s (build, compile, {warmup} warm-up steps)")
        except Exception as err:  # e.g. torch.compile without a C++ compiler: report, don't stop
            log(f"  {name}: unavailable ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
    times = {name: [] for name in runners}
    round_medians = {name: [] for name in runners}
    per_round = max(1, -(-steps // rounds))
    for r in range(rounds):
        order = list(runners)[r % len(runners):] + list(runners)[: r % len(runners)]  # rotate who goes first
        for name in order:
            these = [_timed(runners[name]) for _ in range(per_round)]
            times[name] += these
            round_medians[name].append(statistics.median(these))
    row = {}
    for name in FRAMEWORKS:
        if name in times:
            row[f"{name}_ms"] = 1e3 * statistics.median(times[name])
            row[f"{name}_ms_lo"] = 1e3 * min(round_medians[name])
            row[f"{name}_ms_hi"] = 1e3 * max(round_medians[name])
        else:
            row[f"{name}_ms"] = row[f"{name}_ms_lo"] = row[f"{name}_ms_hi"] = float("nan")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny_grid.toml"))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for jaxscale.train (e.g. train.loss=blocked)")
    parser.add_argument("--vocab", type=int, default=50257, help="vocabulary size (GPT-2's by default)")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per framework and shape (>= 20)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the timed steps are split into")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--models", default="", help="comma-separated labels (e.g. d16-l1,d128-l4); default all")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for step_time.csv/.md")
    parser.add_argument("--no-write", action="store_true", help="don't write the CSV and Markdown files")
    parser.add_argument("--host-memory", choices=("retain", "default"), default="retain",
                        help="retain: glibc keeps freed memory, as jaxscale.train sets it (jaxscale.hostmem), for every "
                             "framework in this process; default: glibc's defaults, as a plain PyTorch script runs")
    args = parser.parse_args(argv)
    on_cpu = runtime.expected_platform() == "cpu"  # the CPU tunings, as jaxscale.train applies them: on CPUs only
    if on_cpu and args.host_memory == "retain" and not hostmem.retain_freed_memory():
        parser.error("--host-memory retain: glibc's mallopt is not available here")
    if on_cpu:
        xla_cpu.prefer_wide_vectors()  # XLA's code generation; PyTorch is unaffected

    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))
    raw = load_raw(args.config, args.set)
    models, train, seq_len = shapes_of(raw)
    shapes = [m.label for m in models]
    if args.models:
        wanted = set(args.models.split(","))
        models = [m for m in models if m.label in wanted]
    if not models:
        parser.error(f"--models {args.models}: no such shape in {args.config} (it has {', '.join(shapes)})")
    frameworks = [f for f in args.frameworks.split(",") if f]
    tokens = train.batch_size * seq_len
    dtype = models[0].dtype
    if any(m.dtype != dtype for m in models):
        parser.error(f"model.dtype: the shapes of {args.config} mix dtypes; benchmark one dtype at a time")
    log(f"{len(models)} shapes, batch {train.batch_size} x {seq_len} tokens, vocab {args.vocab}, {dtype}, "
        f"loss {train.loss}; load average {os.getloadavg()[0]:.2f}")
    peaks = measure_peak(dtype)
    log(f"peak (4096^3 {dtype} matmul): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))

    rows = []
    for cfg in models:
        log(f"{cfg.label} (d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, {cfg.n_layers} layers)")
        flops = flops_per_token(cfg, args.vocab, seq_len) * tokens
        load = os.getloadavg()[0]
        row = {"model": cfg.label, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "n_layers": cfg.n_layers,
               "n_params": count_params(cfg, args.vocab, seq_len)[0], "gflop_per_step": flops / 1e9}
        row.update(bench_shape(cfg, train, seq_len, args.vocab, frameworks, args.steps, args.rounds, args.warmup, log))
        row["load_avg"] = round((load + os.getloadavg()[0]) / 2, 2)
        rows.append(row)
        log("  " + ", ".join(f"{f} {row[f + '_ms']:.1f} ms ({row[f + '_ms_lo']:.1f}-{row[f + '_ms_hi']:.1f})"
                             for f in FRAMEWORKS if f + "_ms" in row))
    for k, v in measure_peak(dtype).items():  # again after the steps: the best of both is the peak
        peaks[k] = max(peaks[k], v)
    published = published_peak(jax.devices()[0].device_kind, dtype)
    peak, peak_source = published or (max(peaks.values()), "measured in the same process")
    for row in rows:
        flops = row["gflop_per_step"] * 1e9
        for f in FRAMEWORKS:
            ms = row.get(f + "_ms", float("nan"))
            row[f"{f}_tokens_s"] = tokens / ms * 1e3
            row[f"{f}_mfu"] = flops / (ms / 1e3) / (peak * 1e9)
        row["jax_gflops"] = flops / (row["jax_ms"] / 1e3) / 1e9
        row["speedup_vs_eager"] = row.get("torch_eager_ms", float("nan")) / row["jax_ms"]
        row["speedup_vs_compile"] = row.get("torch_compile_ms", float("nan")) / row["jax_ms"]
        row["peak_gflops"] = peak
    meta = machine(peaks, train, seq_len, args) | {"dtype": dtype, "peak_gflops": round(peak, 1), "peak_source": peak_source}
    if not args.no_write:
        write(Path(args.out), rows, meta)
    if args.json:
        print(json.dumps([{k: _round(row.get(k)) for k in COLUMNS} for row in rows], indent=1))
    else:
        print(markdown(rows, meta))
    return 0


def machine(peaks, train, seq_len, args) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"jax": jax.__version__}
    try:
        import torch
        versions["torch"] = torch.__version__
    except ImportError:
        pass
    if jax.default_backend() != "cpu":
        cpu = f"{jax.devices()[0].device_kind} (host: {cpu})"
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu, "cores": os.cpu_count(),
            "peaks": {k: round(v, 1) for k, v in peaks.items()}, "versions": versions,
            "batch": train.batch_size, "seq_len": seq_len, "vocab": args.vocab, "loss": train.loss,
            "steps": args.steps, "rounds": args.rounds, "overrides": args.set, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "host_memory": args.host_memory}


def _round(x):
    return round(x, 4) if isinstance(x, float) else x


def markdown(rows, meta) -> str:
    lines = [f"Train step, batch {meta['batch']} x {meta['seq_len']} tokens, vocabulary {meta['vocab']:,}, {meta['dtype']}, "
             f"AdamW, loss {meta['loss']}, host memory {meta['host_memory']}; {meta['cpu']}, {meta['cores']} cores; "
             f"{meta['date']}; "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
             f"Median of {meta['steps']} steps in {meta['rounds']} interleaved rounds (lowest-highest round median); "
             f"peak {meta['peak_gflops']:.0f} GFLOP/s, {meta['peak_source']} "
             f"(4096³ {meta['dtype']} matmul: " + ", ".join(f"{k} {v:.0f}" for k, v in meta["peaks"].items()) + ").",
             "",
             "| model | GFLOP/step | jaxscale ms | PyTorch eager ms | torch.compile ms | vs eager | vs compile "
             "| jaxscale tokens/s | jaxscale MFU | eager MFU | compile MFU | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def ms(f):
            return f"{r[f + '_ms']:.1f} ({r[f + '_ms_lo']:.0f}–{r[f + '_ms_hi']:.0f})"
        lines.append(f"| {r['model']} | {r['gflop_per_step']:.1f} | {ms('jax')} | {ms('torch_eager')} | "
                     f"{ms('torch_compile')} | {r['speedup_vs_eager']:.2f}× | {r['speedup_vs_compile']:.2f}× | "
                     f"{r['jax_tokens_s']:,.0f} | {100 * r['jax_mfu']:.0f}% | {100 * r['torch_eager_mfu']:.0f}% | "
                     f"{100 * r['torch_compile_mfu']:.0f}% | {r['load_avg']:.1f} |")
    lines.append("")
    lines.append("FLOPs: every matmul of forward and backward (3 × forward), output layer and causal attention included, "
                 "embedding lookup excluded (jaxscale.models.flops_per_token). 'load' is the 1-minute load average "
                 "during the shape's measurement (2 cores: above 2 means other processes competed for them).")
    if meta["xla_flags"]:
        lines.append(f"XLA_FLAGS: `{meta['xla_flags']}`")
    return "\n".join(lines)


def write(out: Path, rows, meta) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = "step_time" if meta["host_memory"] == "retain" else "step_time_default_malloc"
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _round(row.get(k)) for k in COLUMNS})
    (out / f"{name}.md").write_text(markdown(rows, meta) + "\n")
    (out / f"{name}.json").write_text(json.dumps({"machine": meta, "rows": [
        {k: _round(row.get(k)) for k in COLUMNS} for row in rows]}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
