"""Explorers: one knob, one lesson — small ipywidgets for the tutorials.

A view module (like ``widgets``): it imports ipywidgets, and the core never imports it. Each
explorer is an ``ipywidgets.VBox`` whose controls are plain widgets, so a test (or a notebook
cell) drives it by setting ``.value``; the live summary is part of the widget (an HTML readout
under the controls, updated on every change), and ``.text`` holds it as plain text for code
and tests. Notebooks show the explorer itself, never a printed copy that would go stale.

The numbers come from pure functions below (``rank_fit``, ``quantize_4bit``, ``bits_per_weight``)
and from ``lorakit.core.params.estimate``; the explorers only present them.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch

from ..core.attach import find_targets
from ..core.naming import tuner_layers
from ..core.params import BUILTIN_CONFIGS, builtin_config, estimate, lora_layer_params
from ..core.settings import Quantize
from .widgets import FigureView, ShowsWidget, panel_box, panel_style

# ============================================================================================
# Knobs (tutorials 01, 02 and 04): rank vs true rank, estimate, NF4
# ============================================================================================

_BAR = "display:inline-block;height:0.8em;background:#0072B2;vertical-align:middle"


def _bars(labels: list[str], shares: list[float], scale: float | None = None) -> str:
    """A small HTML bar chart (no JavaScript, so it renders in every front end)."""
    top = scale or max(max(shares), 1e-12)
    rows = "".join(
        f"<tr><td style='text-align:right;padding-right:6px'>{html.escape(lab)}</td>"
        f"<td><span style='{_BAR};width:{200 * s / top:.0f}px'></span> {s:.1%}</td></tr>"
        for lab, s in zip(labels, shares, strict=True))
    return f"<table style='font-family:monospace;font-size:12px'>{rows}</table>"


class _Explorer(widgets.VBox):
    """Controls on top, an HTML readout below; ``text`` mirrors the readout as plain text."""

    def __init__(self, controls: list[widgets.Widget]):
        self.out = widgets.HTML()
        self.text = ""
        super().__init__([panel_style(),
                          widgets.HBox(controls, layout=widgets.Layout(flex_flow="row wrap")),
                          self.out], layout=widgets.Layout(max_width="100%"))
        self.add_class("lk-panel")
        for c in controls:
            c.observe(lambda _change: self.update(), names="value")

    def update(self) -> None:
        self.text, body = self._render()
        self.out.value = body

    def _render(self) -> tuple[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError


# -- 01: rank vs true rank ------------------------------------------------------------------
@dataclass(frozen=True)
class RankFit:
    """Fitting a rank-``true_rank`` change with a rank-``r`` update (best possible, by SVD)."""

    r: int
    true_rank: int
    singular_values: tuple[float, ...]   # of the true change, largest first
    residual: float                      # ‖ΔW_true − best rank-r‖_F / ‖ΔW_true‖_F

    @property
    def captured(self) -> float:
        """Share of ‖ΔW_true‖_F² a rank-r update can hold: Σ_{i≤r} σ_i² / Σ σ_i²."""
        return 1.0 - self.residual ** 2


def rank_fit(r: int, true_rank: int, d_out: int = 64, d_in: int = 48, seed: int = 0) -> RankFit:
    """Best rank-``r`` approximation of a random rank-``true_rank`` change (Eckart–Young).

    Eckart–Young: the closest rank-r matrix to M in Frobenius norm keeps M's r largest singular
    values, so the error is √(Σ_{i>r} σ_i²). That bound is what gradient descent on B·A can
    reach at best (section 3 of tutorial 01 trains it and gets there).
    """
    if not 1 <= r <= min(d_out, d_in) or not 1 <= true_rank <= min(d_out, d_in):
        raise ValueError(f"r and true_rank must be in 1..{min(d_out, d_in)}, got {r}, {true_rank}")
    rng = np.random.default_rng(seed)
    delta = rng.normal(size=(d_out, true_rank)) @ rng.normal(size=(true_rank, d_in))
    sv = np.linalg.svd(delta, compute_uv=False)[:true_rank]
    residual = math.sqrt(float((sv[r:] ** 2).sum() / (sv ** 2).sum()))
    return RankFit(r, true_rank, tuple(float(s) for s in sv), residual)


class RankExplorer(_Explorer):
    """Sliders for the adapter's rank r and the true change's rank: how much a rank-r update holds."""

    def __init__(self, r: int = 1, true_rank: int = 2, max_rank: int = 16, seed: int = 0):
        self.seed = seed
        self.r = widgets.IntSlider(value=r, min=1, max=max_rank, description="LoRA r")
        self.true_rank = widgets.IntSlider(value=true_rank, min=1, max=max_rank,
                                           description="true rank")
        super().__init__([self.r, self.true_rank])
        self.update()

    def _render(self) -> tuple[str, str]:
        fit = rank_fit(self.r.value, self.true_rank.value, seed=self.seed)
        total = sum(s * s for s in fit.singular_values)
        text = (f"r = {fit.r}, true rank {fit.true_rank}: a rank-{fit.r} update holds "
                f"{fit.captured:.1%} of ‖ΔW_true‖²; best relative error {fit.residual:.3f}"
                + (" (exact)" if fit.r >= fit.true_rank else ""))
        labels = [f"σ{i + 1}{' ✓' if i < fit.r else ''}" for i in range(len(fit.singular_values))]
        body = (f"<b>{html.escape(text)}</b><br>share of ‖ΔW_true‖² per singular direction "
                f"(✓ = kept by rank {fit.r}):"
                + _bars(labels, [s * s / total for s in fit.singular_values]))
        return text, body


# -- 02: estimate ---------------------------------------------------------------------------
_QUANT: dict[str, Quantize | None] = {"16-bit base": None, "nf4": "nf4", "fp4": "fp4",
                                      "int8": "int8"}


class EstimateExplorer(_Explorer):
    """``lk.estimate`` on controls: model, r, targets, quantization → counts and memory.

    For models with grouped-query attention it also shows the count a table that takes every
    attention projection as d → d would print, so the GQA effect is visible.
    """

    def __init__(self, model: str = "llama-2-70b", r: int = 8,
                 targets: tuple[str, ...] = ("q_proj", "v_proj"), quantize: str = "nf4"):
        if model not in BUILTIN_CONFIGS:
            raise ValueError(f"unknown model {model!r}; built-in: {', '.join(BUILTIN_CONFIGS)}")
        self.model = widgets.Dropdown(options=list(BUILTIN_CONFIGS), value=model,
                                      description="model")
        self.rank = widgets.Dropdown(options=[1, 2, 4, 8, 16, 32, 64, 128, 256], value=r,
                                     description="r")
        self.targets = widgets.SelectMultiple(description="targets", rows=7)
        self.quantize = widgets.Dropdown(options=list(_QUANT), value=quantize or "16-bit base",
                                         description="quantize")
        self._set_target_options(targets)
        super().__init__([self.model, self.rank, self.targets, self.quantize])
        self.update()

    def _set_target_options(self, wanted) -> None:
        names = list(find_targets(builtin_config(self.model.value)).names)
        keep = tuple(t for t in wanted if t in names) or (names[0],)
        self.targets.options = names
        self.targets.value = keep

    def update(self) -> None:
        names = list(find_targets(builtin_config(self.model.value)).names)
        if list(self.targets.options) != names:      # the model changed: its own module names
            self._set_target_options(self.targets.value)
            return                                       # setting .value calls update again
        super().update()

    def _render(self) -> tuple[str, str]:
        name, r, targets = self.model.value, self.rank.value, self.targets.value
        if not targets:
            text = "tick at least one target module"
            return text, html.escape(text)
        budget = estimate(name, r=r, targets=targets, quantize=_QUANT[self.quantize.value])
        lines = [f"{name}: {budget.total_params:,} parameters; LoRA r={r} on "
                 f"{', '.join(targets)} → {budget.lora_params:,} trainable "
                 f"({budget.trainable_pct:.3f}%), adapter {budget.adapter_mb_fp16:.1f} MB fp16"]
        lines.append(_gqa_line(name, r, targets, budget.lora_params))
        keys = ["full", "lora"] + (["qlora"] if _QUANT[self.quantize.value] else [])
        for row in budget.rows():
            if row["key"] in keys:
                lines.append(f"  {row['setup']:<26} {row['total'] / 1e9:>9.2f} GB "
                             "(weights+grads+optimizer, no activations)")
        text = "\n".join(lines)
        return text, f"<pre style='font-size:12px'>{html.escape(text)}</pre>"


def _gqa_line(name: str, r: int, targets, lora: int) -> str:
    cfg = builtin_config(name)
    heads, kv = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    if not kv or kv == heads:
        return "no grouped-query attention: k_proj/v_proj (if any) are d → d"
    table = find_targets(cfg)
    d = cfg.hidden_size
    as_if = sum(
        t.count * lora_layer_params(r, t.in_features,
                                    d if t.suffix in ("k_proj", "v_proj") else t.out_features)
        for t in table if t.suffix in targets)
    kv_width = kv * (d // heads)
    return (f"GQA: {heads} query heads share {kv} key/value heads, so k_proj/v_proj are "
            f"{d} → {kv_width}; a table taking them as {d} → {d} would say {as_if:,} "
            f"({as_if - lora:+,})")


# -- 04: NF4 and friends --------------------------------------------------------------------
# bitsandbytes' 4-bit code books (functional.get_4bit_type), scaled to [-1, 1]:
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
              -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
              0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
              0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)
FP4_LEVELS = tuple(sorted({s * v for v in (0.0, 0.0052083333, 0.16666667, 0.25, 0.33333333,
                                           0.5, 0.66666667, 1.0) for s in (1, -1)}))
INT4_LEVELS = tuple(i / 7 for i in range(-7, 8))   # evenly spaced, symmetric (15 levels)
LEVELS = {"nf4": NF4_LEVELS, "fp4": FP4_LEVELS, "int4 (uniform)": INT4_LEVELS}


def bits_per_weight(blocksize: int = 64, double_quant: bool = True) -> float:
    """4 bits per code + the block scale: 32/blocksize (fp32) or 8/blocksize + 32/(256·blocksize)."""
    scale = 8 / blocksize + 32 / (256 * blocksize) if double_quant else 32 / blocksize
    return 4 + scale


@dataclass(frozen=True)
class Quantized:
    """A weight quantized blockwise to 4-bit levels (absmax scaling), and what it cost."""

    dequantized: torch.Tensor   # same shape as the input
    codes: torch.Tensor         # level index per weight (long), same shape
    levels: tuple[float, ...]
    relative_error: float       # ‖Ŵ − W‖_F / ‖W‖_F
    bits_per_weight: float

    def level_use(self) -> torch.Tensor:
        """Share of weights on each level (sums to 1)."""
        counts = torch.bincount(self.codes.flatten(), minlength=len(self.levels))
        return counts.double() / counts.sum()


def quantize_4bit(w: torch.Tensor, blocksize: int = 64, double_quant: bool = True,
                  dtype: str = "nf4") -> Quantized:
    """Blockwise absmax 4-bit quantization as bitsandbytes does it (round to the nearest level).

    The weights are flattened into blocks of ``blocksize``; each block is divided by its absmax,
    each value replaced by the nearest level. With ``double_quant`` the absmax values are stored
    in 8 bits (here: mean removed, then linear 8-bit per 256 absmax values; bitsandbytes uses
    its dynamic 8-bit map, which differs from this only in the last digits of the error).
    """
    if dtype not in LEVELS:
        raise ValueError(f"dtype must be one of {list(LEVELS)}, got {dtype!r}")
    if blocksize < 2 or w.numel() % blocksize:
        raise ValueError(f"blocksize must be ≥ 2 and divide the {w.numel():,} weights, got {blocksize}")
    w = w.detach().float().cpu()
    levels = torch.tensor(LEVELS[dtype])
    blocks = w.flatten().view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    codes = ((blocks / absmax)[..., None] - levels).abs().argmin(dim=-1)
    if double_quant:
        mean = absmax.mean()
        centred = (absmax - mean).flatten()
        pad = (-centred.numel()) % 256
        groups = torch.cat([centred, centred.new_zeros(pad)]).view(-1, 256)
        step = groups.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        absmax = ((groups / step).round() * step).flatten()[: absmax.numel()].view(-1, 1) + mean
    deq = (levels[codes] * absmax).view_as(w)
    rel = ((deq - w).norm() / w.norm()).item()
    return Quantized(deq, codes.view_as(w), LEVELS[dtype], rel,
                     bits_per_weight(blocksize, double_quant))


class NF4Explorer(_Explorer):
    """Block size, double quant, data type and weights → bits per weight, error, level use.

    ``weights`` maps a label to a 2-D tensor (e.g. ``{"Gaussian": g, "SmolLM2 q_proj": W}``);
    the default is one Gaussian 576 × 576 matrix with std 0.02.
    """

    def __init__(self, weights: dict[str, torch.Tensor] | None = None, blocksize: int = 64,
                 double_quant: bool = True, dtype: str = "nf4"):
        if weights is None:
            weights = {"Gaussian (std 0.02)":
                       0.02 * torch.randn(576, 576, generator=torch.Generator().manual_seed(0))}
        if not weights:
            raise ValueError("weights must name at least one tensor")
        self.weights = dict(weights)
        self.source = widgets.Dropdown(options=list(self.weights), description="weights")
        self.blocksize = widgets.Dropdown(options=[16, 32, 64, 128, 256, 1024], value=blocksize,
                                          description="block size")
        self.double_quant = widgets.Checkbox(value=double_quant, description="double quant")
        self.dtype = widgets.Dropdown(options=list(LEVELS), value=dtype, description="data type")
        super().__init__([self.source, self.blocksize, self.double_quant, self.dtype])
        self.update()

    def result(self) -> Quantized:
        return quantize_4bit(self.weights[self.source.value], self.blocksize.value,
                             self.double_quant.value, self.dtype.value)

    def _render(self) -> tuple[str, str]:
        q = self.result()
        use = q.level_use().tolist()
        text = (f"{self.source.value}, {self.dtype.value}, block {self.blocksize.value}"
                f"{', double quant' if self.double_quant.value else ''}: "
                f"{q.bits_per_weight:.3f} bits per weight, ‖Ŵ − W‖/‖W‖ = {q.relative_error:.3f}; "
                f"level use {min(use):.1%} … {max(use):.1%} (equal would be {1 / len(use):.2%})")
        labels = [f"{v:+.3f}" for v in q.levels]
        return text, f"<b>{html.escape(text)}</b>" + _bars(labels, use)


# -- 08: where to spend a fixed parameter budget ---------------------------------------------
class BudgetExplorer(_Explorer):
    """Targets and rank on controls → the trainable count against a fixed budget, beside the
    equal-budget runs a notebook made.

    ``model``: a model or its config (what ``lora_param_count`` counts). ``runs``:
    ``{label: (targets, r, losses)}``, the runs already trained, with one validation loss per
    seed. The readout gives the count of the ticked targets at rank ``r``, the rank that spends
    ``budget`` exactly on them (if a whole one does), and every run's count and loss (mean ± sd
    over its seeds), marking the run the controls select. Nothing is trained here.
    ``budget`` defaults to the first run's count.
    """

    def __init__(self, model, runs: dict, *, budget: int | None = None,
                 targets: tuple[str, ...] = ("q_proj",), r: int = 8, max_rank: int = 64):
        from ..core.params import lora_param_count

        if not runs:
            raise ValueError("runs must name at least one (targets, r, losses) run")
        self.model, self.count = model, lora_param_count
        self.runs = {label: (tuple(t), int(rank), [float(x) for x in losses])
                     for label, (t, rank, losses) in runs.items()}
        first = next(iter(self.runs.values()))
        self.budget = budget or lora_param_count(model, r=first[1], targets=list(first[0]))
        names = list(find_targets(model).names)
        self.targets = widgets.SelectMultiple(options=names, rows=min(len(names), 7),
                                              value=tuple(t for t in targets if t in names),
                                              description="targets")
        self.rank = widgets.IntSlider(value=r, min=1, max=max_rank, description="r")
        super().__init__([self.targets, self.rank])
        self.update()

    def _run_lines(self, targets: tuple[str, ...], r: int) -> list[str]:
        lines, worst = [], max(max(v[2]) for v in self.runs.values())
        for label, (t, rank, losses) in self.runs.items():
            n = self.count(self.model, r=rank, targets=list(t))
            spread = (f" ± {float(np.std(losses, ddof=1)):.3f}" if len(losses) > 1
                      else " (one seed)")
            bar = "█" * max(1, round(20 * float(np.mean(losses)) / worst))
            mark = "  ← selected" if set(t) == set(targets) and rank == r else ""
            lines.append(f"  {label:<14} {n:>11,} trainable   validation loss "
                         f"{float(np.mean(losses)):.3f}{spread}  {bar}{mark}")
        return lines

    def _render(self) -> tuple[str, str]:
        targets, r = tuple(self.targets.value), self.rank.value
        if not targets:
            text = "tick at least one target module"
            return text, html.escape(text)
        n = self.count(self.model, r=r, targets=list(targets))
        per_rank = self.count(self.model, r=1, targets=list(targets))
        fit = self.budget // per_rank
        if self.budget % per_rank == 0:
            buys = f"the budget is exactly r = {fit} on these targets"
        elif fit == 0:
            buys = f"even r = 1 ({per_rank:,}) is over the budget on these targets"
        else:
            buys = (f"no whole r spends the budget exactly here: r = {fit} gives "
                    f"{fit * per_rank:,}, r = {fit + 1} gives {(fit + 1) * per_rank:,}")
        lines = [f"r = {r} on {', '.join(targets)}: {n:,} trainable "
                 f"({n / self.budget:.0%} of the budget, {self.budget:,})", buys,
                 "runs made (nothing is trained here):"] + self._run_lines(targets, r)
        text = "\n".join(lines)
        return text, f"<pre style='font-size:12px'>{html.escape(text)}</pre>"


# -- exercises: "predict, then run" ---------------------------------------------------------
def check_guess(guess, answer, *, rel: float = 0.1, unit: str = "") -> str:
    """The verdict a hidden solution cell prints for a learner's guess (never raises).

    ``guess`` None (the default in the exercise cell) → the answer is shown; a number → within
    ``rel`` (relative) of ``answer`` or not; anything else is compared with ``==``.
    """
    shown = f"{answer:,}" if isinstance(answer, int) and not isinstance(answer, bool) else (
        f"{answer:.4g}" if isinstance(answer, float) else repr(answer))
    if guess is None:
        return f"no guess yet: the answer is {shown}{unit}"
    if isinstance(answer, int | float) and not isinstance(answer, bool) \
            and isinstance(guess, int | float) and not isinstance(guess, bool):
        ok = abs(guess - answer) <= rel * abs(answer) if answer else guess == 0
        return (f"{'✓ close' if ok else '✗ not quite'}: you said {guess:,}{unit}, the answer is "
                f"{shown}{unit}" + ("" if ok else f" (within {rel:.0%} counts)"))
    ok = guess == answer and isinstance(guess, bool) == isinstance(answer, bool)
    return f"{'✓ right' if ok else '✗ not quite'}: you said {guess!r}, the answer is {shown}{unit}"


# ============================================================================================
# Adapters (tutorials 05 and 06): the ΔW scale slider and the φ-grid step slider; each shows
# its ``widget`` through ``ShowsWidget``.
# ============================================================================================
def _lora_scalings(peft_model, adapter: str) -> dict:
    """Every LoRA layer of ``peft_model`` with its current scale (α/r or α/√r) for ``adapter``."""
    layers = {m: m.scaling[adapter] for _, m in tuner_layers(peft_model, lora_only=True)
              if adapter in m.scaling}
    if not layers:
        raise ValueError(f"the model has no LoRA layers with an adapter named {adapter!r}: "
                         "pass a PeftModel from lk.attach / lk.load_adapter")
    return layers


class DeltaScaleExplorer(ShowsWidget):
    """A slider that scales every layer's ΔW from 0 (the base model) to 2× the trained adapter.

    ``replies(scale)`` greedy-generates the ``prompts`` with every LoRA layer's scale multiplied
    by ``scale`` (PEFT's ``scaling[adapter]``), then puts the scales back, so the model is never
    left changed. Moving ``slider`` shows the replies at that scale in ``view`` (an HTML table).
    Replies are cached per scale.
    """

    def __init__(self, peft_model, tok, prompts, *, adapter: str = "default",
                 max_new_tokens: int = 24, max_scale: float = 2.0, step: float = 0.25):
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty strings")
        if not 0 < step <= max_scale:
            raise ValueError(f"need 0 < step <= max_scale, got step={step}, max_scale={max_scale}")
        self.model, self.tok, self.prompts = peft_model, tok, list(prompts)
        self.adapter, self.max_new_tokens = adapter, max_new_tokens
        self._scalings = _lora_scalings(peft_model, adapter)
        self._cache: dict[float, list[str]] = {}
        self.slider = widgets.FloatSlider(value=1.0, min=0.0, max=max_scale, step=step,
                                    description="ΔW ×", continuous_update=False)
        self.view = widgets.HTML()
        self.widget = panel_box([self.slider, self.view])
        self.slider.observe(lambda _: self._update(), names="value")
        self._update()

    def replies(self, scale: float) -> list[str]:
        """The greedy replies with ΔW multiplied by ``scale`` (0: the base model)."""
        from ..core.models import generate

        scale = round(float(scale), 6)
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        if scale not in self._cache:
            try:
                for layer, s in self._scalings.items():
                    layer.scaling[self.adapter] = s * scale
                self._cache[scale] = generate(self.model, self.tok, self.prompts,
                                              max_new_tokens=self.max_new_tokens)
            finally:
                for layer, s in self._scalings.items():
                    layer.scaling[self.adapter] = s
        return self._cache[scale]

    def _update(self) -> None:
        rows = "".join(f"<tr><td>{html.escape(p)}</td><td><code>{html.escape(r)}</code></td></tr>"
                       for p, r in zip(self.prompts, self.replies(self.slider.value), strict=True))
        self.view.value = (f"<b>ΔW × {self.slider.value:g}</b><table><tr><th>prompt</th>"
                           f"<th>reply</th></tr>{rows}</table>")

    def summary(self, scales=(0.0, 0.5, 1.0, 2.0), width: int = 40) -> str:
        """A text table of the replies at a few scales (the cell's static output)."""
        lines = []
        for p in self.prompts:
            lines.append(p)
            lines += [f"  ΔW × {s:<4g} → {self.replies(s)[self.prompts.index(p)][:width]!r}"
                      for s in scales]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"DeltaScaleExplorer(scale={self.slider.value:g}, prompts={len(self.prompts)})"


class PhiGridExplorer(ShowsWidget):
    """A step slider over the LoRA paper's φ(i, j) grid between two adapters during training.

    ``history1``, ``history2``: A matrices (r × d_in) of the two adapters at steps 0, 1, …, n
    (same length). With ``learned=True`` (default) φ compares what training added,
    ``A_t − A_0``; step 0 is then undefined and the slider starts at 1. A step where either
    matrix is zero (a LoRA A before its first update: ``B_0 = 0`` gives it no gradient at
    step 1) has no φ: its grid is None and the text and figure say "undefined: ΔA = 0".
    ``baseline`` (a grid of the same shape, e.g. two random subspaces) is shown beside it.
    """

    def __init__(self, history1, history2, *, learned: bool = True, baseline=None,
                 labels=("i", "j"), title: str = "φ(i, j)"):
        from ..core import analysis

        if len(history1) != len(history2) or len(history1) < 2:
            raise ValueError("history1 and history2 need the same number of snapshots (≥ 2), "
                             f"got {len(history1)} and {len(history2)}")
        first = 1 if learned else 0
        self.grids = {}
        for t in range(first, len(history1)):
            a1, a2 = history1[t], history2[t]
            if learned:
                a1, a2 = a1 - history1[0], a2 - history2[0]
            defined = bool(torch.any(torch.as_tensor(a1))) and bool(torch.any(torch.as_tensor(a2)))
            self.grids[t] = analysis.similarity_grid(a1, a2) if defined else None
        self.baseline, self.labels, self.title = baseline, labels, title
        self.slider = widgets.IntSlider(value=max(self.grids), min=first, max=max(self.grids),
                                  description="step", continuous_update=False)
        self.label = widgets.HTML()
        self.output = widgets.Output()
        self.figure = None                      # the plotly figure of the current step
        self.widget = panel_box([self.slider, self.label, self.output])
        self.slider.observe(lambda _: self._update(), names="value")
        self._update()

    @property
    def grid(self) -> torch.Tensor | None:
        """The φ grid at the slider's step (None where φ is undefined: ΔA = 0)."""
        return self.grids[self.slider.value]

    @property
    def text(self) -> str:
        """The readout under the slider as plain text."""
        return self._line(self.slider.value, self.grid)

    @staticmethod
    def _line(step: int, g) -> str:
        if g is None:
            return f"step {step}: φ undefined: ΔA = 0"
        return f"step {step}: φ(1, 1) = {g[0, 0]:.3f}, φ({g.shape[0]}, {g.shape[1]}) = {g[-1, -1]:.3f}"

    def _update(self) -> None:
        from IPython.display import display

        from . import figures

        g, title = self.grid, f"{self.title}, step {self.slider.value}"
        self.label.value = html.escape(self.text)
        if g is None:
            empty = figures.style(None, title, height=300, xaxis_visible=False,
                                  yaxis_visible=False)
            empty.add_annotation(text="φ undefined: ΔA = A − A₀ = 0 at this step",
                                 x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
            self.figure = empty
        else:
            self.figure = figures.similarity_heatmap(g, baseline=self.baseline,
                                                     labels=self.labels, title=title)
        self.output.clear_output(wait=True)
        with self.output:
            display(self.figure)

    def summary(self) -> str:
        """φ(1, 1) and φ(r1, r2) at every step, one line each (the cell's static output)."""
        return "\n".join(f"step {t:>3}: " + ("φ undefined: ΔA = 0" if g is None else
                         f"φ(1, 1) = {g[0, 0]:.3f}   φ({g.shape[0]}, {g.shape[1]}) = {g[-1, -1]:.3f}")
                         for t, g in self.grids.items())

    def __repr__(self) -> str:
        return f"PhiGridExplorer(step={self.slider.value}, steps={len(self.grids)})"


# ============================================================================================
# Runs (tutorial 07): runs a notebook already made, one loss curve at a time
# ============================================================================================
def _setting_label(setting) -> str:
    return f"{setting:g}" if isinstance(setting, float) else str(setting)


class RunExplorer(_Explorer):
    """Pick one of the runs a notebook already made and see its training loss, step by step.

    ``runs``: ``{(name, setting): losses}``, e.g. ``{("lora", 8e-3): res.losses, ...}``: the
    per-step training losses of real runs (nothing is trained here). ``scores``: optional
    ``{(name, setting): value}`` shown with each run (``score_name``, e.g. its held-out loss).
    Two dropdowns pick the name and then one of that name's settings; the figure (``figure``)
    draws every run of the chosen name thin and the chosen one thick, on a log loss axis, and
    ``text`` names the run, its first and last training loss and its score.
    """

    def __init__(self, runs: dict, *, scores: dict | None = None,
                 labels: tuple[str, str] = ("variant", "lr"), score_name: str = "held-out loss"):
        if not runs or not all(isinstance(k, tuple) and len(k) == 2 and len(v) >= 1
                               for k, v in runs.items()):
            raise ValueError("runs must map (name, setting) pairs to non-empty loss lists")
        self.runs = {k: [float(x) for x in v] for k, v in runs.items()}
        self.scores = dict(scores or {})
        self.labels, self.score_name = labels, score_name
        names = list(dict.fromkeys(name for name, _ in self.runs))
        self.name = widgets.Dropdown(options=names, value=names[0], description=labels[0])
        self.setting = widgets.Dropdown(options=self._options(names[0]), description=labels[1])
        self.figure = None                      # the plotly figure of the chosen run
        self._view = FigureView("static")       # its outputs are set here, so a snapshot has it
        self.plot = self._view.widget
        self._busy = False
        super().__init__([self.name, self.setting])
        self.children = (*self.children, self.plot)  # type: ignore[has-type]
        self.update()

    def _options(self, name) -> list:
        return [(_setting_label(s), s) for n, s in self.runs if n == name]

    def update(self) -> None:
        """Follow the dropdowns: the name's settings, the readout and the figure."""
        if self._busy:
            return
        self._busy = True
        try:
            options, keep = self._options(self.name.value), self.setting.value
            if [tuple(o) for o in self.setting.options] != options:
                self.setting.options = options
                if any(v == keep for _, v in options):
                    self.setting.value = keep
        finally:
            self._busy = False
        super().update()
        self._draw()

    def _render(self) -> tuple[str, str]:
        key = (self.name.value, self.setting.value)
        losses = self.runs[key]
        text = (f"{key[0]}, {self.labels[1]} {_setting_label(key[1])}: training loss "
                f"{losses[0]:.3g} → {losses[-1]:.3g} in {len(losses)} steps")
        if key in self.scores:
            text += f"; {self.score_name} {self.scores[key]:.4g}"
        return text, f"<b>{html.escape(text)}</b>"

    def _draw(self) -> None:
        import plotly.graph_objects as go

        from . import figures

        name, chosen = self.name.value, self.setting.value
        fig = go.Figure()
        for (n, s), losses in self.runs.items():
            if n == name:
                fig.add_scatter(x=list(range(1, len(losses) + 1)), y=losses, mode="lines+markers",
                                name=f"{self.labels[1]} {_setting_label(s)}",
                                line=dict(width=3.5 if s == chosen else 1), opacity=1 if
                                s == chosen else 0.45)
        self.figure = figures.style(fig, f"{name}: training loss per step",
                                    x="step", y=figures.LOSS_TITLE, yaxis_type="log",
                                    height=320)
        self._view.show(self.figure)

    def __repr__(self) -> str:
        return f"RunExplorer({self.name.value!r}, {_setting_label(self.setting.value)}, " \
               f"runs={len(self.runs)})"
