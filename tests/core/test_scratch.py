"""Tests for lorakit.scratch: hand-written backward vs finite differences and autograd,
LoRALinear vs PEFT's lora.Linear (with non-zero B), merge/unmerge guards, input validation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lorakit.core.scratch import LoRALinear, NumpyLoRA, apply_lora, lora_scaling

D_IN, D_OUT, R = 16, 12, 4


def _numpy_layer(rng, shape=(D_OUT, D_IN), r=R, alpha=8.0, use_rslora=False):
    W = rng.standard_normal(shape)
    b = rng.standard_normal(shape[0])
    layer = NumpyLoRA(W, r, alpha, b=b, rng=rng, use_rslora=use_rslora)
    layer.B = rng.standard_normal(layer.B.shape)  # non-zero B: otherwise grad_A would be 0
    return layer


# --------------------------------------------------------------------------- numpy backward


@pytest.mark.parametrize("x_shape", [(3, 5), (2, 3, 5)], ids=["batch", "batch-seq"])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_numpy_backward_matches_finite_differences(x_shape, use_rslora):
    rng = np.random.default_rng(0)
    layer = _numpy_layer(rng, shape=(4, 5), r=3, alpha=5.0, use_rslora=use_rslora)
    x = rng.standard_normal(x_shape)
    G = rng.standard_normal(x_shape[:-1] + (4,))  # L = sum(G * h)  =>  dL/dh = G

    def loss() -> float:
        return float(np.sum(G * layer.forward(x)))

    layer.forward(x)
    grads = layer.backward(G)
    eps = 1e-6
    for name, arr, analytic in [
        ("A", layer.A, grads.A),
        ("B", layer.B, grads.B),
        ("x", x, grads.x),
    ]:
        assert analytic.shape == arr.shape, name
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = loss()
            arr[idx] = old - eps
            down = loss()
            arr[idx] = old
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7, err_msg=name)
        assert np.abs(analytic).max() > 1e-3, f"grad {name} is trivially zero"


@pytest.mark.parametrize("x_shape", [(7, D_IN), (2, 3, D_IN)], ids=["batch", "batch-seq"])
def test_numpy_forward_backward_match_torch_autograd(x_shape):
    rng = np.random.default_rng(1)
    layer = _numpy_layer(rng)
    x = rng.standard_normal(x_shape)
    G = rng.standard_normal(x_shape[:-1] + (D_OUT,))

    h = layer.forward(x)
    grads = layer.backward(G)

    t = {
        k: torch.tensor(v, dtype=torch.float64)
        for k, v in {"W": layer.W, "b": layer.b, "A": layer.A, "B": layer.B, "x": x}.items()
    }
    for k in ("A", "B", "x"):
        t[k].requires_grad_(True)
    h_t = t["x"] @ t["W"].T + t["b"] + layer.scaling * (t["x"] @ t["A"].T) @ t["B"].T
    (h_t * torch.tensor(G)).sum().backward()

    np.testing.assert_allclose(h, h_t.detach().numpy(), rtol=0, atol=1e-6)
    for k in ("A", "B", "x"):
        got, want = getattr(grads, k), t[k].grad.numpy()
        assert np.abs(got - want).max() < 1e-6, k
        assert np.abs(want).max() > 1e-3, k


def test_numpy_matches_lora_linear_float64():
    """The two from-scratch implementations agree on the same numbers."""
    rng = np.random.default_rng(2)
    np_layer = _numpy_layer(rng, alpha=6.0, use_rslora=True)
    base = nn.Linear(D_IN, D_OUT, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(torch.from_numpy(np_layer.W))
        base.bias.copy_(torch.from_numpy(np_layer.b))
    t_layer = LoRALinear(base, r=R, alpha=6.0, use_rslora=True)
    with torch.no_grad():
        t_layer.lora_A.weight.copy_(torch.from_numpy(np_layer.A))
        t_layer.lora_B.weight.copy_(torch.from_numpy(np_layer.B))
    x = rng.standard_normal((2, 3, D_IN))
    out = t_layer(torch.from_numpy(x)).detach().numpy()
    assert np.abs(out - np_layer.forward(x)).max() < 1e-12
    assert np.abs(t_layer.delta_weight().detach().numpy() - np_layer.delta_weight()).max() < 1e-12


def test_numpy_delta_and_merge():
    rng = np.random.default_rng(3)
    layer = _numpy_layer(rng)
    dW = layer.delta_weight()
    assert dW.shape == (D_OUT, D_IN)
    assert np.linalg.matrix_rank(dW) == R
    np.testing.assert_allclose(dW, layer.scaling * layer.B @ layer.A)
    W0 = layer.W.copy()
    x = rng.standard_normal((5, D_IN))
    merged = x @ layer.merge_weights().T + layer.b
    np.testing.assert_allclose(merged, layer.forward(x), atol=1e-10)
    assert np.array_equal(layer.W, W0)  # merge_weights returns a new array


# --------------------------------------------------------------------------- identity at init


def test_init_is_exactly_base_output():
    rng = np.random.default_rng(4)
    W, b = rng.standard_normal((D_OUT, D_IN)), rng.standard_normal(D_OUT)
    np_layer = NumpyLoRA(W, R, 8, b=b, rng=0)
    assert not np.any(np_layer.B) and np.any(np_layer.A)
    x = rng.standard_normal((2, 3, D_IN))
    assert np.array_equal(np_layer.forward(x), x @ W.T + b)

    torch.manual_seed(0)
    for init in ("kaiming", "gaussian"):
        base = nn.Linear(D_IN, D_OUT)
        layer = LoRALinear(base, r=R, alpha=8, init=init)
        assert torch.count_nonzero(layer.lora_B.weight) == 0
        assert torch.count_nonzero(layer.lora_A.weight) > 0
        xt = torch.randn(2, 3, D_IN)
        assert torch.equal(layer(xt), base(xt))


# --------------------------------------------------------------------------- vs PEFT


def _peft_layer(use_rslora: bool, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D_IN, D_OUT), nn.ReLU(), nn.Linear(D_OUT, 3))
    cfg = LoraConfig(
        r=R, lora_alpha=8, target_modules=["0"], lora_dropout=0.0, use_rslora=use_rslora
    )
    peft_model = get_peft_model(model, cfg)
    layer = peft_model.base_model.model[0]
    with torch.no_grad():  # non-zero B, or the comparison tests nothing
        layer.lora_B["default"].weight.normal_()
    return peft_model, layer


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
def test_matches_peft_layer_with_nonzero_B(use_rslora):
    _, peft_layer = _peft_layer(use_rslora)
    expected_scaling = 8 / math.sqrt(R) if use_rslora else 8 / R
    assert peft_layer.scaling["default"] == pytest.approx(expected_scaling)

    ours = LoRALinear.from_peft(peft_layer)
    assert ours.scaling == pytest.approx(expected_scaling)
    assert ours.base_layer is not peft_layer.base_layer  # a copy: merging ours leaves PEFT alone

    x = torch.randn(2, 5, D_IN)
    with torch.no_grad():
        want, got = peft_layer(x), ours(x)
        base_only = peft_layer.base_layer(x)
    assert (want - base_only).abs().max() > 1e-2  # the LoRA path contributes
    assert (got - want).abs().max() <= 1e-6
    dW_peft = peft_layer.get_delta_weight("default")
    assert (ours.delta_weight() - dW_peft).abs().max() <= 1e-6


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
def test_matches_peft_with_manually_copied_weights(use_rslora):
    """Build LoRALinear by hand (not from_peft), so our scaling rule is checked on its own."""
    peft_model, peft_layer = _peft_layer(use_rslora, seed=1)
    base = copy.deepcopy(peft_layer.base_layer)
    ours = LoRALinear(base, r=R, alpha=8, use_rslora=use_rslora)
    with torch.no_grad():
        ours.lora_A.weight.copy_(peft_layer.lora_A["default"].weight)
        ours.lora_B.weight.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        assert (ours(x) - peft_layer(x)).abs().max() <= 1e-6
        # And in a whole model: swap our layer into a copy of the toy model.
        toy = copy.deepcopy(peft_model.base_model.model)
        toy[0] = ours
        assert (toy(x) - peft_model(x)).abs().max() <= 1e-6


def test_from_peft_refuses_merged_layer():
    _, peft_layer = _peft_layer(False)
    peft_layer.merge()
    with pytest.raises(ValueError, match="merged"):
        LoRALinear.from_peft(peft_layer)
    with pytest.raises(ValueError, match="adapter 'nope' not found"):
        LoRALinear.from_peft(_peft_layer(False)[1], adapter="nope")
    with pytest.raises(ValueError, match="PEFT lora.Linear"):
        LoRALinear.from_peft(nn.Linear(2, 2))


def test_kaiming_and_gaussian_init_match_peft_distribution():
    from peft import LoraConfig, get_peft_model

    d_in, r = 256, 64
    g = torch.Generator().manual_seed(0)
    ours = LoRALinear(nn.Linear(d_in, 32), r=r, alpha=16, generator=g).lora_A.weight
    torch.manual_seed(0)
    cfg = LoraConfig(r=r, lora_alpha=16, target_modules=["0"])
    peft_A = (
        get_peft_model(nn.Sequential(nn.Linear(d_in, 32)), cfg)
        .base_model.model[0]
        .lora_A["default"]
        .weight
    )
    bound = 1 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)): sqrt(6 / ((1 + a²) · fan_in))
    for A in (ours, peft_A):
        assert A.shape == (r, d_in)
        assert A.abs().max() <= bound
        assert A.abs().max() > 0.99 * bound
        assert A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)

    ours_g = LoRALinear(
        nn.Linear(d_in, 32), r=r, alpha=16, init="gaussian", generator=g
    ).lora_A.weight
    assert ours_g.std().item() == pytest.approx(1 / r, rel=0.03)
    # Normal, not uniform: 16k draws reach past 3σ (a uniform of that std stops at √3·σ)
    assert ours_g.abs().max() > 3 / r


def test_generator_makes_init_reproducible():
    a1 = LoRALinear(
        nn.Linear(D_IN, D_OUT), r=R, generator=torch.Generator().manual_seed(7)
    ).lora_A.weight
    a2 = LoRALinear(
        nn.Linear(D_IN, D_OUT), r=R, generator=torch.Generator().manual_seed(7)
    ).lora_A.weight
    assert torch.equal(a1, a2)


# --------------------------------------------------------------------------- merge / unmerge


def _trained_layer(dropout=0.0):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(D_IN, D_OUT), r=R, alpha=8, dropout=dropout)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    return layer


def test_merge_unmerge_roundtrip_and_guards():
    layer = _trained_layer()
    W0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(2, 5, D_IN)
    with torch.no_grad():
        before = layer(x)
        layer.merge()
        assert layer.merged
        assert not torch.allclose(layer.base_layer.weight, W0)
        merged_out = layer(x)
        # merged forward uses only the base layer (the LoRA path is not added twice)
        assert torch.equal(merged_out, layer.base_layer(x))
    assert (merged_out - before).abs().max() <= 1e-5

    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    assert not layer.merged
    assert torch.allclose(layer.base_layer.weight, W0, atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    with torch.no_grad():
        assert (layer(x) - before).abs().max() <= 1e-6


def test_train_eval_never_merge():
    layer = _trained_layer(dropout=0.1)
    W0 = layer.base_layer.weight.detach().clone()
    layer.eval()
    layer.train()
    layer.eval()
    assert not layer.merged
    assert torch.equal(layer.base_layer.weight, W0)
    x = torch.randn(3, D_IN)
    with torch.no_grad():  # eval: dropout off, so deterministic and LoRA active
        assert torch.equal(layer(x), layer(x))
        assert (layer(x) - layer.base_layer(x)).abs().max() > 1e-3


def test_base_frozen_lora_trainable_and_grads_flow():
    layer = _trained_layer()
    assert not layer.base_layer.weight.requires_grad
    assert not layer.base_layer.bias.requires_grad
    assert layer.lora_A.weight.requires_grad and layer.lora_B.weight.requires_grad
    layer(torch.randn(2, 3, D_IN)).sum().backward()
    assert layer.lora_A.weight.grad is not None and layer.lora_B.weight.grad is not None
    assert layer.base_layer.weight.grad is None
    assert "r=4, alpha=8, scaling=2" in repr(layer)


# --------------------------------------------------------------------------- apply_lora


def test_apply_lora_replaces_targets_and_freezes_rest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D_IN, D_OUT), nn.ReLU(), nn.Linear(D_OUT, 3))
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        before = model(x)
    replaced = apply_lora(model, ["0", "2"], r=2, alpha=4)
    assert replaced == ["0", "2"]
    assert isinstance(model[0], LoRALinear) and isinstance(model[2], LoRALinear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.lora_A.weight", "0.lora_B.weight", "2.lora_A.weight", "2.lora_B.weight"}
    with torch.no_grad():
        assert torch.equal(model(x), before)  # B = 0 at start
    with pytest.raises(ValueError, match="already carry LoRA"):
        apply_lora(model, ["0"])
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        apply_lora(nn.Sequential(nn.Linear(2, 2)), ["q_proj"])


def test_apply_lora_validates_before_changing_anything():
    model = nn.Sequential(nn.Linear(D_IN, D_OUT))
    with pytest.raises(ValueError, match="positive integer"):
        apply_lora(model, ["0"], r=0)
    assert isinstance(model[0], nn.Linear) and model[0].weight.requires_grad


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r": 0}, r"r \(the LoRA rank\) must be a positive integer, got 0"),
        ({"r": 2.5}, "positive integer"),
        ({"r": True}, "positive integer"),
        ({"alpha": 0}, r"alpha .* must be a finite number > 0, got 0"),
        ({"alpha": float("nan")}, "finite number > 0"),
        ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"\[0, 1\)"),
        ({"init": "pissa"}, r"init must be one of \('kaiming', 'gaussian'\), got 'pissa'"),
    ],
)
def test_lora_linear_bad_inputs(kwargs, match):
    base = nn.Linear(D_IN, D_OUT)
    with pytest.raises(ValueError, match=match):
        LoRALinear(base, **kwargs)
    assert base.weight.requires_grad  # validation happened before freezing the base


def test_lora_linear_rejects_non_linear_base():
    with pytest.raises(ValueError, match="base must be an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(2, 2, 1))


def test_numpy_bad_inputs():
    W = np.zeros((D_OUT, D_IN))
    with pytest.raises(ValueError, match="positive integer, got -1"):
        NumpyLoRA(W, -1, 8)
    with pytest.raises(ValueError, match="> 0"):
        NumpyLoRA(W, 2, -1.0)
    with pytest.raises(ValueError, match=r"W must be 2-D .* got shape \(16,\)"):
        NumpyLoRA(np.zeros(D_IN), 2, 8)
    with pytest.raises(ValueError, match=r"b must have shape \(d_out,\) = \(12,\), got \(16,\)"):
        NumpyLoRA(W, 2, 8, b=np.zeros(D_IN))
    layer = NumpyLoRA(W, 2, 8, rng=0)
    with pytest.raises(RuntimeError, match="call forward"):
        layer.backward(np.zeros((1, D_OUT)))
    with pytest.raises(ValueError, match=r"d_in = 16 .* got x.shape = \(3, 12\)"):
        layer.forward(np.zeros((3, D_OUT)))
    layer.forward(np.zeros((3, D_IN)))
    with pytest.raises(ValueError, match=r"grad_h must have the shape .* \(3, 12\), got \(3, 16\)"):
        layer.backward(np.zeros((3, D_IN)))


def test_scaling_rules():
    assert lora_scaling(4, 8) == 2.0
    assert lora_scaling(4, 8, use_rslora=True) == 4.0
    assert (
        NumpyLoRA(np.zeros((3, 3)), 4, 8, use_rslora=True).scaling == 4.0
    )  # r > min(d) is allowed
    rng = np.random.default_rng(5)
    assert np.array_equal(
        NumpyLoRA(np.eye(3), 2, 1, rng=11).A, NumpyLoRA(np.eye(3), 2, 1, rng=11).A
    )
    assert np.array_equal(NumpyLoRA(np.eye(3), 2, 1, rng=rng).A.shape, (2, 3))
