"""QLoRA: the embedded SmolLM2 in 4-bit NF4 (bitsandbytes), trained with LoRA on the CPU.

On CUDA the same path runs with bf16/fp16 compute (the `gpu` tests, skipped without CUDA).
"""

import pytest
import torch
from notebook_source import notebook_code

import lorakit as lk
from lorakit.core import precision

TASK = lk.tasks.get("iso_dates")
# Shared with benchmarks/train_accuracy.py (QLORA_TRAIN), used by the CUDA test below.
QLORA_TRAIN = lk.TrainSettings(steps=30, lr=3e-3, batch_size=8)


@pytest.fixture(scope="module")
def nf4():
    return lk.load_model(quantize="nf4", progress=False)


def test_counts_and_footprint(nf4, smol):
    model, _ = nf4
    counts = lk.count_params(model)
    assert counts.total == 134_515_008  # the true count, not the packed uint8 storage
    fp32 = smol[0].get_memory_footprint()
    q4 = model.get_memory_footprint()
    linear = sum(i.in_features * i.out_features for i in lk.linear_modules(model))
    # the block Linears go from 4 bytes to ~0.52 bytes per weight; embeddings stay fp32
    assert fp32 - q4 == pytest.approx(linear * (4 - 0.5), rel=0.05)


@pytest.mark.slow
def test_qlora_step_trains_only_the_adapter(nf4):
    model, tok = nf4
    pm = lk.attach(model, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
    try:
        q = pm.base_model.model.model.layers[0].self_attn.q_proj
        packed = q.base_layer.weight.detach().clone()
        b0 = q.lora_B["default"].weight.detach().clone()
        res = lk.train(pm, tok, TASK, steps=2, lr=2e-3, batch_size=2, progress=False)
        assert all(torch.isfinite(torch.tensor(res.losses)))
        assert torch.equal(q.base_layer.weight, packed)  # 4-bit base frozen, untouched
        assert not torch.equal(q.lora_B["default"].weight, b0)  # the adapter learned
        assert lk.count_params(pm).trainable == lk.lora_param_count(model, r=4)
    finally:
        lk.detach(pm)


def test_notebook_04_asserts_the_iso_dates_acceptance():
    """QLoRA (nf4) on iso_dates reaches ≥ 80% on 50 held-out items: notebook 04 trains it (r=8,
    α=16 on q, v; 20 steps of 8 at 3e-3) and asserts it under nbval in make test, so this file
    does not train the same thing again. This test keeps that assert from going missing."""
    code, params = notebook_code("04_qlora.ipynb")
    assert params["N_EVAL"] == 50 and params["MAX_STEPS"] >= 20
    assert 'model4, _ = lk.load_model(quantize="nf4")' in code
    assert 'pm4 = lk.attach(model4, r=8, alpha=16, targets=["q_proj", "v_proj"]' in code
    assert 'acc = {name: task.accuracy(m, tok, n=N_EVAL) for name, m in [("QLoRA (nf4)", pm4)' \
        in code
    assert ('if MAX_STEPS >= 20 and N_EVAL >= 50:' in code
            and 'assert acc["QLoRA (nf4)"].score >= 0.8' in code)


@pytest.mark.gpu
@pytest.mark.parametrize("quantize", ["nf4", "fp4"])
def test_qlora_on_cuda(quantize):
    model, tok = lk.load_model(quantize=quantize, progress=False)
    q = model.model.layers[0].self_attn.q_proj
    expected = torch.bfloat16 if precision.cuda_has_bf16() else torch.float16
    assert q.weight.device.type == "cuda" and q.compute_dtype == expected
    pm = lk.attach(model, r=8, alpha=16, seed=0)
    res = lk.train(pm, tok, TASK, QLORA_TRAIN, progress=False)
    assert res.losses[-1] < 0.2 * res.losses[0]
    assert TASK.accuracy(pm, tok, n=50).score >= 0.80


@pytest.mark.slow
def test_training_after_inference_learns_the_same(nf4):
    """bitsandbytes packs 4-bit weights for CPU inference on an eval-mode forward; training
    through that layout gets silently wrong gradients. lk.train restores the layout first, so
    the same seeded run gives the same losses whether or not the model generated before.
    (The pack/unpack round trip rounds the block constants once: ~1% apart, not bitwise.
    Without the restore the runs are ~0.8 apart in loss and QLoRA stops learning.)"""
    model, tok = nf4
    runs = []
    for generate_first in (False, True):
        if generate_first:
            lk.generate(model, tok, "Convert to ISO date: May 1, 2000", max_new_tokens=2)
        pm = lk.attach(model, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
        try:
            runs.append(lk.train(pm, tok, TASK, steps=4, lr=3e-3, batch_size=2,
                                 progress=False).losses)
        finally:
            lk.detach(pm)
    assert runs[1] == pytest.approx(runs[0], rel=0.03)
