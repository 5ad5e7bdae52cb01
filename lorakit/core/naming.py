"""LoRA-layer discovery and naming: the one place that knows how PEFT names things.

Every other module asks here for: the PEFT prefix (``base_model.model.``) and how to strip it,
which transformer block a module sits in (``split_path``), the short names lorakit shows
(``layers.3.q_proj``), which wrapped layers a model has (``tuner_layers``, ``lora_linears``),
how a user's name picks layers (``select_layers``, ``find_layer``) and which parameter names
belong to an adapter rather than the base model (``ADAPTER_LAYER_NAMES``, in the spirit of
PEFT's ``LoraLayer.adapter_layer_names``, peft/tuners/lora/layer.py).

Names, for SmolLM2 (Llama) with an adapter attached::

    base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight
    └── PEFT_PREFIX ─┘└ stack ─────┘│└ path in block ┘└ adapter parameter ┘
                                     index

``split_path("model.layers.3.self_attn.q_proj")`` gives ``ModulePath(stack="model.layers",
index=3, path="self_attn.q_proj")``; outside the blocks ``stack`` and ``index`` are None and
``path`` is the whole name. ``split_path`` knows ``layers.N``, ``layer.N``, ``h.N``, ``block.N``, ``blocks.N`` and ALBERT's
``albert_layer_groups.N`` (its shared layers, numbered by group);
a model with several stacks (T5's encoder and decoder) gets ``encoder.layers.N`` /
``decoder.layers.N`` short names and distinct block numbers (``layer_numbers``), and modules
that share a last name part inside one block are told apart by their path (``block_kinds``:
GPT-2's ``attn.c_proj`` and ``mlp.c_proj``). Short names, layer numbers and the Recorder's
default choice all follow from these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from torch import nn

PEFT_PREFIX = "base_model.model."   # what PeftModel.named_modules() puts before base names

# PEFT's LoraLayer.adapter_layer_names: the sub-modules holding an adapter's weights.
ADAPTER_LAYER_NAMES: tuple[str, ...] = (
    "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
# Name parts of the sub-modules PEFT adds around a base layer (not modules of the base model).
WRAPPER_PARTS = frozenset({*ADAPTER_LAYER_NAMES, "lora_dropout", "base_layer"})
# Name parts that mark a parameter as the adapter's (left out of the base model's count).
ADAPTER_PARAM_PARTS = frozenset({*ADAPTER_LAYER_NAMES, "modules_to_save"})
# Name parts skipped when naming the module type a parameter belongs to.
TYPE_SKIP_PARTS = WRAPPER_PARTS | {"original_module", "modules_to_save"}

# The lists of transformer blocks: "layers.N" (Llama), "layer.N" (BERT), "h.N" (GPT-2),
# "block.N" (T5: "encoder.block.N", "decoder.block.N"), "blocks.N", ALBERT's shared
# "albert_layer_groups.N". The first match in a name wins (T5's "block.0.layer.1.…" is block 0;
# "layer.1" is inside it).
_BLOCK_RE = re.compile(
    r"^(?:(?P<stack>.*?)\.)??(?P<list>layers|layer|h|blocks|block|albert_layer_groups)"
    r"\.(?P<index>\d+)"
    r"(?:\.(?P<path>.*))?$")


class ModulePath(NamedTuple):
    """Where a module sits: ``stack`` (e.g. "model.layers"), block ``index``, path in block."""

    stack: str | None   # the block list's full name; None outside the blocks
    # the block's index in its list; None outside the blocks (the field shadows tuple.index)
    index: int | None  # type: ignore[assignment]
    path: str           # the name inside the block ("self_attn.q_proj"), or the whole name


def strip_prefix(name: str) -> str:
    """A module or parameter name without PEFT's ``base_model.model.`` prefix."""
    return name.removeprefix(PEFT_PREFIX)


def split_path(name: str) -> ModulePath:
    """(stack, block index, path in block) of a module name; PEFT's prefix is stripped first."""
    name = strip_prefix(name)
    m = _BLOCK_RE.match(name)
    if m is None:
        return ModulePath(None, None, name)
    stack = f"{m['stack']}.{m['list']}" if m["stack"] else m["list"]
    return ModulePath(stack, int(m["index"]), m["path"] or "")


def layer_index(name: str) -> int | None:
    """The transformer block a module or parameter belongs to (None outside the blocks)."""
    return split_path(name).index


def module_kind(name: str) -> str:
    """The last component of a module name: ``q_proj``, what ``target_modules`` names."""
    return name.rsplit(".", 1)[-1]


def short_name(name: str) -> str:
    """``layers.{i}.{kind}`` inside a block, else the full name (prefix stripped)."""
    name = strip_prefix(name)
    index = layer_index(name)
    return f"layers.{index}.{module_kind(name)}" if index is not None else name


def layer_numbers(names: Iterable[str]) -> dict[str, int | None]:
    """Block numbers that stay distinct across stacks: stacks are numbered in model order
    (T5: encoder blocks 0..L-1, then decoder blocks L..2L-1); one stack: the block index.
    Keys are the names without PEFT's prefix."""
    paths = {strip_prefix(n): split_path(n) for n in names}
    sizes: dict[str, int] = {}
    for p in paths.values():
        if p.stack is not None and p.index is not None:  # both set inside a block
            sizes[p.stack] = max(sizes.get(p.stack, 0), p.index + 1)
    offsets, total = {}, 0
    for stack, size in sizes.items():
        offsets[stack], total = total, total + size
    return {n: None if p.stack is None or p.index is None else offsets[p.stack] + p.index
            for n, p in paths.items()}


def _suffix(path: str, k: int) -> str:
    return ".".join(path.split(".")[-k:])


def block_kinds(names: Iterable[str]) -> dict[str, str]:
    """Each module's kind: its path inside the block, cut to the fewest trailing parts that tell
    apart the modules of one block. ``q_proj`` for Llama; GPT-2's two ``c_proj`` become
    ``attn.c_proj`` and ``mlp.c_proj``; T5's decoder ``q`` become ``SelfAttention.q`` and
    ``EncDecAttention.q`` (and so does the encoder's, to keep one kind per role)."""
    paths = {strip_prefix(n): split_path(n) for n in names}
    blocks: dict[tuple, dict[str, list[str]]] = {}
    for p in paths.values():
        key = (p.stack, p.index) if p.stack is not None else (None, p.path)
        blocks.setdefault(key, {}).setdefault(module_kind(p.path), []).append(p.path)
    depth: dict[str, int] = {}
    for by_kind in blocks.values():
        for kind, block_paths in by_kind.items():
            unique = set(block_paths)
            k = 1
            while len({_suffix(q, k) for q in unique}) < len(unique):
                k += 1
            depth[kind] = max(depth.get(kind, 1), k)
    return {n: _suffix(p.path, depth[module_kind(p.path)]) for n, p in paths.items()}


def _stack_labels(stacks: list[str]) -> dict[str, str]:
    """"layers" for a single stack; "encoder.layers" / "decoder.layers" (else the stack's full
    name) when a model has several."""
    if len(stacks) <= 1:
        return dict.fromkeys(stacks, "layers")
    labels = {}
    for stack in stacks:
        parts = stack.split(".")
        role = next((r for r in ("encoder", "decoder") if r in parts), None)
        labels[stack] = f"{role}.layers" if role else stack
    if len(set(labels.values())) < len(labels):
        return {s: s for s in stacks}
    return labels


def short_names(names: Iterable[str]) -> dict[str, str]:
    """Short names for a set of modules: ``{stack}.{i}.{kind}`` inside blocks (``layers.0.q_proj``;
    ``layers.0.attn.c_proj``; ``decoder.layers.1.EncDecAttention.q``), else the full name."""
    names = [strip_prefix(n) for n in names]
    kinds = block_kinds(names)
    paths = {n: split_path(n) for n in names}
    labels = _stack_labels(list(dict.fromkeys(p.stack for p in paths.values()
                                              if p.stack is not None)))
    return {n: n if p.stack is None else f"{labels[p.stack]}.{p.index}.{kinds[n]}"
            for n, p in paths.items()}


def matches_target(name: str, target: str) -> bool:
    """PEFT's rule for one string of a target_modules list: the full name or a dotted suffix."""
    return name == target or name.endswith("." + target)


def is_adapter_param(name: str) -> bool:
    """True for an adapter's own parameter (A, B, embedding factors, DoRA's magnitude, ...)."""
    return not ADAPTER_PARAM_PARTS.isdisjoint(name.split("."))


def is_lora_B_param(name: str) -> bool:
    """True for a ``lora_B`` parameter (LoRA+ gives B its own learning rate)."""
    return "lora_B" in name.split(".")


def param_type(name: str) -> str:
    """Module type of a parameter: "….q_proj.lora_A.default.weight" -> "q_proj"."""
    parts = name.split(".")
    cut = next((i for i, p in enumerate(parts) if p in TYPE_SKIP_PARTS), len(parts) - 1)
    return parts[cut - 1] if cut > 0 else parts[-1]


def adapter_key(key: str) -> tuple[str, str]:
    """Split an adapter file's tensor name into (module name, part after ``lora_``).

    ``"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"`` ->
    ``("model.layers.0.self_attn.q_proj", "A.weight")``.
    """
    module, _, part = strip_prefix(key).partition(".lora_")
    return module, part


# --------------------------------------------------------------------------- PEFT's defaults

# PEFT's PeftModelForSequenceClassification / ...ForTokenClassification add these to
# ``modules_to_save`` (peft/peft_model.py ``classifier_module_names``); every module whose name
# *ends with* one of them (a plain ``str.endswith``, peft/utils/other.py ``_set_trainable``) is
# then trained in full: DistilBERT's ``pre_classifier`` as well as its ``classifier``.
CLASSIFIER_HEAD_NAMES = ("classifier", "score")


def trained_heads(names: Iterable[str]) -> list[str]:
    """The modules PEFT trains in full for a classifier (``modules_to_save``), outermost only,
    from a model's module names (PEFT's prefix stripped)."""
    heads: list[str] = []
    for name in names:
        name = strip_prefix(name)
        if name.endswith(CLASSIFIER_HEAD_NAMES) and not any(
                name.startswith(h + ".") for h in heads):
            heads.append(name)
    return heads


def in_modules(name: str, modules: Iterable[str]) -> bool:
    """True when module ``name`` is one of ``modules`` or sits inside one."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def peft_target_lists() -> dict[str, list[str]]:
    """PEFT's per-architecture LoRA defaults, model type -> target names, read from PEFT
    (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``, peft/utils/constants.py)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as found

    return {k: list(v) for k, v in found.items() if not isinstance(v, str)}


def default_targets(model_type: str | None, suffixes: Iterable[str]) -> tuple[Any, str]:
    """The targets to use when none are given, and why: ``(targets, reason)``.

    1. PEFT's own default for ``model_type`` (what ``get_peft_model`` picks without
       ``target_modules``), when the model has all of those modules;
    2. else the first of PEFT's per-family lists whose modules this model all has, most common
       list first (``q_proj, v_proj``; ``query, value``; ``query_key_value``; ...);
    3. else ``"all-linear"`` (every Linear but the output head), PEFT's own catch-all.

    ``suffixes``: the last name parts of the model's Linear modules (``find_targets``' names).
    """
    have = set(suffixes)
    lists = peft_target_lists()
    own = lists.get(model_type or "")
    if own and set(own) <= have:
        return tuple(own), f"PEFT's default for model_type {model_type!r}"
    counts: dict[tuple[str, ...], int] = {}
    for found in lists.values():
        counts[tuple(found)] = counts.get(tuple(found), 0) + 1
    for names in sorted(counts, key=lambda n: -counts[n]):
        if set(names) <= have:
            why = ("PEFT has no default for model_type " if own is None else
                   "this model lacks PEFT's default for model_type ")
            return names, (f"{why}{model_type!r}; the most common of PEFT's per-family "
                           f"lists that this model has")
    return "all-linear", (f"no PEFT per-family list fits model_type {model_type!r}: every "
                          "Linear module but the output head")


# --------------------------------------------------------------------------- finding layers


def tuner_layers(model: nn.Module, lora_only: bool = False) -> list[tuple[str, nn.Module]]:
    """Every layer PEFT wrapped (``BaseTunerLayer``; ``lora_only``: ``LoraLayer``), full names.

    The one layer finder: every other view of a model's adapter layers (``lora_linears``,
    ``find_layer``) is built on it.
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

    kind: type[Any] = LoraLayer if lora_only else BaseTunerLayer
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]


def lora_linears(model: nn.Module, adapter: str = "default") -> dict[str, tuple[str, nn.Module]]:
    """The model's LoRA (Linear) layers for ``adapter``: short name -> (full name, layer).

    The ``tuner_layers(model, lora_only=True)`` that hold ``adapter`` as 2-D A and B factors
    (embedding, conv and ``target_parameters`` layers left out). Short names are
    ``layers.{i}.{type}`` (e.g. ``layers.0.q_proj``) inside transformer blocks, the full name
    elsewhere or where two modules would share a short name. Full names have no PEFT prefix.
    """
    found = []
    for full, module in tuner_layers(model, lora_only=True):
        lora_A = getattr(module, "lora_A", None)
        if not isinstance(lora_A, nn.ModuleDict) or adapter not in lora_A:
            continue
        if getattr(lora_A[adapter], "weight", None) is None or lora_A[adapter].weight.ndim != 2:
            continue  # embedding / conv adapters keep their factors elsewhere
        if type(module).__name__ == "ParamWrapper":
            continue  # target_parameters (MoE experts): r·E factors, one ΔW per expert
        found.append((strip_prefix(full), module))
    shorts = short_names(full for full, _ in found)
    named = [(shorts[full], full, module) for full, module in found]
    counts: dict[str, int] = {}
    for short, _, _ in named:
        counts[short] = counts.get(short, 0) + 1
    return {(short if counts[short] == 1 else full): (full, m) for short, full, m in named}


def _first_and_last(available: Mapping[str, str]) -> list[str]:
    """The first and the last block of each module kind (``block_kinds``: ``attn.c_proj`` and
    ``mlp.c_proj`` are two kinds) in each stack (T5's encoder and decoder), model order."""
    kinds = block_kinds(available.values())
    role = {n: (split_path(f).stack, kinds[strip_prefix(f)]) for n, f in available.items()}
    chosen = []
    for key in dict.fromkeys(role.values()):
        same = [n for n in available if role[n] == key]
        blocks = [n for n in same if layer_index(available[n]) is not None] or same
        chosen += [min(blocks, key=lambda n: layer_index(available[n]) or 0),
                   max(blocks, key=lambda n: layer_index(available[n]) or 0)]
    return [n for n in available if n in chosen]  # model order, no duplicates


def select_layers(available: Mapping[str, str], wanted: Iterable[str] | None) -> list[str]:
    """Short names picked by ``wanted`` from ``available`` (short name -> full name).

    None: layer 0 and the last layer of each kind. Otherwise each wanted name is a short name,
    a full name (with or without PEFT's prefix) or a dotted suffix of one, e.g. a bare kind
    ("q_proj": every layer of it). Raises ValueError listing the names when one matches nothing.
    """
    if wanted is None:
        return _first_and_last(available)

    def matches(name: str, w: str) -> bool:
        full = available[name]
        return w == name or strip_prefix(w) == full or full.endswith("." + w) \
            or name.endswith("." + w)

    chosen, unknown = set(), []
    for w in wanted:
        hits = [n for n in available if matches(n, w)]
        if not hits:
            unknown.append(w)
        chosen.update(hits)
    if unknown:
        kinds = list(dict.fromkeys(module_kind(f) for f in available.values()))
        raise ValueError(
            f"no LoRA layer matches {unknown}. Recordable names (short form, or just the type "
            f"for every layer: {kinds}): {list(available)}")
    return [n for n in available if n in chosen]


def find_layer(model: nn.Module, name: str, adapter: str = "default") -> nn.Module:
    """The one LoRA layer called ``name``: short (``layers.3.q_proj``), full or a unique suffix."""
    layers = lora_linears(model, adapter)
    if not layers:
        raise ValueError(f"the model has no LoRA layers for adapter {adapter!r}")
    if name in layers:
        return layers[name][1]
    wanted = strip_prefix(name)
    hits = [m for full, m in layers.values() if matches_target(full, wanted)]
    if len(hits) == 1:
        return hits[0]
    some = list(layers)[:4]
    if not hits:
        raise ValueError(f"no LoRA module named {name!r}; names look like {some} "
                         f"({len(layers)} in all)")
    raise ValueError(f"{name!r} matches {len(hits)} LoRA modules; use a full name such "
                     f"as {some[0]!r}")


def same_module(name: str, full_name: str) -> bool:
    """True when ``name`` is ``full_name``, with or without PEFT's prefix."""
    return strip_prefix(name) == full_name


__all__ = ["ADAPTER_LAYER_NAMES", "ADAPTER_PARAM_PARTS", "CLASSIFIER_HEAD_NAMES", "PEFT_PREFIX",
           "ModulePath", "adapter_key", "default_targets", "in_modules", "peft_target_lists",
           "trained_heads", "block_kinds", "layer_numbers", "short_names",
           "find_layer", "is_adapter_param", "is_lora_B_param", "layer_index",
           "lora_linears", "matches_target", "module_kind", "param_type", "select_layers",
           "short_name", "split_path", "strip_prefix", "tuner_layers"]
