"""Spectra, effective rank, Eckart–Young, LoRA §7 subspace similarity and amplification."""

import math

import pytest
import torch

import lorakit as lk
from lorakit.core import analysis as an
from lorakit.core import serve

D_MODEL = 576   # SmolLM2 hidden size: d_in of q_proj / v_proj


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- spectra, Eckart–Young, effective rank --------------------------------------------------------
def test_spectrum_is_float64_descending_and_sees_the_rank():
    B, A = randn(96, 8, seed=1, dtype=torch.float32), randn(8, 64, seed=2, dtype=torch.float32)
    s = an.spectrum(B @ A)                          # a rank-8 float32 matrix
    assert s.dtype == torch.float64 and s.shape == (64,)
    assert torch.all(s[:-1] >= s[1:])
    assert s[7] > 1e3 * s[8]                         # exactly 8 non-zero (up to fp32 rounding)
    assert torch.allclose(an.spectrum(torch.diag(torch.tensor([1.0, 3.0, 2.0]))),
                          torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("r", [0, 1, 5, 17, 40])
def test_best_rank_r_error_is_the_tail_of_the_spectrum(dtype, r):
    M = randn(60, 40, seed=3, dtype=dtype)
    approx, error = an.best_rank_r(M, r)
    s = torch.linalg.svdvals(M.double())
    tail = math.sqrt((s[r:] ** 2).sum().item())
    assert approx.dtype == dtype and approx.shape == M.shape
    assert error == pytest.approx(tail, abs=1e-5)                                # Eckart–Young
    assert torch.linalg.matrix_norm(M.double() - approx.double()).item() == pytest.approx(
        tail, abs=1e-5 if dtype == torch.float64 else 1e-4)
    assert torch.linalg.matrix_rank(approx).item() == r
    if 0 < r < 40:   # any other rank-r matrix is further away, e.g. a perturbed truncation
        other = an.best_rank_r(M + 0.1 * randn(60, 40, seed=4, dtype=dtype), r).approx
        assert torch.linalg.matrix_norm((M - other).double()).item() > error


def test_effective_rank_counts_directions_holding_the_energy():
    D = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0]))   # energies 9, 4, 1 of 14
    assert an.effective_rank(D, 0.5) == 1                # 9/14 = 0.64
    assert an.effective_rank(D, 0.9) == 2                # 13/14 = 0.93
    assert an.effective_rank(D, 0.95) == 3
    assert an.effective_rank(D, 1.0) == 3                # never counts the zero direction
    assert an.effective_rank(torch.tensor([3.0, 2.0, 1.0]), 0.9) == 2  # singular values given
    assert an.energy_fraction(D, 2) == pytest.approx(13 / 14)
    with pytest.raises(ValueError, match=r"energy must be in \(0, 1\]"):
        an.effective_rank(D, 0.0)


def test_zero_delta_gives_well_defined_results_without_nan():
    Z = torch.zeros(D_MODEL, 192)
    W = randn(D_MODEL, 192, seed=5)
    assert torch.all(an.spectrum(Z) == 0)
    assert an.effective_rank(Z) == 0 and an.energy_fraction(Z, 8) == 0.0
    approx, error = an.best_rank_r(Z, 8)
    assert error == 0.0 and torch.all(approx == 0)
    amp = an.amplification(Z, W, 8)
    values = [amp.delta_norm, amp.proj_delta, amp.factor, amp.factor_weight, amp.factor_random]
    assert values == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert amp.proj_weight > 0 and all(math.isfinite(v) for v in (amp.proj_weight, amp.proj_random))


# -- §7.2 subspace similarity -----------------------------------------------------------------------
def test_similarity_of_a_matrix_with_itself_is_one_on_the_diagonal():
    A = randn(8, D_MODEL, seed=6, dtype=torch.float32)
    grid = an.similarity_grid(A, A)
    assert grid.shape == (8, 8)
    torch.testing.assert_close(grid.diagonal(), torch.ones(8, dtype=torch.float64))
    assert all(an.subspace_similarity(A, A, i, i) == pytest.approx(1.0) for i in range(1, 9))
    # φ only sees the row space: a mixed-up basis of the same rows spans the same subspace
    R = randn(8, 8, seed=7, dtype=torch.float32)
    assert an.subspace_similarity(A, R @ A, 8, 8) == pytest.approx(1.0)
    assert an.subspace_similarity(A, R @ A, 1, 1) < 0.999  # ... though its singular vectors differ
    assert grid.max() <= 1 + 1e-9


def test_random_subspaces_have_similarity_max_i_j_over_d():
    # E ‖U_iᵀ U_j‖_F² = i·j/d for independent random subspaces, so φ = max(i, j)/d
    i = torch.arange(1, 9, dtype=torch.float64)[:, None]
    j = torch.arange(1, 65, dtype=torch.float64)[None, :]
    expected = torch.maximum(i, j) / D_MODEL
    grids = [an.similarity_grid(randn(8, D_MODEL, seed=10 + s), randn(64, D_MODEL, seed=20 + s))
             for s in range(5)]
    mean = torch.stack(grids).mean(0)               # (8, 64)
    assert mean[-1, -1].item() == pytest.approx(64 / D_MODEL, rel=0.15)   # 5σ ≈ 13%
    assert (mean / expected).mean().item() == pytest.approx(1.0, rel=0.1)
    assert mean[0, 0].item() < 10 / D_MODEL          # top directions: no special overlap
    assert an.subspace_similarity(randn(8, D_MODEL, seed=10), randn(64, D_MODEL, seed=20), 8, 64) == pytest.approx(grids[0][-1, -1].item())
    with pytest.raises(ValueError, match="1 ≤ i ≤ 8"):
        an.subspace_similarity(randn(8, D_MODEL), randn(64, D_MODEL), 9, 1)
    with pytest.raises(ValueError, match="same d_in"):
        an.similarity_grid(randn(8, D_MODEL), randn(8, 192))


def test_similarity_of_a_zero_matrix_is_undefined_not_one():
    # A LoRA A before its first update: A_1 - A_0 = 0 (B_0 = 0 gives A no gradient at step 1)
    zero = torch.zeros(8, D_MODEL)
    for a1, a2 in [(zero, randn(64, D_MODEL)), (randn(8, D_MODEL), torch.zeros(64, D_MODEL)),
                   (zero, torch.zeros(64, D_MODEL))]:
        with pytest.raises(ValueError, match="undefined for a zero matrix"):
            an.similarity_grid(a1, a2)
    with pytest.raises(ValueError, match="undefined"):
        an.subspace_similarity(zero, zero, 1, 1)


def test_input_drawn_baselines_follow_the_optimizer():
    # inputs with a few large coordinates (as a transformer's activations have): SGD's update,
    # a combination of inputs, leans on those coordinates, so two SGD updates overlap far more
    # than random ones; AdamW divides each coordinate by its own gradient size, undoing that
    X = randn(400, D_MODEL, seed=32)
    X[:, :3] *= 30
    sgd = an.input_drawn_grid(X, 4, 16, steps=3, optimizer="sgd", seed=0)
    adamw = an.input_drawn_grid(X, 4, 16, steps=3, optimizer="adamw", seed=0)
    assert sgd.shape == adamw.shape == (4, 16)
    assert sgd[-1, -1] > 0.5 > 4 * adamw[-1, -1]
    torch.testing.assert_close(an.input_drawn_grid(X, 4, 16, optimizer="adamw", seed=1),
                               an.input_drawn_grid(X, 4, 16, optimizer="adamw", seed=1))
    with pytest.raises(ValueError, match="optimizer must be"):
        an.input_drawn_grid(X, 4, 16, optimizer="adam")
    with pytest.raises(ValueError, match="steps must be"):
        an.input_drawn_grid(X, 4, 16, steps=0)


# -- §7.3 amplification ------------------------------------------------------------------------------
def test_amplification_follows_the_paper_definition():
    W = randn(192, D_MODEL, seed=8)
    D = randn(192, 4, seed=9) @ randn(4, D_MODEL, seed=10) * 0.01
    amp = an.amplification(D, W, r=4)
    U, _, Vh = torch.linalg.svd(D)
    proj = torch.linalg.matrix_norm(U[:, :4].T @ W @ Vh[:4].T).item()       # ‖UᵀWVᵀ‖_F
    assert amp.proj_delta == pytest.approx(proj)
    assert amp.factor == pytest.approx(torch.linalg.matrix_norm(D).item() / proj)
    assert amp.weight_norm == pytest.approx(torch.linalg.matrix_norm(W).item())
    # W's own top-r singular subspace holds the most of W (Ky Fan), whatever else is compared
    assert amp.proj_weight >= amp.proj_delta and amp.proj_weight >= amp.proj_random
    # ΔW along W's top directions projects exactly like W's own singular vectors
    along = an.best_rank_r(W, 4).approx * 0.01
    amp2 = an.amplification(along, W, r=4)
    assert amp2.proj_delta == pytest.approx(amp2.proj_weight)
    assert [row["U, V from"] for row in amp.rows()] == ["ΔW", "W", "random"]
    assert an.amplification(D, W, 4, seed=1).proj_random != amp.proj_random
    with pytest.raises(ValueError, match="same shape"):
        an.amplification(D, W.T, 4)


# -- ΔW from a real PEFT model ---------------------------------------------------------------------
def test_delta_weight_is_peft_scaling_b_a_and_what_merge_adds(fresh):
    model, _ = fresh
    w0 = model.model.layers[3].self_attn.v_proj.weight.detach().clone()
    pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
    layer = pm.base_model.model.model.layers[3].self_attn.v_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    dw = an.delta_weight(pm, "layers.3.v_proj")
    assert dw.shape == (192, D_MODEL)
    torch.testing.assert_close(dw, 2.0 * B @ A)                      # α/r = 16/8
    assert torch.equal(dw, an.delta_weight(pm, "model.layers.3.self_attn.v_proj"))
    assert torch.equal(dw, an.delta_weight(layer))
    assert an.effective_rank(dw, 1.0) == 8 and an.spectrum(dw)[8] < 1e-6
    assert torch.equal(an.base_weight(pm, "layers.3.v_proj"), w0)
    serve.merge_in_place(pm)                                          # the same ΔW merge adds
    torch.testing.assert_close(layer.get_base_layer().weight - w0, dw, rtol=0, atol=1e-7)
    serve.unmerge(pm)
    with pytest.raises(ValueError, match=r"no LoRA module named 'layers\.3\.k_proj'.*layers\.0"):
        an.delta_weight(pm, "layers.3.k_proj")
    with pytest.raises(ValueError, match="'q_proj' matches 30 LoRA modules"):
        an.delta_weight(pm, "q_proj")


@pytest.mark.slow
def test_trained_r8_and_r64_adapters_grid_and_amplification():
    """The §7 measures on SmolLM2 adapters of rank 8 and 64 trained briefly on iso_dates."""
    task = lk.tasks.get("iso_dates")
    module = "layers.15.q_proj"
    A, A0, delta, W = {}, {}, {}, None
    for r in (8, 64):
        model, tok = lk.load_model(progress=False)
        pm = lk.attach(model, r=r, alpha=2 * r, targets=["q_proj", "v_proj"], seed=0)
        A0[r] = an.lora_module(pm, module).lora_A["default"].weight.detach().clone()
        result = lk.train(pm, tok, task, steps=8, lr=2e-3, batch_size=4, progress=False)
        assert result.losses[-1] < result.losses[0] / 2          # it learned something
        A[r] = an.lora_module(pm, module).lora_A["default"].weight.detach().clone()
        delta[r], W = an.delta_weight(pm, module), an.base_weight(pm, module)
    grid = an.similarity_grid(A[8], A[64])
    assert grid.shape == (8, 64) and 0 <= grid.min() and grid.max() <= 1 + 1e-9
    # After a few steps A is still mostly its random init, so φ(A8, A64) sits near the random
    # baseline max(i, j)/d; what was *learned* (A - A0) shares its directions far above it.
    learned = an.similarity_grid(A[8] - A0[8], A[64] - A0[64])
    assert learned[-1, -1] > 2 * 64 / D_MODEL > 1.5 * grid[-1, -1]
    for r in (8, 64):
        amp = an.amplification(delta[r], W, r=8)
        assert amp.proj_weight >= max(amp.proj_delta, amp.proj_random)   # Ky Fan
        assert 0 < amp.factor < math.inf and amp.delta_norm > 0
        assert an.effective_rank(delta[r]) <= r



def test_base_weight_of_a_4bit_model(tmp_path):
    """base_weight dequantizes a bitsandbytes 4-bit base (no ImportError), also after
    an eval-mode forward that may repack the weight for the CPU."""
    pytest.importorskip("bitsandbytes")
    import warnings

    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    full = LlamaForCausalLM(cfg)
    full.save_pretrained(tmp_path)
    W = full.model.layers[1].self_attn.q_proj.weight.detach().clone()       # (64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = AutoModelForCausalLM.from_pretrained(
            tmp_path, quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.float32), device_map={"": "cpu"})
    pm = lk.attach(q, r=2, targets=["q_proj"], seed=0)
    with torch.no_grad():
        pm(input_ids=torch.tensor([[1, 2, 3]]))          # eval forward: may repack on CPU
    w = an.base_weight(pm, "layers.1.q_proj")
    assert w.shape == W.shape and w.dtype.is_floating_point
    # NF4 keeps each weight within ~ one quantization step of its block's scale
    assert (w.float() - W).abs().max() < 0.25 * W.abs().max()
    assert torch.corrcoef(torch.stack([w.float().flatten(), W.flatten()]))[0, 1] > 0.99
