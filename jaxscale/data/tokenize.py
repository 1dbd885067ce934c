"""Tokenizers (Hugging Face tokenizer.json, SentencePiece .model, or a byte-level BPE trained on the
train split) and the on-disk token cache shared by every run of a sweep."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from jaxscale.config import ConfigError, TokenizerConfig
from jaxscale.data.corpora import SPLITS, Corpus, cache_root
from jaxscale.files import replacing


@dataclass(frozen=True)
class Tokenizer:
    name: str
    vocab_size: int
    fingerprint: str
    encode_lines: Callable[[list[str]], list[list[int]]]

    def encode(self, text: str) -> np.ndarray:
        """Line by line (fast and parallel in the Rust/C++ tokenizers); line breaks are kept."""
        lines = text.splitlines(keepends=True)
        ids = self.encode_lines(lines)
        dtype = np.uint16 if self.vocab_size <= 2**16 else np.uint32
        return np.fromiter((t for line in ids for t in line), dtype=dtype)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_tokenizer(cfg: TokenizerConfig, corpus: Corpus) -> Tokenizer:
    if not cfg.path:
        return trained_bpe(corpus, cfg.vocab_size)
    path = Path(cfg.path)
    if not path.is_file():
        raise ConfigError(f"tokenizer.path: file {path} not found (.json or .model)")
    if path.suffix == ".json":
        from tokenizers import Tokenizer as HFTokenizer
        tok = HFTokenizer.from_file(str(path))
        encode = lambda lines: [e.ids for e in tok.encode_batch(lines, add_special_tokens=False)]  # noqa: E731
        return Tokenizer(path.name, tok.get_vocab_size(), _file_digest(path), encode)
    if path.suffix == ".model":
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(path))
        # SentencePiece drops the newline itself; encoding whole lines keeps the token counts honest.
        encode = lambda lines: sp.encode(lines)  # noqa: E731
        return Tokenizer(path.name, sp.get_piece_size(), _file_digest(path), encode)
    raise ConfigError(f"tokenizer.path: {path} is neither a Hugging Face tokenizer.json nor a SentencePiece .model")


def trained_bpe(corpus: Corpus, vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained on the train split, saved in the cache and reused."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer as HFTokenizer

    path = cache_root() / "tokenizers" / f"bpe-{corpus.fingerprint}-{vocab_size}.json"
    if path.is_file():
        tok = HFTokenizer.from_file(str(path))
    else:
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(corpus.splits["train"].splitlines(keepends=True), vocab_size=vocab_size,
                                min_frequency=2, show_progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:  # a worker beside this one may be saving the same tokenizer
            bpe.save(str(tmp))
        tok = HFTokenizer.from_file(str(path))
    encode = lambda lines: [e.ids for e in tok.encode_batch(lines)]  # noqa: E731
    return Tokenizer(f"bpe{vocab_size}", tok.get_vocab_size(), _file_digest(path), encode)


def token_splits(corpus: Corpus, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """Each split as a read-only memmapped token array, cached under a hash of corpus + tokenizer."""
    directory = cache_root() / "tokens" / f"{corpus.fingerprint}-{tokenizer.fingerprint}"
    arrays = {}
    for split in SPLITS:
        path = directory / f"{split}.npy"
        if not path.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            with replacing(path) as tmp, open(tmp, "wb") as f:  # concurrent sweeps never read half a file
                np.save(f, tokenizer.encode(corpus.splits[split]))
        arrays[split] = np.load(path, mmap_mode="r")
    return arrays
