"""Attaching LoRA to a model through PEFT: discover targets, attach, re-attach, detach.

Mirrors ``peft.get_peft_model`` / ``PeftModel.unload`` (peft/tuners/lora/model.py), adding
what a learner needs: the model's real module names when a target is wrong, validation before
anything changes, and a ``detach`` that gives the base model back exactly as it was.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from .guards import Transaction, check_memory, format_bytes
from .modelkind import base_of, peft_task_type
from .naming import WRAPPER_PARTS, matches_target, split_path, strip_prefix, tuner_layers
from .params import (
    LinearInfo,
    linear_modules,
    linears_and_head,
    lora_layer_params,
    plan_targets,
    targeted,
)
from .quiet import peft_quiet
from .settings import UNSET, Init, LoraSettings, Variant, is_pattern, settings_with


@dataclass(frozen=True)
class TargetInfo:
    """One row of ``find_targets``: all Linear modules sharing a name suffix."""

    suffix: str                            # e.g. "q_proj"
    count: int                             # how many modules have this suffix
    shapes: tuple[tuple[int, int], ...]    # distinct (d_in, d_out), in model order
    weights: int                           # base weight parameters in these modules

    @property
    def in_features(self) -> int:
        return self.shapes[0][0]

    @property
    def out_features(self) -> int:
        return self.shapes[0][1]


class TargetTable(tuple):
    """``find_targets``' result: a tuple of TargetInfo that prints as a table, and the default
    targets (``default``: ``(targets, why)``)."""

    default: tuple = (None, "")

    @property
    def names(self) -> list[str]:
        return [t.suffix for t in self]

    def __getitem__(self, key):
        if isinstance(key, str):
            for t in self:
                if t.suffix == key:
                    return t
            raise KeyError(f"no Linear module named {key!r}; the model has {self.names}")
        return super().__getitem__(key)

    def _rows(self):
        for t in self:
            shapes = ", ".join(f"{i}→{o}" for i, o in t.shapes)
            yield t.suffix, str(t.count), shapes, f"{t.weights:,}"

    def __repr__(self) -> str:
        head = ("module", "count", "d_in→d_out", "weights")
        rows = [head, *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join([*lines, self._default_line()])

    def _default_line(self) -> str:
        targets, why = self.default
        return f"default targets (lk.attach without targets): {targets!r} ({why})"

    def _repr_html_(self) -> str:
        from html import escape

        cells = "".join(
            "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in self._rows())
        return ("<table><tr><th>module</th><th>count</th><th>d_in→d_out</th><th>weights</th>"
                f"</tr>{cells}</table><p>{escape(self._default_line())}</p>")


def find_targets(model: nn.Module) -> TargetTable:
    """The Linear modules LoRA can target, grouped by name suffix (q_proj, ..., down_proj).

    The table's ``default`` is ``(targets, why)``: what ``lk.attach(model)`` without targets
    adapts (PEFT's per-architecture default, else the fallback in ``naming.default_targets``)."""
    groups: dict[str, list[LinearInfo]] = defaultdict(list)
    for info in linear_modules(model):
        groups[info.suffix].append(info)
    rows = []
    for suffix, infos in groups.items():
        shapes = tuple(dict.fromkeys((i.in_features, i.out_features) for i in infos))
        weights = sum(i.in_features * i.out_features for i in infos)
        rows.append(TargetInfo(suffix, len(infos), shapes, weights))
    table = TargetTable(rows)
    try:
        plan = plan_targets(model)
        table.default = (plan.targets, plan.why)
    except ValueError:   # nothing a default could adapt
        table.default = (None, "no Linear module to adapt")
    return table


def check_targets(model: nn.Module, targets) -> dict[str, int]:
    """Validate target names against the model; return how many modules each one matches.

    Raises ValueError when no target matches a Linear module (listing the model's real names)
    or when a target names a module that is not Linear; warns naming targets that match nothing
    while others do.
    """
    infos = linear_modules(model, include_output=True)  # PEFT can wrap lm_head if named
    if is_pattern(targets):
        return {targets: _check_pattern(model, targets)}
    hits = {t: sum(matches_target(i.name, t) for i in infos) for t in targets}
    names = ", ".join(find_targets(model).names) or "(none)"
    others = {strip_prefix(n): type(m).__name__
              for n, m in model.named_modules()}
    for t, n in hits.items():
        if n == 0:
            _check_expert_name(model, t)
            kinds = Counter(kind for name, kind in others.items() if name and matches_target(name, t))
            if kinds:
                kind = kinds.most_common(1)[0][0]
                raise ValueError(
                    f"target {t!r} names {sum(kinds.values())} module(s) of type {kind}, not "
                    f"Linear; LoRA here wraps Linear layers. Linear modules in this model: "
                    f"{names}")
    missing = [t for t, n in hits.items() if n == 0]
    if len(missing) == len(hits):
        default = find_targets(model).default[0]
        hint = (f" Leave targets out for this family's default, {default!r}."
                if default is not None else "")
        raise ValueError(
            f"no Linear module matches targets {list(targets)}. "
            f"This model's Linear modules are: {names}.{hint}")
    if missing:
        warnings.warn(
            f"targets {missing} match no module and are ignored; matched: "
            f"{[t for t in targets if hits[t]]}. This model's Linear modules are: {names}",
            stacklevel=3)
    return hits


# The names people know MoE expert weights by: Mixtral's old w1/w2/w3, the experts block, and
# the fused expert weights of transformers ≥ 5 (parameters, which only target_parameters reaches).
MOE_NAMES = frozenset({"w1", "w2", "w3", "experts", "gate_up_proj", "down_proj", "up_proj",
                       "gate_proj"})


def _check_expert_name(model: nn.Module, target: str) -> None:
    """A ValueError saying exactly what to pass when ``target`` names MoE experts that are
    parameters here (not Linear modules): ``target_parameters=[...]``."""
    experts = [p for p, shape in find_target_parameters(model).items() if len(shape) == 3]
    if not experts:
        return
    parts = {part for p in experts for part in p.split(".")}
    if target.split(".")[-1] in MOE_NAMES or target in parts:
        raise ValueError(
            f"target {target!r} names MoE expert weights; in this model the experts are "
            f"3-D parameters, not Linear modules, so LoRA reaches them through PEFT's "
            f"target_parameters: lk.attach(model, target_parameters={experts!r}) (one or more "
            "of them; lk.find_target_parameters(model) lists them), with targets for the "
            "attention, e.g. targets=['q_proj', 'v_proj']")


def _check_pattern(model: nn.Module, targets: str) -> int:
    """How many modules ``"all-linear"`` or a regex picks; ValueError if none."""
    infos, head = linears_and_head(model)
    hit = targeted(infos, targets, head)
    if hit:
        return len(hit)
    if targets.lower() == "all-linear":
        only = f" (its only Linear is the output head {head.name!r})" if head else ""
        raise ValueError(f"targets='all-linear' finds no Linear module in this model{only}; "
                         "PEFT leaves the output head out. Name the modules to adapt instead.")
    examples = ", ".join(repr(i.name) for i in infos[:4]) or "(none)"
    raise ValueError(f"the regex targets {targets!r} match no Linear module (PEFT matches the "
                     f"whole module name, re.fullmatch). Real names look like: {examples}; "
                     f"suffixes: {', '.join(find_targets(model).names) or '(none)'}")


def find_target_parameters(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Weights inside the blocks that are not Linear modules, by their path in the block: what
    PEFT's ``target_parameters`` can adapt (Mixtral's ``mlp.experts.gate_up_proj``
    ``(E, 2·I, d)``, its router ``mlp.gate.weight``). Norms and biases are left out."""
    linear = {i.name for i in linear_modules(model, include_output=True)}
    found: dict[str, tuple[int, ...]] = {}
    for name, p in model.named_parameters():
        name = strip_prefix(name)
        module, _, last = name.rpartition(".")
        path = split_path(name)
        if (path.index is None or module in linear or p.ndim < 2 or "norm" in name
                or not set(name.split(".")).isdisjoint(WRAPPER_PARTS)):
            continue
        found.setdefault(path.path, tuple(p.shape))
    return found


def check_target_parameters(model: nn.Module, names) -> list[str]:
    """Validate PEFT ``target_parameters`` (e.g. MoE experts' ``mlp.experts.gate_up_proj``).

    Each name must match the end of a parameter's name; ValueError lists what
    ``find_target_parameters`` offers (the weights only ``target_parameters`` can reach).
    """
    names = [names] if isinstance(names, str) else list(names)
    params = [n for n, _ in model.named_parameters()]
    missing = [t for t in names if not isinstance(t, str) or not any(
        n == t or n.endswith("." + t) for n in params)]
    if missing:
        offer = list(find_target_parameters(model))
        raise ValueError(f"target_parameters {missing} match no parameter of this model; "
                         f"weights outside Linear modules: {offer or '(none)'}")
    return names


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def require_peft(model, what: str) -> None:
    """Raise TypeError unless ``model`` is a PeftModel (``what`` names the caller)."""
    if not is_peft(model):
        raise TypeError(f"{what} expects a PeftModel (from lk.attach or lk.load_adapter), got "
                        f"{type(model).__name__}")


def has_adapter(model: nn.Module) -> bool:
    """True for a PeftModel, and for a base model whose layers PEFT has wrapped in place."""
    return is_peft(model) or bool(tuner_layers(model))


def attach(model: nn.Module, settings: LoraSettings | None = None, *, r: int = UNSET,
           alpha: float = UNSET, targets=UNSET, dropout: float = UNSET, variant: Variant = UNSET,
           init: Init = UNSET, replace: bool = True, seed: int | None = None,
           allow_large_r: bool = False, task_type: str | None = "auto", target_parameters=None):
    """Attach a fresh LoRA adapter through PEFT and return the ``PeftModel`` (base frozen).

    ``attach(model, lk.LoraSettings(r=16, alpha=32))`` and ``attach(model, r=16, alpha=32)``
    are the same call: the keywords build (or change fields of) the ``LoraSettings``.

    Args:
        model: a transformers model, a PeftModel from an earlier ``attach``, or the base model
            variable of one (PEFT wraps layers in place, so re-running a notebook cell
            ``pm = lk.attach(model, ...)`` passes a model that already has an adapter).
        settings: a ``LoraSettings``; None: its defaults (r=8, alpha=16), with the targets
            of the model's family (below).
        r, alpha, targets, dropout, variant, init: fields of ``settings`` to set (help text
            per field in ``LoraSettings``); left out, the settings' value. ``targets`` None
            (or left out with no ``settings``): the family's default, PEFT's own where it has
            one (``find_targets(model).default`` says which and why). ``"all-linear"``: PEFT's
            set, every Linear but the output head; a classifier's head trains in full
            (``modules_to_save``), modules too small for r are left out with a warning.
        replace: when ``model`` already has an adapter, True removes it first (the base model
            is reused, not reloaded); False raises instead.
        seed: makes A's random init reproducible without touching the global RNG.
        allow_large_r: permit r > min(d_in, d_out) of a targeted module (refused by default:
            the update cannot have that rank there, and the memory is wasted).
        task_type: PEFT's task type; "auto" picks it from the model (``modelkind``): CAUSAL_LM,
            SEQ_CLS / TOKEN_CLS (the classification head becomes trainable through PEFT's
            ``modules_to_save`` and is counted by ``count_params``), SEQ_2_SEQ_LM,
            FEATURE_EXTRACTION, or None (a plain PeftModel, e.g. a vision backbone).
        target_parameters: PEFT's ``target_parameters``, for weights that are parameters
            rather than Linear modules, e.g. Mixtral's ``["mlp.experts.gate_up_proj"]``.

    Everything is validated before the model is changed: a bad value leaves it as it was.
    The adapter's memory is estimated first and refused if it cannot fit; and any failure
    while attaching (a memory error included) rolls the model back to exactly its old state,
    with its old adapter if it had one.
    """
    default = targets is None or (settings is None and targets is UNSET)
    settings = settings_with(LoraSettings, settings, r=r, alpha=alpha,
                             targets=UNSET if targets is None else targets,
                             dropout=dropout, variant=variant, init=init)
    # Checked before PEFT is even imported: a refusal is immediate.
    base = base_of(model)
    settings, peft_config, hits = _prepare(base, settings, default, allow_large_r, task_type,
                                           target_parameters)
    if has_adapter(base) and not replace:
        raise ValueError("this model already has a LoRA adapter; pass replace=True to "
                         "swap it for the new settings, or lk.detach(model) first")
    from peft import get_peft_model

    rewrites = settings.init in ("pissa", "olora")  # these rewrite the base weights
    old = getattr(base, "_lorakit_state", {}).get("saved_weights", {})
    rewritten = [base.get_submodule(n).weight for n in old]
    rewritten += [base.get_submodule(i.name).weight for i in hits] if rewrites else []
    with Transaction(model, weights=rewritten):  # all or nothing, the old adapter included
        if has_adapter(base):
            base = detach(model)
        requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
        saved = ({i.name: base.get_submodule(i.name).weight.detach().clone() for i in hits}
                 if rewrites else {})  # the originals, put back by detach
        with torch.random.fork_rng(devices=[]), peft_quiet():
            if seed is not None:
                torch.manual_seed(seed)
            peft_model = get_peft_model(base, peft_config)
        # Kept on the base model, which both the PeftModel and the user's variable reach.
        base._lorakit_state = {"settings": settings, "requires_grad": requires_grad,  # type: ignore[assignment]
                               "saved_weights": saved, "initial_factors": _initial(base, saved)}
    return peft_model


def _initial(base: nn.Module, saved: dict) -> dict:
    """The initial (A₀, B₀) of each layer whose base weight the init rewrote (``saved``):
    what ``save_adapter`` needs to save a pissa/olora adapter as a plain LoRA."""
    params = dict(base.named_parameters())
    return {n: (params[f"{n}.lora_A.default.weight"].detach().clone(),
                params[f"{n}.lora_B.default.weight"].detach().clone()) for n in saved}


def _prepare(base: nn.Module, settings: LoraSettings, default: bool, allow_large_r: bool,
             task_type, target_parameters):
    """``attach``'s checks, before anything changes: ``(settings, PEFT config, wrapped
    modules)``, the settings with the default targets filled in when ``default``."""
    if not default:
        check_targets(base, settings.targets)
    if target_parameters is not None:
        target_parameters = check_target_parameters(base, target_parameters)
    if task_type == "auto":
        task_type = peft_task_type(base)
    plan = plan_targets(base, None if default else settings.targets, settings.r,
                        target_parameters, task_type, settings.alpha)
    if default:
        settings = dataclasses.replace(settings, targets=plan.targets)
    hits = list(plan.modules)
    check_rank_and_memory(base, settings, allow_large_r, hits)
    if plan.skipped:
        warnings.warn(
            f"targets={plan.targets!r} leaves out {len(plan.skipped)} module(s) too small for "
            f"r={settings.r} (r > min(d_in, d_out)), e.g. {_shape_of(plan.skipped[0])}; the "
            "others get LoRA", stacklevel=3)
    # "all-linear" is given to PEFT as the modules it resolved to (heads and small ones out)
    peft_settings = (dataclasses.replace(settings, targets=tuple(plan.names))
                     if is_pattern(plan.targets) and plan.targets.lower() == "all-linear"
                     else settings)
    config = peft_settings.to_peft_config(task_type, list(plan.target_parameters) or None)
    config.rank_pattern = {**(config.rank_pattern or {}), **plan.rank_pattern}
    config.alpha_pattern = {**(config.alpha_pattern or {}), **plan.alpha_pattern}
    if any(type(base.get_submodule(i.name)).__name__ == "Conv1D" for i in hits):
        config.fan_in_fan_out = True  # GPT-2's Conv1D stores W as (d_in, d_out); PEFT would warn
    return settings, config, hits


def _shape_of(info: LinearInfo) -> str:
    return f"{info.name} ({info.in_features}→{info.out_features})"


def max_rank(linears) -> int:
    """The highest rank ΔW can have on every one of ``linears`` (``LinearInfo``s): the smallest
    min(d_in, d_out)."""
    return min(min(i.in_features, i.out_features) for i in linears)


def rank_too_large(r: int, linears) -> list[LinearInfo]:
    """The modules of ``linears`` where ΔW cannot reach rank ``r`` (r > min(d_in, d_out)): the
    modules ``attach`` refuses r for (unless ``allow_large_r``), as does the LoRAPanel."""
    return [i for i in linears if r > max_rank([i])]


def check_rank_and_memory(base: nn.Module, settings: LoraSettings, allow_large_r: bool,
                           hits: list[LinearInfo] | None = None) -> None:
    """Refuse r > min(d_in, d_out) (unless allowed) and an adapter that cannot fit in memory,
    both before anything is allocated; the messages give the adapter's size. ``hits``: the
    targeted Linear layers (found from ``settings.targets`` when not given)."""
    if hits is None:
        infos, head = linears_and_head(base)
        hits = targeted(infos, settings.targets, head)
    if not hits:
        return
    weight = next(base.parameters(), None)
    dtype = weight.dtype if weight is not None and weight.is_floating_point() else torch.float32
    size = torch.finfo(dtype).bits // 8
    # A and B, with room for DoRA's magnitude vector; PEFT's init needs a temporary copy.
    need = sum(lora_layer_params(settings.r, i.in_features, i.out_features, dora=True)
               for i in hits)
    need = need * size * 2
    too_big = [f"{i.name} ({i.in_features}→{i.out_features})"
               for i in rank_too_large(settings.r, hits)]
    if too_big and not allow_large_r:
        low = max_rank(hits)
        raise ValueError(
            f"r={settings.r} exceeds min(d_in, d_out) of {len(too_big)} targeted module(s), "
            f"e.g. {too_big[0]}: the update cannot have that rank there, and the adapter would "
            f"need about {format_bytes(need)} of memory. Use r ≤ {low} (or pass "
            "allow_large_r=True to attach it anyway). The model is unchanged.")
    if too_big:
        warnings.warn(f"r={settings.r} exceeds min(d_in, d_out) of {len(too_big)} module(s), "
                      f"e.g. {too_big[0]}: the update cannot have that rank there.", stacklevel=3)
    device = weight.device if weight is not None else None
    check_memory(need, f"a LoRA adapter with r={settings.r} on {len(hits)} module(s)", device)


def settings_of(model) -> LoraSettings | None:
    """The LoraSettings ``attach`` used, or None for a model lorakit did not attach."""
    base = base_of(model)
    return getattr(base, "_lorakit_state", {}).get("settings")


def detach(model) -> nn.Module:
    """Remove the adapter (without merging) and return the base model exactly as before attach.

    Takes the PeftModel or its base model variable. Outputs are bit-identical to the model
    before ``attach``; ``requires_grad`` flags are restored, and for pissa/olora inits the
    original base weights are put back.
    """
    if not has_adapter(model):
        raise ValueError("detach expects a model with a LoRA adapter (from lk.attach); this "
                         "model has no LoRA adapter")
    base = base_of(model)
    layers = tuner_layers(base)
    if any(getattr(m, "merged", False) for _, m in layers):
        raise ValueError("this adapter is merged into the base weights; unmerge it first "
                         "(peft_model.unmerge_adapter()) or keep the merged model")
    from ._compat import modules_to_save_wrappers

    outer = [(n, m) for n, m in layers  # nested wrappers (several target_parameters of one
             if not any(n.startswith(o + ".") for o, _ in layers)]  # module): the outermost
    originals = [(n, m.get_base_layer()) for n, m in outer] + [
        (n, m.original_module) for n, m in base.named_modules()
        if isinstance(m, modules_to_save_wrappers())]  # modules_to_save (a classifier head)
    saved = base.__dict__.get("_lorakit_state", {}).get("saved_weights", {})
    # all or nothing: a failure or a Ctrl-C half-way leaves the model as before the call
    with Transaction(base, weights=[base.get_submodule(n).weight for n in saved]):
        for name, original in originals:  # put each wrapped module's original back in place
            parent, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent) if parent else base, child, original)
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in base.__dict__:
                delattr(base, attr)
        info = base.__dict__.pop("_lorakit_state", {})
        with torch.no_grad():
            for name, weight in info.get("saved_weights", {}).items():
                base.get_submodule(name).weight.copy_(weight)
        for name, p in base.named_parameters():
            p.requires_grad_(info.get("requires_grad", {}).get(name, True))
    return base


def attach_adalora(model: nn.Module, r: int = 8, alpha: float = 16, targets=("q_proj", "v_proj"),
                   *, total_step: int, init_r: int | None = None, tinit: int = 0,
                   tfinal: int = 0, seed: int | None = None):
    """Attach an AdaLoRA adapter (Zhang et al. 2023) through PEFT's ``AdaLoraConfig``.

    AdaLoRA writes the update as P·Λ·Q (an SVD form) starting at rank ``init_r`` (default
    1.5·r) and prunes singular values during training down to an average rank ``r``; the budget
    schedule needs the number of training steps, ``total_step``. ``lk.train`` recognises the
    adapter and calls PEFT's ``update_and_allocate`` after every optimizer step.
    """
    settings = LoraSettings(r=r, alpha=alpha, targets=targets)  # the same validation
    if not isinstance(total_step, int) or total_step <= tinit + tfinal:
        raise ValueError(f"AdaLoRA needs total_step > tinit + tfinal (the training steps), got "
                         f"total_step={total_step!r}, tinit={tinit}, tfinal={tfinal}")
    base = base_of(model)
    check_targets(base, settings.targets)
    if has_adapter(base):
        base = detach(model)
    from peft import AdaLoraConfig, get_peft_model

    config = AdaLoraConfig(target_r=settings.r, init_r=init_r or max(settings.r + 1,
                           round(1.5 * settings.r)),
                           lora_alpha=settings.alpha,  # type: ignore[arg-type]  # PEFT says int
                           target_modules=list(settings.targets), total_step=total_step,
                           tinit=tinit, tfinal=tfinal, task_type="CAUSAL_LM")
    requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
    with Transaction(base), torch.random.fork_rng(devices=[]), peft_quiet():
        if seed is not None:
            torch.manual_seed(seed)
        peft_model = get_peft_model(base, config)
    base._lorakit_state = {"settings": None, "requires_grad": requires_grad,  # type: ignore[assignment]
                           "saved_weights": {}}
    return peft_model


def is_adalora(model) -> bool:
    """True for a PeftModel whose active adapter is AdaLoRA."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", "default"))
    return getattr(getattr(config, "peft_type", None), "value", None) == "ADALORA"
