"""Guards that keep a failure from losing work: checks before any state changes, rollback.

- ``Transaction`` snapshots a model's module tree (every module's children, parameters,
  buffers and plain attributes, one level deep), its ``requires_grad`` flags and optionally
  some weights; on any exception (memory errors and Ctrl-C included) it puts them back, so
  ``attach`` / ``load_adapter`` / ``AdapterBank.add`` either complete or leave the model as
  it was.
- ``available_memory`` / ``check_memory``: refuse an allocation that cannot fit *before*
  trying it (an OOM-killed Jupyter kernel loses everything in it).
- ``probe_writable`` / ``check_writable``: the real test of a target folder (creating a file
  there), not ``os.access``, which says yes to root even on a read-only file system.
- ``literal_ids``: user text tokenized as text, so ``<|im_start|>`` typed by a user is not a
  special token.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn

from .modelkind import base_of
from .naming import adapter_key

_COPIED = (dict, list, set)


class Transaction:
    """``with Transaction(model): ...`` undoes every structural change to ``model`` on error.

    What is restored: for every module reachable from ``model`` at the start, each attribute
    that is a dict / list / set (``_modules``, ``_parameters``, ``_buffers``, PEFT's
    ``peft_config``, ``r``, ``scaling``, ...) gets its old contents back in the same object, and
    attributes added since are removed; every parameter's ``requires_grad``; and the data of
    the parameters named in ``weights`` (for inits that rewrite base weights in place).
    """

    def __init__(self, model: nn.Module, weights=()):
        self.model = model
        self.weights = list(weights)

    def __enter__(self):
        self._modules = []
        for m in self.model.modules():
            saved = {k: (v, type(v)(v) if isinstance(v, _COPIED) else None)
                     for k, v in m.__dict__.items()}
            self._modules.append((m, saved))
        self._grad = [(p, p.requires_grad) for p in self.model.parameters()]
        self._data = [(p, p.detach().clone()) for p in self.weights]
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            return False
        for m, saved in self._modules:
            for k in [k for k in m.__dict__ if k not in saved]:
                del m.__dict__[k]
            for k, (obj, copy) in saved.items():
                if copy is not None:  # the same container object, its old contents
                    obj.clear()
                    if isinstance(obj, list):
                        obj.extend(copy)
                    else:
                        obj.update(copy)
                m.__dict__[k] = obj
        for p, flag in self._grad:
            p.requires_grad_(flag)
        with torch.no_grad():
            for p, data in self._data:
                p.copy_(data)
        return False  # re-raise


# -- files ----------------------------------------------------------------------------------
def kept_mode(path: Path) -> int:
    """The permission bits ``path`` keeps when it is replaced: its own when it exists (a 0600
    file stays 0600), else what a new file gets under the process's umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def temp_prefix(path: Path) -> str:
    """The name prefix of a temporary file or folder written beside ``path``: ``.NAME.PID.``,
    so ``stale_temporaries`` can tell a killed writer's leftovers from a live writer's."""
    return f".{path.name}.{os.getpid()}."


def _running(pid: int | None) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def stale_temporaries(path: Path) -> list[Path]:
    """The temporaries beside ``path`` (``.NAME.PID.XXXX.tmp``, and ``.tmp.old`` for a folder
    moved aside) whose writing process is gone (killed mid-write), newest first. Those of a
    process still running (another save in progress) are not listed."""
    prefix = f".{path.name}."
    found = []
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            if p.name.startswith(prefix) and p.name.endswith((".tmp", ".tmp.old")):
                pid = p.name[len(prefix):].split(".", 1)[0]
                if not _running(int(pid) if pid.isdigit() else None):
                    found.append((p.lstat().st_mtime, p))
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` (str: UTF-8) to a temporary file next to ``path``, then ``os.replace`` it:
    a reader never sees a half-written file, and a failed write leaves the old one. An existing
    file keeps its permission bits. Errors name ``path`` (the user's file), never the temporary
    one."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(missing_folder(path))
    mode = kept_mode(path)
    for stale in stale_temporaries(path):  # what a killed write left
        with contextlib.suppress(OSError):
            stale.unlink()
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise PermissionError(f"cannot write {str(path)!r}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {str(path)!r}: {err.strerror}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def missing_folder(path: Path) -> str:
    """The message for a file whose folder does not exist: the folder and the fix."""
    return (f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist "
            f"(create it first, e.g. os.makedirs({str(path.parent)!r}))")


def writable_file(path) -> Path:
    """``path`` (a file to write) as an absolute Path, or an OSError naming it and the fix:
    a folder in its place, a missing or unwritable folder. Checked before anything is built or
    written, so a bad path leaves nothing behind."""
    p = Path(os.fspath(path)).expanduser().absolute()
    if p.is_dir():
        raise IsADirectoryError(f"cannot write {str(p)!r}: it is a directory; give a file "
                                f"name, e.g. {str(p / 'figure.html')!r}")
    if not p.parent.exists():
        raise FileNotFoundError(missing_folder(p))
    return check_writable(p)


def regular_file(path, what: str = "file") -> Path:
    """``path`` if it is a regular file (symlinks followed); else FileNotFoundError (nothing
    there) or ValueError (a FIFO, socket, device or folder: opening one can block for good)."""
    path = Path(os.fspath(path)).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {str(path)!r}") from None
    except OSError as err:
        raise OSError(err.errno, f"cannot read the {what} {str(path)!r}: {err.strerror}") from err
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)"
                if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise ValueError(f"the {what} {str(path)!r} is {kind}, not a regular file; lorakit "
                         "reads only regular files (reading a pipe or device can block for "
                         "good). Give the path of the real file.")
    return path


def probe_writable(folder: Path) -> None:
    """Create and remove a probe file in ``folder``; the OSError if that fails. The test that
    counts: ``os.access`` says yes to root on a read-only file system."""
    fd, probe = tempfile.mkstemp(prefix=".lorakit-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def check_writable(path, what: str = "file") -> Path:
    """Check that ``path`` (a file or folder to write) can really be created; return it.

    ``probe_writable`` in the nearest existing parent folder. Errors name the user's path.
    """
    path = Path(os.fspath(path)).expanduser()
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write the {what} {str(path)!r}: {str(parent)!r} is "
                                 "not a folder")
    if path.is_dir() and what == "file":
        raise IsADirectoryError(f"cannot write the {what} {str(path)!r}: it is a folder")
    try:
        probe_writable(parent)
    except OSError as err:
        raise PermissionError(
            f"cannot write the {what} {str(path)!r}: the folder {str(parent)!r} is not writable "
            f"({err.strerror}). Choose another folder.") from err
    return path



# -- memory ---------------------------------------------------------------------------------
def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes that can still be allocated on ``device`` (CPU: RAM available, and the address
    space left under ``RLIMIT_AS`` when a limit is set)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    if free is None:
        try:
            import psutil

            free = int(psutil.virtual_memory().available)
        except ImportError:
            free = 1 << 62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1):
        used = 0
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
        free = min(free, max(0, soft - used))
    return free


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def check_memory(need: int, what: str, device=None, *, headroom: float = 0.8) -> None:
    """Raise MemoryError (before allocating) when ``need`` bytes exceed what is available."""
    free = available_memory(device)
    if need > headroom * free:
        raise MemoryError(
            f"{what} would need {format_bytes(need)}, but only {format_bytes(free)} is "
            f"available on {torch.device(device or 'cpu')}; nothing was changed. Use a smaller "
            "rank r or fewer target modules.")


# -- user text ------------------------------------------------------------------------------
def literal_ids(tok, text: str) -> list[int]:
    """Token ids of ``text`` taken literally: special-token strings become ordinary text."""
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def has_special_text(tok, text: str) -> bool:
    """True when ``text`` contains the string of one of the tokenizer's special tokens."""
    return any(s and s in text for s in getattr(tok, "all_special_tokens", ()) or ()) or any(
        t.content in text for t in getattr(tok, "added_tokens_decoder", {}).values()
        if getattr(t, "special", False))


# -- training -------------------------------------------------------------------------------
_busy_lock = threading.Lock()


@contextlib.contextmanager
def exclusive(model: nn.Module, what: str = "training"):
    """One ``what`` per model at a time: a second concurrent one raises RuntimeError."""
    base = base_of(model)
    with _busy_lock:
        if getattr(base, "_lorakit_busy", None):
            raise RuntimeError(
                f"this model is already {base._lorakit_busy} (another lk.train or TrainPanel "
                "run); wait for it to finish or stop it first. Two trainings of one model at "
                "once would corrupt each other's gradients.")
        base._lorakit_busy = what  # type: ignore[assignment]
    try:
        yield
    finally:
        base.__dict__.pop("_lorakit_busy", None)


# -- adapter configs ------------------------------------------------------------------------
def check_adapter_config(config: dict, path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Validate an adapter_config.json (as a dict) before PEFT sees it.

    Checks the types and ranges of r, lora_alpha, lora_dropout and target_modules, and that
    every lora_A tensor has r rows (or the rank ``rank_pattern`` gives its module), naming the
    file and the fix.
    """
    import math
    import numbers

    from .settings import MAX_ALPHA

    where = f"{os.fspath(path)}/adapter_config.json"

    def bad(field: str, why: str):
        return ValueError(f"{where}: {field}={config.get(field)!r} {why}. Fix the file, or save "
                          "the adapter again with lk.save_adapter.")

    r = config.get("r", 8)
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r <= 0:
        raise bad("r", "must be a positive integer (a number, not a string)")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) \
            or not (0 < alpha <= MAX_ALPHA and math.isfinite(alpha)):
        raise bad("lora_alpha", f"must be a finite number in (0, {MAX_ALPHA:g}]")
    dropout = config.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
            or not 0 <= dropout < 1:
        raise bad("lora_dropout", "must be a number in [0, 1)")
    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(t, str) and t for t in targets)):
        raise bad("target_modules", "must be a module name or a list of names")
    patterns = config.get("rank_pattern") or {}
    for key, shape in shapes.items():
        module, part = adapter_key(key)
        if not part.startswith("A.") or len(shape) != 2:
            continue
        want = next((v for k, v in patterns.items() if module.endswith(k)), r)
        if shape[0] != want:
            raise ValueError(
                f"{where} says r={want}, but the weights' {key} has {shape[0]} rows (rank "
                f"{shape[0]}): config and weights do not belong together. Save the adapter "
                "again, or fix r in the config. The model is unchanged.")


