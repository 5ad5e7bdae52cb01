"""Parameter accounting for real models and for configs: counts, LoRA sizes, memory budgets.

References:
  * PEFT ``PeftModel.get_nb_trainable_parameters`` (peft/peft_model.py): ``count_params``
    counts exactly as it does, including the 4-bit correction for bitsandbytes ``Params4bit``
    (each stored byte holds two 4-bit values: ``numel * 2 * itemsize``).
  * PEFT ``check_target_module_exists`` (peft/tuners/tuners_utils.py): the target-name rule
    ``name == t or name.endswith("." + t)`` used by ``matches_target``.
  * LoRA (Hu et al. 2021, §4.1): a module ``W: (d_out, d_in)`` gets ``A: (r, d_in)`` and
    ``B: (d_out, r)``, i.e. ``r·(d_in + d_out)`` trainable parameters. DoRA (Liu et al. 2024)
    adds a magnitude vector ``m: (d_out,)`` per module (peft/tuners/lora/dora.py).
  * QLoRA (Dettmers et al. 2023, §3): 4-bit NormalFloat with blocksize 64 and Double
    Quantization of the block constants; ZeRO (Rajbhandari et al. 2020, §3.1) for the
    16 bytes/parameter of mixed-precision AdamW.

Two sources of shapes, one answer:
  * a real model (``nn.Module``, plain or PEFT-wrapped, 4-bit or not): its modules are walked;
  * a ``transformers.PretrainedConfig``: llama-family (llama, mistral, qwen2), BERT and GPT-2
    shapes are written out analytically (micro- to milliseconds, fit for a slider); any other
    config is instantiated on the meta device (no memory, no weights) and walked like a model.
  Tests check analytic == meta-instantiated for every built-in config.

Names are those of ``AutoModelForCausalLM`` when the config's ``architectures`` name a causal
LM (or, without ``architectures``, when the family is a decoder), else of ``AutoModel``:
``"model.layers.3.self_attn.q_proj"`` (Llama), ``"transformer.h.0.attn.c_attn"`` (GPT-2),
``"encoder.layer.0.attention.self.query"`` and ``"pooler.dense"`` (BERT).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .naming import (
    CLASSIFIER_HEAD_NAMES,
    WRAPPER_PARTS,
    is_adapter_param,
    layer_index,
    layer_numbers,
    matches_target,
    module_kind,
    param_type,
    short_name,
    strip_prefix,
    tuner_layers,
)
from .settings import LoraSettings, Quantize, Variant, check_quantize, is_pattern

MB = 10**6   # sizes are reported in decimal units: 1 MB = 10^6 bytes, 1 GB = 10^9 bytes
GB = 10**9
_OUTSIDE = None  # by_layer key for parameters outside the transformer blocks


# --------------------------------------------------------------------------------------------
# Linear modules: from a model or from a config
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearInfo:
    """One Linear-like module that LoRA can target (weight ``W: (d_out, d_in)``)."""

    name: str          # full module name, e.g. "model.layers.0.self_attn.q_proj"
    suffix: str        # last name component, e.g. "q_proj": what LoraConfig.target_modules names
    layer: int | None  # index of the transformer block, None outside the blocks
    in_features: int   # d_in
    out_features: int  # d_out


def in_out_features(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) of a Linear-like module (nn.Linear, bnb Linear4bit/8bit, HF Conv1D), else
    None. The weight is ``W: (d_out, d_in)`` (Conv1D stores it transposed, ``(d_in, d_out)``)."""
    if isinstance(module, nn.Linear):  # bnb Linear4bit / Linear8bitLt subclass nn.Linear
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight (d_in, d_out)
        return module.weight.shape[0], module.nf  # type: ignore[return-value]
    return None


def targeted(linears: list[LinearInfo], targets, head: LinearInfo | None = None
             ) -> list[LinearInfo]:
    """The modules PEFT wraps for ``targets``: a list of names (``matches_target``),
    ``"all-linear"`` (every Linear but the output ``head``) or a regex string (PEFT's
    ``re.fullmatch`` on the full module name)."""
    if is_pattern(targets):
        if targets.lower() == "all-linear":
            return [i for i in linears if i is not head]
        pattern = re.compile(targets)
        return [i for i in linears if pattern.fullmatch(i.name)]
    return [i for i in linears if any(matches_target(i.name, t) for t in targets)]


def _is_config(obj) -> bool:
    return not isinstance(obj, nn.Module) and hasattr(obj, "model_type") and hasattr(
        obj, "to_dict")


def linears_and_head(model: nn.Module) -> tuple[list[LinearInfo], LinearInfo | None]:
    """All Linear modules in model order (PEFT-wrapped ones by their base layer) + the head."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found, head = [], None
    for name, module in model.named_modules():
        parts = name.split(".")
        if not WRAPPER_PARTS.isdisjoint(parts):
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        shape = in_out_features(base)
        if shape is None:
            continue
        name = strip_prefix(name)
        info = LinearInfo(name, parts[-1], layer_index(name), *shape)
        if out_emb is not None and (module is out_emb or base is out_emb):
            head = info
        found.append(info)
    return found, head


def linear_modules(model_or_config, *, include_output: bool = False) -> list[LinearInfo]:
    """Every Linear module LoRA can wrap, in model order.

    Args:
        model_or_config: a model (plain or PEFT-wrapped; PEFT layers are reported by their base
            layer, the adapters' own ``lora_A``/``lora_B`` are skipped) or a
            ``transformers.PretrainedConfig`` (shapes computed, see the module docstring).
        include_output: also list the output projection (``lm_head``). Off by default, as
            PEFT's ``target_modules="all-linear"`` leaves it out.

    Shapes: ``in_features = d_in``, ``out_features = d_out`` of ``W: (d_out, d_in)``; for a
    Llama config ``q: d→H·hd``, ``k, v: d→KV·hd`` (grouped-query attention), ``o: H·hd→d``,
    ``gate, up: d→I``, ``down: I→d``.
    """
    linears, head = _shapes(model_or_config)[:2]
    if include_output or head is None:
        return list(linears)
    return [i for i in linears if i is not head]


def is_quantized_param(p: torch.Tensor) -> bool:
    """True for a bitsandbytes 4-bit packed weight (``Params4bit``: two values per byte)."""
    return type(p).__name__ == "Params4bit"


def _numel(p: torch.Tensor) -> int:
    """True number of parameters of ``p``, exactly as PEFT's get_nb_trainable_parameters."""
    n = p.numel()
    if n == 0 and hasattr(p, "ds_numel"):  # DeepSpeed ZeRO-3 partitioned parameter
        n = p.ds_numel
    if is_quantized_param(p):  # packed: each element of the storage dtype holds 2·itemsize values
        if hasattr(p, "element_size"):
            nbytes = p.element_size()
        elif not hasattr(p, "quant_storage"):
            nbytes = 1
        else:
            nbytes = p.quant_storage.itemsize
        n = n * 2 * nbytes
    return n


# ---- analytic shapes per family ------------------------------------------------------------

# model_type -> (bias on q/k/v, bias on o) as a function of the config; mlp bias from mlp_bias.
_LLAMA_FAMILY = {
    "llama": lambda c: (bool(getattr(c, "attention_bias", False)),) * 2,
    "mistral": lambda c: (False, False),
    "qwen2": lambda c: (True, False),
}
_DECODERS = {*_LLAMA_FAMILY, "gpt2"}


def _head_class(cfg) -> str | None:
    """The transformers class a config's ``architectures`` names when it has a task head that
    changes what trains (a classifier: PEFT trains it in full), else None."""
    archs = getattr(cfg, "architectures", None) or []
    heads = ("ForSequenceClassification", "ForTokenClassification")
    return next((a for a in archs if a.endswith(heads)), None)


def _is_causal(cfg) -> bool:
    """Whether names/parameters follow AutoModelForCausalLM (else AutoModel)."""
    archs = getattr(cfg, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if getattr(cfg, "is_encoder_decoder", False):
        return False
    if cfg.model_type in _DECODERS:
        return True
    if cfg.model_type == "bert":
        return False
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return (cfg.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and cfg.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def _tied(cfg) -> bool:
    return bool(getattr(cfg, "tie_word_embeddings", True))


def _llama_shapes(cfg, causal: bool):
    """Llama / Mistral / Qwen2. d = hidden, H heads, KV kv-heads, hd head_dim, I intermediate.

    Per block: q (d→H·hd), k, v (d→KV·hd), o (H·hd→d), gate, up (d→I), down (I→d), two RMSNorm
    weights (d each). Outside: embed_tokens (V·d), final norm (d), lm_head (V·d, unless tied).
    """
    d, n_layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or d // heads
    inter = cfg.intermediate_size
    qkv_bias, o_bias = _LLAMA_FAMILY[cfg.model_type](cfg)
    mlp_bias = bool(getattr(cfg, "mlp_bias", False))
    block = (("self_attn.q_proj", d, heads * hd, qkv_bias),
             ("self_attn.k_proj", d, kv * hd, qkv_bias),
             ("self_attn.v_proj", d, kv * hd, qkv_bias),
             ("self_attn.o_proj", heads * hd, d, o_bias),
             ("mlp.gate_proj", d, inter, mlp_bias),
             ("mlp.up_proj", d, inter, mlp_bias),
             ("mlp.down_proj", inter, d, mlp_bias))
    prefix = "model." if causal else ""
    per_block = sum(i * o + (o if b else 0) for _, i, o, b in block) + 2 * d
    total = vocab * d + n_layers * per_block + d
    return _with_head(cfg, causal, _block_linears(prefix + "layers", n_layers, block), total,
                      d, vocab)


def _gpt2_shapes(cfg, causal: bool):
    """GPT-2 (Conv1D layers). d = n_embd, I = n_inner or 4d, P = n_positions.

    Per block: ln_1, ln_2 (2d each, weight + bias), attn.c_attn (d→3d), attn.c_proj (d→d),
    mlp.c_fc (d→I), mlp.c_proj (I→d), all with bias. Outside: wte (V·d), wpe (P·d), ln_f (2d),
    lm_head (V·d, unless tied as in GPT-2).
    """
    d, n_layers, vocab = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    inter = cfg.n_inner or 4 * d
    block = (("attn.c_attn", d, 3 * d, True), ("attn.c_proj", d, d, True),
             ("mlp.c_fc", d, inter, True), ("mlp.c_proj", inter, d, True))
    prefix = "transformer." if causal else ""
    per_block = sum(i * o + o for _, i, o, _ in block) + 4 * d
    total = vocab * d + cfg.n_positions * d + n_layers * per_block + 2 * d
    return _with_head(cfg, causal, _block_linears(prefix + "h", n_layers, block), total, d,
                      vocab)


def _with_head(cfg, causal: bool, linears: list[LinearInfo], total: int, d: int, vocab: int):
    """(linears, head, total) of a decoder: a causal LM adds lm_head (d→V; V·d unless tied)."""
    if not causal:
        return linears, None, total
    head = LinearInfo("lm_head", "lm_head", None, d, vocab)
    return [*linears, head], head, total + (0 if _tied(cfg) else vocab * d)


def _bert_shapes(cfg):
    """BertModel (with pooler). d = hidden, I = intermediate, P positions, T token types.

    Per layer: query, key, value, attention.output.dense (d→d), intermediate.dense (d→I),
    output.dense (I→d), all with bias; two LayerNorms (2d each). Outside: word, position and
    token-type embeddings ((V + P + T)·d), embeddings.LayerNorm (2d), pooler.dense (d→d + d).
    """
    d, n_layers, inter = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    block = (("attention.self.query", d, d, True), ("attention.self.key", d, d, True),
             ("attention.self.value", d, d, True), ("attention.output.dense", d, d, True),
             ("intermediate.dense", d, inter, True), ("output.dense", inter, d, True))
    per_block = sum(i * o + o for _, i, o, _ in block) + 4 * d
    emb = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * d + 2 * d
    total = emb + n_layers * per_block + d * d + d
    linears = _block_linears("encoder.layer", n_layers, block)
    linears.append(LinearInfo("pooler.dense", "dense", None, d, d))
    return linears, None, total


def _block_linears(stem: str, n_layers: int, block) -> list[LinearInfo]:
    return [LinearInfo(f"{stem}.{i}.{path}", module_kind(path), i, d_in, d_out)
            for i in range(n_layers) for path, d_in, d_out, _ in block]


def _analytic(cfg):
    """(linears incl. head, head, total) for families written out here, else None."""
    if _head_class(cfg) is not None:
        return None          # a classifier: its head trains too, read from the meta model
    causal = _is_causal(cfg)
    if cfg.model_type in _LLAMA_FAMILY:
        return _llama_shapes(cfg, causal)
    if cfg.model_type == "gpt2" and not getattr(cfg, "add_cross_attention", False):
        return _gpt2_shapes(cfg, causal)
    if (cfg.model_type == "bert" and not causal and not getattr(cfg, "is_decoder", False)
            and not getattr(cfg, "add_cross_attention", False)):
        return _bert_shapes(cfg)
    return None


def meta_model(config) -> nn.Module:
    """Instantiate ``config`` on the meta device: real module tree and shapes, no memory.

    The class the config's ``architectures`` names when it is a classifier; else
    ``AutoModelForSeq2SeqLM`` for an encoder-decoder (``is_encoder_decoder``),
    ``AutoModelForCausalLM`` when the config names a causal LM (see module docstring), else
    ``AutoModel``. The config passed in is left as it is (a copy is instantiated: some
    classes rewrite their config, e.g. ``MarianForCausalLM`` sets ``is_encoder_decoder``).
    """
    import copy

    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = copy.deepcopy(config)
    head = _head_class(config)
    if head is not None and hasattr(transformers, head):
        auto = getattr(transformers, head)
        with torch.device("meta"):
            return auto(config)
    if getattr(config, "is_encoder_decoder", False):
        auto = AutoModelForSeq2SeqLM
    else:
        auto = AutoModelForCausalLM if _is_causal(config) else AutoModel
    with torch.device("meta"):
        return auto.from_config(config)


def _base_total(model: nn.Module) -> int:
    """Parameters of the base model (adapters left out), tied weights once, 4-bit corrected."""
    return sum(_numel(p) for name, p in model.named_parameters() if not is_adapter_param(name))


def _shapes(obj):
    """(linears incl. output head, head or None, total base parameters) of a model or config."""
    if isinstance(obj, nn.Module):
        linears, head = linears_and_head(obj)
        return linears, head, _base_total(obj)
    if _is_config(obj):
        found = _analytic(obj)
        if found is not None:
            return found
        return _shapes(meta_model(obj))
    raise TypeError(f"expected a model (torch.nn.Module) or a transformers config, got "
                    f"{type(obj).__name__}; for a built-in config use builtin_config(name)")


# --------------------------------------------------------------------------------------------
# Counting a real model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TypeCount:
    """Trainable/frozen split of one group of parameters (a module type or a layer)."""

    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


@dataclass(frozen=True)
class ParamCounts:
    """``count_params``' result: totals, and the same split by module type and by layer.

    ``by_type`` keys are module names' last components ("q_proj", "embed_tokens",
    "input_layernorm"); adapter parameters (lora_A, lora_B, lora_magnitude_vector) count under
    the module they adapt. ``by_layer`` keys are block indices 0..L-1, in order, then ``None``
    for everything outside the blocks (embeddings, final norm, untied lm_head).
    """

    total: int                          # all parameters, tied weights once, 4-bit unpacked
    trainable: int                      # requires_grad
    frozen: int                         # total - trainable
    by_type: dict[str, TypeCount]
    by_layer: dict[int | None, TypeCount]

    @property
    def trainable_pct(self) -> float:
        """100 · trainable / total (PEFT's print_trainable_parameters figure)."""
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def rows(self, by: str = "type") -> list[dict]:
        """One dict per module type (``by="type"``) or layer (``by="layer"``) for tables/figures."""
        groups: dict[str, Mapping] = {"type": self.by_type, "layer": self.by_layer}
        if by not in groups:
            raise ValueError(f"by must be 'type' or 'layer', got {by!r}")
        return [{by: k, "trainable": c.trainable, "frozen": c.frozen, "total": c.total}
                for k, c in groups[by].items()]

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} of {self.total:,} = {self.trainable_pct:.3f}%"


def count_params(model: nn.Module) -> ParamCounts:
    """Count a model's parameters: total, trainable, frozen, by module type and by layer.

    ``(trainable, total)`` equals PEFT's ``get_nb_trainable_parameters()``: parameters are
    visited once each (tied weights once) and a bitsandbytes ``Params4bit`` of ``n`` stored
    elements counts ``n · 2 · itemsize`` (two 4-bit values per byte). Works on a plain model too.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_params expects a model (torch.nn.Module), got "
                        f"{type(model).__name__}; for a config use lk.estimate(config)")
    by_type: dict[str, list[int]] = {}
    by_layer: dict[int | None, list[int]] = {}
    trainable = total = 0
    numbers = layer_numbers(n for n, _ in model.named_parameters())  # T5: enc, then dec
    for name, p in model.named_parameters():
        n = _numel(p)
        name = strip_prefix(name)
        slot = 0 if p.requires_grad else 1
        by_type.setdefault(param_type(name), [0, 0])[slot] += n
        by_layer.setdefault(numbers[name], [0, 0])[slot] += n
        total += n
        trainable += n if p.requires_grad else 0
    layers = sorted(k for k in by_layer if k is not None) + (
        [_OUTSIDE] if _OUTSIDE in by_layer else [])
    return ParamCounts(
        total=total, trainable=trainable, frozen=total - trainable,
        by_type={k: TypeCount(*v) for k, v in by_type.items()},
        by_layer={k: TypeCount(*by_layer[k]) for k in layers})


# --------------------------------------------------------------------------------------------
# LoRA size without wrapping
# --------------------------------------------------------------------------------------------

def lora_layer_params(r: int, d_in: int, d_out: int, dora: bool = False) -> int:
    """Trainable parameters of one LoRA layer: A ``(r, d_in)`` + B ``(d_out, r)`` =
    ``r·(d_in + d_out)``; DoRA adds its magnitude vector ``m: (d_out,)``."""
    return r * (d_in + d_out) + (d_out if dora else 0)


@dataclass(frozen=True)
class TargetPlan:
    """What LoRA with ``targets`` at rank ``r`` trains on one model, as PEFT does it.

    ``modules``: the Linear modules that get A and B. ``skipped``: modules ``"all-linear"``
    leaves out because r > min(d_in, d_out) there (a 64→1 gate), with a note. ``heads``: the
    classifier heads PEFT trains in full (``modules_to_save``), ``head_params`` their size.
    ``experts``: LoRA parameters on ``target_parameters`` (MoE expert weights).
    """

    targets: Any                      # as given, or the default (names, or "all-linear")
    why: str                          # "as given", or why this default applies
    modules: tuple[LinearInfo, ...]
    skipped: tuple[LinearInfo, ...] = ()
    heads: tuple[str, ...] = ()
    head_params: int = 0
    experts: int = 0
    # PEFT's target_parameters and per-parameter ranks/alphas (MoE experts; "all-linear" on a
    # fused-expert MoE adds them as PEFT does, with r·2 on a fused gate_up_proj)
    target_parameters: tuple[str, ...] = ()
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    head_sizes: Mapping[str, int] = field(default_factory=dict)   # head -> its parameters

    def lora_params(self, r: int, dora: bool = False) -> int:
        """Trainable parameters: A and B (and DoRA's m) of ``modules``, the heads, experts."""
        return (sum(lora_layer_params(r, i.in_features, i.out_features, dora)
                    for i in self.modules) + self.head_params + self.experts)

    @property
    def names(self) -> list[str]:
        """The full names of ``modules``: the ``target_modules`` lorakit gives PEFT."""
        return [i.name for i in self.modules]


def _head_sizes(model: nn.Module, heads) -> dict[str, int]:
    """Parameters of each module PEFT trains in full (a ModulesToSaveWrapper: its original)."""
    sizes = {}
    for name in heads:
        module = model.get_submodule(name)
        module = getattr(module, "original_module", module)
        sizes[name] = sum(_numel(p) for p in module.parameters())
    return sizes


def _expert_params(model: nn.Module, names, r: int, rank_pattern: Mapping[str, int]) -> int:
    """PEFT's LoRA on ``target_parameters``: a 3-D expert weight (E, a, b) gets r·E·(a + b)
    (one rank-r pair per expert), a 2-D weight (a, b) r·(a + b); ``rank_pattern`` (regex ->
    rank, matched on the full name) overrides r."""
    total = 0
    for n, p in model.named_parameters():
        if is_adapter_param(n):
            continue
        n = ".".join(part for part in strip_prefix(n).split(".") if part not in WRAPPER_PARTS)
        if any(n == t or n.endswith("." + t) for t in names) and p.ndim >= 2:
            rank = next((k for pat, k in rank_pattern.items() if re.fullmatch(pat, n)), r)
            experts = p.shape[0] if p.ndim == 3 else 1
            total += rank * experts * (p.shape[-2] + p.shape[-1])
    return total


def peft_all_linear_parameters(model: nn.Module, r: int, alpha: float = 16):
    """What PEFT adds to ``"all-linear"`` on an MoE whose experts transformers ≥ 5 fused into
    parameters (Mixtral: the router ``gate.weight``, ``gate_up_proj`` at rank 2r, ``down_proj``):
    ``(target_parameters, rank_pattern, alpha_pattern)`` as PEFT's own conversion
    (``convert_peft_config_for_transformers``) makes them; empty where it adds nothing or the
    installed PEFT has no such conversion."""
    try:
        from peft.utils.transformers_weight_conversion import (
            convert_peft_config_for_transformers,
        )
    except ImportError:   # PEFT without the transformers-5 conversion: nothing added
        return (), {}, {}
    from peft import LoraConfig

    config = LoraConfig(r=r, lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT says int
                        target_modules="all-linear")
    try:
        convert_peft_config_for_transformers(config, model, conversions=None)
    except (ImportError, AttributeError):   # transformers 4: no conversion mapping to read
        return (), {}, {}
    found = tuple(sorted(config.target_parameters or ()))
    return found, dict(config.rank_pattern or {}), dict(config.alpha_pattern or {})


def _no_match(linears, targets) -> ValueError:
    names = ", ".join(dict.fromkeys(i.suffix for i in linears)) or "(none)"
    shown = targets if is_pattern(targets) else list(targets)
    return ValueError(f"no Linear module matches targets {shown!r}. "
                      f"This model's Linear modules are: {names}")


def plan_targets(model_or_config, targets=None, r: int = 8, target_parameters=None,
                 task_type: str | None = "auto", alpha: float = 16) -> TargetPlan:
    """What ``lk.attach(model, r=r, targets=targets)`` wraps, trains and leaves out.

    ``targets=None``: the family's default (``naming.default_targets``: PEFT's per-architecture
    list, else the documented fallback). ``"all-linear"``: PEFT's set (every Linear and Conv1D
    but the output head) without the classifier heads PEFT trains in full and without modules
    too small for r (``skipped``). Names or a regex: PEFT's matching; a name that reaches into a
    trained head is refused (PEFT cannot both wrap it and train it in full).
    ``task_type``: PEFT's ("auto": from the model, ``modelkind.peft_task_type``). ``alpha``:
    the adapter's, for the alphas of fused MoE experts (``peft_all_linear_parameters``).
    """
    from .modelkind import peft_task_type
    from .naming import default_targets, in_modules, trained_heads

    # analytic configs (llama family, GPT-2, BERT without a head) have no MoE and no head
    model = _module_of(model_or_config, need_model=bool(target_parameters))
    linears, head = (linears_and_head(model) if isinstance(model, nn.Module)
                     else _shapes(model_or_config)[:2])
    if task_type == "auto":
        task_type = peft_task_type(model) if isinstance(model, nn.Module) else None
    heads: list[str] = []
    if isinstance(model, nn.Module) and task_type in ("SEQ_CLS", "TOKEN_CLS"):
        heads = trained_heads(n for n, _ in model.named_modules()
                              if WRAPPER_PARTS.isdisjoint(n.split(".")))
    why = "as given"
    if targets is None:
        cfg = getattr(model, "config", model)
        body = [i for i in linears if i is not head and not in_modules(i.name, heads)]
        targets, why = default_targets(getattr(cfg, "model_type", None), (i.suffix for i in body))
    hit = targeted(linears, targets, head)
    skipped: list[LinearInfo] = []
    params, ranks, alphas = tuple(target_parameters or ()), {}, {}
    if is_pattern(targets) and targets.lower() == "all-linear":
        hit = [i for i in hit if not in_modules(i.name, heads)]
        skipped = [i for i in hit if r > min(i.in_features, i.out_features)]
        hit = [i for i in hit if i not in skipped]
        if isinstance(model, nn.Module):
            more, ranks, alphas = peft_all_linear_parameters(model, r, alpha)
            params = tuple(dict.fromkeys(params + more))
    inside = [i.name for i in hit if in_modules(i.name, heads)]
    if inside:
        ends = " or ".join(CLASSIFIER_HEAD_NAMES)
        raise ValueError(
            f"target {inside[0]!r} is in the classifier head {heads}, which PEFT trains in full "
            f"(modules_to_save: every module whose name ends in {ends}); it cannot also get "
            "LoRA. Leave it out of targets: it trains anyway.")
    if not hit and not params:
        if skipped:
            raise ValueError(f"targets='all-linear' at r={r}: every Linear module is smaller "
                             f"than r (e.g. {skipped[0].name}); use a smaller r")
        raise _no_match(linears, targets)
    experts = (_expert_params(model, params, r, ranks)
               if params and isinstance(model, nn.Module) else 0)
    sizes = _head_sizes(model, heads) if heads else {}
    return TargetPlan(targets, why, tuple(hit), tuple(skipped), tuple(heads),
                      sum(sizes.values()), experts, params, ranks, alphas, sizes)


def _module_of(obj, need_model: bool = False):
    """A model to plan on: the model itself (its base under a PeftModel), or for a config the
    meta-instantiated model; a config with analytic shapes stays a config (fast) unless
    ``need_model``."""
    from .modelkind import base_of

    if isinstance(obj, nn.Module):
        return base_of(obj)
    if not _is_config(obj):
        _shapes(obj)   # the TypeError naming what is accepted
    if not need_model and _analytic(obj) is not None:
        return obj
    return meta_model(obj)


def lora_param_count(model_or_config, r: int = 8, targets=None, variant: Variant = "lora",
                     target_parameters=None) -> int:
    """Trainable parameters ``lk.attach`` gives, from shapes alone (nothing is wrapped).

    ``Σ r·(d_in + d_out)`` over the wrapped Linear modules (``plan_targets``: ``targets=None``
    is the family's default, as in ``attach``; ``"all-linear"`` as PEFT resolves it), plus a
    classifier's head (PEFT trains it in full) and ``target_parameters`` (MoE experts:
    r·E·(d_in + d_out) each). DoRA adds ``d_out`` per module (its magnitude vector); rsLoRA only
    changes the scale, not the count. Equals ``PeftModel.get_nb_trainable_parameters()[0]``
    after ``lk.attach`` with the same settings. A config is counted as the class its
    ``architectures`` names (a classifier with its head), else as module docstring says; the
    config passed in is not changed.

    Raises:
        ValueError: bad r / targets / variant (``LoraSettings``), or no target matches.
    """
    settings = LoraSettings(r=r, targets=targets if targets is not None else ("q_proj",),
                            variant=variant)
    plan = plan_targets(model_or_config, targets if targets is None else settings.targets,
                        settings.r, target_parameters)
    return plan.lora_params(settings.r, settings.variant == "dora")


# --------------------------------------------------------------------------------------------
# Built-in configs (published config.json values, no hub access)
# --------------------------------------------------------------------------------------------

_LLAMA2 = MappingProxyType({"architectures": ("LlamaForCausalLM",), "hidden_act": "silu",
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
           "vocab_size": 32000, "initializer_range": 0.02, "pretraining_tp": 1})


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(d)


# name -> (transformers config class, source model id, config.json values). Read-only: the
# values are tuples/scalars in mapping proxies; builtin_config builds a fresh config each call.
BUILTIN_CONFIGS: Mapping[str, tuple[str, str, Mapping]] = MappingProxyType({
    "bert-base": ("BertConfig", "google-bert/bert-base-uncased", _frozen({
        "architectures": ("BertForMaskedLM",), "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "max_position_embeddings": 512, "type_vocab_size": 2, "vocab_size": 30522,
        "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "pad_token_id": 0})),
    "gpt2-xl": ("GPT2Config", "openai-community/gpt2-xl", _frozen({
        "architectures": ("GPT2LMHeadModel",), "n_embd": 1600, "n_layer": 48, "n_head": 25,
        "n_positions": 1024, "vocab_size": 50257, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
        "initializer_range": 0.02, "bos_token_id": 50256, "eos_token_id": 50256})),
    "llama-2-7b": ("LlamaConfig", "meta-llama/Llama-2-7b-hf", _frozen({
        **_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32})),
    "llama-2-13b": ("LlamaConfig", "meta-llama/Llama-2-13b-hf", _frozen({
        **_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 40})),
    "llama-2-70b": ("LlamaConfig", "meta-llama/Llama-2-70b-hf", _frozen({
        **_LLAMA2, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8})),
    "llama-3-8b": ("LlamaConfig", "meta-llama/Meta-Llama-3-8B", _frozen({
        **_LLAMA2, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "bos_token_id": 128000,
        "eos_token_id": 128001})),
    "smollm2-135m": ("LlamaConfig", "HuggingFaceTB/SmolLM2-135M", _frozen({
        **_LLAMA2, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rope_theta": 100000.0, "tie_word_embeddings": True,
        "bos_token_id": 0, "eos_token_id": 0})),
})


def builtin_config(name: str):
    """A fresh transformers config for a built-in name (see ``BUILTIN_CONFIGS``)."""
    if name not in BUILTIN_CONFIGS:
        raise ValueError(f"unknown model {name!r}; built-in configs: "
                         f"{', '.join(BUILTIN_CONFIGS)} (or pass a transformers config/model)")
    cls_name, source, values = BUILTIN_CONFIGS[name]
    import transformers

    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    cfg = getattr(transformers, cls_name)(**values)
    cfg.name_or_path = source
    return cfg


# --------------------------------------------------------------------------------------------
# What attach would give, before attaching (the LoRAPanel's live count)
# --------------------------------------------------------------------------------------------

def shape_source(model: nn.Module):
    """What to read Linear shapes from: the model's config when it gives the model's own
    Linear modules (llama-family configs are analytic: ~0.3 ms against a few ms for walking
    the modules), else the model. Decided once per model, by comparing the two lists."""
    config = getattr(model, "config", None)
    try:
        if config is not None and linear_modules(config) == linear_modules(model):
            return config
    except Exception:                      # a config lorakit cannot read: use the model
        pass
    return model


def projected_counts(model: nn.Module, settings: LoraSettings | None, *,
                     base: ParamCounts | None = None, source=None) -> ParamCounts:
    """``count_params`` of ``lk.attach(model, settings)``, computed without attaching.

    Trainable: ``lora_param_count`` per target (analytic; fast enough for a slider). Frozen:
    the model's own parameters (for a model already wrapped in place, its frozen part).
    ``by_type`` holds both per module type; ``by_layer`` is empty (the count is per type).
    ``settings=None``: no adapter (nothing trainable). ``base`` (``count_params(model)``) and
    ``source`` (``shape_source(model)``) may be passed in to skip recomputing them.
    """
    base = count_params(model) if base is None else base
    source = shape_source(model) if source is None else source
    adapted = bool(tuner_layers(model))
    frozen = {k: (c.frozen if adapted else c.total) for k, c in base.by_type.items()}
    total_frozen = base.frozen if adapted else base.total
    lora: dict[str, int] = {}
    if settings is not None:   # per module type, as count_params keys it; a trained head too
        plan = plan_targets(source, settings.targets, settings.r)
        for i in plan.modules:
            lora[i.suffix] = lora.get(i.suffix, 0) + lora_layer_params(
                settings.r, i.in_features, i.out_features, settings.variant == "dora")
        for head, n in plan.head_sizes.items():
            lora[module_kind(head)] = lora.get(module_kind(head), 0) + n
    trainable = sum(lora.values())
    return ParamCounts(
        total=total_frozen + trainable, trainable=trainable, frozen=total_frozen,
        by_type={k: TypeCount(lora.get(k, 0), n) for k, n in frozen.items()}, by_layer={})


# --------------------------------------------------------------------------------------------
# Memory budget
# --------------------------------------------------------------------------------------------

def quantized_bytes(d_in: int, d_out: int, quantize: str, double_quant: bool = True) -> int:
    """Bytes bitsandbytes stores for one ``(d_out, d_in)`` weight quantized as ``quantize``.

    nf4 / fp4 (QLoRA §3), n = d_in·d_out, blocksize 64:
        data ⌈n/2⌉ (two 4-bit codes per byte)
        + without double quant: 4·⌈n/64⌉            (one fp32 absmax per block: 0.5 bit/param)
        + with double quant:    ⌈n/64⌉ + 4·⌈⌈n/64⌉/256⌉  (8-bit absmax, fp32 per 256 blocks:
                                                       8/64 + 32/(64·256) = 0.127 bit/param)
    int8 (LLM.int8, Dettmers et al. 2022): n bytes + one fp32 scale per output row (4·d_out).
    Per-matrix constants of a few hundred bytes (the code book, one offset) are left out.
    """
    check_quantize(quantize)
    n = d_in * d_out
    if quantize == "int8":
        return n + 4 * d_out
    blocks = math.ceil(n / 64)
    if double_quant:
        return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256)
    return math.ceil(n / 2) + 4 * blocks


_SETUPS = ("full", "lora", "qlora")


@dataclass(frozen=True)
class Budget:
    """``estimate``'s result: parameter counts, adapter size, training memory in bytes.

    Three set-ups, each split into weights / gradients / optimizer / master (bytes):
      full  — full fine-tuning, mixed precision (ZeRO §3.1): 16-bit weights 2N, 16-bit
              gradients 2N, fp32 master copy 4N, AdamW two fp32 states 8N → 16 B/param.
      lora  — LoRA on a 16-bit base: weights 2N + 4L; the adapter's L parameters are kept in
              fp32 (PEFT's ``autocast_adapter_dtype``), so they are their own master copy
              (master 0); gradients 4L, AdamW 8L.
      qlora — LoRA on a quantized base (``quantize``): the Linear weights inside the blocks
              quantized (``quantized_bytes``), everything else (embeddings, lm_head, norms,
              biases) 16-bit; adapter as for lora.
    Activations (which grow with batch × sequence length) are NOT included
    (``includes_activations`` is False); nor are framework/CUDA overheads.
    """

    name: str                # builtin name, config/model name
    r: int
    targets: tuple[str, ...]
    variant: str
    quantize: str            # format of the qlora row: "nf4" | "fp4" | "int8"
    total_params: int        # base model parameters N, tied weights once
    lora_params: int         # trainable adapter parameters L
    quantized_params: int    # base parameters stored quantized in the qlora row
    full_weights: int
    full_gradients: int
    full_optimizer: int
    full_master: int
    lora_weights: int
    lora_gradients: int
    lora_optimizer: int
    lora_master: int
    qlora_weights: int
    qlora_gradients: int
    qlora_optimizer: int
    qlora_master: int
    includes_activations: bool = field(default=False, metadata={"help": (
        "Activation memory depends on batch size and sequence length and is not estimated.")})

    @property
    def trainable_pct(self) -> float:
        """100 · L / (N + L): the figure PEFT prints after wrapping."""
        return 100.0 * self.lora_params / (self.total_params + self.lora_params)

    @property
    def adapter_mb_fp16(self) -> float:
        """Adapter file size at 2 bytes/param, MB (10^6 bytes)."""
        return 2 * self.lora_params / MB

    @property
    def adapter_mb_fp32(self) -> float:
        return 4 * self.lora_params / MB

    def total_bytes(self, setup: str) -> int:
        """weights + gradients + optimizer + master of ``setup`` ("full" | "lora" | "qlora")."""
        if setup not in _SETUPS:
            raise ValueError(f"setup must be one of {_SETUPS}, got {setup!r}")
        return sum(getattr(self, f"{setup}_{part}")
                   for part in ("weights", "gradients", "optimizer", "master"))

    def rows(self) -> list[dict]:
        """One dict per set-up (bytes), for tables and stacked-bar figures."""
        labels = {"full": "full fine-tuning (16-bit)", "lora": "LoRA (16-bit base)",
                  "qlora": f"{'QLoRA' if self.quantize != 'int8' else 'LoRA'} "
                           f"({self.quantize} base)"}
        trainable = {"full": self.total_params, "lora": self.lora_params,
                     "qlora": self.lora_params}
        return [{"setup": labels[s], "key": s, "trainable": trainable[s],
                 "weights": getattr(self, f"{s}_weights"),
                 "gradients": getattr(self, f"{s}_gradients"),
                 "optimizer": getattr(self, f"{s}_optimizer"),
                 "master": getattr(self, f"{s}_master"), "total": self.total_bytes(s)}
                for s in _SETUPS]

    def __str__(self) -> str:
        mem = ", ".join(f"{row['setup']} {row['total'] / GB:.2f} GB" for row in self.rows())
        return (f"{self.name}: {self.total_params:,} params; LoRA r={self.r} on "
                f"{list(self.targets)} → {self.lora_params:,} trainable "
                f"({self.trainable_pct:.3f}%), adapter {self.adapter_mb_fp16:.1f} MB fp16. "
                f"Memory without activations: {mem}")


def estimate(config_or_name, r: int = 8, targets=None,
             quantize: Quantize | None = None, variant: Variant = "lora", *,
             double_quant: bool = True, target_parameters=None) -> Budget:
    """Parameter counts and training-memory budget for a model, config or built-in name.

    Args:
        config_or_name: a name from ``BUILTIN_CONFIGS``, a ``transformers.PretrainedConfig``,
            or a model (plain or PEFT-wrapped).
        r, targets, variant: the LoRA settings (validated by ``LoraSettings``); ``targets``
            None: the family's default, as ``lk.attach`` picks it (``plan_targets``).
        target_parameters: PEFT's ``target_parameters`` (MoE experts), counted as attach does.
        quantize: format of the quantized base in the third set-up: None (report QLoRA as
            "nf4"), "nf4", "fp4" (4-bit) or "int8".
        double_quant: QLoRA's double quantization of the 4-bit block constants.

    With N base parameters, L = lora_param_count(...), Q = the Linear weights inside the blocks
    (N_Q parameters) quantized to bytes_Q (``quantized_bytes``):
        full:  weights 2N,               gradients 2N, master 4N, optimizer 8N
        lora:  weights 2N + 4L,          gradients 4L, master 0,  optimizer 8L
        qlora: weights bytes_Q + 2(N − N_Q) + 4L, gradients 4L, master 0, optimizer 8L
    Activations are excluded (``Budget.includes_activations`` is False).
    """
    check_quantize(quantize)
    settings = LoraSettings(r=r, targets=targets if targets is not None else ("q_proj",),
                            variant=variant)
    if isinstance(config_or_name, str):
        name, source = config_or_name, builtin_config(config_or_name)
    else:
        source = config_or_name
        cfg = getattr(source, "config", source)
        name = (getattr(cfg, "name_or_path", "") or getattr(cfg, "model_type", "")
                or type(source).__name__)
    linears, head, total = _shapes(source)
    plan = plan_targets(source, None if targets is None else settings.targets, settings.r,
                        target_parameters)
    lora = plan.lora_params(settings.r, settings.variant == "dora")
    fmt = quantize or "nf4"
    quantized = [i for i in linears if i.layer is not None and i is not head]
    n_q = sum(i.in_features * i.out_features for i in quantized)
    q_bytes = sum(quantized_bytes(i.in_features, i.out_features, fmt, double_quant)
                  for i in quantized)
    adapter: dict[str, Any] = {"gradients": 4 * lora, "optimizer": 8 * lora, "master": 0}
    return Budget(
        name=name, r=settings.r, targets=plan.targets, variant=settings.variant,
        quantize=fmt, total_params=total, lora_params=lora, quantized_params=n_q,
        full_weights=2 * total, full_gradients=2 * total, full_optimizer=8 * total,
        full_master=4 * total,
        lora_weights=2 * total + 4 * lora, **{f"lora_{k}": v for k, v in adapter.items()},
        qlora_weights=q_bytes + 2 * (total - n_q) + 4 * lora,
        **{f"qlora_{k}": v for k, v in adapter.items()})


def find_linear(model: nn.Module, module: str) -> tuple[str, nn.Module]:
    """A Linear module by full name, dotted suffix, or short ``layers.N.type`` form."""
    infos = linear_modules(model)
    hits = [i for i in infos if matches_target(i.name, module)]
    if not hits and module.count(".") == 2 and module.startswith("layers."):
        hits = [i for i in infos if short_name(i.name) == module]
    if len(hits) != 1:
        examples = [i.name for i in infos[:3]]
        what = "no" if not hits else f"{len(hits)}"
        raise ValueError(f"{what} Linear module(s) match {module!r}; give one module, e.g. "
                         f"'layers.3.q_proj' or {examples[0]!r}")
    return hits[0].name, model.get_submodule(hits[0].name)
