"""Tasks from your own data: a CSV/JSONL file (``from_file``) or a ``datasets.Dataset``.

(prompt, answer) columns are validated row by row like ``from_pairs`` (the row number is in
every error), without holding more than ``max_rows``. ``lk.tasks`` re-exports both functions.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from .task import Task, from_pairs

MAX_ROWS = 1_000_000   # default cap on rows read from a file or dataset


def _rows_from(records: Iterable, prompt: str, answer: str, max_rows: int, where: str,
               unit: str = "row") -> list[tuple[str, str]]:
    """Validated (prompt, answer) pairs from dict-like records, numbering rows from 1."""
    pairs = []
    for n, rec in enumerate(records, start=1):
        if n > max_rows:
            raise ValueError(f"{where} has more than max_rows={max_rows:,} rows; a task is held "
                             "in memory. Pass a sample, or a larger max_rows if it fits.")
        missing = [c for c in (prompt, answer) if c not in rec]
        if missing:
            raise ValueError(f"{where}: {unit} {n} has no column(s) {missing}; columns there: "
                             f"{sorted(rec)}. Pass prompt=... and answer=... to name them.")
        values = (rec[prompt], rec[answer])
        for column, value in zip((prompt, answer), values, strict=True):
            if not isinstance(value, str):
                raise ValueError(f"{where}: {unit} {n}, column {column!r} is "
                                 f"{type(value).__name__} {value!r}, not a string")
            if not value.strip():
                raise ValueError(f"{where}: {unit} {n}, column {column!r} is empty")
        pairs.append(values)
    if len(pairs) < 2:
        raise ValueError(f"{where} has {len(pairs)} row(s); a task needs at least 2")
    return pairs


def _jsonl(path: Path):
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                raise ValueError(f"{path}: line {n} is empty (a JSONL file has one JSON object "
                                 "per line)")
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {n} is not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: line {n} is a JSON {type(rec).__name__}, expected "
                                 "an object with the prompt and answer fields")
            yield rec


def _csv(path: Path):
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for rec in reader:
            if None in rec:  # more cells than header columns
                raise ValueError(f"{path}: line {reader.line_num} has more cells than the "
                                 f"header's {len(reader.fieldnames or [])} columns")
            yield {k: v for k, v in rec.items() if v is not None}


def from_file(path, prompt: str = "prompt", answer: str = "answer", *, name: str | None = None,
              max_rows: int = MAX_ROWS, **kwargs) -> Task:
    """A task from a ``.jsonl`` (one JSON object per line) or ``.csv`` (header row) file.

    Args:
        path: the file. prompt, answer: the column (field) names to read.
        name: the task's name (default: the file name without suffix).
        max_rows: refuse files with more rows (the task is held in memory); read row by row.
        **kwargs: ``from_pairs``' options (test_fraction, seed, system, prompt_format).

    Raises ValueError naming the row for a missing column, an empty or a non-string value.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    readers = {".jsonl": (_jsonl, "line"), ".json": (_jsonl, "line"), ".csv": (_csv, "row")}
    if path.suffix.lower() not in readers:
        raise ValueError(f"unsupported data file {path.name!r}: use .jsonl (one JSON object "
                         "per line) or .csv (with a header row)")
    read, unit = readers[path.suffix.lower()]
    pairs = _rows_from(read(path), prompt, answer, max_rows, str(path), unit)
    return from_pairs(name or path.stem, pairs, **kwargs)


def from_dataset(ds, prompt: str = "prompt", answer: str = "answer", *, name: str | None = None,
                 max_rows: int = MAX_ROWS, **kwargs) -> Task:
    """A task from a Hugging Face ``datasets.Dataset`` (or ``IterableDataset``, read until
    ``max_rows``). Same columns, options and validation as ``from_file``."""
    columns = getattr(ds, "column_names", None)
    if columns is None or not hasattr(ds, "__iter__"):
        raise TypeError(f"from_dataset expects a datasets.Dataset, got {type(ds).__name__}")
    missing = [c for c in (prompt, answer) if c not in columns]
    if missing:
        raise ValueError(f"the dataset has no column(s) {missing}; its columns: {columns}. "
                         "Pass prompt=... and answer=... to name them.")
    if hasattr(ds, "__len__") and len(ds) > max_rows:
        raise ValueError(f"the dataset has {len(ds):,} rows, more than max_rows={max_rows:,}; "
                         "a task is held in memory: pass ds.select(range(n)) or a larger "
                         "max_rows if it fits.")
    pairs = _rows_from(iter(ds), prompt, answer, max_rows, "the dataset")
    return from_pairs(name or getattr(getattr(ds, "info", None), "dataset_name", None)
                      or "dataset", pairs, **kwargs)


__all__ = ["MAX_ROWS", "from_dataset", "from_file"]
