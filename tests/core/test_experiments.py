"""Variants on one budget: LoRA, rsLoRA, DoRA, LoRA+, PiSSA init, AdaLoRA (through PEFT)."""

import math

import pytest
import torch

import lorakit as lk
from lorakit.core.analysis import best_rank_r
from lorakit.core.experiments import METHODS, compare_methods, full_vs_lora
from lorakit.core.serve import default_probe

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


D_MODEL = 576   # SmolLM2 hidden size: d_in of q_proj / v_proj


@pytest.mark.slow
def test_full_vs_lora_on_one_layer_restores_the_model(fresh):
    model, tok = fresh
    task = lk.tasks.get("iso_dates")
    ids = default_probe(model)[:1, :8]
    with torch.no_grad():
        before = model(input_ids=ids).logits
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    res = full_vs_lora(model, tok, task, "layers.15.q_proj", steps=4, r=8)
    assert res.module == "model.layers.15.self_attn.q_proj"
    assert len(res.losses_full) == len(res.losses_lora) == 4
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)   # weight restored, adapter gone
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert res.delta_full.shape == res.delta_lora.shape == (D_MODEL, D_MODEL)
    norm = torch.linalg.matrix_norm(res.delta_full.double()).item()
    assert norm > 0 and 0 < res.energy_at_r <= 1
    assert res.error_at_r == pytest.approx(norm * math.sqrt(1 - res.energy_at_r), rel=1e-6)
    assert res.effective_rank_lora <= 8 < res.effective_rank_full   # full FT is not low rank
    assert best_rank_r(res.delta_lora, 8).error < 1e-6 * max(1.0, norm)
    assert -1 <= res.cosine <= 1 and 0 <= res.subspace_right <= 1 and 0 <= res.subspace_left <= 1
    assert "energy of ΔW_full in its top-r" in str(res)
