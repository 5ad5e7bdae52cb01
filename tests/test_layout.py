"""The shape of the code: the public face, the layers' private names, light imports.

Read as text/AST (the import-linter contracts in pyproject.toml, run by `make lint`, check the
layers and import circles): these fail the moment a change breaks the layout.
"""

import ast
import subprocess
import sys
import types
from pathlib import Path

import lorakit as lk

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lorakit"
SOURCES = {".".join(p.relative_to(ROOT).with_suffix("").parts): p.read_text("utf-8")
           for p in sorted(PACKAGE.rglob("*.py"))}

# The public API: `dir(lk)` lists exactly these (and __version__). Adding a name is a decision:
# add it here, to __all__, and to docs/architecture.md's public-face table.
PUBLIC = {
    "AdapterBank", "AdapterPanel", "BUILTIN_CONFIGS", "Budget", "DeltaScaleExplorer",
    "LoRAPanel", "LoraSettings", "MergeCheck", "NonFiniteLossError", "ParamCounts",
    "PhiGridExplorer", "RecordSettings", "Recorder", "Recording", "Task", "TrainPanel",
    "TrainResult", "TrainSettings", "attach", "attach_adalora", "builtin_config",
    "compare_methods", "count_params", "detach", "estimate", "explorers", "export_gif",
    "export_html", "export_mp4", "export_pack", "export_pdf", "export_png", "export_svg",
    "figures", "find_target_parameters", "find_targets", "generate", "get_display_mode",
    "is_merged", "latency", "linear_modules", "load_adapter", "load_model", "lora_param_count",
    "merge", "merge_in_place", "save_adapter", "scratch", "set_display_mode", "set_theme",
    "setup_notebook", "show", "tasks", "train", "unmerge",
}
# the modules that are part of the public face, as namespaces: lk.tasks.get, lk.figures.*
PUBLIC_MODULES = {"tasks", "figures", "explorers", "scratch"}


def test_dir_lists_the_public_api_and_no_internal_module():
    assert set(dir(lk)) == PUBLIC | {"__version__"}
    assert set(lk.__all__) == PUBLIC and len(lk.__all__) == len(PUBLIC)
    modules = {n for n in PUBLIC if isinstance(getattr(lk, n), types.ModuleType)}
    assert modules == PUBLIC_MODULES                # lk.train is the function, not a module
    assert lk.train.__module__ == "lorakit.core.train" and callable(lk.attach)


def test_import_lorakit_does_not_import_views():
    code = ("import sys, lorakit as lk; lk.LoraSettings(); "
            "bad = [m for m in ('plotly', 'ipywidgets', 'anywidget') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _module_of(name: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom in module ``name`` reads from."""
    if not node.level:
        return node.module or ""
    package = name.split(".")
    package = package if name.endswith("__init__") else package[:-1]
    package = [p for p in package if p != "__init__"]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_crossings(sources: dict[str, str]) -> list[str]:
    """``from x import _name`` and ``x._name`` where x is another lorakit module."""
    found = []
    for name, src in sources.items():
        tree = ast.parse(src)
        modules = {}                                  # local alias -> lorakit module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                origin = _module_of(name, node)
                if not origin.startswith("lorakit"):
                    continue
                for a in node.names:
                    own_module = (f"{origin}.{a.name}" in sources
                                  and name.rsplit(".", 1)[0] == origin)  # a package's _module
                    if a.name.startswith("_") and not a.name.startswith("__") and not own_module:
                        found.append(f"{name}: from {origin} import {a.name}")
                    modules[a.asname or a.name] = f"{origin}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("lorakit"):
                        modules[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{name}: {node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    assert private_crossings(SOURCES) == []


def test_the_private_name_check_can_fail():
    bad = {"lorakit.view.widgets": "from ..core.attach import _check\nfrom . import figures\n"
                                   "figures._figure()\n",
           "lorakit.core.serve": "from . import attach as at\nat._rank()\n"}
    assert private_crossings(bad) == [
        "lorakit.view.widgets: from lorakit.core.attach import _check",
        "lorakit.view.widgets: figures._figure", "lorakit.core.serve: at._rank"]


def test_no_function_over_70_lines_and_a_short_cli():
    long = [f"{name}.{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for name, src in SOURCES.items() for n in ast.walk(ast.parse(src))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 70]
    assert long == []
    assert len(SOURCES["lorakit.app.cli"].splitlines()) <= 300


def test_the_peft_prefix_lives_in_naming_only():
    assert [name for name, src in SOURCES.items()
            if "base_model.model." in src] == ["lorakit.core.naming"]


def test_architecture_doc_is_generated_from_the_code():
    """docs/architecture.md's layout, public face and contract blocks are what
    docs/architecture.py makes of the code now (run it after adding a module or a contract),
    and every module of every package is in it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("architecture", ROOT / "docs" / "architecture.py")
    architecture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(architecture)
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert architecture.render(doc) == doc, "stale: run python docs/architecture.py"
    missing = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "__init__.py" and p.parent != PACKAGE
               and f"`{p.relative_to(PACKAGE)}`" not in doc]
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
    from workers import FILE_SECONDS, longest_first

    assert not [p for p in FILE_SECONDS if not (ROOT / p).is_file()]
    ids = ["tests/test_a.py::x", "notebooks/04_qlora.ipynb::Cell 0", "tests/test_a.py::y",
           "notebooks/07_variants.ipynb::Cell 0", "notebooks/04_qlora.ipynb::Cell 1",
           "notebooks/07_variants.ipynb::Cell 1", "tests/test_b.py::z"]
    assert [ids[i] for i in longest_first(ids)] == [
        "notebooks/07_variants.ipynb::Cell 0", "notebooks/07_variants.ipynb::Cell 1",
        "notebooks/04_qlora.ipynb::Cell 0", "notebooks/04_qlora.ipynb::Cell 1",
        "tests/test_a.py::x", "tests/test_a.py::y", "tests/test_b.py::z"]


def test_no_settings_field_is_declared_twice():
    """The commands' settings hold LoraSettings / TrainSettings / RecordSettings objects; none
    of their fields is declared again beside them."""
    from dataclasses import fields

    from lorakit.app.tour import TourSettings
    from lorakit.app.train_cli import TrainCommand

    core = {f.name for cls in (lk.LoraSettings, lk.TrainSettings, lk.RecordSettings)
            for f in fields(cls)}
    for cls in (TourSettings, TrainCommand):
        assert core & {f.name for f in fields(cls)} == set(), cls.__name__
    assert {f.name for f in fields(TourSettings) if f.metadata.get("nested")} == {"lora", "train"}
