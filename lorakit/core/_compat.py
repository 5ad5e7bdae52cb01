"""Differences between the supported versions of transformers and PEFT, in one place.

lorakit supports transformers ≥ ``MIN_VERSIONS["transformers"]`` and PEFT ≥
``MIN_VERSIONS["peft"]`` (the floors in pyproject.toml; ``make test-lowest`` runs the tests on
exactly these). What changed between the floors and today's releases, and how lorakit bridges it:

* ``from_pretrained(dtype=...)``: transformers 4.56 renamed ``torch_dtype`` to ``dtype``
  (the old name is deprecated there, the new one a ``TypeError`` before): ``dtype_kwargs``.
* ``use_rslora``: PEFT ≥ 0.14 keeps a per-adapter dict ``layer.use_rslora``; PEFT 0.13 only
  folds it into ``layer.scaling[adapter] = alpha / sqrt(r)``: ``uses_rslora``.
* GGUF conversion of a model with tied embeddings (SmolLM2: no ``output.weight`` tensor in the
  GGUF): transformers 4.x leaves ``tie_word_embeddings`` at the Llama default False and
  initialises ``lm_head`` randomly; ``gguf_ties_embeddings`` tells the loader to tie them.

``check_versions()`` runs at ``import lorakit``; it reads installed versions from package
metadata, so it imports neither transformers nor PEFT.
"""

from __future__ import annotations

import math
import re
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: the lowest versions lorakit is tested with (``make test-lowest``); pyproject.toml says the same
MIN_VERSIONS = {"transformers": "4.46.3", "peft": "0.13.2"}


def _parse(v: str) -> tuple[int, ...]:
    """(major, minor, micro) of a version string; ``4.57.0.dev0`` -> (4, 57, 0), ``5.0.0rc1``
    -> (5, 0, 0)."""
    m = re.match(r"\d+(?:\.\d+){0,2}", v.strip())
    nums = [int(n) for n in m.group().split(".")] if m else []
    return tuple(nums + [0] * (3 - len(nums)))


def installed(name: str) -> str | None:
    """The installed version of ``name`` (distribution name), or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def check_versions(found: dict[str, str | None] | None = None) -> None:
    """Raise ImportError naming the version found and needed if transformers/PEFT are too old.

    ``found`` (for tests) maps a name to its version; default: what is installed.
    """
    for name, need in MIN_VERSIONS.items():
        have = found[name] if found is not None else installed(name)
        if have is None:
            raise ImportError(f"lorakit needs {name}>={need}, which is not installed: "
                              f"pip install '{name}>={need}'")
        if _parse(have) < _parse(need):
            raise ImportError(f"lorakit needs {name}>={need}, found {name} {have}. Upgrade it: "
                              f"pip install -U '{name}>={need}' (then restart the kernel)")


#: 4-/8-bit bitsandbytes weights on the CPU: transformers 4.46 stops with "'frozenset' object
#: has no attribute 'discard'" against bitsandbytes ≥ 0.45's CPU backend; 4.56.2 is tested
CPU_QUANTIZATION_TRANSFORMERS = "4.56.2"


def cpu_quantization_supported() -> bool:
    """Whether the installed transformers loads bitsandbytes-quantized models on the CPU."""
    return transformers_version() >= _parse(CPU_QUANTIZATION_TRANSFORMERS)


def check_cpu_quantization(quantize: str) -> None:
    """ImportError naming found vs needed if ``quantize`` on the CPU needs a newer transformers."""
    if not cpu_quantization_supported():
        need = CPU_QUANTIZATION_TRANSFORMERS
        raise ImportError(
            f"quantize={quantize!r} on the CPU needs transformers>={need}, found transformers "
            f"{installed('transformers')}. Upgrade it (pip install -U 'transformers>={need}') or "
            "load on a CUDA GPU (device='cuda'), or without quantize.")


def transformers_version() -> tuple[int, ...]:
    return _parse(installed("transformers") or "0")


def transformers_major_minor() -> str:
    """``"4.46"``, ``"5.24"``: what the model cache is stamped with."""
    major, minor, _ = transformers_version()
    return f"{major}.{minor}"


def dtype_kwargs(dtype) -> dict:
    """``from_pretrained`` keyword for the weight dtype: ``dtype`` (≥ 4.56) or ``torch_dtype``."""
    return {"dtype": dtype} if transformers_version() >= (4, 56, 0) else {"torch_dtype": dtype}


def uses_rslora(layer, adapter: str) -> bool:
    """Whether PEFT's LoRA ``layer`` scales ``adapter`` by ``alpha / sqrt(r)`` (rsLoRA).

    PEFT ≥ 0.14: ``layer.use_rslora[adapter]``. PEFT 0.13 stores only the resulting
    ``layer.scaling``; rsLoRA is the case where that equals ``alpha / sqrt(r)`` and not
    ``alpha / r`` (at r = 1 both rules agree, and so does the answer).
    """
    flags = getattr(layer, "use_rslora", None)
    if isinstance(flags, dict) and adapter in flags:
        return bool(flags[adapter])
    r, alpha = layer.r[adapter], layer.lora_alpha[adapter]
    scaling = layer.scaling[adapter]
    return r > 1 and math.isclose(scaling, alpha / math.sqrt(r), rel_tol=1e-6)


def gguf_ties_embeddings(path) -> bool:
    """True when the GGUF at ``path`` has token embeddings but no separate output matrix."""
    from gguf import GGUFReader

    names = {t.name for t in GGUFReader(str(path)).tensors}
    return "token_embd.weight" in names and "output.weight" not in names


check_versions()  # at `import lorakit` (its __init__ imports this module first)


def modules_to_save_wrappers() -> tuple[type[torch.nn.Module], ...]:
    """PEFT's wrapper classes of ``modules_to_save`` (a classifier head): PEFT ≥ 0.15 has the
    base class ``AuxiliaryTrainingWrapper``; PEFT 0.13–0.14 only ``ModulesToSaveWrapper``.
    Each keeps the wrapped module as ``original_module``."""
    from peft.utils import other

    names = ("AuxiliaryTrainingWrapper", "ModulesToSaveWrapper")
    return tuple(c for c in (getattr(other, n, None) for n in names) if c is not None)


def set_adapter_frozen(peft_model, name: str) -> None:
    """Make adapter ``name`` active with its weights frozen (for generating or merging).

    Newer PEFT says so with ``set_adapter(name, inference_mode=True)``; older PEFT's
    ``set_adapter`` has no such argument and marks the adapter trainable, so the adapter's own
    parameters are frozen here afterwards (the same ones ``inference_mode`` freezes).
    """
    import inspect

    if "inference_mode" in inspect.signature(peft_model.set_adapter).parameters:
        peft_model.set_adapter(name, inference_mode=True)
        return
    peft_model.set_adapter(name)
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                layers = getattr(module, attr, {})
                if name in layers:
                    layers[name].requires_grad_(False)
        elif isinstance(module, modules_to_save_wrappers()):
            saved = getattr(module, "modules_to_save", {})
            if name in saved:
                saved[name].requires_grad_(False)


def align_eos(tok, eos_token_id) -> None:
    """Make the tokenizer's end-of-sequence token the model's (``config.eos_token_id``).

    transformers 4.46's GGUF tokenizer conversion takes SmolLM2's ``<|im_start|>`` (id 1) as
    the eos token while the model ends a turn with ``<|im_end|>`` (id 2): training labels then
    end with the wrong token and generation never stops. Newer versions agree with the config.
    """
    if isinstance(eos_token_id, list):
        eos_token_id = eos_token_id[0] if eos_token_id else None
    if isinstance(eos_token_id, int) and tok.eos_token_id != eos_token_id:
        tok.eos_token = tok.convert_ids_to_tokens(eos_token_id)
