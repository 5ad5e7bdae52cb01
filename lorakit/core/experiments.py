"""Experiments: train several adapters (or a full layer) on one task and compare them.

These are the runs the notebooks and the paper sections show, packaged: each one starts from
the base model, trains with ``lk.train``, measures, and gives the base model back unchanged.

- ``compare_methods``: lora / rslora / dora / loraplus / pissa / adalora on one budget.
- ``rank_sweep``: the same task at several ranks r (rows for ``figures.rank_sweep``).
- ``full_vs_lora``: one layer's ΔW from full fine-tuning vs from LoRA (Hu et al. 2021, §7).

This is the only module besides ``train`` that trains: ``analysis`` measures what training
produced and imports no training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .analysis import best_rank_r, delta_weight, effective_rank, energy_fraction, phi_grid, spectrum
from .attach import attach, attach_adalora, detach, has_adapter
from .params import count_params, find_linear
from .settings import POSITIVE, LoraSettings, TrainSettings, settings_with, split_fields
from .task import Task
from .train import train

# -- comparing training methods on one budget----------------------------------------------------
# The training methods compare_methods can compare: the three LoraSettings variants (lora,
# rslora, dora), an optimizer option (loraplus), an init (pissa) and another adapter type
# (adalora). "variant" is LoraSettings.variant alone; a method is any of these six.
METHODS = ("lora", "rslora", "dora", "loraplus", "pissa", "adalora")


@dataclass
class MethodResult:
    """One method trained by ``compare_methods``."""

    name: str
    trainable: int
    losses: list[float] = field(repr=False)
    accuracy: float
    seconds: float

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def compare_methods(model, tok, task: Task, methods: Sequence[str] = METHODS,
                     lora: LoraSettings | None = None, training: TrainSettings | None = None,
                     *, eval_n: int = 20, loraplus_ratio: float = 16, progress: bool = False,
                     **fields) -> list[MethodResult]:
    """Train each method with the same rank, targets, steps, lr and data; score each.

    lora / rslora (α/√r) / dora (magnitude + direction) / pissa (init from W's top singular
    vectors) go through ``lk.attach``; loraplus is plain LoRA with B's learning rate
    ``loraplus_ratio`` × lr; adalora starts at rank 1.5·r and prunes to r on average. Each run
    starts from the same base and the base model is given back unchanged at the end.

    Args:
        lora: the adapter every method starts from (default ``LoraSettings()``: r=8, α=16,
            q_proj and v_proj); each method sets its own ``variant`` / ``init``.
        training: the one training run (default ``TrainSettings(steps=30)``).
        eval_n: held-out examples scored per method.
        **fields: fields of ``lora`` or ``training`` to change (``steps=3, r=4``).
    """
    unknown = [v for v in methods if v not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown or list(methods)}; choose from "
                         f"{', '.join(METHODS)}")
    lora_fields, train_fields = split_fields(fields, LoraSettings, TrainSettings)
    lora = settings_with(LoraSettings, lora, **lora_fields)
    training = settings_with(TrainSettings, training or TrainSettings(steps=30), **train_fields)
    POSITIVE("loraplus_ratio", loraplus_ratio)
    results = []
    for name in methods:
        if name == "adalora":
            pm = attach_adalora(model, lora.r, lora.alpha, lora.targets,
                                total_step=training.steps, seed=training.seed)
        else:
            pm = attach(model, lora, seed=training.seed,
                        variant="rslora" if name == "rslora" else "dora" if name == "dora"
                        else "lora",
                        init="pissa" if name == "pissa" else "default")
        model = pm
        trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
        res = train(pm, tok, task, training,
                    loraplus_ratio=loraplus_ratio if name == "loraplus" else None,
                    progress=progress)
        acc = task.accuracy(pm, tok, n=eval_n)
        results.append(MethodResult(name, trainable, res.losses, acc.score, res.elapsed))
    detach(model)
    return results


# -- rank sweep ---------------------------------------------------------------------------------
def rank_sweep(model, tok, task: Task, ranks: Sequence[int] = (2, 8, 64),
               lora: LoraSettings | None = None, training: TrainSettings | None = None, *,
               eval_n: int = 12, progress: bool = False, **fields) -> list[dict]:
    """Train one adapter per rank r (α = 2r) with the same steps and data; one row per rank.

    ``lora`` gives the targets and the rest (its r and α are set per rank); ``training``
    defaults to ``TrainSettings(steps=12, lr=3e-3)``; ``**fields`` change either's fields.
    Rows: ``{"r", "trainable", "first_loss", "final_loss" (mean of the last 5 steps),
    "accuracy" (on ``eval_n`` held-out examples)}``, what ``figures.rank_sweep`` draws. The
    base model is given back unchanged (each adapter is detached).
    """
    if not ranks:
        raise ValueError("ranks must list at least one rank, e.g. (2, 8, 64)")
    lora_fields, train_fields = split_fields(fields, LoraSettings, TrainSettings)
    lora = settings_with(LoraSettings, lora, **lora_fields)
    training = settings_with(TrainSettings, training or TrainSettings(steps=12, lr=3e-3),
                             **train_fields)
    rows = []
    for r in ranks:
        pm = attach(model, lora, r=r, alpha=2 * r, seed=training.seed)
        try:
            res = train(pm, tok, task, training, progress=progress)
            acc = task.accuracy(pm, tok, n=eval_n)
            tail = res.losses[-5:]
            rows.append(dict(r=r, trainable=count_params(pm).trainable,
                             first_loss=res.losses[0], final_loss=sum(tail) / len(tail),
                             accuracy=acc.score))
        finally:
            model = detach(pm)
    return rows


# -- full fine-tuning of one layer vs LoRA (Hu et al. 2021, §7) -------------------------------------------------------
@dataclass
class FullVsLora:
    """``full_vs_lora``: one layer's ΔW from full fine-tuning vs from LoRA, same task and steps."""

    module: str                      # full module name
    steps: int
    r: int
    delta_full: torch.Tensor = field(repr=False)   # (d_out, d_in) float32
    delta_lora: torch.Tensor = field(repr=False)   # (d_out, d_in) float32
    losses_full: list[float] = field(repr=False)
    losses_lora: list[float] = field(repr=False)

    @property
    def sv_full(self) -> torch.Tensor:
        return spectrum(self.delta_full)

    @property
    def energy_at_r(self) -> float:
        """Fraction of ‖ΔW_full‖_F² that its best rank-r approximation keeps."""
        return energy_fraction(self.sv_full, self.r)

    @property
    def error_at_r(self) -> float:
        """‖ΔW_full - best rank-r‖_F (Eckart–Young: sqrt of the tail σ²)."""
        return best_rank_r(self.delta_full, self.r).error

    @property
    def relative_error_at_r(self) -> float:
        norm = torch.linalg.matrix_norm(self.delta_full.double()).item()
        return self.error_at_r / norm if norm > 0 else 0.0

    @property
    def effective_rank_full(self) -> int:
        return effective_rank(self.sv_full)

    @property
    def effective_rank_lora(self) -> int:
        return effective_rank(self.delta_lora)

    @property
    def cosine(self) -> float:
        """Cosine similarity of the flattened ΔW_full and ΔW_lora (0 if either is zero)."""
        a, b = self.delta_full.double().flatten(), self.delta_lora.double().flatten()
        denom = a.norm() * b.norm()
        return (a @ b / denom).item() if denom > 0 else 0.0

    def _phi(self, side: str) -> float:
        """φ(r, r) between the top-r singular vectors of the two ΔWs (left: output side)."""
        out = []
        for d in (self.delta_full, self.delta_lora):
            U, _, Vh = torch.linalg.svd(d.double(), full_matrices=False)
            out.append(U[:, :self.r] if side == "left" else Vh[:self.r].T)
        return phi_grid(*out)[-1, -1].item()

    @property
    def subspace_right(self) -> float:
        """φ(r, r) of the top-r right-singular vectors (the input directions each ΔW reads)."""
        return self._phi("right")

    @property
    def subspace_left(self) -> float:
        """φ(r, r) of the top-r left-singular vectors (the output directions each ΔW writes)."""
        return self._phi("left")

    def rows(self) -> list[tuple[str, float]]:
        return [("energy of ΔW_full in its top-r", self.energy_at_r),
                ("‖ΔW_full − best rank-r‖_F / ‖ΔW_full‖_F", self.relative_error_at_r),
                ("effective rank (90%) ΔW_full", self.effective_rank_full),
                ("effective rank (90%) ΔW_lora", self.effective_rank_lora),
                ("cosine(ΔW_full, ΔW_lora)", self.cosine),
                ("φ(r, r) right singular vectors", self.subspace_right),
                ("φ(r, r) left singular vectors", self.subspace_left),
                ("‖ΔW_full‖_F", torch.linalg.matrix_norm(self.delta_full.double()).item()),
                ("‖ΔW_lora‖_F", torch.linalg.matrix_norm(self.delta_lora.double()).item())]

    def __str__(self) -> str:
        head = f"{self.module}: {self.steps} steps, r={self.r}"
        return "\n".join([head] + [f"  {k}: {v:.4g}" for k, v in self.rows()])


def full_vs_lora(model, tok, task, module: str, steps: int = 10, r: int = 8, *,
                 alpha: float | None = None, lr: float = 2e-3, lr_full: float = 1e-4,
                 batch_size: int = 4, seed: int = 0) -> FullVsLora:
    """Train ONE layer's full weight, then a rank-r LoRA on the same layer; compare the ΔWs.

    Full: every parameter frozen except ``module``'s weight, ``steps`` AdamW steps at
    ``lr_full`` (full fine-tuning usually takes a ~10-20× smaller learning rate than LoRA).
    LoRA: an adapter of rank ``r`` (α = 2r unless given) on that module only, the same steps,
    batches and seed at ``lr``. The model is given back unchanged: the weight is restored and
    the adapter detached. See ``FullVsLora`` for the measures (how much of ΔW_full rank r
    captures, cosine and subspace similarity with ΔW_lora).

    ``module``: e.g. ``"layers.3.q_proj"`` or ``"model.layers.3.self_attn.q_proj"``.
    """
    if has_adapter(model):
        raise ValueError("full_vs_lora needs the plain base model; this one carries a LoRA "
                         "adapter (lk.detach(peft_model) gives the base back)")
    name, layer = find_linear(model, module)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    W0 = layer.weight.detach().clone()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        layer.weight.requires_grad_(True)
        full = train(model, tok, task, steps=steps, lr=lr_full, batch_size=batch_size,
                     seed=seed, progress=False, full_finetune=True)  # no adapter, on purpose
        delta_full = (layer.weight.detach().double() - W0.double()).float()
    finally:
        with torch.no_grad():
            layer.weight.copy_(W0)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    peft_model = attach(model, r=r, alpha=alpha if alpha is not None else 2 * r,
                        targets=[name], seed=seed)
    try:
        lora = train(peft_model, tok, task, steps=steps, lr=lr, batch_size=batch_size,
                     seed=seed, progress=False)
        delta_lora = delta_weight(peft_model, name).float()
    finally:
        detach(peft_model)
    return FullVsLora(name, steps, r, delta_full, delta_lora, full.losses, lora.losses)
