"""The core stays light: `import lorakit` pulls in neither plotly nor ipywidgets."""

import subprocess
import sys


def test_import_lorakit_does_not_import_views():
    code = ("import sys, lorakit as lk; lk.LoraSettings(); "
            "bad = [m for m in ('plotly', 'ipywidgets', 'anywidget') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# --------------------------------------------------------------------------- code shape (#14)
# Read as text/AST: these catch a regression of the refactor the moment it is written.

import ast  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PACKAGE = Path(__file__).resolve().parent.parent / "lorakit"
SOURCES = {p.stem: p.read_text("utf-8") for p in sorted(PACKAGE.glob("*.py"))}


def _imports(source: str) -> set[str]:
    """The lorakit modules a source imports (``from .x import``, ``from . import x``), leaving
    out a module ``__getattr__`` (the lazy aliases for names that moved elsewhere)."""
    tree = ast.parse(source)
    aliases = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    skip = {id(n) for a in aliases for n in ast.walk(a)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in skip:
            found.update([node.module] if node.module else [a.name for a in node.names])
    return found


def test_no_function_over_70_lines_and_a_short_cli():
    long = [f"{name}.{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for name, src in SOURCES.items() for n in ast.walk(ast.parse(src))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 70]
    assert long == []
    assert len(SOURCES["cli"].splitlines()) <= 300


def test_the_peft_prefix_lives_in_naming_only():
    assert [name for name, src in SOURCES.items() if "base_model.model." in src] == ["naming"]


@pytest.mark.parametrize("module, forbidden", [
    ("analysis", {"train", "attach", "serve", "experiments"}),   # measures; never trains
    ("naming", {"attach", "serve", "record", "train", "widgets", "figures"}),
    ("settings", {"attach", "train", "serve", "record", "params"}),
])
def test_dependency_arrows_point_one_way(module, forbidden):
    assert _imports(SOURCES[module]) & forbidden == set()



def test_architecture_doc_names_every_module():
    """docs/architecture.md (the repository's design page) lists each module of lorakit/."""
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "architecture.md").read_text()
    missing = [p.name for p in sorted((root / "lorakit").glob("*.py"))
               if p.name != "__init__.py" and f"`{p.name}`" not in doc]
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_each_xdist_worker_gets_its_share_of_the_cores():
    import os

    import torch
    from workers import worker_threads

    assert [worker_threads(2, 2), worker_threads(2, 16), worker_threads(4, 2)] == [1, 8, 1]
    if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):       # make test: this worker's share
        assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])


def test_make_test_runs_the_longest_files_first():
    """make test's order: whole files, longest first by FILE_SECONDS, each file's tests in
    their own order; every file the table names exists (a renamed notebook would silently
    fall back to collection order)."""
    from pathlib import Path

    from workers import FILE_SECONDS, longest_first

    root = Path(__file__).resolve().parents[1]
    assert not [p for p in FILE_SECONDS if not (root / p).is_file()]
    ids = ["tests/test_a.py::x", "notebooks/04_qlora.ipynb::Cell 0", "tests/test_a.py::y",
           "notebooks/07_variants.ipynb::Cell 0", "notebooks/04_qlora.ipynb::Cell 1",
           "notebooks/07_variants.ipynb::Cell 1", "tests/test_b.py::z"]
    assert [ids[i] for i in longest_first(ids)] == [
        "notebooks/07_variants.ipynb::Cell 0", "notebooks/07_variants.ipynb::Cell 1",
        "notebooks/04_qlora.ipynb::Cell 0", "notebooks/04_qlora.ipynb::Cell 1",
        "tests/test_a.py::x", "tests/test_a.py::y", "tests/test_b.py::z"]
