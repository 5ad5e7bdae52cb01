"""Recorder: snapshots of A, B, ΔW, norms and spectra per training step (+ a Trainer callback).

What one snapshot ("frame") of one adapted module holds, for PEFT's LoRA layer
(peft/tuners/lora/layer.py, ``LoraLayer.get_delta_weight``: ΔW = scaling · B @ A):

    A      (r, d_in)       lora_A weight, block-averaged along d_in to ≤ display_size, float16
    B      (d_out, r)      lora_B weight, block-averaged along d_out to ≤ display_size, float16
    delta  (d_out, d_in)   ΔW = s·B·A, block-averaged to ≤ display_size × display_size, float16
    norm_A, norm_B, norm_delta   exact full-size Frobenius norms, float32
    sv     (k,)            the k = min(top_k, r, d_in, d_out) largest singular values of ΔW, float32

``s`` is the adapter's real ``layer.scaling[adapter]`` (α/r, or α/√r for rsLoRA). Nothing of
size d_out × d_in is ever built:

* The block average is separable (``adaptive_avg_pool2d`` uses row windows × column windows), so
  mean_{i∈I, j∈J} (s·B·A)_ij = s · (mean_{i∈I} B_i:) · (mean_{j∈J} A_:j): the ΔW heatmap is the
  product of the block-averaged B and A: (D, r) @ (r, D).
* Spectrum (the standard trick for low-rank products): B = Q_B R_B and Aᵀ = Q_A R_A (reduced QR,
  Q with orthonormal columns), so ΔW = Q_B (s·R_B R_Aᵀ) Q_Aᵀ has the singular values of the r × r
  core s·R_B R_Aᵀ, and ‖ΔW‖_F = ‖s·R_B R_Aᵀ‖_F. Cost O((d_in + d_out)·r²), no SVD of d_out × d_in.

For DoRA adapters the recorded ΔW is the low-rank part s·B·A (the magnitude vector is not in it).

Memory (bounded). With D = display_size and k as above, one frame of one module takes

    2·(r·min(d_in, D) + min(d_out, D)·r + min(d_out, D)·min(d_in, D)) + 4·(3 + k)  bytes

plus 16 bytes per frame for the step and loss. SmolLM2-135M with the default modules (q_proj
576→576 and v_proj 576→192, layers 0 and 29), r = 8, D = 64, k = 8: 2·(512 + 512 + 4096) + 44 =
10,284 B per module; 4 · 10,284 + 16 = 41,152 B (≈ 40 KiB) per frame; 8,230,400 B (≈ 8.2 MB,
7.85 MiB) for the default max_frames = 200 (measured by benchmarks/recorder_overhead.py).
At most ``max_frames`` frames are kept: when one more would exceed it, every other frame is
dropped and the stride doubles, keeping step 0 and the latest frame, so frames stay evenly spaced.

Only the main process records: in a distributed run (``torch.distributed`` initialised, or an
accelerate ``PartialState``) the other ranks' recorders stay empty. Under FSDP (and any scheme
that shards the LoRA factors) every rank must still call the hooks on the same steps: each
recorded step, every rank joins the gather of the recorded modules' full A and B and only
rank 0 keeps the frame (lorakit/core/distributed.py explains which schemes are read and how).

A ``Recording`` is plain tensors plus metadata (no model reference): figures can be rebuilt from
it, and ``save``/``load`` use one safetensors file with the metadata as JSON in its header.
"""

from __future__ import annotations

import json
import math
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import is_main_process, read_factors, wrapped_hint
from .modelkind import base_of
from .naming import block_kinds, layer_numbers, lora_linears, same_module, select_layers
from .settings import UNSET, RecordSettings, settings_with

FORMAT_VERSION = 1  # of the saved file; bump when the layout changes
_META_KEY = "lorakit"


# --------------------------------------------------------------------------- the maths


def block_average(x: torch.Tensor, rows: int | None = None, cols: int | None = None):
    """Block-average a matrix ``x: (m, n)`` to ``(min(m, rows), min(n, cols))``.

    None leaves that dimension alone. Uses ``adaptive_avg_pool1d``'s windows (the same as
    ``adaptive_avg_pool2d``'s per dimension), so for m divisible by ``rows`` each output row is
    the mean of m / rows consecutive input rows.
    """
    if cols is not None and x.shape[1] > cols:
        x = F.adaptive_avg_pool1d(x.unsqueeze(0), cols).squeeze(0)          # (m, cols)
    if rows is not None and x.shape[0] > rows:
        x = F.adaptive_avg_pool1d(x.T.unsqueeze(0), rows).squeeze(0).T      # (rows, n')
    return x


def low_rank_stats(A: torch.Tensor, B: torch.Tensor, scaling: float, top_k: int):
    """Norms and top singular values of ΔW = scaling · B @ A, from the r × r core.

    Args:
        A: (r, d_in), B: (d_out, r), float32 or float64.
    Returns:
        ``(norm_A, norm_B, norm_delta, sv)``: three 0-d tensors and ``sv: (k,)`` descending,
        k = min(top_k, r, d_in, d_out).
    """
    _, R_B = torch.linalg.qr(B)                  # R_B: (min(d_out, r), r)
    _, R_A = torch.linalg.qr(A.T)                # R_A: (min(d_in, r), r)
    core = scaling * (R_B @ R_A.T)               # (min(d_out, r), min(d_in, r)): same σ as ΔW
    sv = torch.linalg.svdvals(core)
    return (torch.linalg.matrix_norm(A), torch.linalg.matrix_norm(B),
            torch.linalg.matrix_norm(core), sv[:top_k])


# --------------------------------------------------------------------------- the recording


@dataclass
class ModuleFrames:
    """All recorded frames of one adapted module (F frames, D = display size)."""

    name: str            # short name, e.g. "layers.0.q_proj"
    full_name: str       # e.g. "model.layers.0.self_attn.q_proj"
    module_type: str     # e.g. "q_proj"
    layer: int | None    # transformer block index, None outside the blocks
    r: int
    alpha: float
    scaling: float       # s in ΔW = s·B·A (α/r, or α/√r for rsLoRA)
    d_in: int
    d_out: int
    A: torch.Tensor           # (F, r, ≤D) float16, block-averaged along d_in
    B: torch.Tensor           # (F, ≤D, r) float16, block-averaged along d_out
    delta: torch.Tensor       # (F, ≤D, ≤D) float16, block-averaged ΔW
    norm_A: torch.Tensor      # (F,) float32, full-size ‖A‖_F
    norm_B: torch.Tensor      # (F,) float32, full-size ‖B‖_F
    norm_delta: torch.Tensor  # (F,) float32, full-size ‖ΔW‖_F
    sv: torch.Tensor          # (F, k) float32, top singular values of ΔW, descending

    _TENSORS = ("A", "B", "delta", "norm_A", "norm_B", "norm_delta", "sv")
    _META = ("name", "full_name", "module_type", "layer", "r", "alpha", "scaling", "d_in", "d_out")

    def __len__(self) -> int:
        return self.A.shape[0]

    def meta(self) -> dict:
        return {k: getattr(self, k) for k in self._META}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self._TENSORS}


@dataclass
class Recording:
    """Recorded snapshots: per-frame ``steps``/``losses`` and one ModuleFrames per module.

    No model reference: plain tensors plus metadata, saved and loaded as one safetensors file.
    ``len(recording)`` is the number of frames F.
    """

    steps: list[int]
    losses: list[float | None]
    data: dict[str, ModuleFrames]         # short name -> frames, in model order
    every: int = 1                         # the stride asked for
    stride: int = 1                        # the stride after thinning (every · 2^thinnings)
    max_frames: int = 200
    display_size: int = 64
    top_k: int = 8
    adapter: str = "default"
    model_name: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)   # free-form metadata, saved as JSON

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def modules(self) -> list[str]:
        """Short names of the recorded modules, e.g. ["layers.0.q_proj", ...]."""
        return list(self.data)

    @property
    def nbytes(self) -> int:
        """Bytes of all stored tensors (plus 16 per frame for step and loss)."""
        return 16 * len(self) + sum(t.nelement() * t.element_size()
                                    for m in self.data.values() for t in m.tensors().values())

    def frames(self, module: str) -> ModuleFrames:
        """The frames of one module, by short (``"layers.0.q_proj"``) or full name."""
        if module in self.data:
            return self.data[module]
        for m in self.data.values():
            if same_module(module, m.full_name):
                return m
        raise KeyError(f"module {module!r} is not in this recording; recorded: {self.modules}")

    def select(self, modules) -> list[str]:
        """Recorded short names matching ``modules`` (names, full names or types), model order.

        Raises ValueError naming the valid choices when one matches nothing.
        """
        if isinstance(modules, str):
            modules = [modules]
        chosen, unknown = set(), []
        for w in modules:
            hits = [n for n, m in self.data.items() if w in (n, m.full_name, m.module_type)]
            chosen.update(hits)
            unknown += [] if hits else [w]
        if unknown:
            types = sorted({m.module_type for m in self.data.values()})
            raise ValueError(f"no recorded module matches {unknown}; valid: {self.modules} "
                             f"or a type {types}")
        return [n for n in self.modules if n in chosen]

    def get(self, module_type: str, layer: int | None = None) -> ModuleFrames:
        """The frames of the module of type ``module_type`` (e.g. "q_proj") in block ``layer``.

        ``layer`` may be left out when only one module of that type was recorded; negative
        values count from the last recorded layer of that type (-1: the last).
        """
        same = [m for m in self.data.values() if m.module_type == module_type]
        if not same:
            types = sorted({m.module_type for m in self.data.values()})
            raise KeyError(f"no {module_type!r} module in this recording; types: {types}")
        if layer is None:
            if len(same) == 1:
                return same[0]
            raise KeyError(f"{len(same)} {module_type!r} modules were recorded (layers "
                           f"{[m.layer for m in same]}); pass layer=")
        if layer < 0:
            layers = sorted(m.layer for m in same if m.layer is not None)
            if -layer <= len(layers):
                layer = layers[layer]
        for m in same:
            if m.layer == layer:
                return m
        raise KeyError(f"no {module_type!r} module in layer {layer}; recorded layers: "
                       f"{[m.layer for m in same]}")

    def __repr__(self) -> str:
        span = f"steps {self.steps[0]}..{self.steps[-1]}" if self.steps else "no steps"
        return (f"Recording({len(self)} frames, {span}, stride {self.stride}, "
                f"modules {self.modules}, {self.nbytes / 1e6:.2f} MB)")

    # ----------------------------------------------------------------- save / load

    def save(self, path) -> Path:
        """Write ONE safetensors file: tensors + JSON metadata in the header. Returns the path.

        Written atomically (a temporary file, then a rename): a failed save keeps the old file,
        and an existing file keeps its permissions. Its folder must exist; ``extra`` must be
        JSON (str, number, bool, None, lists and dicts of them): anything else is named.
        """
        from .guards import writable_file, write_atomic

        path = writable_file(path)  # before the work, naming the user's path
        tensors = {}
        for i, m in enumerate(self.data.values()):
            for k, t in m.tensors().items():
                tensors[f"m{i}.{k}"] = t.detach().cpu().contiguous()
        meta = {
            "format_version": FORMAT_VERSION, "lorakit_version": _lorakit_version(),
            "steps": [int(s) for s in self.steps],
            "losses": [None if v is None else float(v) for v in self.losses],
            "every": self.every, "stride": self.stride, "max_frames": self.max_frames,
            "display_size": self.display_size, "top_k": self.top_k, "adapter": self.adapter,
            "model_name": self.model_name, "extra": self.extra,
            "modules": [m.meta() for m in self.data.values()],
        }
        try:
            header = json.dumps(meta)
        except (TypeError, ValueError) as err:
            raise ValueError(f"cannot save the recording to {str(path)!r}: {_not_json(self.extra)} "
                             f"({err}). Recording.extra holds JSON only: str, int, float, "
                             "bool, None, and lists and dicts of them.") from err
        from safetensors.torch import save

        write_atomic(path, save(tensors, metadata={_META_KEY: header}))
        return path

    @classmethod
    def load(cls, path) -> Recording:
        """Read a file written by ``save`` (safetensors only: no pickle, no code execution).

        Raises FileNotFoundError for a missing file, ValueError for a damaged file, one
        written by a newer lorakit (format version above ``FORMAT_VERSION``), one whose
        tensors do not have the shapes its metadata says (checked before any tensor is read,
        as are the memory they need and the module names), or a path that is not a regular
        file (a FIFO would block for good).
        """
        from safetensors import safe_open

        from .guards import regular_file

        path = regular_file(path, "recording")
        damaged = (f"{str(path)!r} is damaged (truncated or corrupt) or is not a lorakit "
                   f"recording; save it again with Recording.save")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = _read_meta(f.metadata() or {}, path, damaged)
                check_declared(meta, {k: (f.get_slice(k).get_dtype(),
                                          tuple(f.get_slice(k).get_shape())) for k in f.keys()},
                               path, damaged)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (ValueError, MemoryError):
            raise
        except Exception as e:  # safetensors' own errors: header/buffer size mismatches etc.
            raise ValueError(f"{damaged}: {e}") from e
        try:
            steps = [int(s) for s in meta["steps"]]
            data = {}
            for i, mm in enumerate(meta["modules"]):
                kw = {k: tensors[f"m{i}.{k}"] for k in ModuleFrames._TENSORS}
                frames = ModuleFrames(**{k: mm[k] for k in ModuleFrames._META}, **kw)
                data[frames.name] = frames
            return cls(steps=steps, losses=list(meta["losses"]), data=data,
                       every=meta["every"], stride=meta["stride"], max_frames=meta["max_frames"],
                       display_size=meta["display_size"], top_k=meta["top_k"],
                       adapter=meta["adapter"], model_name=meta.get("model_name"),
                       format_version=meta["format_version"], extra=meta.get("extra", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{damaged}: {e!r}") from e


def _not_json(value, where: str = "extra") -> str:
    """Where in ``value`` the first thing ``json.dumps`` cannot write sits, and its type."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return f"{where} has a key of type {type(k).__name__} ({k!r})"
            found = _not_json(v, f"{where}[{k!r}]")
            if found:
                return found
        return ""
    if isinstance(value, (list, tuple)):
        return next((found for i, v in enumerate(value)
                     if (found := _not_json(v, f"{where}[{i}]"))), "")
    if value is None or isinstance(value, (str, int, float, bool)):
        return ""
    return f"{where} is a {type(value).__name__}"


def _read_meta(header: dict, path: Path, damaged: str) -> dict:
    """The lorakit metadata of a recording file's header, its format version checked."""
    if _META_KEY not in header:
        raise ValueError(f"{damaged}: no lorakit metadata in its header")
    meta = json.loads(header[_META_KEY])
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int):
        raise ValueError(f"{damaged}: no format version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written in recording format version {version} (lorakit "
            f"{meta.get('lorakit_version', '?')}); this lorakit ({_lorakit_version()}) reads "
            f"format version {FORMAT_VERSION} and older. Upgrade lorakit to load it.")
    return meta


_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DTYPES = {"A": "F16", "B": "F16", "delta": "F16", "norm_A": "F32", "norm_B": "F32",
           "norm_delta": "F32", "sv": "F32"}


def expected_shapes(mm: dict, frames: int, display_size: int, top_k: int) -> dict:
    """The shape ``save`` gives each tensor of one module, from its metadata ``mm``."""
    r, d_in, d_out = (int(mm[k]) for k in ("r", "d_in", "d_out"))
    cols, rows = min(d_in, display_size), min(d_out, display_size)
    return {"A": (frames, r, cols), "B": (frames, rows, r), "delta": (frames, rows, cols),
            "norm_A": (frames,), "norm_B": (frames,), "norm_delta": (frames,),
            "sv": (frames, min(top_k, r, d_in, d_out))}


def check_declared(meta: dict, declared: dict, path: Path, damaged: str) -> None:
    """Check a recording's declared tensors against its metadata before reading any: the
    names and shapes ``save`` writes, module names that are plain names (no ``/``), frame
    counts that agree, and the memory they need (a crafted header can declare gigabytes)."""
    try:
        frames = len(meta["steps"])
        if len(meta["losses"]) != frames:
            raise ValueError(f"{frames} steps but {len(meta['losses'])} losses")
        want = {}
        for i, mm in enumerate(meta["modules"]):
            for key in ("name", "full_name", "module_type"):
                if not isinstance(mm[key], str) or not _SAFE_NAME.fullmatch(mm[key]):
                    raise ValueError(f"module {key} {mm[key]!r} is not a plain module name "
                                     "(letters, digits, '_', '-', '.')")
            for k, shape in expected_shapes(mm, frames, int(meta["display_size"]),
                                            int(meta["top_k"])).items():
                want[f"m{i}.{k}"] = (_DTYPES[k], shape)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{damaged}: its metadata is not valid ({e})") from e
    if set(declared) != set(want):
        odd = sorted(set(declared) ^ set(want))[:3]
        raise ValueError(f"{damaged}: its tensors are not the ones its metadata lists ({odd})")
    for key, (dtype, shape) in declared.items():
        if (dtype, shape) != want[key]:
            raise ValueError(f"{damaged}: tensor {key} is {dtype} {list(shape)}, but its "
                             f"metadata says {want[key][0]} {list(want[key][1])}")
    need = sum(math.prod(shape) * (2 if dtype == "F16" else 4)
               for dtype, shape in declared.values())
    from .guards import check_memory

    check_memory(need, f"loading the recording {str(path)!r}")
    on_disk = path.stat().st_blocks * 512
    if need > 64 << 20 and 0 < on_disk < need // 16:
        raise ValueError(f"{damaged}: it declares {need:,} bytes of tensors but only "
                         f"{on_disk:,} bytes are on disk (a sparse file)")


def _lorakit_version() -> str:
    return getattr(sys.modules.get("lorakit"), "__version__", "unknown")


# --------------------------------------------------------------------------- the recorder


@dataclass
class _Target:
    """One recorded LoRA layer and its growing lists of per-frame tensors."""

    layer: nn.Module
    name: str
    full_name: str
    module_type: str
    index: int | None
    shape: tuple[int, int, int]                 # (r, d_in, d_out), read before any sharding
    A: list = field(default_factory=list)       # each (r, ≤D) float16
    B: list = field(default_factory=list)       # each (≤D, r) float16
    delta: list = field(default_factory=list)   # each (≤D, ≤D) float16
    stats: list = field(default_factory=list)   # each (3 + k,) float32: ‖A‖, ‖B‖, ‖ΔW‖, σ_1..σ_k


@contextmanager
def _one_thread():
    """Run tiny CPU ops on one thread, restoring the thread count afterwards.

    A frame's matrices are at most d × r, far too small to gain from a thread pool, and every
    parallel region costs a synchronisation. On a busy 2-core machine that made one ``on_step``
    take ~100 ms with 2 threads against ~0.4 ms with 1 (SmolLM2, 4 modules).
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class Recorder:
    """Snapshots of a PEFT model's LoRA factors during training, in bounded memory.

    Args:
        peft_model: a ``PeftModel`` (e.g. from ``lk.attach``).
        settings: a ``RecordSettings`` (None: its defaults); the keywords below change its
            fields (``Recorder(pm, every=5)``).
        modules: None records layer 0 and the last layer of each adapted module type (for
            SmolLM2 with q_proj, v_proj: layers.0.q_proj, layers.0.v_proj, layers.29.q_proj,
            layers.29.v_proj). Otherwise a list of names: full ("model.layers.0.self_attn.q_proj"),
            short ("layers.0.q_proj"), or a bare type ("q_proj") meaning every layer of it.
            A name with no LoRA layer raises ValueError listing the names that have one.
        every, max_frames, display_size, top_k, adapter: see ``RecordSettings`` (help per field).

    Hook protocol (what ``lk.train`` calls; both are cheap and run under ``torch.no_grad()``):
        ``on_step(step, loss)``: step 0 before the first update (loss None), then after every
        optimizer step with that step's loss. Records when ``step % stride == 0`` (stride starts
        at ``every`` and doubles on thinning); the first call always records.
        ``on_end(step, loss)``: records ``step`` if it is not recorded yet (the final state).
        Steps must increase: use a new Recorder for a new run.
    ``recording`` is the ``Recording`` so far (stacked copies);
    ``trainer_callback()`` adapts the hooks to ``transformers.Trainer``.
    """

    def __init__(self, peft_model, settings: RecordSettings | None = None, *,
                 modules=UNSET, every: int = UNSET, max_frames: int = UNSET,
                 display_size: int = UNSET, top_k: int = UNSET, adapter: str = UNSET):
        self.settings = settings_with(RecordSettings, settings, modules=modules, every=every,
                                      max_frames=max_frames, display_size=display_size,
                                      top_k=top_k, adapter=adapter)
        adapter = self.settings.adapter
        available = lora_linears(peft_model, adapter)
        if not available:
            raise ValueError(wrapped_hint(peft_model) or (
                f"this model has no LoRA Linear layers for adapter {adapter!r}; attach one "
                f"first (lk.attach(model, ...))"))
        names = select_layers({n: full for n, (full, _) in available.items()},
                              self.settings.modules)
        fulls = [full for full, _ in available.values()]
        kinds, numbers = block_kinds(fulls), layer_numbers(fulls)  # attn.c_proj ≠ mlp.c_proj
        self._targets = []
        for n in names:
            full, layer = available[n]
            (r, d_in), d_out = (layer.lora_A[adapter].weight.shape,  # type: ignore[union-attr]
                                layer.lora_B[adapter].weight.shape[0])  # type: ignore[union-attr]
            self._targets.append(_Target(layer, n, full, kinds[full], numbers[full],
                                         (int(r), int(d_in), int(d_out))))
        self._model = peft_model  # searched for FSDP1 units when the factors are sharded
        self._keeps: bool | None = None  # False on ranks other than 0 (they keep no frames)
        config = getattr(peft_model, "config", None)
        name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
        if name and Path(name).is_dir():  # a local folder: keep its name, not the user's path
            name = Path(name).name
        self.model_name = name or None
        import weakref

        self._base_ref = weakref.ref(base_of(peft_model))
        self._steps: list[int] = []
        self._losses: list[float | None] = []
        self._stride = self.settings.every
        self._last_seen: tuple[int, float | None] | None = None  # (step, loss)

    def check_model(self, model=None) -> None:
        """Raise ValueError unless the recorded layers are still ``model``'s adapter layers.

        A re-attach (``lk.attach`` again, ``lk.detach``) replaces the LoRA layers; a Recorder
        made before it would go on recording the old, detached ones. ``model`` defaults to the
        model the Recorder was made for.
        """
        base = self._base_ref() if model is None else base_of(model)
        if base is None:  # the model is gone: nothing to compare with
            return
        # by identity, not by name: FSDP1 wraps blocks (names change), the layers stay
        present = {id(m) for m in base.modules()}
        for t in self._targets:
            if id(t.layer) not in present:
                raise ValueError(
                    f"this Recorder records {t.name!r}, which is no longer the model's adapter "
                    "layer (the model was re-attached or detached since the Recorder was made, "
                    "or it belongs to another model). Make a new one: rec = lk.Recorder(pm).")

    # ----------------------------------------------------------------- hooks

    @property
    def modules(self) -> list[str]:
        """Short names of the recorded modules."""
        return [t.name for t in self._targets]

    @property
    def stride(self) -> int:
        """Steps between kept frames now: ``every`` doubled once per thinning."""
        return self._stride

    def on_step(self, step: int, loss: float | None = None) -> None:
        """Record a snapshot if ``step`` is due (step 0 / the first call always is)."""
        self._last_seen = (step, loss)  # on_end(step, None) can still use this step's loss
        if not self._steps or step % self._stride == 0:
            self._record(int(step), loss)

    def on_end(self, step: int, loss: float | None = None) -> None:
        """Make sure the final ``step`` is recorded (called once after the last update).

        A ``loss`` of None falls back to the loss ``on_step`` was given for the same step.
        """
        if loss is None and self._last_seen is not None and self._last_seen[0] == step:
            loss = self._last_seen[1]
        self._record(int(step), loss)

    def _record(self, step: int, loss) -> None:
        # Every rank keeps the step schedule (so all join the same gathers); only rank 0 frames.
        self._keeps = is_main_process()
        if self._steps and step <= self._steps[-1]:
            if step == self._steps[-1]:  # e.g. on_end right after on_step: only fill the loss
                if loss is not None:
                    self._losses[-1] = _as_float(loss)
                return
            raise ValueError(
                f"step {step} comes after step {self._steps[-1]}, already recorded: steps must "
                f"increase. Use a new lk.Recorder for a new training run.")
        self.check_model()
        with torch.no_grad(), _one_thread():
            factors = read_factors(self._model, self._targets, self.settings.adapter, step,
                                   keep=self._keeps)
            # the generator first, so it runs to its end (closing any gather it opened)
            snaps = [self._snapshot(t, *f)
                     for f, t in zip(factors, self._targets, strict=False) if f is not None]
        # An off-grid latest frame (from on_end or thinning) is superseded by the new one.
        if len(self._steps) > 1 and self._steps[-1] % self._stride != 0:
            self._keep(list(range(len(self._steps) - 1)))
        self._steps.append(step)
        self._losses.append(_as_float(loss))
        for t, (a, b, d, s) in zip(self._targets, snaps, strict=False):  # none off rank 0
            t.A.append(a)
            t.B.append(b)
            t.delta.append(d)
            t.stats.append(s)
        while len(self._steps) > self.settings.max_frames:  # thin: keep first, latest, grid
            self._stride *= 2
            last = len(self._steps) - 1
            self._keep([i for i, s in enumerate(self._steps)
                        if i in (0, last) or s % self._stride == 0])

    def _keep(self, idx: list[int]) -> None:
        self._steps = [self._steps[i] for i in idx]
        self._losses = [self._losses[i] for i in idx]
        for t in self._targets:
            for key in ("A", "B", "delta", "stats"):
                lst = getattr(t, key)
                if lst:  # empty on ranks other than 0
                    setattr(t, key, [lst[i] for i in idx])

    def _snapshot(self, t: _Target, A: torch.Tensor, B: torch.Tensor):
        """One frame of one module: pooled A (r, ≤D), B (≤D, r), ΔW (≤D, ≤D); stats (3 + k,).

        ``A`` (r, d_in) and ``B`` (d_out, r) are the full factors (gathered if sharded).
        """
        adapter, D = self.settings.adapter, self.settings.display_size
        s = float(t.layer.scaling[adapter])
        A, B = A.float(), B.float()
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):  # else: an SVD error
            raise ValueError(f"the adapter weights of {t.name!r} are not finite (NaN or inf); "
                             "nothing was recorded for this step. Lower the learning rate.")
        nA, nB, nD, sv = low_rank_stats(A, B, s, self.settings.top_k)
        A_small = block_average(A, cols=D)                      # (r, ≤D)
        B_small = block_average(B, rows=D)                      # (≤D, r)
        delta_small = s * (B_small @ A_small)                   # (≤D, ≤D): block mean of ΔW
        stats = torch.cat([torch.stack([nA, nB, nD]), sv])      # (3 + k,)
        def half(x):  # float16, saturated at its largest finite value rather than inf
            big = torch.finfo(torch.float16).max
            return x.clamp(-big, big).to(device="cpu", dtype=torch.float16, copy=True)
        return (half(A_small), half(B_small), half(delta_small),
                stats.to(device="cpu", dtype=torch.float32, copy=True))

    # ----------------------------------------------------------------- results

    def __len__(self) -> int:
        return 0 if self._keeps is False else len(self._steps)

    @property
    def last_step(self) -> int | None:
        """The latest recorded step (None before the first frame): where a new run continues."""
        return self._steps[-1] if self._steps else None

    @property
    def recording(self) -> Recording:
        """The frames so far as a ``Recording``: new tensors on every read (the recorder keeps
        recording), so keep it in a variable rather than reading it in a loop."""
        data = {}
        for t in self._targets:
            layer, adapter = t.layer, self.settings.adapter
            r, d_in, d_out = t.shape
            k = min(self.settings.top_k, r, d_in, d_out)
            D = self.settings.display_size
            shapes = {"A": (r, min(d_in, D)), "B": (min(d_out, D), r),
                      "delta": (min(d_out, D), min(d_in, D)), "stats": (3 + k,)}
            dtypes = {"A": torch.float16, "B": torch.float16, "delta": torch.float16,
                      "stats": torch.float32}
            stacked = {key: torch.stack(getattr(t, key)) if getattr(t, key)
                       else torch.empty((0, *shapes[key]), dtype=dtypes[key])
                       for key in shapes}
            stats = stacked["stats"]                            # (F, 3 + k)
            data[t.name] = ModuleFrames(
                name=t.name, full_name=t.full_name, module_type=t.module_type, layer=t.index,
                r=int(r), alpha=float(layer.lora_alpha[adapter]),
                scaling=float(layer.scaling[adapter]), d_in=int(d_in), d_out=int(d_out),
                A=stacked["A"], B=stacked["B"], delta=stacked["delta"],
                norm_A=stats[:, 0].clone(), norm_B=stats[:, 1].clone(),
                norm_delta=stats[:, 2].clone(), sv=stats[:, 3:].clone())
        s, held = self.settings, len(self) > 0  # ranks other than 0 hold no frames
        return Recording(steps=list(self._steps) if held else [],
                         losses=list(self._losses) if held else [], data=data,
                         every=s.every, stride=self._stride, max_frames=s.max_frames,
                         display_size=s.display_size, top_k=s.top_k, adapter=s.adapter,
                         model_name=self.model_name)

    def frame_bytes(self) -> int:
        """Bytes one frame takes for all recorded modules (the docstring's formula)."""
        total, D = 16, self.settings.display_size
        for t in self._targets:
            r, d_in, d_out = t.shape
            k = min(self.settings.top_k, r, d_in, d_out)
            a, b = min(d_in, D), min(d_out, D)
            total += 2 * (r * a + b * r + b * a) + 4 * (3 + k)
        return total

    def __repr__(self) -> str:
        return (f"Recorder({len(self)} frames, every={self.settings.every}, stride={self._stride},"
                f" max_frames={self.settings.max_frames}, modules={self.modules})")

    def trainer_callback(self):
        """A ``transformers.TrainerCallback`` driving this recorder from ``Trainer.train()``.

        ``on_train_begin`` records ``state.global_step`` (0 for a fresh run), ``on_step_end``
        calls ``on_step(global_step, loss)`` and ``on_train_end`` calls ``on_end``. The Trainer
        logs the loss after ``on_step_end`` (every ``logging_steps``, averaged over them), so the
        loss of a recorded step is filled in from ``on_log`` when it arrives. Every process calls
        the hooks (under FSDP they all join the gather of the sharded factors); only the main
        process keeps frames.
        """
        from transformers import TrainerCallback

        recorder = self

        def logged_loss(state):
            for entry in reversed(state.log_history):
                if entry.get("step") != state.global_step:
                    break
                if "loss" in entry:
                    return entry["loss"]
            return None

        class RecorderCallback(TrainerCallback):
            """Calls ``Recorder.on_step`` / ``on_end`` (lorakit/core/record.py)."""

            def on_train_begin(self, args, state, control, **kwargs):
                recorder.on_step(state.global_step, None)

            def on_step_end(self, args, state, control, **kwargs):
                recorder.on_step(state.global_step, logged_loss(state))

            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs and "loss" in logs:
                    recorder._fill_loss(state.global_step, logs["loss"])

            def on_train_end(self, args, state, control, **kwargs):
                recorder.on_end(state.global_step, logged_loss(state))

        return RecorderCallback()

    def _fill_loss(self, step: int, loss) -> None:
        """Set the loss of an already-recorded ``step`` (the Trainer logs it after the step)."""
        if self._steps and self._steps[-1] == step:
            self._losses[-1] = _as_float(loss)


def _as_float(loss) -> float | None:
    if loss is None:
        return None
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


__all__ = ["FORMAT_VERSION", "ModuleFrames", "Recorder", "Recording", "block_average",
           "low_rank_stats"]
