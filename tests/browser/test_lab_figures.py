"""Tutorials 02 and 03 in a real JupyterLab with no network: every plotly figure draws.

Chromium (every request to a host other than the local Lab server aborted) opens a copy of
the notebook, runs all cells, and then checks each figure output, not only the panels: each
output of plotly's mimetype (what ``lk.setup_notebook()`` chooses in JupyterLab) holds an
SVG with drawn traces, and no figure anywhere on the page is an empty box. The number of
figure outputs must equal the number the stored notebook has. 03 runs with a smaller
training budget (``SMALLER``) than nbval gives it: the same figures, other numbers. With
``notebook_connected`` they would be blank offline ("Plotly is not defined"). Screenshots go
to tests/artifacts/lab_figures_<nn>.png (gitignored).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
NOTEBOOKS = ["02_attach_and_count.ipynb", "03_train_and_watch.ipynb"]

# per output of plotly's mimetype (jupyterlab-plotly's renderer node): how many drawn trace
# groups its SVG holds (-1: no SVG at all)
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"         # the open notebook's tab, not another
DRAWN = f"""() => [...document.querySelectorAll("{PANEL} .jp-OutputArea-output.jp-RenderedPlotly")]
    .map(o => {{
        const svg = o.querySelector('svg.main-svg');
        return svg ? svg.querySelectorAll('.trace, .hm, .slice').length : -1; }})"""
# every plotly graph div on the page (mimetype, HTML, FigureWidget): drawn or an empty box
EMPTY_BOXES = (f"() => [...document.querySelectorAll('{PANEL} .jp-OutputArea .plotly-graph-div, "
               f"{PANEL} .jp-OutputArea .js-plotly-plot')]"
               ".filter(d => !d.querySelector('svg.main-svg')).length")


def _skipped(cell: dict) -> bool:
    """A cell nbval skips (tag ``nbval-skip``): the figure pack export of 03, minutes of kaleido."""
    return cell["cell_type"] == "code" and "nbval-skip" in cell["metadata"].get("tags", [])


# A smaller budget for the Lab copy (the notebook's own "your turn" parameters): what is under
# test here is that every figure draws, which does not need nbval's full training run. nbval
# runs the notebook as stored.
SMALLER = {"03_train_and_watch.ipynb": {"MAX_STEPS": 10, "N_EVAL": 10}}


def copy_without_skipped(source: Path, target: Path, params: dict[str, int] | None = None) -> None:
    """The notebook without the cells nbval skips: Lab's run-all runs what nbval runs.

    ``params``: new values for assignments ``NAME = <int>`` in the notebook's parameters cell
    (each must be found there exactly once)."""
    nb = json.loads(source.read_text())
    nb["cells"] = [c for c in nb["cells"] if not _skipped(c)]
    for name, value in (params or {}).items():
        pattern = re.compile(rf"^{name} = \d+", re.M)
        hits = [c for c in nb["cells"] if c["cell_type"] == "code"
                and pattern.search("".join(c["source"]))]
        assert len(hits) == 1, f"{source.name}: no single parameters cell sets {name}"
        hits[0]["source"] = pattern.sub(f"{name} = {value}", "".join(hits[0]["source"]))
    target.write_text(json.dumps(nb))


def stored_figures(path: Path) -> int:
    """Figure outputs stored in the notebook (plotly mimetype, or HTML calling Plotly), those
    inside panels included: a panel's chart is a plotly output of an ``Output`` widget, kept
    in the notebook's stored widget state."""
    nb = json.loads(path.read_text())
    outputs = [out for cell in nb["cells"] if not _skipped(cell)
               for out in cell.get("outputs", [])]
    state = nb["metadata"].get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    outputs += [out for model in state.values() if model.get("model_name") == "OutputModel"
                for out in model["state"].get("outputs", [])]
    n = 0
    for out in outputs:
        data = out.get("data", {})
        n += PLOTLY_MIME in data or "Plotly.newPlot" in "".join(data.get("text/html", ""))
    return n


def shutdown_kernels(lab) -> int:
    """Shut down every kernel of the ``lab`` server (its REST API); returns how many. A tab
    left behind keeps its kernel, and a tutorial's kernel holds gigabytes (the model, its runs):
    five of them side by side ran a 24 GB machine into swap."""
    def call(method: str, path: str):
        req = urllib.request.Request(f"{lab.url}{path}", method=method,
                                     headers={"Authorization": f"token {lab.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    kernels = call("GET", "/api/kernels")
    for k in kernels:
        call("DELETE", f"/api/kernels/{k['id']}")
    return len(kernels)


def run_all(page, lab, name: str, workspace: str | None = None, *, full_width: bool = False,
            timeout_ms: int = 600_000) -> None:
    """Open ``name`` in a workspace of its own (reset: only this notebook open, whatever ran
    before; the earlier notebooks' kernels shut down), Run All, and wait until every code cell
    has run. ``full_width`` collapses the left sidebar so the notebook gets the window's
    width."""
    shutdown_kernels(lab)
    workspace = workspace or f"figures-{name[:2]}"
    page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{name}?reset&token={lab.token}",
              timeout=60_000)
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=60_000)
    page.locator(f"{PANEL} .jp-Notebook .jp-Cell").first.wait_for(timeout=30_000)
    if full_width and page.locator("#jp-left-stack").is_visible():
        page.keyboard.press("Control+b")
    page.locator("li.lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
    # done: every code cell has an execution count, none is queued or running ([*]); an
    # exercise's solution cell has its input hidden and shows an empty prompt
    page.wait_for_function(
        f"""() => {{ const p = [...document.querySelectorAll('{PANEL} .jp-CodeCell .jp-InputPrompt')]
                     .map(e => e.textContent.trim()).filter(t => t !== '');
                   return p.length > 0 && p.every(t => /^\\[\\d+\\]:$/.test(t)); }}""",
        timeout=timeout_ms, polling=1000)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_figure_draws_offline_in_jupyterlab(jupyter_lab, local_page, name):
    source = ROOT / "notebooks" / name
    expected = stored_figures(source)
    assert expected >= 4, f"{name}: only {expected} stored figures"
    copy_without_skipped(source, jupyter_lab.root / name, SMALLER.get(name))
    page = local_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"lab_figures_{name[:2]}.png"
    try:
        run_all(page, jupyter_lab, name)
        errors = page.locator(f"{PANEL} .jp-OutputArea-output[data-mime-type="
                              "'application/vnd.jupyter.error']")
        assert errors.count() == 0, errors.first.inner_text()[:2000]
        page.wait_for_function(f"() => ({DRAWN})().every(n => n > 0)", timeout=30_000)
        drawn = page.evaluate(DRAWN)
        assert len(drawn) == expected, (drawn, expected)
        assert all(n > 0 for n in drawn), drawn
        assert page.evaluate(EMPTY_BOXES) == 0
        assert not [u for u in page.blocked if "plot.ly" in u or "plotly" in u], page.blocked
        first = page.locator(f"{PANEL} .jp-OutputArea-output.jp-RenderedPlotly").first
        first.scroll_into_view_if_needed()
    finally:
        page.screenshot(path=str(shot), full_page=False)
