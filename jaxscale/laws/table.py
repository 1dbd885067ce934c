"""Reading result tables (CSV) with one-line errors that name the file, column or row at fault."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


class InputError(ValueError):
    """Bad user input; the message is one line, printed as is by the command-line tools (exit code 2)."""


def read_csv(path) -> tuple[list[str], list[dict[str, str]]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: not a CSV table of UTF-8 text ({err})") from None
    if not columns:
        raise InputError(f"{path}: empty file, expected a header row")
    return columns, rows


def ok_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows of runs that finished: status "ok" (a sweep's results.csv)."""
    return [row for row in rows if (row.get("status") or "").strip() == "ok"]


def require_columns(path, columns: list[str], wanted: list[str]) -> None:
    for name in wanted:
        if name not in columns:
            raise InputError(f"{path}: no column {name!r}; available columns: {', '.join(columns)}")


def numbers(path, rows: list[dict[str, str]], column: str, *, positive: bool = False) -> np.ndarray:
    """A column as floats; empty cells become nan unless positive=True, which demands a number > 0 in every row."""
    out = np.empty(len(rows))
    for i, row in enumerate(rows):
        text = (row.get(column) or "").strip()
        try:
            value = float(text) if text else np.nan
        except ValueError:
            raise InputError(f"{path}: column {column!r}, data row {i + 1}: {text!r} is not a number") from None
        if positive and not value > 0:
            raise InputError(f"{path}: column {column!r}, data row {i + 1}: {text!r} is not a positive number")
        out[i] = value
    return out
