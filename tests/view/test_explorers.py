"""The tutorials' explorers (lorakit/view/explorers.py), driven by setting the controls'
``.value``. The adapter explorers (tutorials 05 and 06) run on a tiny random Llama (hidden 64,
SmolLM2's tokenizer), so generation is fast; B is set non-zero so ΔW really changes the replies.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama

import lorakit as lk
from lorakit.core import analysis
from lorakit.view.explorers import DeltaScaleExplorer, PhiGridExplorer


# -- rank vs true rank, estimate, NF4 --------------------------------------------------------
def test_rank_explorer_follows_its_sliders_and_is_exact_at_the_true_rank():
    ex = lk.explorers.RankExplorer(r=1, true_rank=3)
    fit = lk.explorers.rank_fit(1, 3)
    assert 0 < fit.captured < 1 and f"{fit.captured:.1%}" in ex.text
    ex.r.value = 3
    assert "100.0%" in ex.text and "(exact)" in ex.text
    ex.true_rank.value = 8                       # raising the true rank makes r = 3 short again
    assert "(exact)" not in ex.text and ex.text in ex.out.value.replace("&#x27;", "'")
    # Eckart–Young: the residual is exactly the dropped singular values' share
    sv = torch.tensor(lk.explorers.rank_fit(3, 8).singular_values, dtype=torch.float64)
    assert lk.explorers.rank_fit(3, 8).residual == pytest.approx(
        ((sv[3:] ** 2).sum() / (sv ** 2).sum()).sqrt().item(), rel=1e-9)
    with pytest.raises(ValueError, match="1..48"):
        lk.explorers.rank_fit(0, 2)


def test_estimate_explorer_shows_counts_memory_and_the_gqa_effect():
    ex = lk.explorers.EstimateExplorer("llama-2-70b", r=8, targets=("q_proj", "v_proj"))
    assert "16,384,000 trainable" in ex.text and "20,971,520" in ex.text   # GQA vs d → d
    assert "QLoRA (nf4 base)" in ex.text
    ex.targets.value = ex.targets.options          # all seven projections
    assert "103,546,880 trainable" in ex.text
    ex.quantize.value = "16-bit base"
    assert "QLoRA" not in ex.text and "LoRA (16-bit base)" in ex.text
    ex.model.value = "llama-2-7b"                  # no GQA: says so; targets kept by name
    assert "no grouped-query attention" in ex.text and "19,988,480 trainable" in ex.text
    ex.model.value = "gpt2-xl"                     # other module names: falls back to its own
    assert ex.targets.value == ("c_attn",) and "2,457,600 trainable" in ex.text
    ex.rank.value = 16
    assert "4,915,200 trainable" in ex.text
    ex.targets.value = ()
    assert ex.text == "tick at least one target module"
    with pytest.raises(ValueError, match="built-in"):
        lk.explorers.EstimateExplorer("gpt-5")


def test_quantize_4bit_matches_bitsandbytes_and_the_explorer_follows_its_controls():
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    w = 0.02 * torch.randn(96, 64, generator=torch.Generator().manual_seed(1))
    packed, state = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=False, quant_type="nf4")
    ours = lk.explorers.quantize_4bit(w, 64, double_quant=False)
    assert torch.equal(ours.dequantized, bnb_f.dequantize_4bit(packed, state))
    assert ours.bits_per_weight == 4.5 and lk.explorers.bits_per_weight(64, True) == pytest.approx(
        8 * lk.core.params.quantized_bytes(1024, 1024, "nf4") / 1024**2)   # whole scale groups
    ex = lk.explorers.NF4Explorer({"gauss": w, "zeros-ish": torch.ones(96, 64)})
    assert "4.127 bits per weight" in ex.text
    small = float(ex.text.split("= ")[1].split(";")[0])
    ex.blocksize.value = 1024
    assert "4.008 bits" in ex.text and float(ex.text.split("= ")[1].split(";")[0]) > small
    ex.double_quant.value = False
    assert "4.031 bits" in ex.text
    ex.dtype.value = "int4 (uniform)"
    assert "equal would be 6.67%" in ex.text       # 15 levels
    ex.source.value = "zeros-ish"                  # constant blocks: exact, one level used
    assert "= 0.000" in ex.text and "100.0%" in ex.text
    with pytest.raises(ValueError, match="divide"):
        lk.explorers.quantize_4bit(w, blocksize=100)


def test_check_guess_reports_without_raising():
    check = lk.explorers.check_guess
    assert check(None, 384) == "no guess yet: the answer is 384"
    assert check(400, 384).startswith("✓ close") and check(500, 384).startswith("✗ not quite")
    assert check(0.3, 0.296, unit="%").startswith("✓") and "within 10%" in check(1.0, 0.296)
    assert check("k_proj", "k_proj").startswith("✓ right") and check(True, 1).startswith("✗")
    assert check(0, 0).startswith("✓")


# -- the adapter explorers: ΔW scale, φ grid --------------------------------------------------
PROMPTS = ["Convert to ISO date: May 1, 2020", "What is the capital of France?"]


@pytest.fixture
def tiny_pm(smol):
    """A tiny random Llama (hidden 64, SmolLM2's tokenizer) with an adapter whose B is large."""
    _, tok = smol
    pm = lk.attach(tiny_llama(tok), r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 3.0)               # a large update: replies must change with it
    return pm, tok


def _logits(model, tok):
    ids = tok(PROMPTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_scale_slider_changes_replies_and_leaves_the_model_unchanged(tiny_pm):
    pm, tok = tiny_pm
    before = _logits(pm, tok)
    ex = DeltaScaleExplorer(pm, tok, PROMPTS, max_new_tokens=6)
    at_one = ex.view.value
    assert "ΔW × 1" in at_one
    with pm.disable_adapter():
        base = lk.generate(pm, tok, PROMPTS, max_new_tokens=6)
    ex.slider.value = 0.0
    assert ex.replies(0.0) == base                       # scale 0 is exactly the base model
    assert ex.view.value != at_one and "ΔW × 0" in ex.view.value
    ex.slider.value = 2.0
    assert ex.replies(2.0) != ex.replies(0.0)            # ΔW moves the replies
    assert torch.equal(_logits(pm, tok), before)         # scales restored after every call
    assert ex.replies(1.0) == lk.generate(pm, tok, PROMPTS, max_new_tokens=6)
    text = ex.summary(scales=(0.0, 1.0))
    assert "ΔW × 0" in text and "ΔW × 1" in text and PROMPTS[1] in text


def test_scale_explorer_refuses_bad_input_before_touching_the_model(tiny_pm, smol):
    pm, tok = tiny_pm
    base, _ = smol
    with pytest.raises(ValueError, match="no LoRA layers"):
        DeltaScaleExplorer(base, tok, PROMPTS)
    with pytest.raises(ValueError, match="non-empty"):
        DeltaScaleExplorer(pm, tok, [])
    ex = DeltaScaleExplorer(pm, tok, PROMPTS[:1], max_new_tokens=2)
    before = _logits(pm, tok)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        ex.replies(-1)
    assert torch.equal(_logits(pm, tok), before)


def test_phi_slider_shows_the_grid_of_each_step():
    g = torch.Generator().manual_seed(0)
    d = 32
    h1 = [torch.randn(4, d, generator=g)]
    h2 = [torch.randn(8, d, generator=g)]
    shared = torch.randn(1, d, generator=g)
    for t in range(1, 4):                                 # both learn the same direction
        h1.append(h1[0] + t * shared.repeat(4, 1) + 0.1 * torch.randn(4, d, generator=g))
        h2.append(h2[0] + t * shared.repeat(8, 1) + 0.1 * torch.randn(8, d, generator=g))
    ex = PhiGridExplorer(h1, h2)
    assert (ex.slider.min, ex.slider.max, ex.slider.value) == (1, 3, 3)
    for step in (1, 2, 3):
        ex.slider.value = step
        expected = analysis.similarity_grid(h1[step] - h1[0], h2[step] - h2[0])
        assert torch.allclose(ex.grid, expected)
        assert f"step {step}:" in ex.label.value and f"{expected[0, 0]:.3f}" in ex.label.value
        assert ex.figure is not None and f"step {step}" in ex.figure.layout.title.text
    assert ex.grid[0, 0] > 0.9                            # the shared direction is found
    assert len(ex.summary().splitlines()) == 3
    raw = PhiGridExplorer(h1, h2, learned=False)
    assert raw.slider.min == 0 and torch.allclose(raw.grids[0],
                                                  analysis.similarity_grid(h1[0], h2[0]))
    with pytest.raises(ValueError, match="same number of snapshots"):
        PhiGridExplorer(h1, h2[:2])


def test_phi_is_undefined_where_delta_a_is_zero():
    # a LoRA A does not move at step 1 (B_0 = 0): A_1 - A_0 = 0 has no φ, not φ = 1
    g = torch.Generator().manual_seed(1)
    h1 = [torch.randn(4, 32, generator=g)]
    h2 = [torch.randn(8, 32, generator=g)]
    h1 += [h1[0].clone(), h1[0] + torch.randn(4, 32, generator=g)]
    h2 += [h2[0].clone(), h2[0] + torch.randn(8, 32, generator=g)]
    ex = PhiGridExplorer(h1, h2)
    assert ex.grids[1] is None and ex.grids[2] is not None
    ex.slider.value = 1
    assert ex.grid is None and ex.text == "step 1: φ undefined: ΔA = 0"
    assert "undefined" in ex.label.value and "1.000" not in ex.label.value
    assert "step 1" in ex.figure.layout.title.text
    assert "undefined" in ex.figure.layout.annotations[0].text
    lines = ex.summary().splitlines()
    assert "undefined: ΔA = 0" in lines[0] and "1.000" not in lines[0] and "φ(1, 1)" in lines[1]
    ex.slider.value = 2
    assert ex.text.startswith("step 2: φ(1, 1) = ")


def test_explorers_are_exported_lazily():
    assert lk.DeltaScaleExplorer is DeltaScaleExplorer and lk.PhiGridExplorer is PhiGridExplorer
