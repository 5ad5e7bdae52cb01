"""Re-execute tutorial notebooks in place, the way they are stored in git.

Usage, from the repository root (the shared venv's interpreter runs the kernel)::

    PYTHONPATH=$PWD .venv/bin/python notebooks/execute.py notebooks/02_attach_and_count.ipynb
    PYTHONPATH=$PWD .venv/bin/python notebooks/execute.py notebooks/0[0-4]_*.ipynb --timeout 900

What it does to each notebook, in order:

1. Runs every cell with nbclient in a ``python3`` kernel started from *this* interpreter
   (jupyter_client swaps the kernelspec's ``python`` for ``sys.executable``), working directory
   ``notebooks/``, so ``PYTHONPATH`` and the venv you call it with are what the cells see.
   Cells tagged ``skip-execution`` (the Colab install cell) are not run and keep no output.
2. Strips what must not be stored: widget-view outputs (``application/vnd.jupyter.widget-view+json``;
   the output's ``text/plain`` fallback is dropped with it, the cell's static PNG/text output
   stays), the notebook's ``metadata.widgets`` state, and the per-cell execution timestamps.
3. Keeps outputs small: a stream output longer than ``--max-stream-lines`` lines is cut to its
   head and tail with a marker in between; a notebook over 1.5 MB is reported (exit status 1).
4. Sets the kernelspec to ``python3`` (what Colab, Binder, VS Code and ``make lab`` all have).

On a cell error (or a dead kernel) the notebook is *not* written: the script prints the cell and
the traceback, writes what ran to ``/tmp/<name>.partial.ipynb`` (outputs are cleared before the
run, so the partial holds only this run's) and exits with status 1. Each executed code cell's
time goes to stderr as it finishes (a stuck run shows its last finished cell); the wall time
per notebook is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MAX_BYTES = 1_500_000
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _shorten(text: str, max_lines: int) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) <= max_lines:
        return text
    head, tail = lines[: max_lines // 2], lines[-(max_lines // 2):]
    return "".join(head) + f"... [{len(lines) - len(head) - len(tail)} lines cut] ...\n" + "".join(tail)


def clean(nb: nbformat.NotebookNode, max_stream_lines: int = 60) -> nbformat.NotebookNode:
    """Strip widget views/state and timing metadata, shorten long streams; returns ``nb``."""
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if WIDGET_VIEW in out.get("data", {}):
                continue
            if out.get("output_type") == "stream":
                out["text"] = _shorten(out["text"], max_stream_lines)
            kept.append(out)
        cell.outputs = kept
        if "skip-execution" in cell.metadata.get("tags", []):
            cell.outputs, cell.execution_count = [], None
    return nb


def execute(path: Path, timeout: int = 600, max_stream_lines: int = 60) -> float:
    """Execute ``path`` in place; returns the wall time in seconds (raises on a cell error)."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:   # a partial then holds only what this run produced, no stale outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.perf_counter()
    clock = [start]

    def progress(cell, cell_index, **_):   # one line per code cell: where a stuck run stopped
        now = time.perf_counter()
        print(f"  {path.name} [{cell_index}] {now - clock[0]:.1f} s", file=sys.stderr, flush=True)
        clock[0] = now

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            skip_cells_with_tag="skip-execution", record_timing=False,
                            on_cell_executed=progress)
    try:
        client.execute()
    except (CellExecutionError, DeadKernelError):
        partial = Path("/tmp") / f"{path.stem}.partial.ipynb"
        nbformat.write(clean(nb, max_stream_lines), partial)   # what ran, for the post-mortem
        print(f"(the cells that ran, with their outputs: {partial})", file=sys.stderr)
        raise
    seconds = time.perf_counter() - start
    nbformat.write(clean(nb, max_stream_lines), path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (600)")
    parser.add_argument("--max-stream-lines", type=int, default=60)
    args = parser.parse_args(argv)
    status = 0
    for path in args.notebooks:
        try:
            seconds = execute(path, args.timeout, args.max_stream_lines)
        except (CellExecutionError, DeadKernelError) as err:
            print(f"FAILED {path} (not written):\n{err}", file=sys.stderr)
            status = 1
            continue
        size = path.stat().st_size
        flag = "" if size <= MAX_BYTES else f"  OVER {MAX_BYTES:,} bytes"
        print(f"{path}: {seconds:.0f} s, {size:,} bytes{flag}")
        status |= size > MAX_BYTES
    return status


if __name__ == "__main__":
    sys.exit(main())
