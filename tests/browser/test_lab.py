"""LoRAPanel in a real JupyterLab, driven by a real Chromium.

``jupyter lab`` of this environment (kernel ``python3`` = this venv's Python, checked from the
notebook's own output) serves a copy of ``panel_check.ipynb``; Chromium opens it, runs all
cells from the Run menu, and the panel on the embedded SmolLM2 shows "trainable 460,800 of
134,975,808 = 0.341%" (r = 8 on q_proj, v_proj). Typing 16 into the rank box + Enter goes to
the kernel and back: the count label must then read exactly the number ``lk.lora_param_count``
gives for r = 16 (921,600 of 135,436,608 = 0.680%), and the bar chart's title too. A
screenshot goes to tests/artifacts/lab_panel.png (gitignored)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

import lorakit as lk

pytestmark = pytest.mark.browser

HERE = Path(__file__).parent
NOTEBOOK = HERE / "panel_check.ipynb"
SHOT = HERE.parent / "artifacts" / "lab_panel.png"
TARGETS = ["q_proj", "v_proj"]


def count_text(model, r: int) -> str:
    """What the panel's count label must say for rank r on TARGETS (from the real model)."""
    trainable = lk.lora_param_count(model, r=r, targets=TARGETS)
    total = lk.count_params(model).total + trainable
    return f"trainable {trainable:,} of {total:,} = {100 * trainable / total:.3f}%"


def label(page, text: str):
    """The rendered ipywidgets Label showing exactly ``text``."""
    return page.locator(".jp-OutputArea .widget-label",
                        has_text=re.compile(rf"^{re.escape(text)}$"))


def test_lora_panel_counts_follow_the_rank_box_in_jupyterlab(jupyter_lab, local_page, smol):
    model, _ = smol
    before, after = count_text(model, 8), count_text(model, 16)
    assert before == "trainable 460,800 of 134,975,808 = 0.341%"
    assert after == "trainable 921,600 of 135,436,608 = 0.680%"
    shutil.copy(NOTEBOOK, jupyter_lab.root / NOTEBOOK.name)
    page = local_page
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(f"{jupyter_lab.url}/lab/tree/{NOTEBOOK.name}?token={jupyter_lab.token}",
                  timeout=60_000)
        # the notebook's kernel has started and is idle (status bar: "Python 3 (ipykernel) | Idle")
        page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(timeout=60_000)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=30_000)

        page.locator("li.lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()

        # the kernel is this environment's Python: the notebook prints its sys.prefix
        prefix = page.locator(".jp-OutputArea-output", has_text="kernel prefix:")
        prefix.wait_for(timeout=60_000)
        assert prefix.inner_text().strip() == f"kernel prefix: {sys.prefix}"

        label(page, before).wait_for(timeout=90_000)           # the panel, r = 8
        rank_box = page.locator(".widget-hbox", has=page.locator(".widget-label",
                                has_text=re.compile(r"^rank r$"))).locator("input[type=number]")
        assert rank_box.count() == 1 and rank_box.input_value() == "8"
        rank_box.fill("16")
        rank_box.press("Enter")

        label(page, after).wait_for(timeout=30_000)            # kernel -> browser round trip
        assert label(page, before).count() == 0
        assert rank_box.input_value() == "16"
        # the bar chart (a plotly FigureWidget, or a re-rendered figure) followed too
        title = page.locator(".jp-OutputArea .js-plotly-plot .gtitle")
        page.wait_for_function(
            "t => [...document.querySelectorAll('.jp-OutputArea .js-plotly-plot .gtitle')]"
            ".some(e => e.textContent.includes(t))", arg=after.split(" = ")[0], timeout=15_000)
        assert after.split(" = ")[0] in title.first.text_content()
        # no cell raised, and the panel's error box (red, #b00020) stays empty
        assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter"
                            ".error']").count() == 0
        assert page.locator(".jp-OutputArea [style*='#b00020']").count() == 0
        label(page, after).scroll_into_view_if_needed()
    finally:
        page.screenshot(path=str(SHOT), full_page=False)
