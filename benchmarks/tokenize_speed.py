"""How long tokenising a split takes: jaxscale's pieces against the tokenizer's own whole-text call and, for the
record, line by line (what jaxscale did before 2026-12-05, whose ids differ). Also checks that the pieces give the
whole-text ids.

    python benchmarks/tokenize_speed.py [--corpus ../shared/data/enwiki-sample] [--repeats 3]
        [--tokenizers ../shared/tokenizers/gpt2/tokenizer.json,../shared/tokenizers/llama/tokenizer.model]

Prints a Markdown table (median of --repeats; each tokenizer loaded once, outside the timing).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from jaxscale.config import TokenizerConfig
from jaxscale.data.tokenize import load_tokenizer


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/enwiki-sample")
    parser.add_argument("--tokenizers", default="../shared/tokenizers/gpt2/tokenizer.json,"
                                                "../shared/tokenizers/llama/tokenizer.model")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = (Path(args.corpus) / "train.txt").read_text()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.corpus}/train.txt, {len(text):,} characters; median of {args.repeats}\n")
    print("| tokenizer | pieces (jaxscale) | whole text, one call | line by line (before) | ids: pieces = whole |")
    print("|---|---:|---:|---:|---|")
    for path in args.tokenizers.split(","):
        tok = load_tokenizer(TokenizerConfig(path=path), corpus=None)
        pieces_s, ids = timed(lambda: tok.encode(text), args.repeats)
        whole_s, whole = timed(lambda: tok.encode_batch([text])[0], args.repeats)
        lines_s, by_line = timed(lambda: tok.encode_batch(text.splitlines(keepends=True)), args.repeats)
        same = np.array_equal(ids, whole)
        print(f"| {Path(path).name} ({Path(path).parent.name}) | {pieces_s:.2f} s, {len(ids):,} tokens | "
              f"{whole_s:.2f} s, {len(whole):,} | {lines_s:.2f} s, {sum(map(len, by_line)):,} | {same} |")


if __name__ == "__main__":
    main()
