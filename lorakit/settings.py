"""Settings objects: one flat dataclass per concept, validated on construction.

Each field carries its help text once, in ``field(metadata={"help": ...})``; the widgets read
it for tooltips, so the documentation and the UI cannot drift apart (DESIGN.md, style 2).
Validation happens in ``__post_init__`` so a bad value is refused before anything else runs.

``LoraSettings.to_peft_config()`` mirrors PEFT's ``LoraConfig`` (peft/tuners/lora/config.py):
``r``, ``lora_alpha``, ``target_modules``, ``lora_dropout``, ``use_rslora``, ``use_dora``,
``init_lora_weights``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields
from typing import Literal, get_args

Variant = Literal["lora", "rslora", "dora"]
Init = Literal["default", "gaussian", "pissa", "olora"]
Quantize = Literal["nf4", "fp4", "int8"]

VARIANTS: tuple[str, ...] = get_args(Variant)
INITS: tuple[str, ...] = get_args(Init)
QUANTIZE: tuple[str, ...] = get_args(Quantize)

# Our init names -> PEFT's ``init_lora_weights`` values.
_PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer (1, 2, 4, 8, ...), got {value!r}")


def _positive_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def check_choice(name: str, value, allowed) -> None:
    """Raise ValueError unless ``value`` is one of ``allowed`` (listing them)."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def check_quantize(value) -> None:
    """``quantize`` is None (full precision) or one of QUANTIZE."""
    if value is not None:
        check_choice("quantize", value, (None, *QUANTIZE))


@dataclass(frozen=True)
class LoraSettings:
    """What ``lk.attach`` needs to build a PEFT ``LoraConfig``."""

    r: int = field(default=8, metadata={"help": (
        "Rank r of the update ΔW = (α/r)·B·A: A is (r, d_in), B is (d_out, r). "
        "Trainable parameters grow linearly with r.")})
    alpha: float = field(default=16, metadata={"help": (
        "Scale α: the update is multiplied by α/r (or α/√r for rsLoRA). "
        "A common choice is α = 2r.")})
    targets: tuple[str, ...] = field(default=("q_proj", "v_proj"), metadata={"help": (
        "Names (suffixes) of the Linear modules that get an adapter, e.g. q_proj, v_proj; or "
        "'all-linear' (every Linear but the output head), or one regex string matched against "
        "full module names. lk.find_targets(model) lists the model's real names.")})
    dropout: float = field(default=0.0, metadata={"help": (
        "Dropout on the adapter's input during training, in [0, 1). 0 disables it.")})
    variant: Variant = field(default="lora", metadata={"help": (
        "lora: scale α/r. rslora: scale α/√r, stable at large r (Kalajdzievski 2023). "
        "dora: weight-decomposed LoRA, adds a magnitude vector per output (Liu et al. 2024).")})
    init: Init = field(default="default", metadata={"help": (
        "How A and B start. default: A Kaiming-uniform, B = 0 (output unchanged at step 0). "
        "gaussian: A ~ N(0, 1/r), B = 0. pissa / olora: start from the principal singular "
        "vectors / a QR of W (the base weight is changed to compensate).")})

    def __post_init__(self):
        _positive_int("r (rank)", self.r)
        _positive_number("alpha", self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        targets = self.targets
        if not is_pattern(targets):
            targets = (targets,) if isinstance(targets, str) else tuple(targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(
                f"targets must be a non-empty list of module names such as ['q_proj', "
                f"'v_proj'], got {self.targets!r}")
        object.__setattr__(self, "targets", targets)
        check_choice("variant", self.variant, VARIANTS)
        check_choice("init", self.init, INITS)

    @property
    def scaling(self) -> float:
        """The factor multiplying B·A: α/r, or α/√r for rsLoRA."""
        return self.alpha / (self.r ** 0.5 if self.variant == "rslora" else self.r)

    def to_peft_config(self, task_type: str | None = "CAUSAL_LM", target_parameters=None):
        """The equivalent ``peft.LoraConfig`` (``task_type``: PEFT's, see lorakit.modelkind)."""
        from peft import LoraConfig

        extra = {"target_parameters": list(target_parameters)} if target_parameters else {}
        return LoraConfig(
            r=int(self.r), lora_alpha=self.alpha, lora_dropout=float(self.dropout),
            target_modules=self.targets if is_pattern(self.targets) else list(self.targets),
            bias="none", task_type=task_type, **extra,
            use_rslora=self.variant == "rslora", use_dora=self.variant == "dora",
            init_lora_weights=_PEFT_INIT[self.init],
        )


_REGEX_CHARS = set("*+?|()[]{}^$\\")


def is_pattern(targets) -> bool:
    """True for PEFT's string target forms: ``"all-linear"`` or a regex (``.*\\.(q|v)_proj``).

    A plain name such as ``"q_proj"`` or ``"self_attn.q_proj"`` is a one-name list instead.
    """
    return isinstance(targets, str) and (targets.lower() == "all-linear"
                                         or bool(_REGEX_CHARS & set(targets)))


def help_text(settings_cls, name: str) -> str:
    """The help text of one field (what widgets show as a tooltip)."""
    for f in fields(settings_cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{settings_cls.__name__} has no field {name!r}")


@dataclass(frozen=True)
class RecordSettings:
    """What ``lk.Recorder`` snapshots, and how much memory it may keep (see lorakit/record.py)."""

    modules: tuple[str, ...] | None = field(default=None, metadata={"help": (
        "Which adapted modules to record. None: layer 0 and the last layer of each adapted "
        "type (e.g. q_proj, v_proj). Names may be full ('model.layers.0.self_attn.q_proj'), "
        "short ('layers.0.q_proj') or a bare type ('q_proj' = every layer of that type).")})
    every: int = field(default=1, metadata={"help": (
        "Record a snapshot every this many optimizer steps (step 0 and the last step are "
        "always recorded).")})
    max_frames: int = field(default=200, metadata={"help": (
        "Most snapshots kept. When a new one would exceed it, every other snapshot is dropped "
        "and the stride doubles, so memory stays bounded and the frames stay evenly spaced.")})
    display_size: int = field(default=64, metadata={"help": (
        "A, B and ΔW are kept block-averaged to at most this many rows/columns (float16) for "
        "heatmaps; norms and singular values are always computed at full size.")})
    top_k: int = field(default=8, metadata={"help": (
        "How many of ΔW's largest singular values to keep per snapshot (at most r are non-zero).")})
    adapter: str = field(default="default", metadata={"help": (
        "Name of the PEFT adapter to record ('default' unless you added named adapters).")})

    def __post_init__(self):
        _positive_int("every", self.every)
        _positive_int("max_frames", self.max_frames)
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be at least 2 (step 0 and the latest step are "
                             f"always kept), got {self.max_frames!r}")
        _positive_int("display_size", self.display_size)
        _positive_int("top_k", self.top_k)
        if not isinstance(self.adapter, str) or not self.adapter:
            raise ValueError(f"adapter must be a non-empty adapter name, got {self.adapter!r}")
        if self.modules is not None:
            modules = (self.modules,) if isinstance(self.modules, str) else tuple(self.modules)
            if not modules or not all(isinstance(m, str) and m for m in modules):
                raise ValueError(
                    f"modules must be None or a non-empty list of module names such as "
                    f"['layers.0.q_proj'], got {self.modules!r}")
            object.__setattr__(self, "modules", modules)
