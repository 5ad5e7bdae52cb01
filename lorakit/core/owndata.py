"""Tasks from your own data: a CSV/JSON/JSONL file (``from_file``) or a ``datasets`` dataset.

(prompt, answer) columns are validated row by row like ``from_pairs`` (the row number is in
every error), without holding more than ``max_rows``. ``lk.tasks`` re-exports both functions.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Iterable
from pathlib import Path

from .task import Task, from_pairs

MAX_ROWS = 1_000_000   # default cap on rows read from a file or dataset


# Column names people give prompts and answers, most common first (for the hint).
PROMPT_NAMES = ("prompt", "question", "input", "instruction", "query", "text", "source", "src")
ANSWER_NAMES = ("answer", "response", "output", "completion", "target", "label", "tgt")


def suggest_columns(columns, prompt: str, answer: str) -> str:
    """The hint for missing columns: ``prompt=... and answer=...`` with the columns that look
    like them (``question`` / ``response``), else how to name them."""
    have = {str(c).lower(): c for c in columns}
    picks = []
    for arg, given, names in (("prompt", prompt, PROMPT_NAMES), ("answer", answer, ANSWER_NAMES)):
        if given in columns:
            continue
        found = next((have[n] for n in names if n in have), None)
        if found is None:
            close = difflib.get_close_matches(given.lower(), list(have), n=1)
            found = have[close[0]] if close else None
        if found is not None and found not in (prompt, answer):
            picks.append(f"{arg}={found!r}")
    if picks:
        return f"Did you mean {', '.join(picks)}?"
    return "Pass prompt=... and answer=... to name them."


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
                             f"{sorted(rec)}. {suggest_columns(list(rec), prompt, answer)}")
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


def _lines(path: Path):
    """``(line number, text)`` of a UTF-8 text file; a leading byte-order mark (Excel's
    "CSV UTF-8") is dropped, a byte that is not UTF-8 is a ValueError naming file and line."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}: line {n} is not UTF-8 (byte {raw[err.start]:#04x} at column "
                    f"{err.start + 1}). Save the file as UTF-8 (in Excel: 'CSV UTF-8'; or "
                    f"re-encode it, e.g. iconv -f latin1 -t utf-8)") from None


def _json_array(path: Path, text: str):
    """The records of a ``.json`` file holding one array of objects."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno} is not valid JSON ({err.msg}); a .json file "
                         "holds one array of objects, a .jsonl file one object per line") from None
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected an array of "
                         "objects with the prompt and answer fields (or JSONL, one per line)")
    for n, rec in enumerate(data, start=1):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: item {n} of the array is a JSON {type(rec).__name__}, "
                             "expected an object with the prompt and answer fields")
        yield rec


def _jsonl(path: Path):
    """Records of a JSONL file, or of a ``.json`` file holding an array (read whole)."""
    lines = _lines(path)
    first = next(((n, line) for n, line in lines if line.strip()), None)
    if first is not None and first[1].lstrip().startswith("["):
        text = first[1] + "".join(line for _, line in lines)
        yield from _json_array(path, "\n" * (first[0] - 1) + text)
        return
    for n, line in _chain(first, lines):
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


def _chain(first, rest):
    if first is not None:
        yield first
    yield from rest


def _csv(path: Path):
    reader = csv.DictReader(line for _, line in _lines(path))
    try:
        for rec in reader:
            if None in rec:  # more cells than header columns
                raise ValueError(f"{path}: line {reader.line_num} has more cells than the "
                                 f"header's {len(reader.fieldnames or [])} columns")
            yield {k: v for k, v in rec.items() if v is not None}
    except csv.Error as err:
        if "field larger than field limit" in str(err):
            raise ValueError(
                f"{path}: line {reader.line_num + 1} has a cell longer than "
                f"{csv.field_size_limit():,} characters (csv's field limit); a prompt or answer "
                "that long is rarely meant: check the quoting (an unclosed \" swallows the rest of "
                "the file), or use JSONL for very long texts") from None
        raise ValueError(f"{path}: line {reader.line_num}: {err}") from None


def from_file(path, prompt: str = "prompt", answer: str = "answer", *, name: str | None = None,
              max_rows: int = MAX_ROWS, **kwargs) -> Task:
    """A task from a ``.jsonl`` (one JSON object per line), a ``.json`` (an array of objects,
    or JSONL) or a ``.csv`` (header row) file, UTF-8 with or without a byte-order mark (Excel's
    "CSV UTF-8").

    Args:
        path: the file. prompt, answer: the column (field) names to read.
        name: the task's name (default: the file name without suffix).
        max_rows: refuse files with more rows (the task is held in memory); read row by row.
        **kwargs: ``from_pairs``' options (test_fraction, seed, system, prompt_format).

    Raises ValueError naming the row for a missing column (with the columns that look like
    it), an empty or a non-string value, a byte that is not UTF-8 (file, line and how to
    re-encode) or a CSV cell longer than csv's field limit.
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
                 max_rows: int = MAX_ROWS, split: str | None = None, **kwargs) -> Task:
    """A task from a Hugging Face ``datasets.Dataset``, a streaming ``IterableDataset`` (read
    row by row up to ``max_rows``, then refused: pass ``ds.take(n)`` for a sample) or a
    ``DatasetDict`` with ``split=`` ("train"). Same columns, options and validation as
    ``from_file``; a missing column is named with the columns that look like it."""
    if _is_dataset_dict(ds):
        if split is None:
            raise ValueError(f"this is a DatasetDict with splits {list(ds)}: pass one split, "
                             f"lk.tasks.from_dataset(ds[{next(iter(ds), 'train')!r}], ...) or "
                             f"split={next(iter(ds), 'train')!r}")
        if split not in ds:
            raise ValueError(f"split {split!r} is not in the DatasetDict; its splits: {list(ds)}")
        ds = ds[split]
    elif split is not None:
        raise ValueError("split= is for a DatasetDict; this dataset is one split already")
    if not hasattr(ds, "__iter__") or not hasattr(ds, "column_names"):
        raise TypeError(f"from_dataset expects a datasets.Dataset, IterableDataset or "
                        f"DatasetDict, got {type(ds).__name__}")
    columns = ds.column_names  # None for a stream whose features are unknown: checked per row
    missing = [c for c in (prompt, answer) if columns is not None and c not in columns]
    if missing:
        raise ValueError(f"the dataset has no column(s) {missing}; its columns: {columns}. "
                         f"{suggest_columns(columns, prompt, answer)}")
    if hasattr(ds, "__len__") and len(ds) > max_rows:
        raise ValueError(f"the dataset has {len(ds):,} rows, more than max_rows={max_rows:,}; "
                         "a task is held in memory: pass ds.select(range(n)) or a larger "
                         "max_rows if it fits.")
    pairs = _rows_from(iter(ds), prompt, answer, max_rows, "the dataset")
    return from_pairs(name or getattr(getattr(ds, "info", None), "dataset_name", None)
                      or "dataset", pairs, **kwargs)


def _is_dataset_dict(ds) -> bool:
    """A ``datasets.DatasetDict`` / ``IterableDatasetDict``: a mapping of split -> dataset."""
    return type(ds).__name__ in ("DatasetDict", "IterableDatasetDict")


__all__ = ["ANSWER_NAMES", "MAX_ROWS", "PROMPT_NAMES", "from_dataset", "from_file",
           "suggest_columns"]
