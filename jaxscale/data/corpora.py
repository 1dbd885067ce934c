"""Corpus sources: a local directory (WikiText raw layout), Hugging Face `datasets`, or the embedded
default — English prose harvested from the docstrings of the Python standard library."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from jaxscale.config import ConfigError, DataConfig
from jaxscale.files import write_atomic

SPLITS = ("train", "valid", "test")
_FILE_NAMES = {  # WikiText raw layout first, then plain names
    "train": ("wiki.train.raw", "train.txt", "train.raw", "train"),
    "valid": ("wiki.valid.raw", "valid.txt", "validation.txt", "valid.raw", "valid", "validation"),
    "test": ("wiki.test.raw", "test.txt", "test.raw", "test"),
}


def cache_root() -> Path:
    """Where harvested corpora, trained tokenizers and token arrays are kept ($JAXSCALE_CACHE)."""
    root = Path(os.environ.get("JAXSCALE_CACHE", Path.home() / ".cache" / "jaxscale"))
    if root.exists() and not root.is_dir():
        raise ConfigError(f"JAXSCALE_CACHE: {root} is a file; it must name a directory (created if missing)")
    return root


@dataclass(frozen=True)
class Corpus:
    name: str
    splits: dict  # split -> text

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for split in SPLITS:
            digest.update(split.encode())
            digest.update(hashlib.sha256(self.splits[split].encode()).digest())
        return digest.hexdigest()[:16]


def load_corpus(cfg: DataConfig) -> Corpus:
    source = cfg.source
    if cfg.path or source == "auto":  # a path names the corpus, whatever source a config's default says
        source = "dir" if cfg.path else "stdlib"
    if source == "dir":
        return from_directory(Path(cfg.path))
    if source == "hf":
        return from_hugging_face(cfg.hf_name)
    return stdlib_docstrings()


def from_directory(path: Path) -> Corpus:
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "not found"
        raise ConfigError(f"data.path: corpus directory {path} {what}; expected a directory with train/valid/test "
                          "text (wiki.train.raw ... or train.txt ...)")
    splits = {}
    for split, names in _FILE_NAMES.items():
        found = next((path / n for n in names if (path / n).is_file()), None)
        if found is None:
            raise ConfigError(f"data.path: {path} has no {split} split; expected one of {', '.join(names)}")
        try:
            splits[split] = found.read_bytes().decode("utf-8")  # as written: no newline translation (CRLF stays)
        except UnicodeDecodeError as err:
            raise ConfigError(f"data.path: {found} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return Corpus(name=path.name, splits=splits)


def from_hugging_face(name: str) -> Corpus:
    hint = "or point data.path at a local directory with train/valid/test text (e.g. wiki.train.raw)"
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"data.source = 'hf' needs the `datasets` package (pip install 'jaxscale[hf]'), {hint}") from None
    try:
        ds = datasets.load_dataset("wikitext", name)
    except Exception as err:  # offline, unknown name, hub errors: all end the same way for the user
        raise ConfigError(f"data.source = 'hf': could not load wikitext/{name} ({type(err).__name__}: {err}); {hint}") from None
    mapping = {"train": "train", "valid": "validation", "test": "test"}
    # a row per line of the raw file, its newline kept, but "" for each blank line (" \n" in the raw files)
    return Corpus(name=f"wikitext/{name}",
                  splits={s: "".join(row or " \n" for row in ds[h]["text"]) for s, h in mapping.items()})


_PROSE = re.compile(r"^[A-Z'`(][^\n]*[a-z]")


def _prose_paragraphs(doc: str):
    """Paragraphs of a docstring that read as English sentences (no code, tables or signatures)."""
    for para in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in para.strip().splitlines()]
        text = " ".join(lines)
        if len(text) < 40 or any(ln.startswith((">>>", "...", "$", "-", "*", "=", ":", "|")) for ln in lines):
            continue
        letters = sum(c.isalpha() or c == " " for c in text)
        if letters / len(text) > 0.8 and _PROSE.match(text):
            yield text


def stdlib_docstrings() -> Corpus:
    """Docstring prose of the running interpreter's standard library, split by module (every
    20th module to valid, the next to test) so no module's text is in two splits."""
    root = Path(sysconfig.get_paths()["stdlib"])
    version = ".".join(map(str, sys.version_info[:3]))
    name = f"python{version}-stdlib-docstrings"
    cached = cache_root() / "corpora" / f"{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}.json"
    if cached.is_file():
        return Corpus(name=name, splits=json.loads(cached.read_text()))
    corpus = Corpus(name=name, splits=_harvest(root))
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, json.dumps(corpus.splits))
    return corpus


def _harvest(root: Path) -> dict:
    files = sorted(p for p in root.rglob("*.py")
                   if not {"test", "tests", "idlelib", "site-packages", "lib2to3"} & set(p.relative_to(root).parts))
    modules = []
    for path in files:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        paragraphs = [p for n in nodes if (doc := ast.get_docstring(n)) for p in _prose_paragraphs(doc)]
        if paragraphs:
            modules.append("\n".join(paragraphs))
    splits = {"train": [], "valid": [], "test": []}
    for i, text in enumerate(modules):
        splits["valid" if i % 20 == 0 else "test" if i % 20 == 1 else "train"].append(text)
    return {s: "\n\n".join(t) + "\n" for s, t in splits.items()}
