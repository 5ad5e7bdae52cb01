"""Static checks on the tutorial notebooks and the README table (nbval executes them).

The rules: no inlined plotly.js, a title with Colab and Binder links, a Colab-only install
cell nbval skips, a ``parameters`` cell; every notebook listed in the README with its links;
the README's screenshots exist and are real PNGs. The size budget, the static pictures and the
solutions' stored outputs: test_notebook_static.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import plotly
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = (ROOT / "README.md").read_text()
# The first line of the bundled plotly.min.js ("/**\n* plotly.js v3.x.y ..."): present in a
# notebook only if some output inlined the whole library instead of loading it from the CDN.
PLOTLY_BANNER = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()[:60]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def test_all_ten_tutorials_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(10)], NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_loads_plotly_from_the_cdn(path):
    text = path.read_text()
    assert PLOTLY_BANNER not in text, f"{path.name} inlines plotly.js"
    for cell in _cells(path):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name}: stored error output"


# What a stored notebook must not hold: history ("issue #12", "the first edition"), this
# machine's paths, nbval directives as comments a learner reads (they are cell tags).
STALE = re.compile(r"issue #\d|\b(?:first|second|third) edition\b|/work/|/home/\w|/tmp/[\w.-]|"
                   r"site-packages|^\s*#\s*NBVAL_", re.I | re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stderr_history_or_build_paths(path):
    for i, cell in enumerate(_cells(path)):
        outputs = cell.get("outputs", [])
        assert not [o for o in outputs if o.get("name") == "stderr"], f"{path.name} cell {i}: stderr"
        texts = ["".join(cell["source"])] + ["".join(o.get("text", "")) for o in outputs] + [
            "".join(o.get("data", {}).get("text/plain", "")) for o in outputs]
        hits = [m.group(0) for t in texts for m in STALE.finditer(t)]
        assert not hits, f"{path.name} cell {i}: {hits}"


def test_stale_text_rule_catches_each_kind():
    for bad in ("see issue #3", "The first edition of this notebook", "/work/main/x.py:3",
                "/home/ci/.venv", "/tmp/tmpab12/x", "site-packages/peft", "# NBVAL_SKIP\nx = 1"):
        assert STALE.search(bad), bad
    for ok in ("an issue with #3", "NBVAL tags", "x = 1  # the tmp folder"):
        assert not STALE.search(ok), ok


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opening_cells(path):
    cells = _cells(path)
    title = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and title.startswith("# ")
    assert "What you will learn" in title
    assert f"colab.research.google.com/github/lorakit/lorakit/blob/main/notebooks/{path.name}" in title
    assert f"mybinder.org/v2/gh/lorakit/lorakit/main?labpath=notebooks/{path.name}" in title
    install = cells[1]
    src = "".join(install["source"])
    assert '"google.colab" in sys.modules' in src
    assert {"skip-execution", "nbval-skip"} <= set(install["metadata"].get("tags", []))
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and params[0]["cell_type"] == "code"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_links_to_other_notebooks_resolve(path):
    """A markdown link ``](NN_name.ipynb)`` in a tutorial names a tutorial that exists."""
    for cell in _cells(path):
        if cell["cell_type"] == "markdown":
            for link in re.findall(r"\]\(([^)/:]+\.ipynb)\)", "".join(cell["source"])):
                assert (path.parent / link).is_file(), f"{path.name} links to {link}"


def test_readme_lists_every_notebook_with_colab_and_binder_links():
    for path in NOTEBOOKS:
        row = next((line for line in README.splitlines()
                    if line.startswith(f"| [`{path.stem}`](notebooks/{path.name})")), None)
        assert row, f"README table lacks {path.name}"
        assert f"[Colab](https://colab.research.google.com/github/lorakit/lorakit/blob/main/" \
               f"notebooks/{path.name})" in row
        assert f"[Binder](https://mybinder.org/v2/gh/lorakit/lorakit/main?labpath=" \
               f"notebooks/{path.name})" in row
    # text links, no remote badge images: an offline JupyterLab shows no broken image
    assert not re.findall(r"!\[[^\]]*\]\(https?://", README)
    for path in NOTEBOOKS:
        assert not re.findall(r"!\[[^\]]*\]\(https?://", "".join(_cells(path)[0]["source"]))
    for link in re.findall(r"\]\((notebooks/[^)]+\.ipynb)\)", README):
        assert (ROOT / link).is_file(), link


def test_readme_screenshots_are_real_pngs():
    images = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", README)
    assert images, "README shows no screenshots"
    for image in images:
        data = (ROOT / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", image
        assert len(data) <= 300_000, f"{image}: {len(data):,} bytes"


def test_readme_shows_the_delta_w_evolution_as_an_animated_gif():
    """The README shows the training animation itself, not a still of it."""
    from PIL import Image

    gifs = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.gif)\)", README)
    assert "docs/delta_evolution.gif" in gifs, gifs
    data = (ROOT / "docs/delta_evolution.gif").read_bytes()
    assert data[:6] in (b"GIF87a", b"GIF89a") and len(data) <= 3_000_000, len(data)
    with Image.open(ROOT / "docs/delta_evolution.gif") as gif:
        assert gif.n_frames >= 10
        first = gif.convert("RGB").tobytes()
        gif.seek(gif.n_frames - 1)
        assert gif.convert("RGB").tobytes() != first        # ΔW visibly changes over training


# ---------------------------------------------------------------- exercises, explorers


def _exercises(path: Path) -> list[tuple[dict, dict]]:
    """(guess cell, hidden solution cell) pairs after the "## Exercises" heading (or the first
    "### Exercise 1" heading)."""
    cells = _cells(path)
    start = next((i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                  and "".join(c["source"]).startswith(("## Exercises", "### Exercise 1"))),
                 None)
    if start is None:
        return []
    code = [c for c in cells[start:] if c["cell_type"] == "code"]
    return list(zip(code[::2], code[1::2], strict=False))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_kernel_is_python3(path):
    # the name every front end has (Colab, Binder, VS Code, `make lab`'s venv)
    assert json.loads(path.read_text())["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercises_predict_then_run(path):
    """Each exercise: a guess cell (``guess_… = None``), then a hidden solution cell that
    reports on the guess with ``check_guess`` (so nbval runs it green with the default guess);
    what it stores is checked in test_notebook_static.py (nothing: the answer stays hidden)."""
    pairs = _exercises(path)
    assert 2 <= len(pairs) <= 4, f"{path.name}: {len(pairs)} exercises"
    for guess, solution in pairs:
        g, s = "".join(guess["source"]), "".join(solution["source"])
        name = g.split("=")[0].strip()
        assert name.startswith("guess_") and "= None" in g, g
        assert solution["metadata"].get("jupyter", {}).get("source_hidden") is True, s[:60]
        assert f"check_guess({name}," in s, s[:80]


WIDGET = re.compile(r"lk\.(?:explorers\.)?\w+(?:Explorer|Panel)\(")


def test_at_least_eight_notebooks_use_a_widget():
    """Widgets where a knob teaches (a panel or an explorer), in ≥ 8 notebooks; a solution
    cell's widget does not count (it stores nothing)."""
    using = [p.stem[:2] for p in NOTEBOOKS if any(
        c["cell_type"] == "code" and "solution" not in c["metadata"].get("tags", [])
        and WIDGET.search("".join(c["source"])) for c in _cells(p))]
    assert len(using) >= 8, using


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_explorer_cells_keep_a_static_output(path):
    """An explorer's summary is part of the widget (no printed copy that can go stale); what a
    reader without a kernel sees is the snapshot stored beside the widget view."""
    for cell in _cells(path):
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and "lk.explorers." in src and "Explorer(" in src:
            assert "print(explorer.text)" not in src, (path.name, src[:60])
            if "solution" in cell["metadata"].get("tags", []):
                continue   # solutions store no output
            shots = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            assert shots, (path.name, src[:60])
