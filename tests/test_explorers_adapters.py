"""The adapter explorers (lorakit/explorers.py, tutorials 05 and 06), driven through ``.value``.

A tiny random Llama (hidden 64, SmolLM2's tokenizer) carries the adapter, so generation is
fast; B is set non-zero so ΔW really changes the replies.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama

import lorakit as lk
from lorakit.core import analysis
from lorakit.view.explorers import DeltaScaleExplorer, PhiGridExplorer

PROMPTS = ["Convert to ISO date: May 1, 2020", "What is the capital of France?"]


@pytest.fixture
def tiny(smol):
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


def test_scale_slider_changes_replies_and_leaves_the_model_unchanged(tiny):
    pm, tok = tiny
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


def test_scale_explorer_refuses_bad_input_before_touching_the_model(tiny, smol):
    pm, tok = tiny
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


def test_explorers_are_exported_lazily():
    assert lk.DeltaScaleExplorer is DeltaScaleExplorer and lk.PhiGridExplorer is PhiGridExplorer
