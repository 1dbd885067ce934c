import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ENWIKI = SHARED / "data" / "enwiki-sample"
GPT2 = SHARED / "tokenizers" / "gpt2" / "tokenizer.json"
LLAMA_TOKENIZER = SHARED / "tokenizers" / "llama" / "tokenizer.model"
ROOT = Path(__file__).resolve().parents[1]


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present (../shared beside the checkout)")


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """One token cache for the whole test session, never the user's ~/.cache."""
    os.environ.setdefault("JAXSCALE_CACHE", str(tmp_path_factory.mktemp("jaxscale-cache")))
