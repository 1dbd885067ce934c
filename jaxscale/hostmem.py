"""Keep freed host memory in the process instead of giving it back to the kernel (glibc only).

XLA:CPU allocates its large buffers afresh for every step and frees them after it. glibc serves
blocks that large from mmap (or from per-thread arenas that it trims), returns them to the kernel
on free, and the next step page-faults every page back in: for the d128 tiny model, ~27,000 faults
(110 MB) a step, about 57 ms of CPU time on the 2-core benchmark machine. With one arena, no mmap
for large blocks and no trimming, a freed block is reused as it is. The cost: the process keeps
its peak host memory until it exits, which a training process does anyway.

Call `retain_freed_memory()` first thing, before JAX starts its threads (the CLI entry points do).
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)
_retained = False


def retained() -> bool:
    """Whether retain_freed_memory() took effect in this process."""
    return _retained


def retain_freed_memory() -> bool:
    """True when glibc accepted all three settings; False (and nothing changed) elsewhere."""
    global _retained
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {M_ARENA_MAX: 1, M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
    _retained = all(mallopt(param, value) == 1 for param, value in settings.items())
    return _retained
