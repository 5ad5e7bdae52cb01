"""Variants on one budget: LoRA, rsLoRA, DoRA, LoRA+, PiSSA init, AdaLoRA (through PEFT)."""

import pytest
import torch

import lorakit as lk
from lorakit.core.experiments import METHODS, compare_methods

TASK = lk.tasks.get("iso_dates")


@pytest.mark.slow
def test_compare_methods_trains_each_and_restores_the_base(fresh, probe):
    model, tok = fresh
    with torch.no_grad():
        before = model(**probe).logits
    rows = compare_methods(model, tok, TASK, steps=3, batch_size=2, eval_n=2)
    assert [r.name for r in rows] == list(METHODS)
    by = {r.name: r for r in rows}
    lora = 30 * 8 * ((576 + 576) + (576 + 192))
    assert by["lora"].trainable == by["rslora"].trainable == by["loraplus"].trainable == lora
    assert by["pissa"].trainable == lora
    assert by["dora"].trainable == lora + 30 * (576 + 192)  # + one magnitude per output
    assert by["adalora"].trainable > lora                   # starts at rank 1.5·r
    for r in rows:
        assert len(r.losses) == 3 and all(map(torch.isfinite, torch.tensor(r.losses)))
        assert 0.0 <= r.accuracy <= 1.0
    # each variant optimises differently from the same start
    assert len({round(r.final_loss, 6) for r in rows}) >= 4
    assert not hasattr(model, "peft_config")
    with torch.no_grad():
        assert torch.equal(model(**probe).logits, before)  # PiSSA's rewrite undone too


@pytest.mark.slow
def test_adalora_allocates_its_rank_budget(fresh):
    model, tok = fresh
    pm = lk.attach_adalora(model, r=4, targets=["q_proj", "v_proj"], total_step=6, seed=0)
    assert pm.peft_config["default"].rank_pattern is None
    lk.train(pm, tok, TASK, steps=6, lr=2e-3, batch_size=2, progress=False)
    pattern = pm.peft_config["default"].rank_pattern  # set by update_and_allocate
    assert pattern, "update_and_allocate was not called"
    kept = sum(int(sum(mask)) for mask in pattern.values())
    assert kept == 4 * len(pattern)  # pruned from init_r=6 to the average budget r=4


def test_bad_methods():
    with pytest.raises(ValueError, match="unknown methods \\[.qlora.\\]; choose from lora"):
        compare_methods(None, None, TASK, methods=["lora", "qlora"])
    with pytest.raises(ValueError, match="AdaLoRA needs total_step"):
        lk.attach_adalora(None, total_step=0)


def test_analysis_figures_show_the_numbers():
    from lorakit.core import analysis
    from lorakit.view import figures
    g = torch.Generator().manual_seed(0)
    A8, A64 = torch.randn(8, 576, generator=g), torch.randn(64, 576, generator=g)
    grid = analysis.similarity_grid(A8, A64)
    fig = figures.similarity_heatmap(grid, baseline=analysis.similarity_grid(A8, A8))
    z = fig.data[0].z
    assert len(z) == 8 and len(z[0]) == 64 and fig.data[1].z[3][3] == pytest.approx(1.0)
    delta = torch.randn(20, 4, generator=g) @ torch.randn(4, 30, generator=g)
    sv = analysis.spectrum(delta)
    fig = figures.spectra({"ΔW": sv})
    assert list(fig.data[0].y) == pytest.approx(sv.tolist())
    amp = analysis.amplification(delta, torch.randn(20, 30, generator=g), r=4)
    table = figures.amplification_table({"q_proj": amp}).data[0]
    assert list(table.cells.values[3]) == ["ΔW", "W", "random"]
    assert table.cells.values[5][0] == f"{amp.factor:.3g}"
    with pytest.raises(ValueError, match="at least one"):
        figures.spectra({})
