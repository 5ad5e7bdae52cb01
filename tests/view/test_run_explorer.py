"""``RunExplorer`` (lorakit/view/explorers.py): runs already made, one loss curve at a time,
driven by setting its dropdowns' ``.value``."""

from __future__ import annotations

import pytest
from figure_rules import problems

import lorakit as lk
from lorakit.view.notebook import widget_html

RUNS = {("lora", 2e-3): [0.5, 0.3, 0.1], ("lora", 8e-3): [0.5, 0.1, 0.03],
        ("pissa", 5e-4): [0.5, 0.4, 0.2], ("pissa", 2e-3): [0.5, 0.2, 0.05]}


def test_run_explorer_follows_its_dropdowns_and_shows_the_chosen_run():
    ex = lk.explorers.RunExplorer(RUNS, scores={("pissa", 2e-3): 0.0198})
    assert ex.text.startswith("lora, lr 0.002: training loss 0.5 → 0.1 in 3 steps")
    assert [v for _, v in ex.setting.options] == [2e-3, 8e-3]
    ex.setting.value = 8e-3
    assert "0.5 → 0.03" in ex.text
    ex.name.value = "pissa"                 # its settings replace LoRA's; 8e-3 is not one
    assert [v for _, v in ex.setting.options] == [5e-4, 2e-3]
    assert ex.text.startswith("pissa, lr 0.0005")
    ex.setting.value = 2e-3
    assert ex.text.endswith("held-out loss 0.0198") and ex.text in widget_html(ex)
    fig = ex.figure.to_plotly_json()
    assert len(fig["data"]) == 2 and problems(fig) == []
    widths = [t["line"]["width"] for t in fig["data"]]
    assert widths[1] > widths[0]            # the chosen run is drawn thick
    shown = ex.plot.outputs[0]["data"]      # set here, not by a front end: a snapshot has it
    assert shown["application/vnd.plotly.v1+json"]["layout"]["title"]["text"].startswith("pissa")


def test_run_explorer_keeps_the_setting_when_the_new_name_has_it():
    ex = lk.explorers.RunExplorer(RUNS)
    ex.name.value = "pissa"
    ex.setting.value = 2e-3
    ex.name.value = "lora"
    assert ex.setting.value == 2e-3 and "→ 0.1 in 3" in ex.text
    assert "RunExplorer('lora', 0.002, runs=4)" == repr(ex)


def test_run_explorer_rejects_runs_that_are_not_name_setting_pairs():
    with pytest.raises(ValueError, match="name, setting"):
        lk.explorers.RunExplorer({"lora": [0.5]})
    with pytest.raises(ValueError, match="name, setting"):
        lk.explorers.RunExplorer({})
