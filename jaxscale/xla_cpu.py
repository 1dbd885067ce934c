"""XLA:CPU code generation suited to the machine: 512-bit vectors where the CPU has AVX-512.

XLA:CPU emits 256-bit vector code by default, even on AVX-512 CPUs (wide vectors lower the clock of
some older Xeons). Around their matmuls, jaxscale's steps are exp, softmax, layer norm and the
optimizer's elementwise passes; with 512-bit vectors every tiny-grid shape ran 1-26% faster per step
on the benchmark's 2-core Xeon (two alternating runs of benchmarks/step_time.py --frameworks jax).

XLA reads XLA_FLAGS when JAX starts its CPU backend, so call this before the first computation (the
CLI entry points do); a width the user set in XLA_FLAGS wins.
"""
from __future__ import annotations

import os

FLAG = "--xla_cpu_prefer_vector_width"


def prefer_wide_vectors(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Add FLAG=512 to XLA_FLAGS when the CPU has AVX-512 and XLA_FLAGS does not set it; True if added."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags or not has_avx512(cpuinfo):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}=512".strip()
    return True


def has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:  # not Linux: leave XLA's default
        return False
