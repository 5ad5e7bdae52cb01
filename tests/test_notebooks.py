"""Static checks on the tutorial notebooks and the README table (nbval executes them).

The issue's rules: each notebook ≤ 1.5 MB, no inlined plotly.js, a title with Colab and Binder
badges, a Colab-only install cell nbval skips, a ``parameters`` cell; every notebook listed in
the README with its badges; the README's screenshots exist and are real PNGs.
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


def test_all_nine_tutorials_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(9)], NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_small_and_loads_plotly_from_the_cdn(path):
    text = path.read_text()
    assert path.stat().st_size <= 1_500_000, f"{path.name}: {path.stat().st_size:,} bytes"
    assert PLOTLY_BANNER not in text, f"{path.name} inlines plotly.js"
    assert "application/vnd.jupyter.widget-view+json" not in text   # widget outputs stripped
    assert "widgets" not in json.loads(text)["metadata"]
    for cell in _cells(path):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name}: stored error output"


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
    assert src.startswith("# NBVAL_SKIP") and '"google.colab" in sys.modules' in src
    assert "skip-execution" in install["metadata"].get("tags", [])
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and params[0]["cell_type"] == "code"


def test_readme_lists_every_notebook_with_badges():
    for path in NOTEBOOKS:
        row = next((line for line in README.splitlines()
                    if line.startswith(f"| [`{path.stem}`](notebooks/{path.name})")), None)
        assert row, f"README table lacks {path.name}"
        assert "colab-badge.svg" in row and "mybinder.org/badge_logo.svg" in row
    for link in re.findall(r"\]\((notebooks/[^)]+\.ipynb)\)", README):
        assert (ROOT / link).is_file(), link


def test_readme_screenshots_are_real_pngs():
    images = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", README)
    assert images, "README shows no screenshots"
    for image in images:
        data = (ROOT / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", image
        assert len(data) <= 300_000, f"{image}: {len(data):,} bytes"
