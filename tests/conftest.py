import os
import subprocess
from pathlib import Path

import pytest

# The tests run on the CPU, also where the CUDA plugin is installed (CI installs it for the compile-only GPU
# tests, which need no GPU): without this the plugin would look for a GPU and print its failure to stderr.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxscale import runtime  # noqa: E402  (after JAX_PLATFORMS)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ENWIKI = SHARED / "data" / "enwiki-sample"
GPT2 = SHARED / "tokenizers" / "gpt2" / "tokenizer.json"
LLAMA_TOKENIZER = SHARED / "tokenizers" / "llama" / "tokenizer.model"
ROOT = Path(__file__).resolve().parents[1]


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present (../shared beside the checkout)")


def dead_pid() -> int:
    """The pid of a process that has exited: a claim's owner that died on this host."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# compiling or tracing for CUDA (cuDNN attention among it) needs the plugin, not a GPU
needs_cuda_plugin = pytest.mark.skipif(not runtime.has_cuda_plugin(),
                                       reason="JAX's CUDA plugin is not installed (pip install 'jax[cuda12]')")


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """One token cache for the whole test session, never the user's ~/.cache."""
    os.environ.setdefault("JAXSCALE_CACHE", str(tmp_path_factory.mktemp("jaxscale-cache")))
