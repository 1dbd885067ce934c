"""jaxscale.hostmem: after retain_freed_memory(), a large block freed and allocated again is not
page-faulted back in; without it (glibc's defaults), it is. Each case in a fresh process, since
the setting is process-wide and cannot be undone."""
import json
import subprocess
import sys

import pytest

CHILD = """
import ctypes, json, resource, sys
from jaxscale import hostmem
retained = hostmem.retain_freed_memory() if sys.argv[1] == "retain" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def allocate_touch_free(size=64 << 20):  # as XLA:CPU does with a step's buffers
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)

allocate_touch_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    allocate_touch_free()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"retained": retained, "flag": hostmem.retained(), "faults": faults}))
"""


def run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    default, retained = run("default"), run("retain")
    pages = 3 * (64 << 20) // 4096
    assert default["faults"] > pages // 2  # glibc hands 64 MB blocks back: every page faults again
    assert retained["retained"] is True and retained["flag"] is True and default["flag"] is False
    assert retained["faults"] < pages // 20
