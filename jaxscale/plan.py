"""`python -m jaxscale.plan --config FILE [key=value ...]`: what a sweep will cost, before the hardware.

For each distinct model of the sweep: parameter counts; FLOPs per step (analytic, and XLA's cost
analysis of the compiled train step); memory per device (parameters, optimizer state, gradients,
an activation estimate, and XLA's memory analysis); the step and run times implied by an
accelerator's peak and an MFU. Nothing is allocated: the step is compiled for abstract arrays.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxscale import runtime, sharding
from jaxscale.config import Config, ConfigError, expand, load_raw
from jaxscale.data.tokenize import file_tokenizer
from jaxscale.models import build_model, count_params, flops_per_token
from jaxscale.models.common import heads
from jaxscale.step import abstract_state, compiled_steps, step_key

TARGETS = Path(__file__).parent / "targets"
CUDNN_ATTENTION = "__cudnn$fmha"  # the custom-call targets of cuDNN's fused attention
HLO_VALUE = re.compile(r"%([\w.\-]+) = (\w+)\[")  # an instruction's name and element type
HLO_DOT = re.compile(r"= \w+\[[^\]]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)")  # a matmul's two operands
# The plan never runs the step: unoptimised CPU code generation compiles a 1B model several times faster.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def read_config(path, overrides=()) -> tuple[list, list[str]]:
    """The sweep's runs, and notes. Files only a run needs (tokenizer, corpus) may be absent here."""
    raw = load_raw(path, list(overrides))
    notes = []
    for section in ("tokenizer", "data"):
        table = raw.get(section)
        if isinstance(table, dict) and table.get("path") and not Path(table["path"]).exists():
            use = "tokenizer.vocab_size" if section == "tokenizer" else "nothing (the plan reads no data)"
            notes.append(f"{section}.path {table['path']} is not here; planning with {use}")
            del table["path"]
            if table.get("source") == "dir":
                table["source"] = "auto"
    return expand(raw), notes


@dataclasses.dataclass(frozen=True)
class Target:
    """A GPU to plan for without having it: a GpuTargetConfig text proto of published device facts."""
    name: str
    spec: str
    memory_bytes: int
    peak_tflops: float | None  # dense bf16, from the file's `# peak_bf16_tflops:` line
    peak_tf32_tflops: float | None = None  # dense TF32 (float32 matmuls), from `# peak_tf32_tflops:`


@dataclasses.dataclass(frozen=True)
class Peaks:
    """Dense peak TFLOP/s per device for each compute dtype: XLA runs float32 matmuls on these GPUs' tensor cores
    as TF32, at half the bf16 rate (or less)."""
    bfloat16: float
    float32: float
    source: str = ""  # where the figures come from: "H100 SXM" or the target's name; "" when the user gave them

    def line(self, dtype: str) -> tuple[float, str]:
        """The peak for a model computing in `dtype`, and what it is."""
        if dtype == "float32":
            return self.float32, f" ({self.source} dense TF32 peak: float32 matmuls run as TF32)" if self.source else ""
        return self.bfloat16, f" ({self.source} dense bf16 peak)" if self.source else ""


DEFAULT_PEAKS = Peaks(989.0, 494.5, "H100 SXM")  # NVIDIA's datasheet, as the targets/ files
LAUNCH_BOUND_S = 1e-3


def known_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS.glob("*.txtpb"))


def load_target(name: str = "", spec_file: str = "") -> Target:
    path = Path(spec_file) if spec_file else TARGETS / f"{name}.txtpb"
    if not path.is_file():
        if spec_file:
            raise ConfigError(f"--target-spec {spec_file}: no such file")
        raise ConfigError(f"--target {name!r}: not one of {', '.join(known_targets())} (or give --target-spec FILE)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = ""
    memory = re.search(r"device_memory_size:\s*(\d+)", text)
    if not memory:
        raise ConfigError(f"{path}: not a GPU description (a GpuTargetConfig text proto with "
                          "gpu_device_info { device_memory_size: ... })")
    peak, tf32 = (re.search(rf"#\s*peak_{kind}_tflops:\s*([\d.]+)", text) for kind in ("bf16", "tf32"))
    return Target(path.stem, text, int(memory[1]), float(peak[1]) if peak else None, float(tf32[1]) if tf32 else None)


def target_devices(target: Target, n: int) -> list:
    """n compile-only devices of the target GPU (one host): real GPU programs compile for them, none runs."""
    if not runtime.has_cuda_plugin():
        raise ConfigError("--target needs JAX's CUDA plugin (no GPU or driver needed): pip install 'jax[cuda12]'")
    from jax.experimental import topologies
    try:
        return list(topologies.get_topology_desc(platform="cuda", target_config=target.spec,
                                                 topology=f"1x1x{n}").devices)
    except Exception as err:  # noqa: BLE001 - the plugin's parse and topology errors
        raise ConfigError(f"target {target.name}: not a usable GPU description ({str(err)[:300]})") from None


def fit_line(total: int, memory: int, cfg, mesh, pool: int = 0) -> str:
    """XLA's bytes per device against the device's memory, with what would help when it does not fit; `pool`:
    JAX's default allocator pool, which a program above it outgrows unless the pool is raised or grows."""
    if total <= memory:
        above = (f"; above JAX's default pool of {fmt_bytes(pool)}: set XLA_PYTHON_CLIENT_MEM_FRACTION higher (or use "
                 "a JAX whose pool grows)") if total > pool > 0 else ""
        return f"fits, {fmt_bytes(memory - total)} headroom of {fmt_bytes(memory)}{above}"
    tries = []
    if cfg.remat != "full":
        tries.append("model.remat=full")
    tries.append(f"mesh.fsdp={2 * mesh.shape['fsdp']}")
    tries.append("a smaller train.batch_size")
    return f"does not fit by {fmt_bytes(total - memory)} (of {fmt_bytes(memory)}); try {', '.join(tries)}"


def vocab_size(config: Config) -> int:
    if config.tokenizer.path:
        return file_tokenizer(Path(config.tokenizer.path)).vocab_size
    return config.tokenizer.vocab_size  # a byte-level BPE trained to (at most) this size


def device_bytes(tree) -> int:
    """Bytes one device holds of an abstract tree whose leaves carry shardings."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def activation_bytes(cfg, tokens: int, seq_len: int, tensor: int) -> tuple[int, int]:
    """Estimate of what one device keeps for the backward pass, for `tokens` tokens on it:
    (saved activations, attention logits + probabilities). The [heads, T, T] probabilities exist only
    where attention is not fused (XLA's own path, e.g. on CPU); cuDNN flash attention keeps none."""
    itemsize = jnp.dtype(cfg.dtype).itemsize
    d, m, n_heads = cfg.d_model, cfg.d_mlp, heads(cfg)
    kv = (cfg.n_kv_heads or n_heads) * (d // n_heads)
    if cfg.arch == "llama":  # norm in/out x2; q, k before/after RoPE, v, attention out; gate, up, silu, product
        per_token = 4 * d + (3 * d + 3 * kv) / tensor + 4 * m / tensor
    else:  # LayerNorm in/out x2; q, k, v, attention out; MLP in and GELU out
        per_token = 4 * d + 4 * d / tensor + 2 * m / tensor
    full = cfg.remat == "full"  # "dots" and "mlp" are estimated as "none": an upper bound
    kept_layers = 1 if full else cfg.n_layers  # remat: block inputs only, one block recomputed at a time
    saved = tokens * itemsize * (per_token * kept_layers + (cfg.n_layers * d if full else 0))
    probs = tokens * kept_layers * 2 * (n_heads / tensor) * seq_len * 4
    return int(saved), int(probs)


def xla_analysis(model, config: Config, mesh) -> dict:
    """XLA's own figures for the compiled train step (per device), where the backend reports them."""
    t = config.train
    state = abstract_state(model, t, config.data.seq_len, mesh)
    batch = jax.ShapeDtypeStruct((t.batch_size, config.data.seq_len + 1), jnp.int32,
                                 sharding=sharding.batch_sharding(mesh))
    step, _ = compiled_steps(model, step_key(t), mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    hlo = compiled.as_text()
    out = {"compile_s": time.perf_counter() - start, "cudnn_attention": CUDNN_ATTENTION in hlo,
           "matmuls": matmul_operand_types(hlo)}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out["flops"] = float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # noqa: BLE001 - some backends do not implement it
        out["flops"] = None
    try:
        out["memory"] = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        out["memory"] = None
    return out


def matmul_operand_types(hlo: str) -> Counter:
    """(lhs, rhs) element types of every dot of a compiled HLO module (its instruction names are unique). On a
    GPU a float32 operand where the model computes in bf16 means TF32 or float32 math: half the rate or less."""
    types = dict(HLO_VALUE.findall(hlo))
    return Counter((types.get(a, "?"), types.get(b, "?")) for a, b in HLO_DOT.findall(hlo))


def matmul_line(types: Counter) -> str:
    kinds = ", ".join(f"{n} {a} x {b}" for (a, b), n in types.most_common())
    return f"{sum(types.values())} compiled: {kinds or 'none'}"


def fmt_flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP"


def fmt_bytes(x: float) -> str:
    return f"{x / 1e9:.2f} GB" if x >= 1e8 else f"{x / 1e6:.2f} MB"


def fmt_time(s: float) -> str:
    if s < 1:
        return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} us"
    if s < 120:
        return f"{s:.3g} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def plan_model(config: Config, runs: list, devices, peaks: Peaks, mfu: float, xla: bool,
               target: Target | None = None) -> list[str]:
    """The lines for one model (and batch, sequence, mesh) and the runs that train it."""
    vocab = vocab_size(config)
    # as a run on that GPU would see it: the allocator's pool, not the whole memory (loss = auto depends on it)
    hw = runtime.hardware(devices, memory_bytes=runtime.pool_bytes(target.memory_bytes) if target else None)
    requested = config
    config = runtime.resolve(config, hw, vocab)
    cfg, t, seq = config.model, config.train, config.data.seq_len
    model = build_model(cfg, vocab, seq)
    mesh = sharding.make_mesh(config.mesh, devices)
    data, fsdp, tensor = (mesh.shape[a] for a in sharding.AXES)
    n_dev = mesh.size
    total, non_embed = count_params(cfg, vocab, seq)
    tokens_step = t.batch_size * seq
    per_token = flops_per_token(cfg, vocab, seq)
    step_flops = per_token * tokens_step
    state = abstract_state(model, t, seq, mesh)
    params_b, opt_b = device_bytes(state.params), device_bytes(state.opt_state)
    saved, probs = activation_bytes(cfg, tokens_step // (data * fsdp), seq, tensor)
    kv = cfg.n_kv_heads or heads(cfg)
    lines = [
        f"model       {cfg.label} ({cfg.arch}): {cfg.n_layers} layers, d_model {cfg.d_model}, {heads(cfg)} heads "
        f"({kv} KV), d_mlp {cfg.d_mlp}, vocab {vocab:,}, seq_len {seq}, compute {cfg.dtype}, remat {cfg.remat}",
        f"parameters  {total:,} total, {non_embed:,} without embeddings",
        f"choices     attention {cfg.attention}, loss {t.loss}, remat {cfg.remat}"
        + (f" (from auto: {', '.join(runtime.choices(requested, config))})" if runtime.choices(requested, config) else ""),
        f"mesh        data {data} x fsdp {fsdp} x tensor {tensor} = {n_dev} device(s) "
        f"({target.name + ', compile-only' if target else devices[0].platform}); "
        f"batch {t.batch_size} x {seq} = {tokens_step:,} tokens/step, {tokens_step // (data * fsdp):,} per device",
        f"FLOPs/step  {fmt_flops(step_flops)} analytic ({per_token:,} per token: every matmul, causal attention, "
        f"x3 for forward+backward); 6N = {fmt_flops(6 * non_embed * tokens_step)}",
        f"memory/dev  parameters {fmt_bytes(params_b)} (float32) + optimizer {fmt_bytes(opt_b)} (Adam moments) "
        f"+ gradients {fmt_bytes(params_b)} + activations ~{fmt_bytes(saved)} (estimate, {cfg.dtype}) "
        f"= {fmt_bytes(2 * params_b + opt_b + saved)}; attention probabilities add ~{fmt_bytes(probs)} "
        "where attention is not fused (XLA's path; cuDNN flash attention: none)",
    ]
    if xla:
        x = xla_analysis(model, config, mesh)
        flops = (f"{fmt_flops(x['flops'])} per device, {fmt_flops(x['flops'] * n_dev)} all devices "
                 "(XLA counts a loop body once, attention unmasked)") if x["flops"] else "not reported by this backend"
        lines.append(f"XLA         compiled in {x['compile_s']:.1f} s; cost analysis {flops}")
        m = x["memory"]
        if m is not None:
            peak_mem = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
            lines.append(f"XLA memory  arguments {fmt_bytes(m.argument_size_in_bytes)}, temporaries "
                         f"{fmt_bytes(m.temp_size_in_bytes)}, total {fmt_bytes(peak_mem)} per device "
                         f"({devices[0].platform} backend)")
            if target:
                lines.append(f"fit         {fit_line(peak_mem, target.memory_bytes, cfg, mesh, hw.memory_bytes)}")
            elif hw.memory_bytes:
                lines.append(f"fit         {fit_line(peak_mem, hw.memory_bytes, cfg, mesh)}")
        else:
            lines.append("XLA memory  not reported by this backend")
        if devices[0].platform == "gpu":
            kernel = (f"cuDNN fused attention (custom call {CUDNN_ATTENTION}) compiled" if x["cudnn_attention"]
                      else "no cuDNN custom call: XLA's attention")
            lines.append(f"attention   {kernel}")
            lines.append(f"matmuls     {matmul_line(x['matmuls'])}")
    peak, what = peaks.line(cfg.dtype)
    step_s = step_flops / (n_dev * peak * 1e12 * mfu)
    lines.append(f"time        {fmt_time(step_s)} a step at {peak:g} TFLOP/s{what} x MFU {mfu:g} per device")
    if step_s < LAUNCH_BOUND_S:
        lines.append("            a step this small is bound by kernel launches and the host, not FLOPs: the times "
                     "below are a floor; measure it (benchmarks/step_time.py)")
    budgets: dict[int, int] = {}
    for run in runs:
        budgets[run.config.train.tokens] = budgets.get(run.config.train.tokens, 0) + 1
    sweep_s = 0.0
    for tokens, count in sorted(budgets.items()):
        steps = tokens // tokens_step
        sweep_s += count * steps * step_s
        runs_text = f"{count} run" + "s" * (count != 1)
        lines.append(f"  tokens {tokens:>13,}: {steps:,} steps, {fmt_time(steps * step_s)} a run x {runs_text}")
    lines.append(f"  all {len(runs)} runs: {fmt_time(sweep_s)} of training steps (no evaluation, start-up or idle)")
    return lines


def group_runs(runs) -> dict:
    """Runs that share a compiled step: same model, batch, sequence, tokenizer and mesh."""
    groups: dict = {}
    for run in runs:
        c = run.config
        groups.setdefault((c.model, c.train.batch_size, c.data.seq_len, c.tokenizer, c.mesh), []).append(run)
    return groups


def fixed_devices(runs) -> int | None:
    sizes = [runs[0].config.mesh.data, runs[0].config.mesh.fsdp, runs[0].config.mesh.tensor]
    return None if -1 in sizes else math.prod(sizes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxscale.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for jaxscale.train")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="dense peak per device, TFLOP/s, for every model (default: the target's, else the H100 "
                             "SXM's: 989 bf16, 494.5 TF32 for float32 models)")
    parser.add_argument("--mfu", type=float, default=0.5, help="model FLOPs utilisation (default 0.5)")
    parser.add_argument("--devices", type=int, default=0,
                        help="plan for this many devices (default: the config's mesh, else those present); "
                             "host CPU devices stand in when fewer accelerators are present")
    parser.add_argument("--no-xla", action="store_true", help="skip compiling the step (XLA's figures)")
    parser.add_argument("--target", default="", help=f"plan for this GPU without having it: {', '.join(known_targets())}")
    parser.add_argument("--target-spec", default="", help="plan for the GPU this GpuTargetConfig text proto describes")
    args = parser.parse_intermixed_args(argv)
    try:
        plan(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def check_args(args) -> None:
    if not 0 < args.mfu <= 1:
        raise ConfigError(f"--mfu: {args.mfu} is not a fraction in (0, 1]")
    if not 0 <= args.peak_tflops < math.inf:
        raise ConfigError(f"--peak-tflops: {args.peak_tflops} is not a finite number >= 0 (0: the target's peak)")
    if args.devices < 0:
        raise ConfigError(f"--devices: {args.devices} is negative (0: the config's mesh, else the devices present)")


def plan(args) -> None:
    start = time.perf_counter()
    check_args(args)
    runs, notes = read_config(args.config, args.overrides)
    n = args.devices or fixed_devices(runs)
    given = Peaks(args.peak_tflops, args.peak_tflops) if args.peak_tflops else None
    if args.target or args.target_spec:
        target = load_target(args.target, args.target_spec)
        devices = target_devices(target, n or 1)
        bf16 = target.peak_tflops
        peaks = DEFAULT_PEAKS if bf16 is None else Peaks(bf16, target.peak_tf32_tflops or bf16 / 2, target.name)
        report(args, runs, notes, devices, given or peaks, target, start)
        return
    if n:
        try:  # effective only before jax starts its backends (as under `python -m jaxscale.plan`)
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:
            pass
    devices = jax.devices()
    if n and len(devices) < n:
        devices = jax.devices("cpu")
    if n and len(devices) < n:
        raise SystemExit(f"plan: {n} devices wanted, {len(devices)} present; run it as python -m jaxscale.plan")
    devices = devices[:n] if n else devices
    report(args, runs, notes, devices, given or DEFAULT_PEAKS, None, start)


def report(args, runs, notes, devices, peaks: Peaks, target: Target | None, start: float) -> None:
    print(f"plan for {args.config}: {len(runs)} runs" + (f" on {target.name} (compile-only)" if target else ""))
    for note in notes:
        print(f"note        {note}")
    for group in group_runs(runs).values():
        print()
        print("\n".join(plan_model(group[0].config, group, devices, peaks, args.mfu, not args.no_xla, target)))
    print(f"\nplanned in {time.perf_counter() - start:.1f} s; nothing allocated (abstract shapes)")


if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    runtime.start()
    if any(a.startswith("--target") for a in sys.argv[1:]) and not os.environ.get("JAX_PLATFORMS"):
        # it only compiles: with the host as the backend, the CUDA plugin skips looking for a GPU and a driver
        jax.config.update("jax_platforms", "cpu")
    sys.exit(main())
