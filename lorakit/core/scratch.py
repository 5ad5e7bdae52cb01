"""From-scratch LoRA for teaching: a numpy layer with a hand-written backward, and a torch layer.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685) freezes a pretrained weight ``W: (d_out, d_in)`` and learns a low-rank
update ``ΔW = scaling · B @ A`` with ``A: (r, d_in)``, ``B: (d_out, r)`` and r ≪ d_in, d_out::

    h = x Wᵀ + b + scaling · (x Aᵀ) Bᵀ          x: (..., d_in),  h: (..., d_out)

``B`` starts at zero, so at initialisation the adapted layer computes exactly the base layer.
``scaling = alpha / r`` in the paper; rsLoRA (Kalajdzievski 2023, "A Rank Stabilization
Scaling Factor for Fine-Tuning with LoRA", arXiv:2312.03732) uses ``alpha / sqrt(r)`` so that
the size of the update does not collapse as r grows.

:class:`LoRALinear` mirrors PEFT's ``peft.tuners.lora.layer.Linear`` (vanilla LoRA path of
``forward``, ``get_delta_weight``, ``merge``/``unmerge`` and ``reset_lora_parameters``) in a
few dozen readable lines, so that notebooks can check it against PEFT number for number.
:class:`NumpyLoRA` is the same maths with no autograd at all: its ``backward`` spells the
gradients out. This module does not import PEFT (``LoRALinear.from_peft`` only reads the
attributes of a PEFT layer it is handed), plotly or ipywidgets.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ._compat import uses_rslora
from .settings import POSITIVE, POSITIVE_INT, PROBABILITY, Check

__all__ = ["LoRAGrads", "NumpyLoRA", "LoRALinear", "apply_lora", "lora_scaling"]

InitName = Literal["kaiming", "gaussian"]
_INITS = ("kaiming", "gaussian")


# --------------------------------------------------------------------------- validation


def _check_r(r: object) -> int:
    POSITIVE_INT("r (the LoRA rank)", r)
    return int(r)  # type: ignore[call-overload]


def _check_alpha(alpha: object) -> float:
    POSITIVE("alpha (the LoRA scale numerator)", alpha)
    return alpha  # type: ignore[return-value]


def _check_dropout(dropout: object) -> float:
    Check("must be a probability in [0, 1)", PROBABILITY.ok)("dropout", dropout)
    return float(dropout)  # type: ignore[arg-type]


def _check_init(init: object) -> InitName:
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, got {init!r}")
    return init  # type: ignore[return-value]


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """The factor in front of ``B @ A``: ``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA).

    Same formula as PEFT's ``LoraLayer.update_layer``.
    """
    r, alpha = _check_r(r), _check_alpha(alpha)
    return alpha / math.sqrt(r) if use_rslora else alpha / r


# --------------------------------------------------------------------------- numpy


@dataclass
class LoRAGrads:
    """Gradients of a scalar loss returned by :meth:`NumpyLoRA.backward`.

    A: (r, d_in), B: (d_out, r), x: (..., d_in) — same shapes as the tensors they belong to.
    There is no ``W`` (or ``b``) gradient: the base layer is frozen, which is the point of LoRA.
    """

    A: np.ndarray
    B: np.ndarray
    x: np.ndarray


class NumpyLoRA:
    """A LoRA linear layer in pure numpy, with a hand-written backward pass.

    Args:
        W: frozen base weight, ``(d_out, d_in)`` (the ``nn.Linear.weight`` layout).
        r: rank of the update, a positive integer.
        alpha: scale numerator, > 0; ``scaling = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
        b: optional frozen bias, ``(d_out,)``.
        rng: ``None``, an int seed, or a ``np.random.Generator`` used to initialise ``A``.
        use_rslora: use the rank-stabilised scaling ``alpha / sqrt(r)``.

    Initialisation: ``A ~ Normal(0, std=1/r)`` — the "random Gaussian" of Hu et al. §4.1 with
    the standard deviation PEFT uses for ``init_lora_weights="gaussian"`` — and ``B = 0``, so the
    layer starts as exactly the base layer. ``A`` and ``B`` are plain public arrays: set them
    directly to try other values.

    ``forward`` keeps ``x`` and ``u = x Aᵀ`` on the instance for the next ``backward`` (exactly
    what an autograd engine saves); that cache is the only state besides the weights.
    """

    def __init__(
        self,
        W: np.ndarray,
        r: int,
        alpha: float,
        *,
        b: np.ndarray | None = None,
        rng: int | np.random.Generator | None = None,
        use_rslora: bool = False,
    ) -> None:
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(f"W must be 2-D with shape (d_out, d_in), got shape {W.shape}")
        if not np.issubdtype(W.dtype, np.floating):
            W = W.astype(np.float64)
        d_out, d_in = W.shape
        r = _check_r(r)
        alpha = _check_alpha(alpha)
        if b is not None:
            b = np.asarray(b, dtype=W.dtype)
            if b.shape != (d_out,):
                raise ValueError(f"b must have shape (d_out,) = ({d_out},), got {b.shape}")
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

        self.W = W  # (d_out, d_in), frozen
        self.b = b  # (d_out,) or None, frozen
        self.r = r
        self.alpha = alpha
        self.use_rslora = bool(use_rslora)
        self.scaling = lora_scaling(r, alpha, self.use_rslora)
        self.A = gen.normal(0.0, 1.0 / r, size=(r, d_in)).astype(W.dtype)  # (r, d_in)
        self.B = np.zeros((d_out, r), dtype=W.dtype)  # (d_out, r)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def d_in(self) -> int:
        return self.W.shape[1]

    @property
    def d_out(self) -> int:
        return self.W.shape[0]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``h = x Wᵀ + b + scaling · (x Aᵀ) Bᵀ``.

        x: (..., d_in) — any leading dims, e.g. (batch, seq, d_in).  Returns h: (..., d_out).
        """
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.d_in:
            raise ValueError(
                f"x must have shape (..., d_in) with d_in = {self.d_in} (W is {self.W.shape}), "
                f"got x.shape = {x.shape}"
            )
        h = x @ self.W.T  # (..., d_out): the frozen path
        if self.b is not None:
            h = h + self.b
        u = x @ self.A.T  # (..., r): down-projection
        h = h + self.scaling * (u @ self.B.T)  # (..., d_out): up-projection, scaled
        self._cache = (x, u)
        return h

    __call__ = forward

    def backward(self, grad_h: np.ndarray) -> LoRAGrads:
        """Gradients of a scalar loss L given ``grad_h = ∂L/∂h`` from the last ``forward``.

        With s = scaling, u = x Aᵀ (..., r) and g = grad_h (..., d_out); sums run over all
        leading (batch, seq, ...) positions:

            ∂L/∂B = s · Σ gᵀ u                  (d_out, r)
            ∂L/∂u = s · g B                     (..., r)
            ∂L/∂A = Σ (∂L/∂u)ᵀ x                (r, d_in)
            ∂L/∂x = g W + (∂L/∂u) A             (..., d_in)   frozen path + LoRA path

        W and b are frozen, so no gradient is computed for them.
        """
        if self._cache is None:
            raise RuntimeError(
                "backward() needs the activations of a forward() call; call forward(x) first"
            )
        x, u = self._cache
        g = np.asarray(grad_h)
        expected = x.shape[:-1] + (self.d_out,)
        if g.shape != expected:
            raise ValueError(
                f"grad_h must have the shape of the last output (..., d_out) = {expected}, got {g.shape}"
            )
        g2 = g.reshape(-1, self.d_out)  # (N, d_out), N = product of leading dims
        u2 = u.reshape(-1, self.r)  # (N, r)
        x2 = x.reshape(-1, self.d_in)  # (N, d_in)
        grad_B = self.scaling * (g2.T @ u2)  # (d_out, r)
        grad_u = self.scaling * (g2 @ self.B)  # (N, r)
        grad_A = grad_u.T @ x2  # (r, d_in)
        grad_x = g2 @ self.W + grad_u @ self.A  # (N, d_in)
        return LoRAGrads(A=grad_A, B=grad_B, x=grad_x.reshape(x.shape))

    def delta_weight(self) -> np.ndarray:
        """ΔW = scaling · B @ A, shape (d_out, d_in); its rank is at most r."""
        return self.scaling * (self.B @ self.A)

    def merge_weights(self) -> np.ndarray:
        """The merged weight W + ΔW, (d_out, d_in), as a new array (``self.W`` is untouched).

        ``x @ merge_weights().T + b`` equals ``forward(x)`` up to rounding: after training, the
        adapter costs nothing at inference time.
        """
        return self.W + self.delta_weight()

    def __repr__(self) -> str:
        return (
            f"NumpyLoRA(d_in={self.d_in}, d_out={self.d_out}, r={self.r}, alpha={self.alpha}, "
            f"scaling={self.scaling:.4g}, use_rslora={self.use_rslora})"
        )


# --------------------------------------------------------------------------- torch


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a trainable low-rank update; mirrors PEFT's ``lora.Linear``.

    Args:
        base: the ``nn.Linear`` to adapt, weight ``(d_out, d_in)``. It is used in place (not
            copied) and frozen: its parameters get ``requires_grad = False``.
        r: rank, a positive integer.
        alpha: scale numerator, > 0 (PEFT's ``lora_alpha``).
        dropout: dropout probability on the LoRA input, in [0, 1) (PEFT's ``lora_dropout``).
        use_rslora: ``scaling = alpha / sqrt(r)`` instead of ``alpha / r``.
        init: how to initialise ``A`` (``B`` is always zeros), as in PEFT's
            ``reset_lora_parameters``:
            ``"kaiming"`` — ``kaiming_uniform_(A, a=sqrt(5))``, i.e. Uniform(±1/sqrt(d_in)), the
            ``nn.Linear`` default and PEFT's ``init_lora_weights=True``;
            ``"gaussian"`` — Normal(0, std=1/r), PEFT's ``init_lora_weights="gaussian"``.
        generator: optional ``torch.Generator`` for the init of ``A`` (else torch's global RNG).

    Submodules (PEFT's names, one adapter instead of a dict of them):
        base_layer: the frozen ``nn.Linear``;
        lora_A: ``nn.Linear(d_in, r, bias=False)``, ``lora_A.weight`` is ``A: (r, d_in)``;
        lora_B: ``nn.Linear(r, d_out, bias=False)``, ``lora_B.weight`` is ``B: (d_out, r)``.

    ``merge()`` / ``unmerge()`` fold ΔW into ``base_layer.weight`` and take it out again; they
    are only ever called explicitly (never by ``train()`` / ``eval()``).
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        use_rslora: bool = False,
        init: InitName = "kaiming",
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        # Validate everything before touching any state (including `base`).
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        r, alpha = _check_r(r), _check_alpha(alpha)
        dropout, init = _check_dropout(dropout), _check_init(init)
        super().__init__()

        d_out, d_in = base.weight.shape
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.base_layer = base.requires_grad_(False)
        # skip_init: no default init, so the global RNG is only used by reset_lora_parameters.
        self.lora_A = nn.utils.skip_init(nn.Linear, d_in, r, bias=False, **factory)
        self.lora_B = nn.utils.skip_init(nn.Linear, r, d_out, bias=False, **factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r = r
        self.alpha = alpha
        self.use_rslora = bool(use_rslora)
        self.scaling = lora_scaling(r, alpha, self.use_rslora)
        self.init = init
        self.merged = False
        self.reset_lora_parameters(generator=generator)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @torch.no_grad()
    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise A (per ``self.init``) and set B to zero, as PEFT does."""
        if self.merged:
            raise RuntimeError("cannot re-initialise A and B while merged; call unmerge() first")
        A = self.lora_A.weight  # (r, d_in)
        if self.init == "kaiming":
            # a=sqrt(5) gives bound = sqrt(6 / ((1 + 5) · fan_in)) = 1 / sqrt(d_in)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
        else:
            nn.init.normal_(A, std=1 / self.r, generator=generator)
        nn.init.zeros_(self.lora_B.weight)  # B = 0  =>  ΔW = 0 at the start

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B @ A, shape (d_out, d_in). PEFT: ``get_delta_weight(adapter)``."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, seq, d_in) — or any (..., d_in) — to (..., d_out)."""
        result = self.base_layer(x)  # (batch, seq, d_out): x Wᵀ + b, frozen
        if self.merged:
            return result  # ΔW already lives in base_layer.weight; adding it again would double it
        x = x.to(self.lora_A.weight.dtype)
        # (batch, seq, d_in) -> A -> (batch, seq, r) -> B -> (batch, seq, d_out)
        return result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + ΔW in place; afterwards forward is a single matmul. Raises if already merged."""
        if self.merged:
            raise RuntimeError("LoRALinear is already merged; call unmerge() before merging again")
        W = self.base_layer.weight
        W += self.delta_weight().to(W.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − ΔW in place, undoing :meth:`merge`. Raises if not merged."""
        if not self.merged:
            raise RuntimeError("LoRALinear is not merged; there is nothing to unmerge")
        W = self.base_layer.weight
        W -= self.delta_weight().to(W.dtype)
        self.merged = False

    @classmethod
    def from_peft(cls, peft_layer: nn.Module, adapter: str = "default") -> LoRALinear:
        """Build a LoRALinear equal to one adapter of a PEFT ``lora.Linear`` layer.

        Copies the base layer (so merging one never changes the other), r, alpha, rsLoRA,
        dropout probability, A and B. Only vanilla LoRA layers can be copied: PEFT variants
        (DoRA, ...), ``fan_in_fan_out``, ``lora_bias`` and merged layers raise ``ValueError``.
        """
        for attr in ("base_layer", "lora_A", "lora_B", "r", "lora_alpha", "scaling"):
            if not hasattr(peft_layer, attr):
                raise ValueError(
                    f"expected a PEFT lora.Linear layer (with .{attr}), got {type(peft_layer).__name__}"
                )
        if adapter not in peft_layer.lora_A:
            raise ValueError(
                f"adapter {adapter!r} not found; layer has {list(peft_layer.lora_A.keys())}"  # type: ignore[union-attr]
            )
        base = peft_layer.base_layer
        if not isinstance(base, nn.Linear):
            raise ValueError(
                f"the PEFT layer's base_layer must be an nn.Linear, got {type(base).__name__}"
            )
        if getattr(peft_layer, "merged_adapters", []):
            raise ValueError(
                f"the PEFT layer has merged adapters {peft_layer.merged_adapters}; its base weight "
                "contains ΔW — call unmerge() on it first"
            )
        if adapter in getattr(peft_layer, "lora_variant", {}) or getattr(
            peft_layer, "use_dora", {}
        ).get(adapter):
            raise ValueError(
                f"adapter {adapter!r} is a LoRA variant (e.g. DoRA); only vanilla LoRA is supported"
            )
        if getattr(peft_layer, "fan_in_fan_out", False):
            raise ValueError("fan_in_fan_out=True layers are not supported")
        if getattr(peft_layer, "lora_bias", {}).get(adapter):
            raise ValueError("lora_bias=True adapters are not supported")

        drop = peft_layer.lora_dropout[adapter]
        layer = cls(
            copy.deepcopy(base),
            r=peft_layer.r[adapter],  # type: ignore[arg-type]
            alpha=peft_layer.lora_alpha[adapter],  # type: ignore[arg-type]
            dropout=drop.p if isinstance(drop, nn.Dropout) else 0.0,
            use_rslora=uses_rslora(peft_layer, adapter),
        )
        if not math.isclose(layer.scaling, peft_layer.scaling[adapter], rel_tol=1e-12):
            raise ValueError(
                f"PEFT scaling {peft_layer.scaling[adapter]} differs from alpha/r rule {layer.scaling} "
                "(was set_scale/scale_layer used?)"
            )
        with torch.no_grad():
            layer.lora_A.weight.copy_(peft_layer.lora_A[adapter].weight)  # type: ignore[union-attr]  # (r, d_in)
            layer.lora_B.weight.copy_(peft_layer.lora_B[adapter].weight)  # type: ignore[union-attr]  # (d_out, r)
        return layer

    def extra_repr(self) -> str:
        return (
            f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, "
            f"use_rslora={self.use_rslora}, merged={self.merged}"
        )


def apply_lora(
    model: nn.Module,
    targets: list[str] | tuple[str, ...],
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    use_rslora: bool = False,
    init: InitName = "kaiming",
    *,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Replace the matching ``nn.Linear`` submodules of ``model`` by :class:`LoRALinear`, in place.

    A module matches a target if its qualified name equals it or ends with ``"." + target``
    (PEFT's ``target_modules`` suffix rule, e.g. ``"q_proj"``). Every other parameter of the
    model is frozen, so only the A and B matrices train (minLoRA's ``add_lora`` in a few lines).

    Returns the qualified names of the replaced modules, in ``named_modules`` order.
    Raises ``ValueError`` (before changing anything) if a setting is invalid or nothing matches.
    """
    _check_r(r), _check_alpha(alpha), _check_dropout(dropout), _check_init(init)
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if not targets:
        raise ValueError("targets must name at least one module suffix, e.g. ['q_proj', 'v_proj']")

    def matches(name: str) -> bool:
        return any(name == t or name.endswith("." + t) for t in targets)

    inside_lora = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    found, already = [], []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside_lora):
            continue  # the model itself, or the base/A/B of an existing LoRALinear
        if matches(name):
            if isinstance(module, LoRALinear):
                already.append(name)
            elif isinstance(module, nn.Linear):
                found.append(name)
    if already:
        raise ValueError(f"modules {already} already carry LoRA; remove it before applying again")
    if not found:
        linears = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"no nn.Linear matches targets {targets}; Linear name suffixes are {linears}"
        )

    model.requires_grad_(False)
    for name in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lora = LoRALinear(
            getattr(parent, child),
            r=r,
            alpha=alpha,
            dropout=dropout,
            use_rslora=use_rslora,
            init=init,
            generator=generator,
        )
        setattr(parent, child, lora)
    return found
