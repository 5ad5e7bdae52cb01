"""A short, readable LoRA training loop: AdamW, clipping, progress bar, callbacks, Ctrl-C safe.

The loop is the textbook one (Karpathy's nanoGPT ``train.py`` in miniature): take a batch,
compute the loss on the answer tokens, backpropagate into the adapter only, clip, step.
LoRA+ (Hayou et al. 2024) is one option: B's learning rate is ``loraplus_ratio`` × A's.

What it promises:
- Deterministic on CPU for a given ``seed`` (data order, dropout), without touching the
  global random state (``torch.random.fork_rng``).
- Ctrl-C (KeyboardInterrupt, also when raised by a callback) ends the loop cleanly: the
  ``TrainResult`` so far is returned with ``interrupted=True``, the recorder keeps its frames,
  the adapter keeps its weights, and the model is left in eval mode, ready to use.
- A NaN/inf loss or gradient stops training before the optimizer step, so the adapter keeps
  its last finite weights, and raises ``NonFiniteLossError`` naming the step (the result so far
  is attached as ``err.result``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .attach import is_adalora
from .loss import answer_loss
from .modelkind import check_trainable_kind
from .models import restore_4bit_layout
from .naming import is_lora_B_param
from .settings import TrainSettings
from .tasks import Task


@dataclass
class StepInfo:
    """What a callback sees after each optimizer step."""

    step: int       # 1-based step just finished
    steps: int      # total planned
    loss: float
    lr: float
    model: object = field(repr=False)


@dataclass
class TrainResult:
    """Per-step history of one ``train`` call."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)   # seconds per step
    tokens: list[int] = field(default_factory=list)         # non-padding tokens per step
    steps_planned: int = 0
    interrupted: bool = False

    @property
    def steps_done(self) -> int:
        return len(self.losses)

    @property
    def elapsed(self) -> float:
        return sum(self.step_times)

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens) / self.elapsed if self.elapsed else 0.0

    def __str__(self) -> str:
        last = f"{self.losses[-1]:.4f}" if self.losses else "n/a"
        stop = " (interrupted)" if self.interrupted else ""
        return (f"{self.steps_done}/{self.steps_planned} steps{stop}, final loss {last}, "
                f"{self.elapsed:.1f} s, {self.tokens_per_s:,.0f} tokens/s")


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss or gradient; ``.result`` holds the history so far."""

    def __init__(self, message: str, result: TrainResult):
        super().__init__(message)
        self.result = result


def _param_groups(model, lr: float, weight_decay: float, loraplus_ratio: float | None):
    """A and the rest at ``lr``; with LoRA+, B at ``lr * loraplus_ratio``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not loraplus_ratio:
        return [{"params": [p for _, p in named], "lr": lr, "weight_decay": weight_decay}]
    b = [p for n, p in named if is_lora_B_param(n)]
    rest = [p for n, p in named if not is_lora_B_param(n)]
    return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
            {"params": b, "lr": lr * loraplus_ratio, "weight_decay": weight_decay}]


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then linear decay to 10% at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return 1.0 - 0.9 * frac


def _check_trainable(model, task) -> list[torch.nn.Parameter]:
    """The model's trainable parameters; raises when there are none or ``task`` is no Task."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: attach an adapter first, "
                         "e.g. model = lk.attach(model, r=8, targets=['q_proj', 'v_proj'])")
    if not isinstance(task, Task):
        raise TypeError(f"task must be a lorakit Task (lk.tasks.get(name) or "
                        f"lk.tasks.from_pairs(...)), got {type(task).__name__}")
    return params


def train(model, tok, task: Task, steps: int = 60, lr: float = 2e-3, batch_size: int = 8, *,
          recorder=None, callbacks: Sequence[Callable[[StepInfo], object]] = (),
          loraplus_ratio: float | None = None, weight_decay: float = 0.0,
          max_grad_norm: float | None = 1.0, warmup: int | None = None, seed: int = 0,
          progress: bool = True) -> TrainResult:
    """Train the model's trainable parameters (the LoRA adapter) on ``task``.

    Args:
        model: a PeftModel from ``lk.attach`` (any model with trainable parameters works):
            a causal LM (loss = the model's own on the answer tokens, ``lorakit.loss``), a
            sequence classifier (a classification task such as ``lk.tasks.get("sentiment")``)
            or a seq2seq model (prompt in the encoder, answer in the decoder). Other kinds
            raise ValueError naming these.
        tok: its tokenizer. task: a ``Task`` (``lk.tasks.get("iso_dates")``).
        steps, lr, batch_size, loraplus_ratio, weight_decay, max_grad_norm, warmup, seed: see
            ``TrainSettings`` (help per field; ``lk.train(..., **settings.kwargs())``).
        recorder: an ``lk.Recorder``; gets ``on_step(0, None)`` before training,
            ``on_step(step, loss)`` after each step and ``on_end(step, loss)`` at the end.
            A recorder that already holds frames (a second ``train`` call to train longer)
            continues its step count instead of starting again at 0.
        callbacks: called with a ``StepInfo`` after each step; a truthy return stops training.
        progress: show a tqdm progress bar with the live loss.

    Returns:
        ``TrainResult`` (losses, lrs, step times, tokens/s); the model is left in eval mode.
    """
    s = TrainSettings(steps=steps, lr=lr, batch_size=batch_size, loraplus_ratio=loraplus_ratio,
                      weight_decay=weight_decay, max_grad_norm=max_grad_norm, warmup=warmup,
                      seed=seed)
    params = _check_trainable(model, task)
    kind = task.check_kind(check_trainable_kind(model))
    adalora = is_adalora(model)
    groups = _param_groups(model, s.lr, s.weight_decay, s.loraplus_ratio)
    optimizer = torch.optim.AdamW(groups, lr=s.lr, weight_decay=s.weight_decay)
    for g in optimizer.param_groups:  # the peak learning rate of each group (as torch's schedulers)
        g.setdefault("initial_lr", g["lr"])
    result = TrainResult(steps_planned=s.steps)
    batches = task.batches(tok, s.batch_size, seed=s.seed, kind=kind)

    from tqdm.auto import tqdm

    bar = tqdm(total=s.steps, desc=f"training {task.name}", disable=not progress, leave=True)
    offset = (recorder.last_step or 0) if recorder is not None else 0
    if recorder is not None and recorder.last_step is None:
        recorder.on_step(0, None)
    restore_4bit_layout(model)  # a 4-bit base packed for inference would get wrong gradients
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            for step in range(1, s.steps + 1):
                info = _step(model, optimizer, params, next(batches), step, s, result, adalora,
                             kind)
                bar.update(1)
                bar.set_postfix(loss=f"{info.loss:.4f}")
                if recorder is not None:
                    recorder.on_step(offset + step, info.loss)
                if any([cb(info) for cb in callbacks]):
                    break
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        bar.close()
        if recorder is not None and result.steps_done:
            recorder.on_end(offset + result.steps_done, result.losses[-1])
    return result


def _step(model, optimizer, params, batch, step: int, s: TrainSettings,
          result: TrainResult, adalora: bool, kind: str = "causal_lm") -> StepInfo:
    """One optimizer step (1-based ``step``); appends its numbers to ``result``."""
    t0 = time.perf_counter()
    factor = _lr_factor(step - 1, s.steps, s.warmup_steps)
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    device = params[0].device
    batch = {k: v.to(device) for k, v in batch.items()}
    # causal LM: the model's own loss, head only at answer positions (lorakit.loss)
    loss = answer_loss(model, batch) if kind == "causal_lm" else model(**batch).loss
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise _diverged(step, f"loss is {loss_value}", s.lr, result)
    loss.backward()
    if s.max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        if not torch.isfinite(norm):
            raise _diverged(step, "the gradient is not finite", s.lr, result)
    optimizer.step()
    if adalora:  # prune singular values by their importance (needs the gradients)
        model.base_model.update_and_allocate(step)
    optimizer.zero_grad(set_to_none=True)
    result.losses.append(loss_value)
    result.lrs.append(s.lr * factor)
    result.tokens.append(int(batch["attention_mask"].sum()))
    result.step_times.append(time.perf_counter() - t0)
    return StepInfo(step, s.steps, loss_value, s.lr * factor, model)


def _diverged(step: int, what: str, lr: float, result: TrainResult) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"training stopped at step {step}: {what}. The adapter keeps its weights from step "
        f"{step - 1} (the last finite one). Try a lower learning rate than lr={lr:g}, or "
        "gradient clipping (max_grad_norm=1.0).", result)


# -- moved: compare_variants lives in lorakit.experiments (it trains several adapters) ------
def __getattr__(name: str):
    """``lorakit.train.compare_variants`` etc.: their home is ``lorakit.experiments`` now."""
    if name in ("VARIANT_NAMES", "VariantResult", "compare_variants"):
        from . import experiments

        return getattr(experiments, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
