"""Low-rank analysis of weight updates: SVD spectra, effective rank, Eckart–Young, LoRA §7.

References:
- Eckart–Young–Mirsky theorem: the truncated SVD ``U[:, :r] diag(σ[:r]) Vh[:r]`` is the best
  rank-r approximation of a matrix in Frobenius norm, with error ``sqrt(Σ_{i>r} σ_i²)``.
- Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", §7 "Understanding the
  low-rank updates": §7.2 the subspace similarity φ between the ``A`` matrices of adapters of
  rank r1 and r2 (Figure 3), §7.3 the amplification factor ‖ΔW‖_F / ‖UᵀWVᵀ‖_F (Table 7).

ΔW itself comes from PEFT (``LoraLayer.get_delta_weight``: ΔW = (α/r)·B·A), through
``delta_weight``: the maths is written once. Everything here is computed in float64 on the CPU
and returns tensors or small dataclasses; nothing prints.

Shapes: ``W, ΔW: (d_out, d_in)``, ``A: (r, d_in)``, ``B: (d_out, r)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .naming import find_layer


def _matrix(x, name: str = "delta") -> torch.Tensor:
    """A 2-D float64 CPU copy of a tensor, array or module weight."""
    if isinstance(x, nn.Module):
        x = x.weight
    t = torch.as_tensor(x).detach()
    if t.ndim != 2:
        raise ValueError(f"{name} must be a matrix (2-D), got shape {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.float64)


# -- spectra -------------------------------------------------------------------------------
def spectrum(delta) -> torch.Tensor:
    """Singular values of ``delta: (d_out, d_in)``, descending, float64: ``(min(d_out, d_in),)``."""
    return torch.linalg.svdvals(_matrix(delta))


def _singular_values(x) -> torch.Tensor:
    t = torch.as_tensor(x).detach()
    return t.to("cpu", torch.float64).abs() if t.ndim == 1 else spectrum(t)


def energy_fraction(delta, r: int) -> float:
    """Fraction of ‖ΔW‖_F² held by the top-r singular values, Σ_{i≤r} σ_i² / Σ σ_i² (0 for ΔW = 0)."""
    s2 = _singular_values(delta) ** 2
    total = s2.sum().item()
    return s2[:r].sum().item() / total if total > 0 else 0.0


def effective_rank(delta, energy: float = 0.9) -> int:
    """Smallest k whose top-k singular values hold ``energy`` of Σσ² (0 for a zero matrix).

    ``delta`` is a matrix, or its singular values (1-D). For a LoRA update of rank r the
    answer is at most r: a tiny k means a few directions carry the update.
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    s2 = _singular_values(delta) ** 2
    total = s2.sum()
    if total <= 0:
        return 0
    captured = torch.cumsum(s2, 0) / total
    # a relative slack of a few ulps, so energy=1.0 is reached despite rounding in cumsum
    k = int(torch.searchsorted(captured, torch.tensor(energy - 1e-12, dtype=torch.float64)))
    return min(k + 1, len(s2))


class LowRank(NamedTuple):
    """``best_rank_r``'s result: unpacks as ``approx, error = best_rank_r(delta, r)``."""

    approx: torch.Tensor    # (d_out, d_in), the input's dtype
    error: float            # ‖delta - approx‖_F = sqrt(Σ_{i>r} σ_i²)


def best_rank_r(delta, r: int) -> LowRank:
    """Best rank-r approximation of ``delta: (d_out, d_in)`` in Frobenius norm (Eckart–Young).

    ``approx = U[:, :r] diag(σ[:r]) Vh[:r]`` and ``error = sqrt(Σ_{i>r} σ_i²)``; no rank-r
    matrix is closer. r=0 gives zeros; r ≥ min(d_out, d_in) gives ``delta`` back (error 0).
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"r must be an integer ≥ 0, got {r!r}")
    src = torch.as_tensor(delta.weight if isinstance(delta, nn.Module) else delta)
    M = _matrix(src)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)   # U: (d_out, k), S: (k,), Vh: (k, d_in)
    approx = (U[:, :r] * S[:r]) @ Vh[:r]
    error = math.sqrt((S[r:] ** 2).sum().item())
    dtype = src.dtype if src.is_floating_point() else torch.float64
    return LowRank(approx.to(dtype), error)


# -- ΔW of a PEFT model ----------------------------------------------------------------------
def lora_module(peft_model, module: str, adapter: str = "default") -> nn.Module:
    """The LoRA layer called ``module`` in ``peft_model``.

    Names: the short form ``layers.3.q_proj`` (as in a Recording), the full name
    ``model.layers.3.self_attn.q_proj``, or any unique dotted suffix of it.
    """
    return find_layer(peft_model, module, adapter)


@torch.no_grad()
def delta_weight(peft_model_or_layer, module: str | None = None,
                 adapter: str = "default") -> torch.Tensor:
    """ΔW = (α/r)·B·A of one LoRA module, ``(d_out, d_in)``, from PEFT's ``get_delta_weight``.

    Pass a PeftModel and a module name (see ``lora_module``), or a LoRA layer itself. For a DoRA
    adapter this is the low-rank direction update (α/r)·B·A, before DoRA's magnitude rescaling.
    """
    layer = peft_model_or_layer
    if module is not None:
        layer = lora_module(peft_model_or_layer, module, adapter)
    if not hasattr(layer, "get_delta_weight") or adapter not in getattr(layer, "lora_A", {}):
        raise ValueError(f"expected a LoRA layer with adapter {adapter!r} (or a PeftModel and a "
                         f"module name), got {type(layer).__name__}")
    return layer.get_delta_weight(adapter).detach().clone()


@torch.no_grad()
def base_weight(peft_model_or_layer, module: str | None = None,
                adapter: str = "default") -> torch.Tensor:
    """The frozen base weight W of a LoRA module, ``(d_out, d_in)`` (4-bit bases dequantized)."""
    layer = peft_model_or_layer
    if module is not None:
        layer = lora_module(peft_model_or_layer, module, adapter)
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    weight = base.weight
    if type(weight).__name__ == "Params4bit":
        from peft.utils.integrations import dequantize_bnb_weight

        from .models import restore_4bit_layout

        restore_4bit_layout(base)   # a CPU-repacked weight is not standard NF4
        return dequantize_bnb_weight(base.weight, state=base.weight.quant_state).detach().clone()
    return weight.detach().clone()


# -- LoRA paper §7.2: subspace similarity -------------------------------------------------------
def right_singular_vectors(A) -> torch.Tensor:
    """Right-singular vectors of ``A: (r, d_in)`` as columns, ``(d_in, r)``, float64.

    ``A`` is a tensor or a ``lora_A`` Linear (its ``.weight``). These span A's row space: the
    input directions the adapter reads (Hu et al. 2021, §7.2, U_{A_r}). A zero matrix has no
    row space, so φ is undefined for it: ``ValueError`` (e.g. ``A_t − A_0`` of a LoRA adapter
    before A's first update, since ``B_0 = 0`` gives A no gradient at step 1).
    """
    A = _matrix(A, "A")
    if not torch.any(A):
        raise ValueError("φ is undefined for a zero matrix (ΔA = 0): it has no row space")
    Vh = torch.linalg.svd(A, full_matrices=False).Vh   # (min(r, d_in), d_in), orthonormal rows
    return Vh.T


def phi_grid(U1: torch.Tensor, U2: torch.Tensor) -> torch.Tensor:
    """φ(i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖_F² / min(i, j) for all i, j, from orthonormal columns."""
    P = (U1.T @ U2) ** 2                               # (r1, r2): squared cosines
    S = P.cumsum(0).cumsum(1)                          # S[i-1, j-1] = ‖U1[:, :i]ᵀ U2[:, :j]‖_F²
    i = torch.arange(1, P.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, P.shape[1] + 1, dtype=torch.float64)[None, :]
    return S / torch.minimum(i, j)


def similarity_grid(A1, A2) -> torch.Tensor:
    """The φ(i, j) grid of Hu et al. 2021, §7.2 (Figure 3), ``(r1, r2)``, float64 in [0, 1].

    ``grid[i-1, j-1] = φ(A1, A2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖_F² / min(i, j)``, U the right-
    singular vectors of ``A1: (r1, d_in)``, ``A2: (r2, d_in)`` (``right_singular_vectors``).
    1 means the top-i directions of one lie inside the top-j of the other; independent random
    subspaces give max(i, j)/d_in on average.
    """
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)
    if U1.shape[0] != U2.shape[0]:
        raise ValueError(f"A1 and A2 must have the same d_in, got {U1.shape[0]} and {U2.shape[0]}")
    return phi_grid(U1, U2)


def subspace_similarity(A1, A2, i: int, j: int) -> float:
    """φ(A1, A2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖_F² / min(i, j) (Hu et al. 2021, eq. 4)."""
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)
    if not (1 <= i <= U1.shape[1] and 1 <= j <= U2.shape[1]):
        raise ValueError(f"need 1 ≤ i ≤ {U1.shape[1]} and 1 ≤ j ≤ {U2.shape[1]}, got i={i}, j={j}")
    return (U1[:, :i].T @ U2[:, :j]).pow(2).sum().item() / min(i, j)


def input_drawn_grid(X, r1: int, r2: int, *, steps: int = 1, optimizer: str = "sgd",
                     seed: int = 0) -> torch.Tensor:
    """A baseline for ``similarity_grid``: two updates of A built from the inputs alone.

    The gradient of a LoRA ``A: (r, d_in)`` is a combination of the layer's inputs,
    ``(α/√r)·Bᵀ Σ_t δ_t x_tᵀ``, so any two adapters trained on the same text overlap more than
    random subspaces. Here each of ``steps`` gradients is ``R X`` with ``X: (n, d_in)`` the
    layer's input vectors and ``R: (r, n)`` fresh Gaussian coefficients (no task signal), and
    ``optimizer`` turns them into an update: ``"sgd"`` sums them (a random combination of the
    inputs, whatever ``steps``), ``"adamw"`` feeds them to ``torch.optim.AdamW`` (default
    betas and eps, no weight decay), whose per-coordinate normalization changes the directions.
    Returns the φ grid ``(r1, r2)`` of the two updates, float64; ``seed`` draws the R's.
    """
    X = _matrix(X, "X")
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    g = torch.Generator().manual_seed(seed)

    def update(r: int) -> torch.Tensor:
        A = torch.zeros(r, X.shape[1], dtype=torch.float64, requires_grad=True)
        opt = (torch.optim.AdamW([A], lr=1e-3, weight_decay=0.0) if optimizer == "adamw"
               else torch.optim.SGD([A], lr=1e-3))
        for _ in range(steps):
            A.grad = torch.randn(r, X.shape[0], generator=g, dtype=torch.float64) @ X
            opt.step()
        return A.detach()

    return similarity_grid(update(r1), update(r2))


# -- LoRA paper §7.3: amplification ------------------------------------------------------------
@dataclass(frozen=True)
class Amplification:
    """Hu et al. 2021, Table 7: how strongly ΔW amplifies directions of W.

    W is projected onto r-dimensional subspaces, ``‖UᵀWVᵀ‖_F`` with U: (d_out, r) and
    Vᵀ: (d_in, r), for U, V the top-r singular vectors of ΔW, of W, and random orthonormal
    ones. The amplification factor is ``‖ΔW‖_F / ‖UᵀWVᵀ‖_F`` with U, V from ΔW (the paper's
    6.91 / 0.32 ≈ 21.5 for GPT-3 W_q, r=4); the same ratio is given for the other two.

    A zero ΔW spans no subspace: its projection and all three factors are reported as 0.0.
    """

    r: int
    delta_norm: float        # ‖ΔW‖_F
    weight_norm: float       # ‖W‖_F
    proj_delta: float        # ‖UᵀWVᵀ‖_F, U, V from ΔW's top-r
    proj_weight: float       # ... from W's top-r (the largest possible, Ky Fan)
    proj_random: float       # ... from random orthonormal U, V

    @staticmethod
    def _ratio(a: float, b: float) -> float:
        if a == 0:
            return 0.0
        return a / b if b > 0 else math.inf

    @property
    def factor(self) -> float:
        """The paper's amplification factor ‖ΔW‖_F / ‖UᵀWVᵀ‖_F (U, V from ΔW)."""
        return self._ratio(self.delta_norm, self.proj_delta)

    @property
    def factor_weight(self) -> float:
        return self._ratio(self.delta_norm, self.proj_weight)

    @property
    def factor_random(self) -> float:
        return self._ratio(self.delta_norm, self.proj_random)

    def rows(self) -> list[dict]:
        """Table 7 as rows: where U, V come from, ‖UᵀWVᵀ‖_F, ‖ΔW‖_F / ‖UᵀWVᵀ‖_F."""
        return [{"U, V from": src, "‖UᵀWVᵀ‖_F": proj, "‖ΔW‖_F / ‖UᵀWVᵀ‖_F": f}
                for src, proj, f in (("ΔW", self.proj_delta, self.factor),
                                     ("W", self.proj_weight, self.factor_weight),
                                     ("random", self.proj_random, self.factor_random))]

    def __str__(self) -> str:
        lines = [f"r={self.r}: ‖W‖_F={self.weight_norm:.4g}, ‖ΔW‖_F={self.delta_norm:.4g}"]
        lines += [f"  U, V from {r['U, V from']:<6}  ‖UᵀWVᵀ‖_F={r['‖UᵀWVᵀ‖_F']:.4g}  "
                  f"factor={r['‖ΔW‖_F / ‖UᵀWVᵀ‖_F']:.4g}" for r in self.rows()]
        return "\n".join(lines)


def amplification(delta, W, r: int, seed: int = 0) -> Amplification:
    """Amplification of W's directions by ``delta`` at rank ``r`` (Hu et al. 2021, §7.3).

    ``delta, W: (d_out, d_in)``. See ``Amplification`` for the table; ``seed`` fixes the random
    orthonormal U, V (QR of a Gaussian matrix) without touching the global RNG.
    """
    D, Wm = _matrix(delta), _matrix(W, "W")
    if D.shape != Wm.shape:
        raise ValueError(f"delta and W must have the same shape, got {tuple(D.shape)} and "
                         f"{tuple(Wm.shape)}")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(D.shape):
        raise ValueError(f"r must be an integer in [1, {min(D.shape)}], got {r!r}")

    def proj(U, Vh):                                   # U: (d_out, r), Vh: (r, d_in)
        return torch.linalg.matrix_norm(U.T @ Wm @ Vh.T).item()

    delta_norm = torch.linalg.matrix_norm(D).item()
    Ud, _, Vhd = torch.linalg.svd(D, full_matrices=False)
    Uw, _, Vhw = torch.linalg.svd(Wm, full_matrices=False)
    g = torch.Generator().manual_seed(seed)
    Ur = torch.linalg.qr(torch.randn(D.shape[0], r, generator=g, dtype=torch.float64)).Q
    Vr = torch.linalg.qr(torch.randn(D.shape[1], r, generator=g, dtype=torch.float64)).Q
    return Amplification(
        r=r, delta_norm=delta_norm, weight_norm=torch.linalg.matrix_norm(Wm).item(),
        proj_delta=proj(Ud[:, :r], Vhd[:r]) if delta_norm > 0 else 0.0,
        proj_weight=proj(Uw[:, :r], Vhw[:r]), proj_random=proj(Ur, Vr.T))
