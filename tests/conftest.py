import os
import signal
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


def sigterm_at(monkeypatch, step: int, steps: int | None = None) -> None:
    """A real SIGTERM to this process while the first run to reach `step` (of `steps`) records it."""
    from jaxscale.progress import Progress

    sent, record = [], Progress.step

    def step_then_signal(self, done, total, *args):
        if done == step and total == (steps or total) and not sent:
            sent.append(done)
            os.kill(os.getpid(), signal.SIGTERM)
        record(self, done, total, *args)

    monkeypatch.setattr(Progress, "step", step_then_signal)


# compiling or tracing for CUDA (cuDNN attention among it) needs the plugin, not a GPU
needs_cuda_plugin = pytest.mark.skipif(not runtime.has_cuda_plugin(),
                                       reason="JAX's CUDA plugin is not installed (pip install 'jax[cuda12]')")


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """One token cache for the whole test session, never the user's ~/.cache."""
    os.environ.setdefault("JAXSCALE_CACHE", str(tmp_path_factory.mktemp("jaxscale-cache")))
