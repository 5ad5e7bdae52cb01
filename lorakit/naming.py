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
``path`` is the whole name. To teach lorakit another block layout (``block.N``, encoder and
decoder stacks), extend ``split_path``: short names, layer indices and the Recorder's default
choice all follow from it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

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
# "blocks.N". The first match in a name wins.
_BLOCK_RE = re.compile(r"^(?:(?P<stack>.*?)\.)??(?P<list>layers|layer|h|blocks)\.(?P<index>\d+)"
                       r"(?:\.(?P<path>.*))?$")


class ModulePath(NamedTuple):
    """Where a module sits: ``stack`` (e.g. "model.layers"), block ``index``, path in block."""

    stack: str | None   # the block list's full name; None outside the blocks
    index: int | None   # the block's index in its list; None outside the blocks
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


# --------------------------------------------------------------------------- finding layers


def tuner_layers(model: nn.Module, lora_only: bool = False) -> list[tuple[str, nn.Module]]:
    """Every layer PEFT wrapped (``BaseTunerLayer``; ``lora_only``: ``LoraLayer``), full names."""
    if lora_only:
        from peft.tuners.lora import LoraLayer as kind
    else:
        from peft.tuners.tuners_utils import BaseTunerLayer as kind

    return [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]


def lora_linears(model: nn.Module, adapter: str = "default") -> dict[str, tuple[str, nn.Module]]:
    """The model's LoRA (Linear) layers for ``adapter``: short name -> (full name, layer).

    Short names are ``layers.{i}.{type}`` (e.g. ``layers.0.q_proj``) inside transformer blocks,
    the full name elsewhere or where two modules would share a short name. Full names have no
    PEFT prefix.
    """
    found = []
    for full, module in model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        if not isinstance(lora_A, nn.ModuleDict) or adapter not in lora_A:
            continue
        if getattr(lora_A[adapter], "weight", None) is None or lora_A[adapter].weight.ndim != 2:
            continue  # embedding / conv adapters keep their factors elsewhere
        if type(module).__name__ == "ParamWrapper":
            continue  # target_parameters (MoE experts): r·E factors, one ΔW per expert
        full = strip_prefix(full)
        found.append((short_name(full), full, module))
    counts: dict[str, int] = {}
    for short, _, _ in found:
        counts[short] = counts.get(short, 0) + 1
    return {(short if counts[short] == 1 else full): (full, m) for short, full, m in found}


def _first_and_last(available: Mapping[str, str]) -> list[str]:
    """Layer 0 and the last layer of each module kind (short name -> full name), model order."""
    chosen = []
    for kind in dict.fromkeys(module_kind(f) for f in available.values()):
        same = [n for n, f in available.items() if module_kind(f) == kind]
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


__all__ = ["ADAPTER_LAYER_NAMES", "ADAPTER_PARAM_PARTS", "PEFT_PREFIX", "ModulePath",
           "adapter_key", "find_layer", "is_adapter_param", "is_lora_B_param", "layer_index",
           "lora_linears", "matches_target", "module_kind", "param_type", "select_layers",
           "short_name", "split_path", "strip_prefix", "tuner_layers"]
