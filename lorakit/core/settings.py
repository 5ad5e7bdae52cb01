"""Settings objects: one flat dataclass per concept, validated on construction.

They are the currency between the layers: ``attach(model, LoraSettings(...))``,
``train(model, tok, task, TrainSettings(...))``, ``Recorder(model, RecordSettings(...))``; the
panels, the tour and the ``lorakit`` command build these objects and pass them on, never their
fields one by one. Each field carries its help text and its check once, in
``field(metadata={"help": ..., "check": ...})``: the widgets' tooltips and the command's flags
(``add_flags``) are generated from them, so documentation, UI and CLI cannot drift apart.
Validation happens in ``__post_init__`` so a bad value is refused before anything else runs.

``LoraSettings.to_peft_config()`` mirrors PEFT's ``LoraConfig`` (peft/tuners/lora/config.py):
``r``, ``lora_alpha``, ``target_modules``, ``lora_dropout``, ``use_rslora``, ``use_dora``,
``init_lora_weights``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, TypeGuard, get_args

Variant = Literal["lora", "rslora", "dora"]
Init = Literal["default", "gaussian", "pissa", "olora"]
Quantize = Literal["nf4", "fp4", "int8"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

VARIANTS: tuple[str, ...] = get_args(Variant)
INITS: tuple[str, ...] = get_args(Init)
QUANTIZE: tuple[str, ...] = get_args(Quantize)
PRECISIONS: tuple[str, ...] = get_args(Precision)

# Our init names -> PEFT's ``init_lora_weights`` values.
_PEFT_INIT: dict[str, bool | Literal["gaussian", "pissa", "olora"]] = {
    "default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


# --------------------------------------------------------------------------- validators
# The one set of value checks lorakit uses: settings dataclasses name one per field
# (``metadata={"check": ...}``), ``check_fields`` runs them in ``__post_init__``, and the CLI
# turns the same rule into an argparse type (add_flags).


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


@dataclass(frozen=True)
class Check:
    """One rule a value must follow: ``check(name, value)`` raises ValueError when it does not.

    ``rule`` reads after the value's name: "steps must be a positive integer, got 0".
    ``none_ok``: None is accepted too (an optional setting).
    """

    rule: str
    ok: Callable[[Any], bool]
    none_ok: bool = False

    def __call__(self, name: str, value) -> None:
        if value is None and self.none_ok:
            return
        if not self.ok(value):
            extra = " or None" if self.none_ok else ""
            raise ValueError(f"{name} {self.rule}{extra}, got {value!r}")

    def or_none(self) -> Check:
        """The same rule, also accepting None."""
        return Check(self.rule, self.ok, none_ok=True)


POSITIVE_INT = Check("must be a positive integer", lambda v: _is_int(v) and v > 0)
NON_NEGATIVE_INT = Check("must be an integer ≥ 0", lambda v: _is_int(v) and v >= 0)
INTEGER = Check("must be an integer", _is_int)
POSITIVE = Check("must be a finite number > 0",
                 lambda v: _is_number(v) and v > 0 and math.isfinite(v))
NON_NEGATIVE = Check("must be a finite number ≥ 0",
                     lambda v: _is_number(v) and v >= 0 and math.isfinite(v))
PROBABILITY = Check("must be in [0, 1)", lambda v: _is_number(v) and 0.0 <= v < 1.0)

MAX_ALPHA = 1e6  # beyond this α/r·B·A overflows float16/float32 activations within steps


def _positive_number(name: str, value, limit: float = float("inf")) -> None:
    POSITIVE(name, value)
    if value > limit:
        raise ValueError(f"{name}={value!r} is too large: at most {limit:g} (larger values "
                         f"overflow the activations and every logit becomes NaN)")


class _FromSettings:
    """The default of a keyword that overrides one field of a settings object."""

    def __repr__(self) -> str:
        return "<from settings>"


# ``attach(model, settings, r=UNSET, ...)``: a keyword left at UNSET takes the settings' value
UNSET: Any = _FromSettings()


def settings_with(cls, settings, **given):
    """``settings`` (an instance of ``cls``; None: ``cls()``) with the ``given`` fields that are
    not ``UNSET`` replaced, checked like a new object. TypeError for another type."""
    if settings is None:
        settings = cls()
    elif not isinstance(settings, cls):
        raise TypeError(f"settings must be a {cls.__name__} (lk.{cls.__name__}(...)), got "
                        f"{type(settings).__name__}")
    changes = {k: v for k, v in given.items() if v is not UNSET}
    return replace(settings, **changes) if changes else settings


def split_fields(given: dict[str, Any], *classes) -> list[dict[str, Any]]:
    """``given`` keywords split by which settings class has that field (the first that does),
    one dict per class; TypeError naming the allowed keywords for any other."""
    owner = {}
    for i, cls in reversed(list(enumerate(classes))):
        owner.update({f.name: i for f in fields(cls)})
    parts: list[dict[str, Any]] = [{} for _ in classes]
    for name, value in given.items():
        if name not in owner:
            raise TypeError(f"unexpected keyword {name!r}; allowed: {', '.join(sorted(owner))}")
        parts[owner[name]][name] = value
    return parts


def parse_names(text: str):
    """Comma-separated module names (``q_proj,v_proj``) as a tuple; one pattern
    (``all-linear``, a regex) stays a string. For the ``--targets`` flag."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise ValueError(
            f"must be comma-separated module names such as q_proj,v_proj; got {text!r}")
    return names[0] if len(names) == 1 and is_pattern(names[0]) else names


def check_fields(settings) -> None:
    """Run every field's ``metadata["check"]`` (labelled by ``metadata["label"]`` or its name),
    then store a checked number as a Python ``int``/``float`` (a numpy scalar such as
    ``np.float32(16)`` would pass the check, then break ``json.dumps`` when the adapter is
    saved)."""
    for f in fields(settings):
        check = f.metadata.get("check")
        value = getattr(settings, f.name)
        if check is not None:
            check(f.metadata.get("label", f.name), value)
        if _is_number(value) and type(value) not in (int, float):
            object.__setattr__(settings, f.name, int(value) if _is_int(value) else float(value))


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

    r: int = field(default=8, metadata={"check": POSITIVE_INT, "label": "r (rank)",
                                        "flags": ("-r", "--r"), "help": (
        "Rank r of the update ΔW = (α/r)·B·A: A is (r, d_in), B is (d_out, r). "
        "Trainable parameters grow linearly with r.")})
    alpha: float = field(default=16, metadata={"check": POSITIVE, "help": (
        "Scale α: the update is multiplied by α/r (or α/√r for rsLoRA). "
        "A common choice is α = 2r.")})
    targets: tuple[str, ...] = field(default=("q_proj", "v_proj"), metadata={
        "parse": parse_names, "metavar": "NAMES", "help": (
        "Names (suffixes) of the Linear modules that get an adapter, e.g. q_proj, v_proj; or "
        "'all-linear' (every Linear but the output head), or one regex string matched against "
        "full module names. lk.find_targets(model) lists the model's real names.")})
    dropout: float = field(default=0.0, metadata={"check": PROBABILITY, "help": (
        "Dropout on the adapter's input during training, in [0, 1). 0 disables it.")})
    variant: Variant = field(default="lora", metadata={"choices": VARIANTS, "help": (
        "lora: scale α/r. rslora: scale α/√r, stable at large r (Kalajdzievski 2023). "
        "dora: weight-decomposed LoRA, adds a magnitude vector per output (Liu et al. 2024).")})
    init: Init = field(default="default", metadata={"choices": INITS, "help": (
        "How A and B start. default: A Kaiming-uniform, B = 0 (output unchanged at step 0). "
        "gaussian: A ~ N(0, 1/r), B = 0. pissa / olora: start from the principal singular "
        "vectors / a QR of W (the base weight is changed to compensate).")})

    def __post_init__(self):
        check_fields(self)
        _positive_number("alpha", self.alpha, MAX_ALPHA)
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
        """The equivalent ``peft.LoraConfig`` (``task_type``: PEFT's, see core/modelkind.py)."""
        from peft import LoraConfig

        extra: dict[str, Any] = ({"target_parameters": list(target_parameters)}
                                 if target_parameters else {})
        return LoraConfig(
            r=int(self.r), lora_dropout=float(self.dropout),
            lora_alpha=self.alpha,  # type: ignore[arg-type]  # PEFT says int; floats work
            target_modules=self.targets if is_pattern(self.targets) else list(self.targets),
            bias="none", task_type=task_type, **extra,
            use_rslora=self.variant == "rslora", use_dora=self.variant == "dora",
            init_lora_weights=_PEFT_INIT[self.init],
        )


_REGEX_CHARS = set("*+?|()[]{}^$\\")


def is_pattern(targets) -> TypeGuard[str]:
    """True for PEFT's string target forms: ``"all-linear"`` or a regex (``.*\\.(q|v)_proj``).

    A plain name such as ``"q_proj"`` or ``"self_attn.q_proj"`` is a one-name list instead.
    """
    return isinstance(targets, str) and (targets.lower() == "all-linear"
                                         or bool(_REGEX_CHARS & set(targets)))


@dataclass(frozen=True)
class TrainSettings:
    """What ``lk.train`` needs besides the model, tokenizer and task (one run's optimizer).

    ``lk.train(model, tok, task, settings)`` runs with these values; the TrainPanel's controls
    and the CLI's flags are built from these fields and their help.
    """

    steps: int = field(default=60, metadata={"check": POSITIVE_INT, "help": (
        "Optimizer steps to train.")})
    lr: float = field(default=2e-3, metadata={"check": POSITIVE, "help": (
        "Peak AdamW learning rate (linear warm-up, then decay to 10%). LoRA usually likes "
        "1e-4 … 3e-3.")})
    batch_size: int = field(default=8, metadata={"check": POSITIVE_INT, "help": (
        "Training examples per optimizer step.")})
    loraplus_ratio: float | None = field(default=None, metadata={
        "check": Check("must be > 0 (LoRA+ suggests 16)", POSITIVE.ok, none_ok=True), "help": (
            "LoRA+ (Hayou et al. 2024): B's learning rate is this multiple of A's (the paper "
            "uses 16). None: one learning rate for both.")})
    weight_decay: float = field(default=0.0, metadata={"check": NON_NEGATIVE, "help": (
        "AdamW weight decay on the adapter's parameters.")})
    max_grad_norm: float | None = field(default=1.0, metadata={
        "check": Check("must be > 0", POSITIVE.ok, none_ok=True), "help": (
            "Clip the gradient's norm to this value before each step. None: no clipping.")})
    warmup: int | None = field(default=None, metadata={
        "check": NON_NEGATIVE_INT.or_none(), "help": (
            "Linear warm-up steps. None: 10% of the steps, at most 10.")})
    seed: int = field(default=0, metadata={"check": INTEGER, "help": (
        "Seed of the data order and dropout (the global random state is left alone).")})
    precision: Precision = field(default="auto", metadata={"choices": PRECISIONS, "help": (
        "Arithmetic of the forward and backward passes. auto: bf16 where the device computes "
        "it fast (a CPU with avx512_bf16 or AMX, a CUDA card with bf16), fp16 with a gradient "
        "scaler on CUDA cards without bf16, fp32 elsewhere. The adapter's weights, the "
        "optimizer state and the loss stay fp32 (autocast).")})

    def __post_init__(self):
        check_fields(self)
        check_choice("precision", self.precision, PRECISIONS)

    @property
    def warmup_steps(self) -> int:
        """``warmup``, or its default: 10% of the steps, at most 10."""
        return min(10, self.steps // 10) if self.warmup is None else self.warmup


def help_text(settings_cls, name: str) -> str:
    """The help text of one field (what widgets show as a tooltip)."""
    for f in fields(settings_cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{settings_cls.__name__} has no field {name!r}")


@dataclass(frozen=True)
class RecordSettings:
    """What ``lk.Recorder`` snapshots, and how much memory it may keep (see core/record.py)."""

    modules: tuple[str, ...] | None = field(default=None, metadata={"help": (
        "Which adapted modules to record. None: layer 0 and the last layer of each adapted "
        "type (e.g. q_proj, v_proj). Names may be full ('model.layers.0.self_attn.q_proj'), "
        "short ('layers.0.q_proj') or a bare type ('q_proj' = every layer of that type).")})
    every: int = field(default=1, metadata={"check": POSITIVE_INT, "help": (
        "Record a snapshot every this many optimizer steps (step 0 and the last step are "
        "always recorded).")})
    max_frames: int = field(default=200, metadata={"check": POSITIVE_INT, "help": (
        "Most snapshots kept. When a new one would exceed it, every other snapshot is dropped "
        "and the stride doubles, so memory stays bounded and the frames stay evenly spaced.")})
    display_size: int = field(default=64, metadata={"check": POSITIVE_INT, "help": (
        "A, B and ΔW are kept block-averaged to at most this many rows/columns (float16) for "
        "heatmaps; norms and singular values are always computed at full size.")})
    top_k: int = field(default=8, metadata={"check": POSITIVE_INT, "help": (
        "How many of ΔW's largest singular values to keep per snapshot (at most r are non-zero).")})
    adapter: str = field(default="default", metadata={"help": (
        "Name of the PEFT adapter to record ('default' unless you added named adapters).")})

    def __post_init__(self):
        check_fields(self)
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be at least 2 (step 0 and the latest step are "
                             f"always kept), got {self.max_frames!r}")
        if not isinstance(self.adapter, str) or not self.adapter:
            raise ValueError(f"adapter must be a non-empty adapter name, got {self.adapter!r}")
        if self.modules is not None:
            modules = (self.modules,) if isinstance(self.modules, str) else tuple(self.modules)
            if not modules or not all(isinstance(m, str) and m for m in modules):
                raise ValueError(
                    f"modules must be None or a non-empty list of module names such as "
                    f"['layers.0.q_proj'], got {self.modules!r}")
            object.__setattr__(self, "modules", modules)


# --------------------------------------------------------------------------- CLI flags


def _flag_type(f):
    """An argparse ``type`` for field ``f``: parse the text, then apply the field's check."""
    import argparse

    parse = f.metadata.get("parse")
    if parse is None:
        kind = str(f.type)
        parse = int if kind.startswith("int") else float if kind.startswith("float") else str
    check = f.metadata.get("check")

    def convert(text: str):
        try:
            value = parse(text)
        except (TypeError, ValueError) as err:
            message = f"{check.rule}, got {text!r}" if check is not None else str(err)
            raise argparse.ArgumentTypeError(message) from None
        if check is not None and not check.ok(value):
            raise argparse.ArgumentTypeError(f"{check.rule}, got {text!r}")
        return value

    convert.__name__ = f.name   # argparse names the type in some messages
    return convert


def add_flags(parser, settings, names=None, prefix: str = "") -> None:
    """Add one ``--flag`` per field of ``settings`` (a settings class or an instance; only the
    fields in ``names`` when given) to an argparse parser.

    The flag is the field name with dashes (``batch_size`` -> ``--batch-size``), unless
    ``metadata["flags"]`` names others; its type applies the field's ``check``, its help is the
    field's help and its default the field's default (an instance's value when ``settings`` is
    one: the tour's 40 steps). Optional metadata: ``choices`` (a tuple, or a function returning
    one), ``parse`` (text -> value), ``metavar``, ``append`` (a repeatable flag collecting a
    list). A field holding a settings object of its own gets no flag: add that object's.
    ``prefix`` goes before each flag and destination (``record_``: ``--record-every``).
    """
    import argparse

    for f in fields(settings):
        if (names is not None and f.name not in names) or f.metadata.get("nested"):
            continue
        meta = f.metadata
        flags = (meta.get("flags") if not prefix else None) or (
            "--" + (prefix + f.name).replace("_", "-"),)
        kwargs: dict[str, Any] = {"dest": prefix + f.name,   # argparse formats help with %
                                  "help": meta.get("help", "").replace("%", "%%")}
        choices = meta.get("choices")
        if choices is not None:
            kwargs["choices"] = choices() if callable(choices) else choices
        else:
            kwargs["type"] = _flag_type(f)
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        if meta.get("append"):
            kwargs.update(action="append", default=argparse.SUPPRESS)
        else:
            default = f.default if isinstance(settings, type) else getattr(settings, f.name)
            kwargs["default"] = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(*flags, **kwargs)


def from_flags(cls, args, prefix: str = "", **extra):
    """A ``cls`` from parsed flags (``add_flags``' destinations; ``extra`` fields added)."""
    given = vars(args)
    values = {f.name: given[prefix + f.name] for f in fields(cls) if prefix + f.name in given}
    return cls(**values, **extra)
