"""Re-execute tutorial notebooks in place, the way they are stored in git.

Usage, from the repository root (the shared venv's interpreter runs the kernel)::

    PYTHONPATH=$PWD .venv/bin/python notebooks/execute.py notebooks/02_attach_and_count.ipynb
    PYTHONPATH=$PWD .venv/bin/python notebooks/execute.py notebooks/0[0-4]_*.ipynb --timeout 900

What it does to each notebook, in order:

1. Checks first that static pictures can be made (kaleido, Pillow, a Chrome/Chromium); if not,
   it says what to install and runs nothing.
2. Runs every cell with nbclient in a ``python3`` kernel started from *this* interpreter
   (jupyter_client swaps the kernelspec's ``python`` for ``sys.executable``), working directory
   ``notebooks/``, so ``PYTHONPATH`` and the venv you call it with are what the cells see.
   The kernel gets ``LORAKIT_STATIC_OUTPUTS=1``: ``lk.setup_notebook()`` then puts a static
   picture beside every interactive output, in the same output (``lorakit.view.notebook``):
   a PNG beside each plotly figure (an animation: its first and last frames) and a PNG
   snapshot beside each lorakit panel or explorer. Cells tagged ``skip-execution`` (the Colab
   install cell) are not run and keep no output.
3. Cleans (``clean``): solution cells (tag ``solution``) keep no output, so a reader sees no
   answer before trying; widget views without a snapshot (progress bars) are dropped, and the
   notebook's widget state (``metadata.widgets``, as JupyterLab's "Save Widget State" stores
   it) keeps only the models the kept views need (a layout without its unset, null, CSS
   properties); stderr streams are dropped; the notebook's,
   the repository's and the home folder's paths become relative (``~`` for home); a stream
   longer than ``--max-stream-lines`` lines is cut to its head and tail; per-cell execution
   timestamps go.
4. Checks (``problems``): no error output, every figure and every panel view has its picture,
   every kept view its widget state, no solution output. A problem: the notebook is not
   written (as for a cell error).
5. Keeps notebooks small: one over ``MAX_BYTES`` (2 MB) is reported with its largest outputs
   (exit status 1). Sets the kernelspec to ``python3`` (what Colab, Binder, VS Code and
   ``make lab`` all have).

On a cell error (or a dead kernel) the notebook is *not* written: the script prints the cell and
the traceback, writes what ran to ``/tmp/<name>.partial.ipynb`` (outputs are cleared before the
run, so the partial holds only this run's) and exits with status 1. Each executed code cell's
time goes to stderr as it finishes (a stuck run shows its last finished cell); the wall time
per notebook is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PLOTLY = "application/vnd.plotly.v1+json"
STATIC_ENV = "LORAKIT_STATIC_OUTPUTS"       # read by lorakit.view.notebook.storing_static
MAX_BYTES = 2_000_000                       # per stored notebook (README: the size budget)
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
_MODEL_REF = re.compile(r"IPY_MODEL_(\w+)")


class StaticOutputError(Exception):
    """The executed notebook breaks a rule of stored notebooks (``problems``)."""


def _shorten(text: str, max_lines: int) -> str:
    lines = text.splitlines(keepends=True)
    if len(lines) <= max_lines:
        return text
    head, tail = lines[: max_lines // 2], lines[-(max_lines // 2):]
    return "".join(head) + f"... [{len(lines) - len(head) - len(tail)} lines cut] ...\n" + "".join(tail)


def _relative(text, folder: Path):
    """``text`` with ``folder``, its parent (the repository) and the home folder made relative."""
    if not isinstance(text, str):
        return text
    for prefix, short in ((folder, ""), (folder.parent, ""), (Path.home(), "~/")):
        text = text.replace(f"{prefix}/", short)
    return text


def _keep(out: dict) -> bool:
    """Stored: not stderr, and a widget view only with its static snapshot beside it."""
    if out.get("output_type") == "stream":
        return out.get("name") != "stderr"
    data = out.get("data", {})
    return WIDGET_VIEW not in data or "image/png" in data


def _clean_output(out: dict, max_stream_lines: int, folder: Path) -> dict:
    if out.get("output_type") == "stream":
        out["text"] = _relative(_shorten(out["text"], max_stream_lines), folder)
    for key in ("text/plain", "text/html", "text/markdown"):
        if key in out.get("data", {}):
            out["data"][key] = _relative(out["data"][key], folder)
    return out


def _needed_models(state: dict, roots: list[str]) -> set[str]:
    """The widget models ``roots`` show, with every model they refer to (``IPY_MODEL_<id>``)."""
    needed: set[str] = set()
    todo = [r for r in roots if r in state]
    while todo:
        model = todo.pop()
        if model not in needed:
            needed.add(model)
            refs = _MODEL_REF.findall(json.dumps(state[model].get("state", {})))
            todo += [r for r in refs if r in state]
    return needed


def _prune_widget_state(nb: nbformat.NotebookNode, roots: list[str]) -> None:
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    needed = _needed_models(state, roots)
    if not needed:
        nb.metadata.pop("widgets", None)
        return
    kept = {k: v for k, v in state.items() if k in needed}
    for model in kept.values():        # a layout's unset CSS properties: null, its defaults
        if model.get("model_name") == "LayoutModel":
            model["state"] = {k: v for k, v in model["state"].items() if v is not None}
    nb.metadata["widgets"][WIDGET_STATE]["state"] = kept


def clean(nb: nbformat.NotebookNode, max_stream_lines: int = 60,
          folder: Path | None = None) -> nbformat.NotebookNode:
    """Make an executed notebook fit to store (step 3 of the module docstring); returns ``nb``.

    ``folder``: the notebook's folder (its path and its parent's are made relative in text
    outputs); default: this script's folder.
    """
    folder = (folder or Path(__file__).parent).resolve()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    views: list[str] = []
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if "skip-execution" in tags or "solution" in tags:
            cell.outputs, cell.execution_count = [], None
            continue
        cell.outputs = [_clean_output(out, max_stream_lines, folder)
                        for out in cell.get("outputs", []) if _keep(out)]
        views += [out["data"][WIDGET_VIEW]["model_id"] for out in cell.outputs
                  if WIDGET_VIEW in out.get("data", {})]
    _prune_widget_state(nb, views)
    return nb


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What keeps a cleaned notebook from being stored, one line per problem (cell indices
    as in the progress lines): error outputs, figures without a PNG, panel views without a
    snapshot or without widget state, solution cells with outputs."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.outputs and "solution" in cell.metadata.get("tags", []):
            found.append(f"cell [{i}]: a solution cell with stored output")
        for out in cell.outputs:
            data = out.get("data", {})
            if out.get("output_type") == "error":
                found.append(f"cell [{i}]: error output {out.get('ename')}: "
                             f"{str(out.get('evalue'))[:200]}")
            elif PLOTLY in data and "image/png" not in data:
                found.append(f"cell [{i}]: a plotly figure without its PNG")
            elif WIDGET_VIEW in data and "image/png" not in data:
                found.append(f"cell [{i}]: a widget view without its snapshot")
            elif WIDGET_VIEW in data and data[WIDGET_VIEW].get("model_id") not in state:
                found.append(f"cell [{i}]: a widget view whose state is not stored")
    return found


def largest_outputs(nb: nbformat.NotebookNode, n: int = 3) -> list[tuple[str, int]]:
    """The ``n`` biggest parts of a notebook as (where, bytes), largest first: each output
    (``cell [i] <its main mimetype>``) and the stored widget state."""
    parts = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            kind = next(iter(out.get("data", {})), out.get("output_type", "?"))
            parts.append((f"cell [{i}] {kind}", len(json.dumps(out))))
    if "widgets" in nb.metadata:
        parts.append(("metadata.widgets (widget state)", len(json.dumps(nb.metadata.widgets))))
    return sorted(parts, key=lambda p: -p[1])[:n]


def budget_report(path: Path, nb: nbformat.NotebookNode | None = None) -> str | None:
    """None if ``path`` is within ``MAX_BYTES``; else a line naming it and its largest outputs."""
    size = path.stat().st_size
    if size <= MAX_BYTES:
        return None
    nb = nb or nbformat.read(path, as_version=4)
    parts = "; ".join(f"{where}: {b:,} bytes" for where, b in largest_outputs(nb))
    return f"{path.name}: {size:,} bytes, over the budget of {MAX_BYTES:,}; largest: {parts}"


def preflight() -> str | None:
    """None when static pictures can be made here, else what to install."""
    try:
        import PIL  # noqa: F401

        from lorakit.view.render import need_kaleido
        need_kaleido()
    except (ImportError, RuntimeError) as e:
        return f"cannot make the static pictures stored notebooks need: {e}"
    return None


def _run(nb: nbformat.NotebookNode, path: Path, timeout: int) -> None:
    start = [time.perf_counter()]

    def progress(cell, cell_index, **_):   # one line per code cell: where a stuck run stopped
        now = time.perf_counter()
        print(f"  {path.name} [{cell_index}] {now - start[0]:.1f} s", file=sys.stderr, flush=True)
        start[0] = now

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            skip_cells_with_tag="skip-execution", record_timing=False,
                            store_widget_state=True, on_cell_executed=progress)
    before = os.environ.get(STATIC_ENV)
    os.environ[STATIC_ENV] = "1"            # the kernel inherits it: lorakit's static fallbacks
    try:
        client.execute()
    finally:
        if before is None:
            os.environ.pop(STATIC_ENV, None)
        else:
            os.environ[STATIC_ENV] = before


def execute(path: Path, timeout: int = 600, max_stream_lines: int = 60) -> float:
    """Execute ``path`` in place; returns the wall time in seconds (raises on a cell error,
    or ``StaticOutputError`` listing the ``problems``; then nothing is written to ``path``)."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:   # a partial then holds only what this run produced, no stale outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    start = time.perf_counter()
    partial = Path("/tmp") / f"{path.stem}.partial.ipynb"
    try:
        _run(nb, path, timeout)
    except (CellExecutionError, DeadKernelError):
        nbformat.write(clean(nb, max_stream_lines, path.parent), partial)   # for the post-mortem
        print(f"(the cells that ran, with their outputs: {partial})", file=sys.stderr)
        raise
    clean(nb, max_stream_lines, path.parent)
    found = problems(nb)
    if found:
        nbformat.write(nb, partial)
        raise StaticOutputError("\n".join([*found, f"(the executed notebook: {partial})"]))
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (600)")
    parser.add_argument("--max-stream-lines", type=int, default=60)
    args = parser.parse_args(argv)
    missing = preflight()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    status = 0
    for path in args.notebooks:
        try:
            seconds = execute(path, args.timeout, args.max_stream_lines)
        except (CellExecutionError, DeadKernelError, StaticOutputError) as err:
            print(f"FAILED {path} (not written):\n{err}", file=sys.stderr)
            status = 1
            continue
        over = budget_report(path)
        print(f"{path}: {seconds:.0f} s, {path.stat().st_size:,} bytes"
              + (f"\n  OVER: {over}" if over else ""))
        status |= over is not None
    return status


if __name__ == "__main__":
    sys.exit(main())
