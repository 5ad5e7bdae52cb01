"""The committed notebooks: every stored figure in lorakit's style, and sources that keep it so.

The stored-figure test reads the outputs as committed: it passes once the notebooks are
re-executed with the current lorakit (their figures then carry lorakit's template). The source
tests pass on the sources alone: ad-hoc figures go through ``lk.figures.style`` (no plotly
default template, no fixed width), no printed copy of an explorer's live summary, no remote
badge image, and every ``assert`` says what it expected.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from figure_rules import problems

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def code(path: Path) -> list[tuple[int, str]]:
    return [(i, "".join(c["source"])) for i, c in enumerate(cells(path))
            if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_stored_figure_uses_the_lorakit_template_axis_titles_one_unit(path):
    found = []
    for i, cell in enumerate(cells(path)):
        for out in cell.get("outputs", []):
            fig = out.get("data", {}).get(PLOTLY_MIME)
            if fig is not None:
                found += [f"cell {i}: {p}" for p in problems(fig)]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figure_cells_use_lorakits_style(path):
    for i, src in code(path):
        assert "plotly_white" not in src and "template=" not in src, (path.name, i)
        if "go.Figure(" in src or "make_subplots(" in src:
            assert "lk.figures.style(" in src, f"{path.name} cell {i}: not through style()"
            assert not re.search(r"\bwidth=\d{3}", src), f"{path.name} cell {i}: a fixed width"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_printed_copy_of_a_live_summary(path):
    for i, src in code(path):
        assert not re.search(r"print\(\w*explorer\.text\)", src), (path.name, i)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_assert_says_what_it_expected(path):
    for i, src in code(path):
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Assert):
                assert node.msg is not None, \
                    f"{path.name} cell {i}: assert {ast.unparse(node.test)[:80]} has no message"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_and_binder_are_text_links(path):
    for cell in cells(path):
        if cell["cell_type"] == "markdown":
            assert not re.search(r"!\[[^\]]*\]\(https?://", "".join(cell["source"])), path.name


def test_the_low_rank_view_is_shown_in_03():
    assert any("lk.figures.low_rank_view(" in src
               for _, src in code(ROOT / "notebooks" / "03_train_and_watch.ipynb"))
