"""Tokenizers (Hugging Face tokenizer.json, SentencePiece .model, or a byte-level BPE trained on the
train split) and the on-disk token cache shared by every run of a sweep."""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from jaxscale.config import ConfigError, TokenizerConfig
from jaxscale.data.corpora import SPLITS, Corpus, cache_root
from jaxscale.files import replacing, write_atomic


# Where a text may be cut into pieces encoded apart: after a run of whitespace that ends in a line break, before
# the non-space that follows (a new word, or punctuation, in every tokenizer loaded here).
CUT = re.compile(r"\n(?=\S)")
PIECE_CHARS = 1 << 16


@dataclass(frozen=True)
class Tokenizer:
    name: str
    vocab_size: int
    fingerprint: str
    encode_batch: Callable[[list[str]], list[list[int]]]  # texts -> ids, in parallel in the Rust/C++ tokenizers

    def encode(self, text: str) -> np.ndarray:
        """The ids of encoding `text` in one call, computed in parallel pieces. Encoded alone, a piece would
        start and end as a text does: SentencePiece (and Hugging Face files that copy it) put a "▁" before it,
        which the whole text has only at its start (line by line: 1.9% more Llama tokens on enwiki-sample, a lone
        "▁" opening each line), and GPT-2's rules keep a text's trailing blank lines whole but split them before a
        word (one "\n\n" token instead of two "\n"). So each piece is encoded between what surrounds it in the
        text, the line break before it and the character after it, whose tokens are then dropped. Where those
        tokens are not the piece's first and last, the whole text is encoded in one call."""
        cuts = _cuts(text)
        pieces = [text[i:j] for i, j in itertools.pairwise(cuts)]
        after = [text[j] for j in cuts[1:-1]]  # each piece's next character; the last piece has none
        lead = self.encode_batch(["\n"])[0]
        chars = sorted(set(after))
        # a character's tokens after a line break: those of "\n" + it past those of "\n" (None: not a prefix)
        tails = {c: ids[len(lead):] if ids[:len(lead)] == lead else None
                 for c, ids in zip(chars, self.encode_batch([f"\n{c}" for c in chars]))}
        framed = self.encode_batch([("\n" if i else "") + piece + (after[i] if i < len(after) else "")
                                    for i, piece in enumerate(pieces)])
        ids = []
        for i, piece in enumerate(framed):
            head, tail = lead if i else [], tails[after[i]] if i < len(after) else []
            end = len(piece) - len(tail or ())
            if tail is None or piece[:len(head)] != head or piece[end:] != tail:
                ids = self.encode_batch([text])
                break
            ids.append(piece[len(head):end])
        dtype = np.uint16 if self.vocab_size <= 2**16 else np.uint32
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype)


def _cuts(text: str) -> list[int]:
    """0, the cuts (each the first CUT at least PIECE_CHARS after the one before) and len(text)."""
    cuts = [0]
    while match := CUT.search(text, cuts[-1] + PIECE_CHARS):
        cuts.append(match.end())
    return cuts + [len(text)]  # a CUT is followed by a character: the last cut is before the end


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_tokenizer(cfg: TokenizerConfig, corpus: Corpus) -> Tokenizer:
    return file_tokenizer(Path(cfg.path)) if cfg.path else trained_bpe(corpus, cfg.vocab_size)


def file_tokenizer(path: Path) -> Tokenizer:
    """A Hugging Face tokenizer.json or a SentencePiece .model (tokenizer.path)."""
    if not path.is_file():
        raise ConfigError(f"tokenizer.path: file {path} not found (.json or .model)")
    if path.suffix == ".json":
        from tokenizers import Tokenizer as HFTokenizer
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as err:  # the tokenizers library raises plain Exception for a file it cannot read
            raise ConfigError(f"tokenizer.path: {path} is not a Hugging Face tokenizer.json ({err})") from None
        encode = lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
        return Tokenizer(path.name, tok.get_vocab_size(), _file_digest(path), encode)
    if path.suffix == ".model":
        import sentencepiece as spm
        try:
            sp = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as err:
            raise ConfigError(f"tokenizer.path: {path} is not a SentencePiece model ({err})") from None
        encode = lambda texts: sp.encode(texts, num_threads=-1)  # noqa: E731
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
    encode = lambda texts: [e.ids for e in tok.encode_batch(texts)]  # noqa: E731
    return Tokenizer(f"bpe{vocab_size}", tok.get_vocab_size(), _file_digest(path), encode)


def token_splits(corpus: Corpus, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """Each split as a read-only memmapped token array, cached under a hash of corpus + tokenizer. A cached array
    is used only if it is whole (its length and digest as recorded beside it); else the split is tokenised again."""
    # "-w": ids as of encoding each split whole (caches of line-by-line ids, before, have no suffix)
    directory = cache_root() / "tokens" / f"{corpus.fingerprint}-{tokenizer.fingerprint}-w"
    arrays = {}
    for split in SPLITS:
        path = directory / f"{split}.npy"
        arrays[split] = _cached(path)
        if arrays[split] is None:
            if path.exists():
                warnings.warn(f"token cache {path} is damaged or incomplete; tokenising {split} again", stacklevel=2)
            directory.mkdir(parents=True, exist_ok=True)
            with replacing(path) as tmp, open(tmp, "wb") as f:  # concurrent sweeps never read half a file
                np.save(f, tokenizer.encode(corpus.splits[split]))
            arrays[split] = np.load(path, mmap_mode="r")
            write_atomic(path.with_suffix(".json"), json.dumps({"tokens": len(arrays[split]),
                                                                 "sha256": _digest(arrays[split])}))
    return arrays


def _digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids).view(np.uint8)).hexdigest()


def _cached(path: Path) -> np.ndarray | None:
    """The ids cached at `path` if they are what was written (length and digest of its .json record), else None."""
    try:
        record = json.loads(path.with_suffix(".json").read_text())
        ids = np.load(path, mmap_mode="r")
        whole = len(ids) == record["tokens"] and _digest(ids) == record["sha256"]
    except (OSError, ValueError, EOFError, KeyError, TypeError):  # missing, truncated or not an array
        return None
    return ids if whole else None
