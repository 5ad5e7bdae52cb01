"""Adapter files: save, check and load one LoRA adapter in PEFT's folder format.

Mirrors PEFT (peft/peft_model.py): ``save_adapter`` / ``load_adapter`` ~ ``save_pretrained`` /
``PeftModel.from_pretrained`` and ``PeftModel.load_adapter``: ``adapter_config.json`` +
``adapter_model.safetensors``. ``check_adapter_fits`` reads the file's tensor names and shapes
(without loading the data) and checks them against the model *before* anything is loaded, so
a wrong adapter leaves the model untouched. Merging and serving are lorakit/core/serve.py.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .attach import has_adapter, is_peft, require_peft
from .guards import (
    Transaction,
    check_adapter_config,
    check_writable,
    regular_file,
    stale_temporaries,
    temp_prefix,
)
from .modelkind import base_of
from .naming import adapter_key, matches_target, strip_prefix
from .params import in_out_features
from .quiet import peft_quiet

BASE = "__base__"                      # PEFT's name for "no adapter" (mixed batches, AdapterBank)
CONFIG_NAME = "adapter_config.json"    # = peft.utils.CONFIG_NAME
WEIGHTS_NAME = "adapter_model.safetensors"  # = peft.utils.SAFETENSORS_WEIGHTS_NAME
BIN_WEIGHTS_NAME = "adapter_model.bin"      # older PEFT (torch.save) format
CARD_NAME = "README.md"                # the model card PEFT's save_pretrained writes
# The inits PEFT runs again when it loads an adapter that leave the base weights alone; the
# others (pissa, olora, corda, loftq, ...) rewrite the base layer's weight in place.
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


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
    Unlike ``save_pretrained`` a non-default adapter name does not add a sub-folder. A pissa or
    olora adapter (whose init rewrote the base weights) is saved converted to a plain LoRA of
    rank 2r against the original weights, so loading it never rewrites a base model.

    An existing folder that holds an adapter is replaced only with ``overwrite=True``; a folder
    holding anything else (your notes, data) is never replaced. The files are written to a
    temporary folder next to it which is then renamed into place, so an interrupted or failed
    save never leaves a half-written adapter (nor destroys the one that was there); what a
    killed save left behind is put right by the next save or load.
    """
    require_peft(peft_model, "save_adapter")
    from peft import get_peft_model_state_dict

    name = adapter or peft_model.active_adapter
    if name not in peft_model.peft_config:
        raise ValueError(f"unknown adapter {name!r}; this model has {list(peft_model.peft_config)}")
    path = Path(os.path.abspath(Path(os.fspath(directory)).expanduser()))
    recover_folder(path)
    check_target_folder(path, overwrite)
    check_writable(path, "adapter folder")
    state = get_peft_model_state_dict(peft_model, adapter_name=name, save_embedding_layers=False)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    config = copy.deepcopy(peft_model.peft_config[name])
    config.inference_mode = True
    if config.base_model_name_or_path is None:
        base = base_of(peft_model)
        config.base_model_name_or_path = getattr(base, "name_or_path", None) or None
    if config.init_lora_weights not in PLAIN_INITS:
        state = as_plain_lora(peft_model, name, state, config)
    write_adapter_folder(path, state, config)
    files = (CONFIG_NAME, WEIGHTS_NAME)
    return SavedAdapter(path, sum((path / f).stat().st_size for f in files), files)


def write_adapter_folder(path: Path, state: dict, config) -> None:
    """Write ``state`` and ``config`` as the adapter folder ``path`` (replacing it atomically);
    every failure, safetensors' own errors included, names ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        _write_folder_atomically(path, lambda tmp: (
            save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"}),
            config.save_pretrained(str(tmp))))
    except (OSError, SafetensorError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        kept = "the adapter that was there is unchanged" if path.exists() else "nothing written"
        raise OSError(getattr(err, "errno", None) or errno.EIO,
                      f"could not save the adapter to {path}: {reason} ({kept}). Free some "
                      "space or choose another folder.") from err


def as_plain_lora(peft_model, name: str, state: dict, config) -> dict:
    """``state`` of a pissa/olora adapter as a plain LoRA against the original base weights.

    Such an init moved s·B₀A₀ out of each base weight W (W_res = W − s·B₀A₀); the trained
    adapter gives W_res + s·BA = W + s·[B | −B₀][A ; A₀], a LoRA of rank 2r on W (PEFT's
    ``subtract_mutated_init`` does the same). ``config`` becomes that plain LoRA's: r and α
    doubled (α·√2 for rsLoRA: the same scaling), ``init_lora_weights=True``. The initial A₀,
    B₀ are those ``lk.attach`` kept; without them (an adapter PEFT made) saving is refused.
    """
    init = config.init_lora_weights
    initial = getattr(base_of(peft_model), "_lorakit_state", {}).get("initial_factors") or {}
    if config.use_dora or not initial or name != "default":
        raise ValueError(
            f"adapter {name!r} has init_lora_weights={init!r}, which rewrote the base weights; "
            "saved as it is, loading it would rewrite them again in every model it is loaded "
            "into. lorakit converts it to a plain LoRA only for a non-DoRA adapter attached "
            "with lk.attach(..., init=...). Otherwise save it with PEFT's save_pretrained(..., "
            "path_initial_model_for_weight_conversion=...).")
    out = dict(state)
    for key, tensor in state.items():
        module, part = adapter_key(key)
        if module not in initial or part not in ("A.weight", "B.weight"):
            continue
        a0, b0 = initial[module]
        out[key] = (torch.cat([tensor, a0.to(tensor)], 0) if part == "A.weight"
                    else torch.cat([tensor, -b0.to(tensor)], 1)).contiguous()
    config.init_lora_weights = True
    config.r *= 2
    config.lora_alpha *= 2 ** 0.5 if config.use_rslora else 2
    config.rank_pattern = {k: 2 * v for k, v in (config.rank_pattern or {}).items()}
    config.alpha_pattern = {k: 2 * v for k, v in (config.alpha_pattern or {}).items()}
    return out


def adapter_files(path: Path) -> tuple[list[str], list[str]]:
    """(adapter files, other entries) in the folder ``path``: only the first may be replaced.
    A README.md counts as an adapter file when it is PEFT's model card."""
    ours: list[str] = []
    others: list[str] = []
    for p in sorted(path.iterdir()):
        card = p.name == CARD_NAME and p.is_file() and "library_name: peft" in p.read_text(
            "utf-8", errors="replace")[:4096]
        mine = p.is_file() and (p.name in (CONFIG_NAME, WEIGHTS_NAME, BIN_WEIGHTS_NAME) or card)
        (ours if mine else others).append(p.name + ("" if p.is_file() else "/"))
    return ours, others


def check_target_folder(path: Path, overwrite: bool) -> None:
    """Refuse a target folder save_adapter must not replace: a file, the folder you are in (or
    one above it), a folder with anything but adapter files, an adapter without ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; save_adapter needs a folder path")
    here = Path.cwd()
    if path == here or path in here.parents:
        raise ValueError(f"{path} is the folder you are in (or holds it); save_adapter writes "
                         "a folder of its own: give a new sub-folder, e.g. './adapter'")
    if not path.is_dir() or not any(path.iterdir()):
        return
    ours, others = adapter_files(path)
    if others:
        raise FileExistsError(
            f"{path} holds files that are not adapter files ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}); save_adapter replaces a whole folder, so it "
            "never saves into one holding anything else (overwrite=True does not change that). "
            "Choose a new folder, e.g. a sub-folder 'adapter'.")
    if not overwrite:
        raise FileExistsError(
            f"{path} already holds an adapter ({', '.join(ours)}); save_adapter does not "
            "replace it: pass overwrite=True to replace it, or choose a new folder")


def _write_folder_atomically(path: Path, write) -> None:
    """``write(tmp)`` into a fresh folder beside ``path``, then swap it in: in one step where
    the system can (``exchange``), else by two renames. The temporary names carry this
    process's id, so ``recover_folder`` can tell a killed save's leftovers (a kill between the
    two renames included) from a save still running in another process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
    old = None
    try:
        write(tmp)
        if path.exists() and exchange(tmp, path):
            old = tmp   # now the previous adapter, removed below
        elif path.exists():
            old = path.with_name(f"{tmp.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
        else:
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


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or file system cannot, for the caller to fall back to renames."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover_folder(path: Path) -> list[Path]:
    """Put right what a killed ``save_adapter`` left beside ``path``; return what it touched.

    A kill between the two renames leaves no ``path`` and the previous adapter hidden in
    ``.NAME.PID.XXXX.tmp.old``: it is renamed back. Temporary folders of saves whose process
    is gone are removed. A save still running in another process is left alone.
    """
    if not path.parent.is_dir():
        return []
    leftovers = [p for p in stale_temporaries(path) if p.is_dir()]
    with contextlib.suppress(OSError):
        for p in leftovers:
            if p.name.endswith(".old") and not path.exists():
                os.replace(p, path)
            else:
                shutil.rmtree(p, ignore_errors=True)
    return leftovers


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in an adapter file, read without loading the data."""
    weights = path / WEIGHTS_NAME
    if os.path.lexists(weights):
        from safetensors import safe_open

        regular_file(weights, "adapter weights file")

        try:
            with safe_open(str(weights), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:  # SafetensorError: truncated, corrupt header, not safetensors
            raise ValueError(
                f"{weights} is not a readable safetensors file ({err}). It is probably "
                "truncated or corrupt (an interrupted copy or download): save or copy the "
                "adapter again.") from err
    legacy = path / BIN_WEIGHTS_NAME
    if os.path.lexists(legacy):
        regular_file(legacy, "adapter weights file")
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
    regular_file(path / CONFIG_NAME, "adapter config")
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


def _targeted(config: dict, module: str) -> bool:
    """Whether ``target_modules`` of an adapter config names ``module`` (PEFT's rule: a list
    of names matches the module or a suffix after a dot; one string is a regex matched
    against the whole name; ``all-linear`` and a config without targets match everything)."""
    targets = config.get("target_modules")
    if not targets or config.get("target_parameters") or targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(matches_target(module, t) for t in targets)


def check_config_matches_tensors(config: dict, path: Path, shapes: dict, base: nn.Module) -> None:
    """Refuse what PEFT would half-apply: LoRA tensors for modules outside ``target_modules``
    (PEFT drops them), ``use_dora`` without magnitude vectors (or vectors without it), and
    ``modules_to_save`` naming a module of the model without its tensors."""
    where = f"{path / CONFIG_NAME}"
    parts = [adapter_key(k) for k in shapes]
    modules = list(dict.fromkeys(m for m, part in parts if part))
    outside = [m for m in modules if not _targeted(config, m)]
    if outside:
        raise ValueError(
            f"{where}: target_modules={config.get('target_modules')!r} does not name "
            f"{len(outside)} module(s) the weights have LoRA tensors for, e.g. {outside[0]!r}; "
            "PEFT would drop them silently. Add them to target_modules, or save the adapter "
            "again with lk.save_adapter. The model is unchanged.")
    magnitudes = any(part.startswith("magnitude_vector") for _, part in parts)
    if bool(config.get("use_dora")) != magnitudes:
        has = "has no" if not magnitudes else "has"
        raise ValueError(
            f"{where}: use_dora={bool(config.get('use_dora'))} but the weights {has} DoRA "
            "magnitude vectors (lora_magnitude_vector): config and weights do not belong "
            "together. Save the adapter again with lk.save_adapter. The model is unchanged.")
    plain = [strip_prefix(k) for k, (_, part) in zip(shapes, parts, strict=True) if not part]
    names = [n for n, _ in base.named_modules()]
    for wanted in config.get("modules_to_save") or ():
        present = [n for n in names if matches_target(n, wanted)]
        saved = [k for k in plain if any(k.startswith(n + ".") for n in present)]
        if present and not saved:
            raise ValueError(
                f"{where}: modules_to_save names {wanted!r} ({present[0]!r} in the model), but "
                f"{path / WEIGHTS_NAME} holds no tensors for it: the adapter is incomplete. "
                "Save it again with lk.save_adapter (or save_pretrained). The model is "
                "unchanged.")


def check_plain_init(config: dict, path: Path) -> None:
    """Refuse an init PEFT would re-run on load that rewrites the base weights (pissa, olora,
    corda, loftq, ...): in an AdapterBank it would change the base and every other adapter."""
    init = config.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        raise ValueError(
            f"{path / CONFIG_NAME}: init_lora_weights={init!r}. Loading it, PEFT would run that "
            "init again, rewriting the base model's weights for good (and, in an AdapterBank, "
            "every other adapter's outputs). Convert it to a plain LoRA first: lk.save_adapter "
            "saves pissa/olora adapters converted, and PEFT's save_pretrained(..., "
            "path_initial_model_for_weight_conversion=...) does too. The model is unchanged.")


def check_adapter_fits(model, directory) -> dict[str, tuple[int, ...]]:
    """Check an adapter folder against ``model`` before loading; return its tensor shapes.

    Raises FileNotFoundError (no folder / no adapter_config.json / no weights), ValueError for
    a corrupt weights file or one that is no regular file (a FIFO), for modules the model does
    not have (an adapter for another architecture), for shapes that do not match (naming the
    module and both shapes), for an init PEFT would re-run on the base weights (pissa, olora,
    ...), and for a config its tensors disagree with (``check_config_matches_tensors``).
    """
    path = Path(directory).expanduser()
    config = _read_config(path)
    shapes = _tensor_shapes(path)
    lora = {k: s for k, s in shapes.items() if adapter_key(k)[1]}   # (module, "A.weight")
    if not lora:
        raise ValueError(f"{path} has no LoRA tensors (lora_A / lora_B); found {list(shapes)[:5]}")
    check_adapter_config(config, path, lora)
    check_plain_init(config, path)
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
    check_config_matches_tensors(config, path, shapes, base)
    return shapes


def check_adapter_name(name) -> None:
    """An adapter name PEFT can use as a module key: a non-empty string other than
    ``__base__``, without ``.`` or ``/`` (ValueError naming what is allowed)."""
    if not isinstance(name, str) or not name or name == BASE or "." in name or "/" in name:
        raise ValueError(f"adapter name must be a non-empty string other than {BASE!r}, "
                         f"without '.' or '/' (PEFT uses it as a module key), e.g. 'dates'; "
                         f"got {name!r}")


def load_adapter(model, directory, name: str = "default", *, trainable: bool = False):
    """Load a PEFT-format adapter folder onto ``model`` and return the PeftModel.

    ``model`` is a plain transformers model (a PeftModel is created, like
    ``PeftModel.from_pretrained``) or a PeftModel (the adapter is added under ``name``, like
    ``PeftModel.load_adapter``; the active adapter does not change). Works for folders written
    by ``lk.save_adapter`` and by PEFT's ``save_pretrained``. The folder is checked first
    (``check_adapter_fits``), so a wrong adapter leaves the model untouched. ``trainable=False``
    loads it frozen, for inference.
    """
    check_adapter_name(name)
    if not is_peft(model) and has_adapter(model):
        raise ValueError("this model's layers already carry a LoRA adapter: pass the PeftModel "
                         "(what lk.attach returned) to add another adapter to it")
    if is_peft(model) and name in model.peft_config:
        raise ValueError(f"the model already has an adapter named {name!r} (adapters: "
                         f"{list(model.peft_config)}); choose another name")
    recover_folder(Path(os.path.abspath(Path(directory).expanduser())))
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
