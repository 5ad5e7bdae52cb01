"""Serving a LoRA adapter: merge/unmerge, hot-swap, mixed-adapter batches, latency.

Mirrors PEFT (peft/tuners/tuners_utils.py, peft/peft_model.py):

- ``merge`` ~ ``PeftModel.merge_and_unload``: W ← W + ΔW with ΔW = (α/r)·B·A, then the LoRA
  wrappers are removed. Unlike PEFT it first checks, on a probe batch, that the merged model
  gives the unmerged model's logits (``MergeCheck``) and raises if not.
- ``merge_in_place`` / ``unmerge`` ~ ``merge_adapter`` / ``unmerge_adapter``: keep the wrapper;
  explicit, symmetric and guarded (PEFT only warns on a repeat; here a repeat raises). On a
  4-bit base, ``unmerge`` puts the original quantized weights back exactly (PEFT would
  re-quantize W + ΔW − ΔW, changing the base for good).
- ``AdapterBank`` ~ ``load_adapter`` + ``set_adapter`` (hot-swap) and PEFT's mixed-adapter
  batches, ``generate(..., adapter_names=[...])`` ("__base__" = no adapter for that row).
- ``latency`` times greedy generation (merged vs base vs unmerged LoRA).

Why merging is exact only up to rounding: the merged weight W + ΔW is stored in the weight
dtype, so every element is rounded once. In float32 that moves SmolLM2's logits (|logit| ≈ 30)
by ≈ 1e-4 whatever the adapter, so tolerances here are relative to the logit scale.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ._compat import set_adapter_frozen
from .adapters import BASE, load_adapter
from .attach import check_rank_and_memory, has_adapter, is_peft, require_peft
from .guards import Transaction
from .modelkind import base_of, default_inputs
from .models import generate_batch, restore_4bit_layout
from .naming import tuner_layers
from .quiet import peft_quiet

# Merge-check tolerance, relative to the largest |logit| of the unmerged model: rounding
# W + ΔW to the weight dtype (float32 eps 1.2e-7, bfloat16 eps 7.8e-3) moves the logits by
# ~3e-6 (fp32), ~3e-3 (fp16) and ~3e-2 (bf16) of their scale on SmolLM2.
_REQUANTIZED = ".*4-bit linear may get different.*"   # PEFT's warning per re-quantized layer
_KEPT = "_lorakit_unmerged_weight"   # a 4-bit base layer's weight before merge_in_place
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class MergeStateError(RuntimeError):
    """Merging an already merged adapter, or unmerging one that is not merged."""


class MergeCheckError(RuntimeError):
    """The merged model's logits differ from the unmerged model's by more than the tolerance."""

    def __init__(self, message: str, check: MergeCheck):
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class MergeCheck:
    """Merged vs unmerged logits on a probe batch (``merge`` attaches it as ``.merge_check``)."""

    max_abs_diff: float       # max |logits_merged - logits_unmerged| over the probe batch
    atol: float               # the tolerance it was checked against
    dtype: torch.dtype        # dtype of the merged weights
    logit_scale: float        # max |logits_unmerged|: what atol is relative to by default
    adapter_effect: float     # max |logits_unmerged - logits_base|: what the adapter changes
    quantized: bool = False   # merged into a 4-/8-bit bitsandbytes base (re-quantized)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol

    @property
    def relative_to_effect(self) -> float:
        """The merge error as a fraction of the adapter's own effect on the logits."""
        return self.max_abs_diff / self.adapter_effect if self.adapter_effect else 0.0

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "EXCEEDED"
        return (f"merged vs unmerged logits: max |diff| {self.max_abs_diff:.3g} ({verdict}, atol "
                f"{self.atol:.3g}, {str(self.dtype).removeprefix('torch.')}"
                f"{', re-quantized' if self.quantized else ''}); the adapter itself moves the "
                f"logits by up to {self.adapter_effect:.3g}")


# -- merge / unmerge -----------------------------------------------------------------------
def is_merged(peft_model) -> bool:
    """True when the adapter is merged into the base weights (``merge_in_place``)."""
    return any(m.merged for _, m in tuner_layers(peft_model, lora_only=True))


def _quantized_layers(peft_model) -> list[str]:
    """Names of LoRA layers whose base layer is a bitsandbytes 4-bit / 8-bit Linear."""
    return [n for n, m in tuner_layers(peft_model, lora_only=True)
            if type(m.get_base_layer()).__name__ in ("Linear4bit", "Linear8bitLt")]


def _require_lora(peft_model, what: str) -> None:
    """A TypeError unless ``peft_model`` is a PeftModel, a ValueError unless it still has its
    LoRA layers (``lk.merge`` consumes the PeftModel it is given)."""
    require_peft(peft_model, what)
    if not tuner_layers(peft_model, lora_only=True):
        raise ValueError(
            f"{what}: this PeftModel has no LoRA layers left. lk.merge consumes the PeftModel it "
            "is given and returns the merged model (merged = lk.merge(pm)): use that model, or "
            "load the saved adapter again (lk.load_adapter) to merge it anew.")


def _merge_layers(peft_model, names: list[str], keep: bool) -> None:
    """PEFT's ``merge_adapter``. On a 4-bit base PEFT dequantizes, adds ΔW and re-quantizes;
    with ``keep`` each 4-bit base layer first keeps its original weight, which ``unmerge`` puts
    back (bit-identical). PEFT's per-layer warning about it is hidden: the caller measures the
    effect and warns once."""
    quantized = _quantized_layers(peft_model)
    if quantized:
        restore_4bit_layout(peft_model)
    if keep:
        for _, m in tuner_layers(peft_model, lora_only=True):
            base = m.get_base_layer()
            if type(base).__name__ == "Linear4bit":
                base.__dict__[_KEPT] = base.weight  # not registered: no parameter of the model
    with peft_quiet(*([_REQUANTIZED] if quantized else [])):
        peft_model.merge_adapter(adapter_names=names)


def _requantized_warning(diff: float, effect: float, undo: str) -> str:
    """The warning of a merge into a quantized base, with its measured effect."""
    return (f"merging into a quantized base re-quantizes W + ΔW: the merged model's logits "
            f"differ from the unmerged model's by up to {diff:.3g} on the probe batch (the "
            f"adapter itself changes them by up to {effect:.3g}). {undo}")


def merge_in_place(peft_model, adapter: str | None = None) -> int:
    """Merge the active adapter (or ``adapter``) into the base weights, keeping the wrapper.

    ``unmerge`` undoes it. Raises ``MergeStateError`` if the model is already merged (PEFT's
    ``merge_adapter`` would only warn). Returns how many layers were merged.

    A 4-bit / 8-bit bitsandbytes base cannot hold W + ΔW exactly: PEFT re-quantizes it. As
    ``merge`` does, this measures the effect on ``default_probe`` and warns with it. The
    original 4-bit weights are kept, so ``unmerge`` gives the base back bit for bit.
    """
    _require_lora(peft_model, "merge_in_place")
    if is_merged(peft_model):
        merged = sorted({a for _, m in tuner_layers(peft_model, lora_only=True)
                         for a in m.merged_adapters})  # type: ignore[union-attr]
        raise MergeStateError(
            f"the adapter is already merged (adapter(s) {merged}); merging again would add ΔW "
            "twice. Call lk.unmerge(peft_model) first.")
    names = [adapter] if adapter is not None else list(peft_model.active_adapters)
    for name in names:
        if name not in peft_model.peft_config:
            raise ValueError(f"unknown adapter {name!r}; this model has "
                             f"{list(peft_model.peft_config)}")
    if not _quantized_layers(peft_model):
        _merge_layers(peft_model, names, keep=False)
    else:
        was_training = peft_model.training
        peft_model.eval()
        try:
            inputs = _model_inputs(peft_model, None)
            before = _logits(peft_model, inputs)
            with peft_model.disable_adapter():
                base = _logits(peft_model, inputs)
            _merge_layers(peft_model, names, keep=True)
            diff = (_logits(peft_model, inputs) - before).abs().max().item()
        finally:
            peft_model.train(was_training)
        warnings.warn(_requantized_warning(
            diff, (before - base).abs().max().item(),
            "lk.unmerge puts the original quantized weights back exactly."), stacklevel=2)
    return sum(m.merged for _, m in tuner_layers(peft_model, lora_only=True))  # type: ignore[misc]


def unmerge(peft_model) -> int:
    """Subtract the merged adapter from the base weights again (the inverse of ``merge_in_place``).

    Raises ``MergeStateError`` if nothing is merged. Returns how many layers were unmerged.
    In float32 the base weights come back up to one rounding per element (W + ΔW − ΔW); a
    4-bit base gets its original quantized weights back exactly (kept by ``merge_in_place``);
    an 8-bit base is re-quantized once more, with a warning.
    """
    require_peft(peft_model, "unmerge")
    if not is_merged(peft_model):
        raise MergeStateError("nothing to unmerge: the adapter is not merged into the base "
                              "weights (lk.merge_in_place merges it)")
    layers = tuner_layers(peft_model, lora_only=True)
    count = sum(m.merged for _, m in layers)  # type: ignore[misc]
    quantized = _quantized_layers(peft_model)
    if quantized:
        restore_4bit_layout(peft_model)
    kept = [(m.get_base_layer(), m.get_base_layer().__dict__.get(_KEPT)) for _, m in layers]
    lost = [n for n, (_, w) in zip([n for n, _ in layers], kept, strict=True)
            if n in quantized and w is None]
    if lost:
        warnings.warn(f"unmerging from a quantized base re-quantizes W + ΔW − ΔW: the base "
                      f"weights of {len(lost)} layer(s) (e.g. {lost[0]}) will not be exactly "
                      "as before the merge. Reload the base model for the original weights.",
                      stacklevel=2)
    with peft_quiet(_REQUANTIZED):  # said above, or undone below: the kept weights go back
        peft_model.unmerge_adapter()
    for base, weight in kept:
        if weight is not None:
            base.weight = weight
            if getattr(base, "quant_state", None) is not None:
                base.quant_state = weight.quant_state
            del base.__dict__[_KEPT]
    return count


def default_probe(model, batch: int = 2, seq: int = 16) -> torch.Tensor:
    """A small fixed batch of token ids, ``(batch, seq)``, the same on every call: the
    ``input_ids`` of ``modelkind.default_inputs`` (the batch ``merge`` checks by default)."""
    inputs = default_inputs(model, batch, seq)
    if "input_ids" not in inputs:
        raise TypeError(f"{type(base_of(model)).__name__} takes no token ids; its probe batch "
                        "is lorakit.core.modelkind.default_inputs(model)")
    return inputs["input_ids"]


def _model_inputs(model, probe) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    if probe is None:  # per model kind: ids, + decoder ids (T5), or pixel values (ViT)
        probe = default_inputs(model)
    if isinstance(probe, torch.Tensor):
        probe = {"input_ids": probe if probe.ndim == 2 else probe[None]}
    keep = ("input_ids", "attention_mask", "decoder_input_ids", "pixel_values")
    if not isinstance(probe, Mapping) or not any(k in probe for k in keep):
        raise TypeError("probe must be token ids (batch, seq) or a tokenizer output with "
                        f"input_ids (pixel_values for an image model), got {type(probe).__name__}")
    return {k: probe[k].to(device) for k in keep if k in probe}


@torch.no_grad()
def _logits(model, inputs) -> torch.Tensor:
    """The main output: logits (batch, seq, vocab), else last_hidden_state (encoders)."""
    from .modelkind import main_output

    return main_output(model(**inputs)).float()


def merge(peft_model, probe=None, atol: float | None = None, *, adapter: str | None = None):
    """Merge the adapter into the base weights and return the plain merged model (checked).

    Like PEFT's ``merge_and_unload``, after checking that the merged model's logits equal the
    unmerged model's on ``probe`` (token ids ``(batch, seq)`` or a tokenizer output; default
    ``default_probe``). The check is returned on the model as ``merged.merge_check``
    (``MergeCheck``: max |diff|, tolerance, dtype, and how much the adapter itself changes the
    logits, so a passing check is not vacuous).

    Args:
        peft_model: a PeftModel. It is consumed: use the returned model afterwards.
        atol: absolute tolerance on the logits; default ``RTOL[dtype] × max |logit|``
            (1e-5 of the logit scale in float32; larger for fp16 / bf16, see ``RTOL``).
        adapter: which adapter to merge (default: the active one).

    Raises ``MergeCheckError`` (with ``.check``) when the difference exceeds the tolerance; the
    model is then exactly as it was, as it is after any other failure or a Ctrl-C during the
    call. A 4-bit / 8-bit bitsandbytes base cannot hold W + ΔW exactly: PEFT dequantizes, adds
    ΔW and re-quantizes. That is not an error here; the logit difference it causes is
    measured, reported in ``merge_check`` and warned about.
    """
    _require_lora(peft_model, "merge")
    if is_merged(peft_model):
        raise MergeStateError("the adapter is already merged in place (lk.merge_in_place); "
                              "call lk.unmerge(peft_model) first, then lk.merge(peft_model)")
    if adapter is not None and adapter not in peft_model.peft_config:
        raise ValueError(f"unknown adapter {adapter!r}; this model has "
                         f"{list(peft_model.peft_config)}")
    inputs = _model_inputs(peft_model, probe)
    was_training = peft_model.training
    # all or nothing: the merged weights are copies of these until the merge is done
    weights = {id(p): p for _, m in tuner_layers(peft_model, lora_only=True)
               for p in m.get_base_layer().parameters() if p.is_floating_point()}
    with Transaction(peft_model, weights=weights.values()):
        if adapter is not None:
            set_adapter_frozen(peft_model, adapter)
        peft_model.eval()
        check = _checked_merge(peft_model, inputs, atol)
        if not check.quantized and not check.ok:
            raise MergeCheckError(
                f"merge check failed: {check}. The model was left unmerged, exactly as it was. "
                "Pass atol=... to accept a larger difference.", check)
        merged = peft_model.unload()   # the weights already hold W + ΔW: drop the wrappers
        info = merged.__dict__.pop("_lorakit_state", None)
        if info is not None:  # lk.attach froze the base: give back the flags it had before
            for name, p in merged.named_parameters():
                p.requires_grad_(info.get("requires_grad", {}).get(name, p.requires_grad))
    if check.quantized:
        warnings.warn(_requantized_warning(
            check.max_abs_diff, check.adapter_effect, "Keep the adapter unmerged, or merge "
            "into a full-precision copy of the base, to avoid this."), stacklevel=2)
    merged.train(was_training)
    merged.merge_check = check
    return merged


def _checked_merge(peft_model, inputs, atol: float | None) -> MergeCheck:
    """Merge the active adapter in place and measure merged vs unmerged vs base logits."""
    quantized = bool(_quantized_layers(peft_model))
    before = _logits(peft_model, inputs)
    with peft_model.disable_adapter():
        base = _logits(peft_model, inputs)
    _merge_layers(peft_model, list(peft_model.active_adapters), keep=False)
    after = _logits(peft_model, inputs)
    dtype = _weight_dtype(peft_model)
    scale = before.abs().max().item()
    tol = atol if atol is not None else RTOL.get(dtype, 1e-2) * max(scale, 1.0)
    return MergeCheck(max_abs_diff=(after - before).abs().max().item(), atol=tol, dtype=dtype,
                      logit_scale=scale, adapter_effect=(before - base).abs().max().item(),
                      quantized=quantized)


def _weight_dtype(peft_model) -> torch.dtype:
    """The dtype the merged weights are held in (a quantized base: its compute dtype)."""
    layers = tuner_layers(peft_model, lora_only=True)
    if not layers:
        return next(peft_model.parameters()).dtype
    base = layers[0][1].get_base_layer()
    if base.weight.is_floating_point():
        return base.weight.dtype
    return getattr(base, "compute_dtype", None) or torch.float32


# -- several adapters on one base ------------------------------------------------------------
@dataclass(frozen=True)
class MixedRow:
    prompt: str
    adapter: str
    mixed: str       # reply from the one mixed batch
    single: str      # reply with only this adapter active (same padded batch)

    @property
    def equal(self) -> bool:
        return self.mixed == self.single


@dataclass(frozen=True)
class MixedComparison:
    """``AdapterBank.compare``: mixed-batch replies vs single-adapter replies, row by row."""

    rows: list[MixedRow] = field(default_factory=list)

    @property
    def all_equal(self) -> bool:
        return all(r.equal for r in self.rows)

    def __str__(self) -> str:
        lines = [f"{'=' if r.equal else '≠'} [{r.adapter}] {r.prompt!r} -> {r.mixed!r}"
                 + ("" if r.equal else f" (single: {r.single!r})") for r in self.rows]
        return "\n".join(lines)


class AdapterBank:
    """Several named LoRA adapters on one base model: hot-swap, and mixed batches.

    ``bank.add("dates", "runs/dates")`` loads a saved adapter (or pass ``LoraSettings`` /
    ``LoraConfig`` for a fresh one); ``bank.use("dates")`` makes it the active adapter
    (``set_adapter``: no weights are copied, so swapping is instant); ``bank.use("__base__")``
    runs the base model. ``bank.generate(prompts, adapters=[...])`` runs ONE batch in which row i
    uses ``adapters[i]`` (PEFT's ``adapter_names``), and ``bank.compare`` checks that each row
    equals what that adapter alone produces.

    The bank owns ``bank.model`` (a PeftModel, created by the first ``add``).
    """

    def __init__(self, base_model, tok=None):
        if is_peft(base_model):
            self.model = base_model
            self._base = base_of(base_model)
        elif has_adapter(base_model):
            raise ValueError("this model's layers already carry an adapter: pass the PeftModel "
                             "(what lk.attach returned) instead")
        else:
            self.model = None
            self._base = base_model
        self.tok = tok
        self._active = self.model.active_adapter if self.model is not None else BASE

    @property
    def names(self) -> list[str]:
        """The adapters in the bank (not counting ``"__base__"``)."""
        return list(self.model.peft_config) if self.model is not None else []

    @property
    def active(self) -> str:
        return self._active

    def __repr__(self) -> str:
        return f"AdapterBank(adapters={self.names}, active={self.active!r})"

    def _check_name(self, name: str) -> None:
        if name != BASE and name not in self.names:
            raise ValueError(f"unknown adapter {name!r}; the bank has {self.names} (and "
                             f"{BASE!r} for the base model without an adapter)")

    def add(self, name: str, source, *, trainable: bool = False):
        """Add adapter ``name`` from a saved folder, or fresh from ``LoraSettings``/``LoraConfig``.

        The active adapter does not change (the first one added becomes active). Returns the
        bank's PeftModel.
        """
        if not isinstance(name, str) or not name or name == BASE:
            raise ValueError(f"adapter name must be a non-empty string other than {BASE!r}, "
                             f"got {name!r}")
        if name in self.names:
            raise ValueError(f"the bank already has an adapter named {name!r} ({self.names})")
        if isinstance(source, (str, os.PathLike)):
            self.model = load_adapter(self.model or self._base, source, name, trainable=trainable)
        else:
            config = self._fresh_config(source, trainable)
            model = self.model
            try:  # a failure half-way leaves the bank (and its base) as before the call
                with Transaction(self.model or self._base), peft_quiet():
                    self._add_fresh(name, config)
            except BaseException:
                self.model = model
                raise
        if self._active == BASE and len(self.names) == 1:
            self._active = name
        self.model.eval()
        return self.model

    def _fresh_config(self, source, trainable: bool):
        """A checked PEFT ``LoraConfig`` for a fresh adapter (nothing changed yet)."""
        from peft import LoraConfig

        from .settings import LoraSettings

        if isinstance(source, LoraSettings):
            config = source.to_peft_config()
        elif isinstance(source, LoraConfig):
            LoraSettings(r=source.r, alpha=source.lora_alpha)  # the same checks
            config = copy.deepcopy(source)
        elif isinstance(source, Mapping):
            config = LoraSettings(**source).to_peft_config()
        else:
            raise TypeError("source must be an adapter folder, LoraSettings, a dict of "
                            f"LoraSettings fields or a peft LoraConfig, got "
                            f"{type(source).__name__}")
        config.inference_mode = not trainable
        targets = config.target_modules
        check_rank_and_memory(self._base, LoraSettings(
            r=config.r, alpha=config.lora_alpha,
            targets=(targets,) if isinstance(targets, str)
            else tuple(sorted(targets or ["q_proj"]))),
            allow_large_r=False)
        return config

    def _add_fresh(self, name: str, config) -> None:
        from peft import get_peft_model

        if self.model is None:
            self.model = get_peft_model(self._base, config, adapter_name=name)
        else:
            self.model.add_adapter(name, config)

    def use(self, name: str) -> None:
        """Hot-swap: make ``name`` the active adapter (``"__base__"``: no adapter)."""
        self._check_name(name)
        if self.model is None:
            return
        if name == BASE:
            self.model.base_model.disable_adapter_layers()
        else:
            self.model.base_model.enable_adapter_layers()
            set_adapter_frozen(self.model, name)
        self._active = name

    def _check_batch(self, prompts, adapters) -> tuple[list[str], list[str]]:
        if self.tok is None:
            raise ValueError("the bank has no tokenizer: AdapterBank(model, tok)")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        adapters = [adapters] * len(prompts) if isinstance(adapters, str) else list(adapters)
        if len(adapters) != len(prompts):
            raise ValueError(f"one adapter name per prompt: got {len(prompts)} prompts and "
                             f"{len(adapters)} adapter names")
        for a in adapters:
            self._check_name(a)
        if self.model is not None:
            dora = [a for a in dict.fromkeys(adapters)
                    if a != BASE and getattr(self.model.peft_config[a], "use_dora", False)]
            if dora:
                raise ValueError(
                    f"adapter {dora[0]!r} is a DoRA adapter, and PEFT does not support DoRA in "
                    "mixed-adapter batches (adapter_names=...). Generate for it separately: "
                    f"bank.use({dora[0]!r}), then lk.generate(bank.model, tok, prompts).")
            if is_merged(self.model):
                raise MergeStateError("an adapter is merged into the base weights; mixed "
                                      "batches need unmerged adapters: lk.unmerge(bank.model)")
        return prompts, adapters

    def generate(self, prompts, adapters, max_new_tokens: int = 32, prompt_format: str = "auto") -> list[str]:
        """Greedy replies for one mixed batch: row i uses ``adapters[i]`` (``"__base__"``: none)."""
        prompts, adapters = self._check_batch(prompts, adapters)
        model = self.model if self.model is not None else self._base
        if self.model is None:
            return generate_batch(model, self.tok, prompts, max_new_tokens, prompt_format=prompt_format)[0]
        self.model.base_model.enable_adapter_layers()  # a disabled layer ignores adapter_names
        try:
            return generate_batch(model, self.tok, prompts, max_new_tokens, prompt_format=prompt_format,
                             adapter_names=adapters)[0]
        finally:
            if self._active == BASE:   # use("__base__") had disabled them: keep it so
                self.model.base_model.disable_adapter_layers()

    def compare(self, prompts, adapters, max_new_tokens: int = 32,
                prompt_format: str = "auto") -> MixedComparison:
        """Check the mixed batch against single-adapter generation, row by row (greedy).

        The reference for row i is the same padded batch generated with only ``adapters[i]``
        active (``use``), so a difference can only come from mixing adapters in one batch.
        """
        prompts, adapters = self._check_batch(prompts, adapters)
        mixed = self.generate(prompts, adapters, max_new_tokens, prompt_format)
        single: dict[int, str] = {}
        previous = self._active
        try:
            for name in dict.fromkeys(adapters):
                self.use(name)
                model = self.model if self.model is not None else self._base
                replies = generate_batch(model, self.tok, prompts, max_new_tokens, prompt_format=prompt_format)[0]
                single.update({i: replies[i] for i, a in enumerate(adapters) if a == name})
        finally:
            self.use(previous)
        return MixedComparison([MixedRow(p, a, m, single[i]) for i, (p, a, m)
                                in enumerate(zip(prompts, adapters, mixed, strict=True))])


# -- latency -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyResult:
    """Greedy generation time of one prompt: median over ``times``."""

    seconds: float              # median wall time of one generate call
    new_tokens: int             # tokens generated per call (forced: min = max)
    times: tuple[float, ...]    # every timed call, seconds

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (f"{self.seconds * 1000:.1f} ms for {self.new_tokens} tokens "
                f"({self.tokens_per_s:.1f} tokens/s, median of {len(self.times)})")


def latency(model, tok, prompt: str, max_new_tokens: int = 16, repeat: int = 5,
            warmup: int = 1, prompt_format: str = "auto") -> LatencyResult:
    """Median wall time of greedy generation of exactly ``max_new_tokens`` tokens.

    ``min_new_tokens = max_new_tokens`` so every model generates the same number of tokens,
    whatever it replies. Compare models by alternating short calls (``repeat=1``) in one loop:
    on a shared machine the load changes between minutes.
    """
    import statistics

    if repeat < 1 or warmup < 0:
        raise ValueError(f"repeat must be ≥ 1 and warmup ≥ 0, got {repeat}, {warmup}")
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            generate_batch(model, tok, [prompt], max_new_tokens, prompt_format=prompt_format,
                           min_new_tokens=max_new_tokens)
        times, n = [], max_new_tokens
        for _ in range(repeat):
            t0 = time.perf_counter()
            _, n = generate_batch(model, tok, [prompt], max_new_tokens, prompt_format=prompt_format,
                             min_new_tokens=max_new_tokens)
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return LatencyResult(statistics.median(times), n, tuple(times))
