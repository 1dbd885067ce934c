"""One start-up for every command line, and every `auto` of a config resolved once.

`start()` runs first thing in each CLI, before JAX starts its backends: it turns on the persistent
compilation cache and applies the CPU-only tunings (jaxscale.hostmem, jaxscale.xla_cpu) only when the
step will run on the CPU, where it also keeps an installed CUDA plugin from searching for a GPU that is
not there. `resolve(config, hardware(devices), vocab_size)` replaces `model.attention =
"auto"` and `train.loss = "auto"` with what runs on those devices — real ones, or the compile-only GPU
devices of `python -m jaxscale.plan --target` — so nothing reads process state while a step is traced,
and the choice is written into each run's config.json and summary.json.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

from jaxscale import hostmem, xla_cpu
from jaxscale.config import Config, ConfigError
from jaxscale.loss import choose_loss
from jaxscale.models.attention import choose_attention
from jaxscale.models.common import heads

GPU_PLATFORMS = ("gpu", "cuda", "rocm")


NVIDIA_DEVICE_NODES = ("/dev/nvidiactl", "/dev/dxg")  # NVIDIA's Linux driver; WSL2's GPU
GPU_DEVICE_NODES = (*NVIDIA_DEVICE_NODES, "/dev/kfd")  # and AMD's ROCm


def expected_platform(environ=os.environ, nvidia_devices=NVIDIA_DEVICE_NODES) -> str:
    """"gpu" or "cpu" (or JAX_PLATFORMS' first other entry): where JAX will run, known before it starts —
    the CPU tunings must be set before its CPU backend and threads exist. JAX_PLATFORMS decides where set;
    else a GPU is expected where the CUDA plugin is installed and an NVIDIA device node exists."""
    first = environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    if first:
        return "gpu" if first in GPU_PLATFORMS else first
    return "gpu" if has_cuda_plugin() and any(os.path.exists(node) for node in nvidia_devices) else "cpu"


def has_cuda_plugin() -> bool:
    """JAX's CUDA plugin is installed (jax[cuda12] or jax[cuda13]): GPU programs compile, with or without a GPU."""
    if importlib.util.find_spec("jax_plugins") is None:  # no JAX plugin at all (e.g. `pip install jax`)
        return False
    return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13))


def compilation_cache_dir(environ=os.environ) -> Path:
    return Path(environ.get("JAXSCALE_CACHE", Path.home() / ".cache" / "jaxscale")) / "jax"


def enable_compilation_cache() -> None:
    """Keep compiled steps between invocations (under $JAXSCALE_CACHE/jax), unless the user chose a cache."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(compilation_cache_dir()))


def start() -> str:
    """Set up this process for jaxscale's steps; returns the expected platform."""
    platform = expected_platform()
    if platform == "cpu":
        hostmem.retain_freed_memory()
        xla_cpu.prefer_wide_vectors()
        if pin_cpu():
            import jax

            jax.config.update("jax_platforms", "cpu")
    enable_compilation_cache()
    return platform


def pin_cpu(environ=os.environ, gpu_device_nodes=GPU_DEVICE_NODES) -> bool:
    """The CUDA plugin is installed (e.g. for `plan --target`) but no GPU's device node exists: left to itself,
    JAX would let the plugin search for a GPU and log its failure as a 20-line traceback before it falls back
    to the CPU. Where JAX_PLATFORMS is set, or any GPU node exists, JAX decides as usual."""
    return (not environ.get("JAX_PLATFORMS") and has_cuda_plugin()
            and not any(os.path.exists(node) for node in gpu_device_nodes))


def pool_bytes(device_memory: int, environ=os.environ) -> int:
    """The limit a JAX process's GPU allocator reports (`bytes_limit`, what `loss = auto` reads) on a device of
    `device_memory` bytes: its preallocated pool, XLA_CLIENT_MEM_FRACTION (or XLA_PYTHON_CLIENT_MEM_FRACTION) of
    the memory, by default 0.75. A compile-only device reports nothing: the plan asks this instead."""
    fraction = environ.get("XLA_CLIENT_MEM_FRACTION") or environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") or "0.75"
    return int(device_memory * float(fraction))


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What the `auto` choices depend on, read once from the devices a step will run on."""

    platform: str  # "cpu" | "gpu" | ...
    device_kind: str
    compute_capability: str  # "" off NVIDIA GPUs
    memory_bytes: int  # per device; 0 where the device does not say (CPU, compile-only devices)
    n_devices: int
    freed_memory_reused: bool  # device allocators reuse freed memory; on the CPU only with jaxscale.hostmem


def hardware(devices, memory_bytes: int | None = None) -> Hardware:
    """`memory_bytes` overrides what the device reports (a compile-only device reports nothing)."""
    devices = list(devices)
    first = devices[0]
    platform = "gpu" if first.platform in GPU_PLATFORMS else first.platform
    if memory_bytes is None:
        import jax

        # a device of this process: another process's device reports nothing here (and processes must agree)
        mine = next((d for d in devices if d.process_index == jax.process_index()), first)
        try:
            memory_bytes = int((mine.memory_stats() or {}).get("bytes_limit", 0))
        except Exception:  # noqa: BLE001 - CPU and compile-only devices do not implement it
            memory_bytes = 0
    return Hardware(platform=platform, device_kind=first.device_kind,
                    compute_capability=str(getattr(first, "compute_capability", "") or ""),
                    memory_bytes=memory_bytes, n_devices=len(devices),
                    freed_memory_reused=platform != "cpu" or hostmem.retained())


def resolve(config: Config, hw: Hardware, vocab_size: int) -> Config:
    """`config` with every `auto` replaced by the concrete choice for `hw` (other values unchanged)."""
    m, t = config.model, config.train
    try:
        attention = choose_attention(m.attention, hw.platform, hw.compute_capability, m.dtype, m.d_model // heads(m),
                                     config.data.seq_len)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    loss = t.loss
    if loss == "auto":
        tokens = t.batch_size * config.data.seq_len // max(1, min(hw.n_devices, t.batch_size))
        loss = choose_loss(tokens, vocab_size, m.d_model, hw.platform, hw.freed_memory_reused, hw.memory_bytes)
    # a scanned Llama without remat keeps every block's intermediates as stacked loop outputs (twice the
    # unrolled model's temporaries for TinyLlama on an H100); saving only the matmul outputs costs less than both
    remat = m.remat if m.remat != "auto" else ("dots" if m.arch == "llama" and m.scan_layers else "none")
    return dataclasses.replace(config, model=dataclasses.replace(m, attention=attention, remat=remat),
                               train=dataclasses.replace(t, loss=loss))


def choices(requested: Config, resolved: Config) -> dict:
    """What each `auto` became, for the run's record: {"model.attention": "cudnn", ...}."""
    out = {}
    for section in ("model", "train"):
        for f in dataclasses.fields(getattr(requested, section)):
            before, after = getattr(getattr(requested, section), f.name), getattr(getattr(resolved, section), f.name)
            if before == "auto":
                out[f"{section}.{f.name}"] = after
    return out
