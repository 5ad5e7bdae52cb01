"""Adapter files: save, check and load one LoRA adapter in PEFT's folder format.

Mirrors PEFT (peft/peft_model.py): ``save_adapter`` / ``load_adapter`` ~ ``save_pretrained`` /
``PeftModel.from_pretrained`` and ``PeftModel.load_adapter``: ``adapter_config.json`` +
``adapter_model.safetensors``. ``check_adapter_fits`` reads the file's tensor names and shapes
(without loading the data) and checks them against the model *before* anything is loaded, so
a wrong adapter leaves the model untouched. Merging and serving are lorakit/core/serve.py.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .attach import has_adapter, is_peft, require_peft
from .guards import Transaction, check_adapter_config, check_writable
from .modelkind import base_of
from .naming import adapter_key
from .params import in_out_features
from .quiet import peft_quiet

BASE = "__base__"                      # PEFT's name for "no adapter" (mixed batches, AdapterBank)
CONFIG_NAME = "adapter_config.json"    # = peft.utils.CONFIG_NAME
WEIGHTS_NAME = "adapter_model.safetensors"  # = peft.utils.SAFETENSORS_WEIGHTS_NAME
BIN_WEIGHTS_NAME = "adapter_model.bin"      # older PEFT (torch.save) format


@dataclass(frozen=True)
class SavedAdapter:
    """What ``save_adapter`` wrote."""

    path: Path
    bytes: int                  # total size of the files on disk
    files: tuple[str, ...]      # file names inside ``path``

    @property
    def megabytes(self) -> float:
        return self.bytes / 1e6

    def __str__(self) -> str:
        return f"{self.path} ({', '.join(self.files)}; {self.megabytes:.2f} MB)"


def save_adapter(peft_model, directory, adapter: str | None = None, *,
                 overwrite: bool = False) -> SavedAdapter:
    """Save one adapter in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

    ``PeftModel.from_pretrained(base, directory)`` and ``lk.load_adapter`` both load it. Only the
    adapter's own tensors are written (A, B, and DoRA's magnitude vector), never the base.
    Unlike ``save_pretrained`` a non-default adapter name does not add a sub-folder.

    An existing non-empty folder is refused unless ``overwrite=True``. The files are written to
    a temporary folder next to it which is then renamed into place, so an interrupted or failed
    save never leaves a half-written adapter (nor destroys the one that was there).
    """
    require_peft(peft_model, "save_adapter")
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    name = adapter or peft_model.active_adapter
    if name not in peft_model.peft_config:
        raise ValueError(f"unknown adapter {name!r}; this model has {list(peft_model.peft_config)}")
    path = Path(directory).expanduser()
    if path.is_file():
        raise ValueError(f"{path} is a file; save_adapter needs a folder path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{path} already exists and holds {sorted(p.name for p in path.iterdir())[:5]}; "
            "save_adapter does not replace it: pass overwrite=True, or choose a new folder")
    check_writable(path, "adapter folder")
    state = get_peft_model_state_dict(peft_model, adapter_name=name, save_embedding_layers=False)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    config = copy.deepcopy(peft_model.peft_config[name])
    config.inference_mode = True
    if config.base_model_name_or_path is None:
        base = base_of(peft_model)
        config.base_model_name_or_path = getattr(base, "name_or_path", None) or None
    files = (CONFIG_NAME, WEIGHTS_NAME)
    try:
        _write_folder_atomically(path, lambda tmp: (
            save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"}),
            config.save_pretrained(str(tmp))))
    except OSError as err:
        raise OSError(f"could not save the adapter to {path}: {err.strerror or err}") from err
    return SavedAdapter(path, sum((path / f).stat().st_size for f in files), files)


def _write_folder_atomically(path: Path, write) -> None:
    """``write(tmp)`` into a fresh folder beside ``path``, then swap it in by renames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        write(tmp)
        if path.exists():
            old = path.with_name(f"{tmp.name}.old")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)  # put the previous adapter back
            old = None
        raise
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in an adapter file, read without loading the data."""
    weights = path / WEIGHTS_NAME
    if weights.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:  # SafetensorError: truncated, corrupt header, not safetensors
            raise ValueError(
                f"{weights} is not a readable safetensors file ({err}). It is probably "
                "truncated or corrupt (an interrupted copy or download): save or copy the "
                "adapter again.") from err
    legacy = path / BIN_WEIGHTS_NAME
    if legacy.exists():
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{legacy} cannot be read ({err}); it is probably truncated or "
                             "corrupt: save or copy the adapter again.") from err
        return {k: tuple(v.shape) for k, v in state.items()}
    raise FileNotFoundError(
        f"no {WEIGHTS_NAME} in {path} (found: {sorted(p.name for p in path.iterdir())}); a PEFT "
        f"adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")


def _adapter_dims(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) an adapter's factors for ``module`` must fit, or None: ``in_out_features``
    of its base layer (also a quantized kernel that only names its ``in_features`` and
    ``out_features``); for an Embedding (num_embeddings, embedding_dim), as its
    lora_embedding_A: (r, num) and B: (dim, r) read them."""
    if hasattr(module, "get_base_layer"):
        module = module.get_base_layer()
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    dims = in_out_features(module)
    if dims is None and hasattr(module, "in_features") and hasattr(module, "out_features"):
        dims = int(module.in_features), int(module.out_features)  # type: ignore[arg-type]
    return dims


def _read_config(path: Path) -> dict:
    """The folder's adapter_config.json as a dict; it must exist and be a LoRA config."""
    if not path.is_dir():
        raise FileNotFoundError(f"no adapter folder at {path}")
    if not (path / CONFIG_NAME).exists():
        raise FileNotFoundError(
            f"no {CONFIG_NAME} in {path} (found: {sorted(p.name for p in path.iterdir())}). A "
            f"PEFT adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}; save one with "
            "lk.save_adapter(peft_model, folder) or peft_model.save_pretrained(folder).")
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / CONFIG_NAME} is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path / CONFIG_NAME} holds a {type(config).__name__}, not the "
                         "JSON object of a PEFT adapter config")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ValueError(f"{path} holds a {config.get('peft_type')!r} adapter; lorakit loads "
                         "LoRA adapters (peft_type 'LORA')")
    return config


def check_adapter_fits(model, directory) -> dict[str, tuple[int, ...]]:
    """Check an adapter folder against ``model`` before loading; return its tensor shapes.

    Raises FileNotFoundError (no folder / no adapter_config.json / no weights), ValueError for
    a corrupt weights file, for modules the model does not have (an adapter for another
    architecture) and for shapes that do not match (naming the module and both shapes).
    """
    path = Path(directory).expanduser()
    config = _read_config(path)
    shapes = _tensor_shapes(path)
    lora = {k: s for k, s in shapes.items() if adapter_key(k)[1]}   # (module, "A.weight")
    if not lora:
        raise ValueError(f"{path} has no LoRA tensors (lora_A / lora_B); found {list(shapes)[:5]}")
    check_adapter_config(config, path, lora)

    base = base_of(model)
    modules = dict(base.named_modules())
    missing, mismatched = [], []
    for key, shape in lora.items():
        module_name, part = adapter_key(key)
        module = modules.get(module_name)
        if module is None:
            missing.append(module_name)
            continue
        dims = _adapter_dims(module)
        if dims is None:
            continue
        d_in, d_out = dims
        want = {"A.weight": (1, d_in, "d_in"), "B.weight": (0, d_out, "d_out"),
                "embedding_A": (1, d_in, "num_embeddings"),
                "embedding_B": (0, d_out, "embedding_dim"),
                "magnitude_vector": (0, d_out, "d_out"),
                "magnitude_vector.weight": (0, d_out, "d_out")}.get(part)
        if want and (len(shape) <= want[0] or shape[want[0]] != want[1]):
            mismatched.append((module_name, type(module).__name__, d_out, d_in, part, shape,
                               want[2]))
    if missing:
        names = list(dict.fromkeys(missing))
        from .attach import find_targets

        raise ValueError(
            f"this adapter does not fit the model: it has weights for {len(names)} module(s) the "
            f"model does not have, e.g. {names[0]!r}. It was trained for another architecture "
            f"(target_modules={config.get('target_modules')}, base model "
            f"{config.get('base_model_name_or_path')!r}). This model's Linear modules: "
            f"{find_targets(base).names}")
    if mismatched:
        name, kind, d_out, d_in, part, shape, dim = mismatched[0]
        raise ValueError(
            f"this adapter does not fit the model: module {name!r} is {kind} with weight shape "
            f"(d_out, d_in) = ({d_out}, {d_in}) here, but the adapter's lora_{part} has shape "
            f"{shape}, which needs a different {dim}. The adapter was trained on a model with "
            f"other layer sizes ({len(mismatched)} tensor(s) do not fit; base model "
            f"{config.get('base_model_name_or_path')!r}).")
    return shapes


def load_adapter(model, directory, name: str = "default", *, trainable: bool = False):
    """Load a PEFT-format adapter folder onto ``model`` and return the PeftModel.

    ``model`` is a plain transformers model (a PeftModel is created, like
    ``PeftModel.from_pretrained``) or a PeftModel (the adapter is added under ``name``, like
    ``PeftModel.load_adapter``; the active adapter does not change). Works for folders written
    by ``lk.save_adapter`` and by PEFT's ``save_pretrained``. The folder is checked first
    (``check_adapter_fits``), so a wrong adapter leaves the model untouched. ``trainable=False``
    loads it frozen, for inference.
    """
    if not isinstance(name, str) or not name or name == BASE:
        raise ValueError(f"adapter name must be a non-empty string other than {BASE!r}, "
                         f"got {name!r}")
    if not is_peft(model) and has_adapter(model):
        raise ValueError("this model's layers already carry a LoRA adapter: pass the PeftModel "
                         "(what lk.attach returned) to add another adapter to it")
    if is_peft(model) and name in model.peft_config:
        raise ValueError(f"the model already has an adapter named {name!r} (adapters: "
                         f"{list(model.peft_config)}); choose another name")
    check_adapter_fits(model, directory)
    path = str(Path(directory).expanduser())
    from peft import PeftModel

    # PEFT compares base_model_name_or_path with the model's and warns on any difference
    # (e.g. two cache folders of the same model); the shapes were checked above.
    # A failure half-way leaves the model as it was (Transaction rolls back).
    with Transaction(model), peft_quiet(".*base model.*"):
        if is_peft(model):
            model.load_adapter(path, adapter_name=name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=trainable)
