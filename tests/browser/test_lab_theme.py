"""lorakit's figures and widgets in JupyterLab's light and dark themes, at 800 and 1400 px.

A check notebook, written here and executed in the Lab (so what is tested is the current
lorakit, not the outputs stored in the tutorials), builds the kinds of figure the tutorials
show (loss curve, the low-rank view of ΔW, a log-axis spectrum, memory bars, an ad-hoc
figure through ``lk.figures.style``), a LoRAPanel (a live FigureWidget) and an explorer on a
tiny random model. For each theme and window width, Chromium (every request to a host other
than the Lab server aborted, and the count of aborted requests must be 0) checks that:

* the kernel followed JupyterLab's theme (``lk.setup_notebook`` reads the saved setting), and
  every figure's background is the theme's (no white box in the dark theme);
* no figure is wider than its output area (nothing clipped), at 800 px too;
* the explorer's summary, part of the widget, changes when its control changes.

Screenshots: tests/artifacts/lab_theme_<theme>_<width>.png (gitignored).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
BACKGROUND = {"light": "rgb(255, 255, 255)", "dark": "rgb(17, 17, 17)"}
LAB_THEME = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}

CELLS = [
    f"""import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
import plotly.graph_objects as go
import torch
from tiny_models import tiny_llama
from transformers import AutoTokenizer

import lorakit as lk
from lorakit.core.models import embedded_model_dir

lk.setup_notebook()
torch.set_num_threads(1)
print("lorakit theme:", lk.figures.get_theme())""",
    """tok = AutoTokenizer.from_pretrained(embedded_model_dir(progress=False))
tok.pad_token = tok.pad_token or tok.eos_token
pm = lk.attach(tiny_llama(tok, layers=1), r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
rec = lk.Recorder(pm)
task = lk.tasks.get("iso_dates", n_train=16, n_test=4)
result = lk.train(pm, tok, task, steps=4, batch_size=2, lr=3e-3, recorder=rec, progress=False)""",
    "lk.figures.loss_curve(result)",
    'lk.figures.low_rank_view(rec.recording, "q_proj", layer=0, start=-1)',
    'lk.figures.spectrum_over_time(rec.recording, "q_proj", layer=0, log=True)',
    'lk.figures.budget_bars(lk.estimate("llama-2-7b"))',
    """fig = go.Figure(go.Bar(x=["LoRA", "full fine-tuning"], y=[1.9, 112.4]))
lk.figures.style(fig, "an ad-hoc figure through lk.figures.style", x="method",
                 y="training memory (GB)")""",
    'panel = lk.LoRAPanel(tiny_llama(tok, layers=1))\npanel',
    'explorer = lk.explorers.EstimateExplorer("llama-2-70b", r=8, targets=("q_proj", "v_proj"))'
    "\nexplorer",
]
FIGURES = 6    # plotly outputs of CELLS: five figures and the LoRAPanel's chart


def notebook() -> dict:
    cells = [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
              "source": src, "id": f"c{i}"} for i, src in enumerate(CELLS)]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3",
                                                        "display_name": "Python 3"}},
            "nbformat": 4, "nbformat_minor": 5}


def run_all(page, lab, name: str, workspace: str) -> None:
    """Run All in a workspace of its own, the notebook at the window's full width."""
    from test_lab_figures import run_all as run_all_cells

    run_all_cells(page, lab, name, workspace, full_width=True, timeout_ms=900_000)


# per plotly graph in the notebook: its paper background, its width, its output area's width
GRAPHS = f"""() => [...document.querySelectorAll('{PANEL} .jp-OutputArea .js-plotly-plot')]
    .map(g => {{
        const svg = g.querySelector('svg.main-svg');
        const area = g.closest('.jp-OutputArea-output') || g.parentElement;
        return {{bg: svg ? getComputedStyle(svg).backgroundColor : null,
                 width: g.getBoundingClientRect().width,
                 svg: svg ? svg.getBoundingClientRect().width : 0,
                 area: area.getBoundingClientRect().width,
                 widget: g.closest('.jupyter-widgets') !== null,
                 title: (g.querySelector('.gtitle') || {{}}).textContent || ''}}; }})"""


@contextlib.contextmanager
def themed_page(browser, lab, theme: str, width: int, shot: str):
    """A page of ``width`` px on ``lab`` with JupyterLab's theme saved as ``theme``; requests
    to any other host are aborted and listed in ``page.aborted``; a screenshot at the end."""
    settings = lab.root.parent / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "themes.jupyterlab-settings").write_text(json.dumps({"theme": LAB_THEME[theme]}))
    context = browser.new_context(viewport={"width": width, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.aborted = []

    def abort(route):
        page.aborted.append(route.request.url)
        route.abort()

    page.route(lambda url: url.startswith(("http://", "https://"))
               and not url.startswith(("http://127.0.0.1:", "http://localhost:")), abort)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield page
    finally:
        panels = page.locator(f"{PANEL} .jp-OutputArea .lk-panel")
        if panels.count():
            panels.last.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        context.close()


def check_theme_and_width(page, theme: str, shot: str) -> list[dict]:
    """No error output; the Lab in ``theme``; every figure in the theme's background and no
    wider than its output area; every panel within its output area; nothing went online."""
    errors = page.locator(f"{PANEL} .jp-OutputArea-output[data-mime-type="
                          "'application/vnd.jupyter.error']")
    assert errors.count() == 0, errors.first.inner_text()[:2000]
    light = page.evaluate("() => document.body.dataset.jpThemeLight")
    assert light == ("true" if theme == "light" else "false")          # the Lab's own theme
    graphs = page.evaluate(GRAPHS)
    dark_or_white = [g for g in graphs if g["bg"] != BACKGROUND[theme]]
    assert dark_or_white == [], dark_or_white                           # no white box in dark
    clipped = [g for g in graphs if not 0 < g["svg"] <= g["area"] + 1
               or g["width"] > g["area"] + 1]
    assert clipped == [], [(g["title"], g["widget"], g["svg"], g["area"]) for g in clipped]
    wide = page.evaluate(f"""() => [...document.querySelectorAll(
        '{PANEL} .jp-OutputArea .lk-panel *')].filter(e => e.getBoundingClientRect().right
        > e.closest('.jp-OutputArea-output').getBoundingClientRect().right + 1)
        .map(e => e.className + ': ' + (e.textContent || '').slice(0, 60))""")
    assert wide == [], wide                                   # text wraps inside the notebook
    assert page.aborted == [], page.aborted                             # nothing went online
    for i, graph in enumerate(page.locator(f"{PANEL} .jp-OutputArea .js-plotly-plot").all()):
        graph.scroll_into_view_if_needed()
        graph.screenshot(path=str(ARTIFACTS / f"{shot}_fig{i}.png"))
    return graphs


def check_estimate_explorer_is_live(page) -> None:
    """The EstimateExplorer's summary (part of the widget) follows its rank control, and no
    printed copy of it sits in a text output."""
    summary = page.locator(f"{PANEL} .jp-OutputArea .widget-html-content pre").last
    before = summary.inner_text()
    assert "LoRA r=8" in before
    rank = page.locator(f"{PANEL} .widget-dropdown",
                        has=page.locator(".widget-label", has_text=re.compile(r"^r$")))
    rank.locator("select").select_option("16")
    page.wait_for_function(
        f"() => [...document.querySelectorAll('{PANEL} .widget-html-content pre')]"
        ".some(e => e.textContent.includes('LoRA r=16'))", timeout=30_000)
    assert summary.inner_text() != before
    assert page.locator(f"{PANEL} .jp-OutputArea-output.jp-RenderedText",
                        has_text="LoRA r=").count() == 0                # no printed copy


@pytest.mark.parametrize(("theme", "width"), [("light", 1400), ("light", 800), ("dark", 800)])
def test_figures_follow_the_theme_fit_the_window_and_explorers_stay_live(
        jupyter_lab, browser, theme, width):
    name, shot = f"theme_{theme}_{width}.ipynb", f"lab_theme_{theme}_{width}"
    (jupyter_lab.root / name).write_text(json.dumps(notebook()))
    with themed_page(browser, jupyter_lab, theme, width, shot) as page:
        run_all(page, jupyter_lab, name, f"theme-{theme}-{width}")
        printed = page.locator(f"{PANEL} .jp-OutputArea-output", has_text="lorakit theme:")
        assert printed.inner_text().strip() == f"lorakit theme: {theme}"   # the kernel read it
        page.wait_for_function(f"() => ({GRAPHS})().length >= {FIGURES}", timeout=60_000)
        assert len(check_theme_and_width(page, theme, shot)) == FIGURES
        check_estimate_explorer_is_live(page)


# The tutorials themselves, in the dark theme at 800 px (the case that showed white boxes and
# clipped panels), with the smaller budgets of test_lab_figures where a notebook allows one.
TUTORIALS = {"00_start_here.ipynb": {"MAX_STEPS": 10, "N_EVAL": 10},
             "02_attach_and_count.ipynb": {},
             "03_train_and_watch.ipynb": {"MAX_STEPS": 10, "N_EVAL": 10},
             "07_variants.ipynb": {}, "08_practical.ipynb": {}}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TUTORIALS))
def test_tutorials_in_the_dark_theme_at_800_px(jupyter_lab, browser, name):
    from test_lab_figures import copy_without_skipped

    copy_without_skipped(ROOT / "notebooks" / name, jupyter_lab.root / name,
                         TUTORIALS[name] or None)
    shot = f"lab_theme_dark_800_{name[:2]}"
    with themed_page(browser, jupyter_lab, "dark", 800, shot) as page:
        run_all(page, jupyter_lab, name, f"dark-{name[:2]}")
        assert check_theme_and_width(page, "dark", shot), f"{name}: no figure drawn"
        if name.startswith("02"):
            check_estimate_explorer_is_live(page)
