"""Student and teacher editions of the tutorials, made with nbconvert's preprocessors.

Usage, from the repository root (``make student`` / ``make teacher`` run it)::

    .venv/bin/python notebooks/editions.py student     # -> dist/student/
    .venv/bin/python notebooks/editions.py teacher     # -> dist/teacher/

* **student**: every cell tagged ``solution`` removed (``TagRemovePreprocessor``), every
  output and execution count cleared (``ClearOutputPreprocessor``) and the stored widget state
  dropped (``DropWidgetState``): the learner runs the notebook and meets each result first.
* **teacher**: every cell and every stored output kept (figures with their pictures, panels
  with their snapshots and widget state), and the solution cells' source shown instead of
  folded (``ShowSolutions``), ready to project or print.

Cells are chosen by their tags, never by their text. The edition is built in a scratch folder
beside its target and replaces ``dist/<edition>/`` only when every notebook converted, so a
failure leaves the previous edition as it was. ``dist/`` is git-ignored.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from nbconvert.exporters import NotebookExporter
from nbconvert.preprocessors import ClearOutputPreprocessor, Preprocessor, TagRemovePreprocessor

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOLUTION = "solution"
EDITIONS = ("student", "teacher")


class DropWidgetState(Preprocessor):
    """Removes the notebook's stored widget state (``metadata.widgets``)."""

    def preprocess(self, nb, resources):
        nb.metadata.pop("widgets", None)
        return nb, resources


class ShowSolutions(Preprocessor):
    """Unfolds the source of cells tagged ``solution`` (``jupyter.source_hidden``)."""

    def preprocess_cell(self, cell, resources, index):
        if SOLUTION in cell.metadata.get("tags", []):
            cell.metadata.get("jupyter", {}).pop("source_hidden", None)
            if not cell.metadata.get("jupyter", True):
                cell.metadata.pop("jupyter")
        return cell, resources


def exporter(edition: str) -> NotebookExporter:
    """The nbconvert exporter that writes ``edition`` ("student" or "teacher")."""
    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {', '.join(EDITIONS)}, got {edition!r}")
    out = NotebookExporter()
    if edition == "student":
        steps = [TagRemovePreprocessor(remove_cell_tags={SOLUTION}), ClearOutputPreprocessor(),
                 DropWidgetState()]
    else:
        steps = [ShowSolutions()]
    for step in steps:
        out.register_preprocessor(step, enabled=True)
    return out


def build(edition: str, target: Path, notebooks: list[Path] | None = None) -> list[Path]:
    """Write ``edition`` of ``notebooks`` (default: the tutorials) into ``target``, replacing
    it whole once all converted; returns the written paths. Raises before touching
    ``target`` if an edition name or a notebook is wrong."""
    conv = exporter(edition)
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) if notebooks is None else notebooks
    missing = [str(p) for p in sources if not Path(p).is_file()]
    if not sources or missing:
        raise FileNotFoundError(f"no notebooks to convert: {', '.join(missing) or 'none given'}")
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    scratch.chmod(0o755)                  # mkdtemp's 0700 would become the edition's mode
    try:
        for src in sources:
            body, _ = conv.from_filename(str(src))
            (scratch / Path(src).name).write_text(body, encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [target / Path(src).name for src in sources]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("edition", choices=EDITIONS)
    parser.add_argument("--out", type=Path, default=None,
                        help="target folder (default: dist/<edition>)")
    args = parser.parse_args(argv)
    paths = build(args.edition, args.out or ROOT / "dist" / args.edition)
    print(f"{args.edition} edition: {len(paths)} notebooks in {paths[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
