"""The equal-budget explorer of tutorial 08 (lorakit/view/explorers.py ``BudgetExplorer``),
driven by setting the controls' ``.value``, on SmolLM2-135M's built-in config (shapes only)."""

from __future__ import annotations

import pytest

import lorakit as lk

RUNS = {"q r=10": (["q_proj"], 10, [0.204]),
        "q,v r=6": (["q_proj", "v_proj"], 6, [0.13, 0.15]),
        "q,k,v,o r=3": (["q_proj", "k_proj", "v_proj", "o_proj"], 3, [0.092])}


def test_budget_explorer_counts_the_selection_and_lists_the_runs():
    cfg = lk.builtin_config("smollm2-135m")
    ex = lk.explorers.BudgetExplorer(cfg, RUNS, targets=("q_proj", "v_proj"), r=6)
    assert ex.budget == 345_600 == lk.lora_param_count(cfg, r=6, targets=["q_proj", "v_proj"])
    assert "345,600 trainable (100% of the budget" in ex.text
    assert "the budget is exactly r = 6" in ex.text
    assert "0.140 ± 0.014  " in ex.text and "(one seed)" in ex.text
    assert ex.text.count("← selected") == 1 and "q,v r=6" in ex.text.split("← selected")[0]
    ex.targets.value = ("k_proj",)            # GQA: k_proj is 576 → 192, so r = 15 fits
    assert "the budget is exactly r = 15" in ex.text and "← selected" not in ex.text
    ex.targets.value = ("up_proj",)
    n5 = lk.lora_param_count(cfg, r=5, targets=["up_proj"])
    assert f"no whole r spends the budget exactly here: r = 5 gives {n5:,}" in ex.text
    ex.rank.value = 1
    assert f"{n5 // 5:,} trainable" in ex.text
    ex.targets.value = ()
    assert ex.text == "tick at least one target module"
    with pytest.raises(ValueError, match="at least one"):
        lk.explorers.BudgetExplorer(cfg, {})
