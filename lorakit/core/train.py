"""A short, readable LoRA training loop: AdamW, clipping, progress bar, callbacks, Ctrl-C safe.

The loop is the textbook one (Karpathy's nanoGPT ``train.py`` in miniature): take a batch,
compute the loss on the answer tokens, backpropagate into the adapter only, clip, step.
LoRA+ (Hayou et al. 2024) is one option: B's learning rate is ``loraplus_ratio`` × A's.

What it promises:
- Deterministic on CPU for a given ``seed`` (data order, dropout), without touching the
  global random state (``torch.random.fork_rng``).
- Ctrl-C (KeyboardInterrupt, also when raised by a callback) ends the loop cleanly: the
  ``TrainResult`` so far is returned with ``interrupted=True``, the recorder keeps its frames,
  the adapter keeps the weights of the last completed step (a step interrupted half-way, in
  the forward or backward pass or inside AdamW's update, is rolled back), and the model is
  left in eval mode, ready to use.
- Before step 1 the longest training example (as encoded) is checked against the model's
  context length, and a merged adapter (``lk.merge_in_place``) is refused.
- Every step checks the loss, the gradient (with or without clipping) and the updated
  weights for NaN/inf and keeps a copy of the last good weights: on divergence, or any other
  failure mid-step (e.g. out of memory), they are put back, and a divergence raises
  ``NonFiniteLossError`` naming the step (the result so far is attached as ``err.result``).
- A model without a LoRA adapter is refused unless ``full_finetune=True``; one training per
  model at a time.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .attach import has_adapter, is_adalora
from .distributed import runner as _runner
from .guards import exclusive
from .loss import answer_loss  # noqa: F401  (lk.train.answer_loss, as before)
from .modelkind import check_trainable_kind
from .models import check_context, context_length, restore_4bit_layout
from .naming import is_lora_B_param
from .precision import MAX_SKIPPED, FrozenBf16, Plan
from .precision import plan as precision_plan
from .serve import is_merged
from .settings import UNSET, TrainSettings, settings_with
from .task import Task


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
    precision: str = "fp32"         # what ran: "fp32", "bf16" or "fp16" (autocast)
    skipped_steps: int = 0          # fp16: steps the gradient scaler skipped (overflow)

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
                f"{self.elapsed:.1f} s, {self.tokens_per_s:,.0f} tokens/s, {self.precision}")


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


_ATTACH_HINT = "e.g. model = lk.attach(model, r=8, targets=['q_proj', 'v_proj'])"


def _check_trainable(model, task, full_finetune: bool = False) -> list[torch.nn.Parameter]:
    """The model's trainable parameters; raises when there are none, when the model has no
    LoRA adapter (unless ``full_finetune``) or ``task`` is no Task."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params and has_adapter(model):
        raise ValueError("the model's adapter is frozen (lk.load_adapter loads for inference "
                         "by default): to train it, load it with lk.load_adapter(model, folder, "
                         "trainable=True), or attach a fresh one with lk.attach")
    if not params:
        raise ValueError(f"the model has no trainable parameters: attach an adapter first, "
                         f"{_ATTACH_HINT}")
    if not (full_finetune or has_adapter(model)):
        raise ValueError(f"the model has no LoRA adapter: attach one first, {_ATTACH_HINT}; to "
                         "fine-tune all of the base model's weights instead, pass "
                         "full_finetune=True")
    if not isinstance(task, Task):
        raise TypeError(f"task must be a lorakit Task (lk.tasks.get(name) or "
                        f"lk.tasks.from_pairs(...)), got {type(task).__name__}")
    if has_adapter(model) and is_merged(model):
        raise ValueError("the adapter is merged into the base weights (lk.merge_in_place), so "
                         "its A and B no longer act on their own and cannot be trained: call "
                         "lk.unmerge(model) first, then train")
    return params


def _check_fits_context(model, tok, task: Task, kind: str) -> None:
    """Refuse, before step 1, a task whose longest training example (as encoded for training)
    is longer than the model's context: RoPE models would train on garbage positions, models
    with learned positions crash with an IndexError."""
    if context_length(model) is None:
        return
    lengths = task.encode(tok, task.train, kind)["attention_mask"].sum(1)
    i = int(lengths.argmax())
    check_context(model, int(lengths[i]),
                  f"training example {i} of task {task.name!r} (prompt and answer, as encoded "
                  "for training)",
                  "Shorten or drop the training examples longer than {context} tokens "
                  "(task.train), or train a model with a longer context.")


def train(model, tok, task: Task, settings: TrainSettings | None = None, *,
          steps: int = UNSET, lr: float = UNSET, batch_size: int = UNSET,
          loraplus_ratio: float | None = UNSET, weight_decay: float = UNSET,
          max_grad_norm: float | None = UNSET, warmup: int | None = UNSET, seed: int = UNSET,
          precision: str = UNSET, recorder=None,
          callbacks: Sequence[Callable[[StepInfo], object]] = (),
          progress: bool = True, full_finetune: bool = False) -> TrainResult:
    """Train the model's trainable parameters (the LoRA adapter) on ``task``.

    Args:
        model: a PeftModel from ``lk.attach`` (any model with trainable parameters works):
            a causal LM (loss = the model's own on the answer tokens, ``lorakit.loss``), a
            sequence classifier (a classification task such as ``lk.tasks.get("sentiment")``)
            or a seq2seq model (prompt in the encoder, answer in the decoder). Other kinds
            raise ValueError naming these.
        tok: its tokenizer. task: a ``Task`` (``lk.tasks.get("iso_dates")``).
        settings: a ``TrainSettings``; None: its defaults (60 steps, lr 2e-3, batch 8).
        steps, lr, batch_size, loraplus_ratio, weight_decay, max_grad_norm, warmup, seed,
        precision: fields of ``settings`` to set (help per field in ``TrainSettings``); left
            out, the settings' value. ``train(pm, tok, task, lk.TrainSettings(steps=40))`` and
            ``train(pm, tok, task, steps=40)`` are the same call.
        recorder: an ``lk.Recorder``; gets ``on_step(0, None)`` before training,
            ``on_step(step, loss)`` after each step and ``on_end(step, loss)`` at the end.
            A recorder that already holds frames (a second ``train`` call to train longer)
            continues its step count instead of starting again at 0.
        callbacks: called with a ``StepInfo`` after each step; a truthy return stops training.
        progress: show a tqdm progress bar with the live loss.
        full_finetune: train a model without a LoRA adapter (all its trainable parameters);
            refused by default, since that is usually a forgotten ``lk.attach``.

    Every step checks the loss, the gradients and the updated weights for NaN/inf (with or
    without clipping) and keeps a copy of the last good weights: on divergence they are put
    back and ``NonFiniteLossError`` is raised. One training per model at a time.

    ``precision`` ("auto": bf16 where the device computes it fast) runs the forward pass under
    autocast; the adapter's weights, its gradients, the optimizer state and the loss stay fp32.
    In fp16 a gradient scaler skips the steps whose gradient overflowed; ``MAX_SKIPPED`` in a
    row stop the run like a divergence. ``TrainResult.precision`` says what ran.

    Returns:
        ``TrainResult`` (losses, lrs, step times, tokens/s); the model is left in eval mode.
    """
    s = settings_with(TrainSettings, settings, steps=steps, lr=lr, batch_size=batch_size,
                      loraplus_ratio=loraplus_ratio, weight_decay=weight_decay,
                      max_grad_norm=max_grad_norm, warmup=warmup, seed=seed, precision=precision)
    params = _check_trainable(model, task, full_finetune)
    amp = precision_plan(s.precision, params[0].device)
    kind = task.check_kind(check_trainable_kind(model))
    _check_fits_context(model, tok, task, kind)
    if recorder is not None:
        recorder.check_model(model)
    if s.batch_size > len(task.train):
        warnings.warn(f"batch_size={s.batch_size} is larger than the task's {len(task.train)} "
                      f"training examples; using batch_size={len(task.train)}", stacklevel=2)
        s = dataclasses.replace(s, batch_size=len(task.train))
    with exclusive(model):
        return _run(model, tok, task, s, params, recorder, callbacks, progress, kind, amp)


def _run(model, tok, task: Task, s: TrainSettings, params, recorder, callbacks,
         progress: bool, kind: str = "causal_lm", amp: Plan | None = None) -> TrainResult:
    """The loop of ``train`` (its arguments checked)."""
    adalora = is_adalora(model)
    groups = _param_groups(model, s.lr, s.weight_decay, s.loraplus_ratio)
    optimizer = torch.optim.AdamW(groups, lr=s.lr, weight_decay=s.weight_decay)
    for g in optimizer.param_groups:  # the peak learning rate of each group (as torch's schedulers)
        g.setdefault("initial_lr", g["lr"])
    mixed = _Mixed(amp or Plan("fp32", params[0].device.type), model,
                   checkpointing=any(getattr(m, "gradient_checkpointing", False) is True
                                     for m in model.modules()))
    result = TrainResult(steps_planned=s.steps, precision=mixed.plan.name)
    batches = task.batches(tok, s.batch_size, seed=s.seed, kind=kind)
    # several processes: accelerate, each rank its rows of the global batch (distributed.py)
    run = _runner(model, optimizer, s.batch_size, params[0].device)
    optimizer = run.optimizer
    run.kind = kind  # causal LM: answer-positions loss; other kinds: the model's own

    from tqdm.auto import tqdm

    bar = tqdm(total=s.steps, desc=f"training {task.name}", disable=not progress or not run.is_main,
               leave=True)
    offset = (recorder.last_step or 0) if recorder is not None else 0
    if recorder is not None and recorder.last_step is None:
        recorder.on_step(0, None)
    restore_4bit_layout(model)  # a 4-bit base packed for inference would get wrong gradients
    good = _LastGood(params)
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            for step in range(1, s.steps + 1):
                info = _step(model, optimizer, params, next(batches), step, s, result, adalora,
                             run, mixed)
                good.keep()  # this step is good (finite loss, gradient and weights)
                bar.update(1)
                bar.set_postfix(loss=f"{info.loss:.4f}")
                if recorder is not None:
                    recorder.on_step(offset + step, info.loss)
                if any([cb(info) for cb in callbacks]):
                    break
    except KeyboardInterrupt:  # anywhere, the optimizer's step included: no torn weights
        good.restore()
        result.interrupted = True
    except BaseException:
        good.restore()  # divergence or a failure mid-step (e.g. out of memory)
        raise
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        bar.close()
        if recorder is not None and result.steps_done:
            recorder.on_end(offset + result.steps_done, result.losses[-1])
    return run.finish(result)


def _step(model, optimizer, params, batch, step: int, s: TrainSettings,
          result: TrainResult, adalora: bool, run, mixed: _Mixed) -> StepInfo:
    """One optimizer step (1-based ``step``) on the global ``batch``; appends to ``result``."""
    t0 = time.perf_counter()
    factor = _lr_factor(step - 1, s.steps, s.warmup_steps)
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    mine = run.batch(batch, params[0].device)  # this rank's rows (all of them in one process)
    with mixed.frozen:  # frozen weights cast once per run, not at every forward pass
        with mixed.autocast():  # 16-bit products; the loss itself is computed in fp32
            loss, loss_value, n_tokens = run.loss(mine, batch)
        if not math.isfinite(loss_value):
            raise _diverged(step, f"loss is {loss_value}", s, result)
        mixed.backward(run, loss, optimizer)
    # measured on every step, clipped or not: a non-finite gradient never reaches the weights
    norm = (run.clip(params, s.max_grad_norm) if s.max_grad_norm is not None
            else _grad_norm(params, None))
    finite = bool(torch.isfinite(norm))
    if not finite and mixed.scaler is None:  # fp16: an overflow the scaler skips, see below
        raise _diverged(step, "the gradient is not finite", s, result)
    mixed.step(optimizer, finite, step, result)
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise _diverged(step, "the updated weights are not finite", s, result)
    if adalora and finite:  # prune singular values by their importance (needs the gradients)
        model.base_model.update_and_allocate(step)
    optimizer.zero_grad(set_to_none=True)
    result.losses.append(loss_value)
    result.lrs.append(s.lr * factor)
    result.tokens.append(n_tokens)
    result.step_times.append(time.perf_counter() - t0)
    return StepInfo(step, s.steps, loss_value, s.lr * factor, model)


def _grad_norm(params, max_grad_norm: float | None) -> torch.Tensor:
    """The gradient's total norm, clipped to ``max_grad_norm`` (None: only measured)."""
    if max_grad_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    grads = [p.grad.detach().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)


class _Mixed:
    """The step's arithmetic (a ``precision.Plan``): autocast around the forward pass and, in
    fp16, the gradient scaler around the backward pass and the optimizer step."""

    def __init__(self, amp: Plan, model: torch.nn.Module, checkpointing: bool = False):
        self.plan, self.scaler, self.in_a_row = amp, amp.scaler(), 0
        self.checkpointing = checkpointing
        self.frozen = FrozenBf16(model, amp)

    def autocast(self):
        """The plan's autocast; attention left to autocast under gradient checkpointing."""
        return self.plan.autocast(fp32_attention=not self.checkpointing)

    def backward(self, run, loss: torch.Tensor, optimizer) -> None:
        if self.scaler is None:
            run.backward(loss)
            return
        run.backward(self.scaler.scale(loss))
        self.scaler.unscale_(optimizer)  # true gradients before clipping and the norm check

    def step(self, optimizer, finite: bool, step: int, result: TrainResult) -> None:
        """``optimizer.step()``; in fp16 the scaler's step, which skips an overflowed one (the
        scale halves), and a run stopped once ``MAX_SKIPPED`` steps in a row were skipped."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
        self.in_a_row = 0 if finite else self.in_a_row + 1
        result.skipped_steps += not finite
        if self.in_a_row >= min(MAX_SKIPPED, result.steps_planned):
            raise NonFiniteLossError(
                f"training stopped at step {step}: in fp16 the gradient overflowed on "
                f"{self.in_a_row} steps in a row (the gradient scaler skipped them all; its "
                f"scale is now {self.scaler.get_scale():g}). The adapter keeps its weights from "
                f"step {step - self.in_a_row}. Use precision='bf16' (16 bits with fp32's range) "
                "or 'fp32', or a lower learning rate.", result)


class _LastGood:
    """A copy of the trainable weights after the last good step (an adapter is small).

    ``restore`` puts it back after a failure or a Ctrl-C anywhere in a step: AdamW updates the
    tensors one by one, so an interrupted step leaves some updated and some not. A Ctrl-C
    during ``keep`` itself (the copy half made) leaves the weights as they are: they are the
    good ones being kept.
    """

    def __init__(self, params):
        self.params = params
        self.copies = [p.detach().clone() for p in params]
        self.keeping = False

    def keep(self) -> None:
        self.keeping = True
        with torch.no_grad():
            for c, p in zip(self.copies, self.params, strict=True):
                c.copy_(p)
        self.keeping = False

    def restore(self) -> None:
        if self.keeping:
            return
        with torch.no_grad():
            for p, c in zip(self.params, self.copies, strict=True):
                p.copy_(c)


def _diverged(step: int, what: str, s: TrainSettings, result: TrainResult) -> NonFiniteLossError:
    clip = ("" if s.max_grad_norm is not None else
            ", or gradient clipping (max_grad_norm=1.0)")
    return NonFiniteLossError(
        f"training stopped at step {step}: {what}. The adapter keeps its weights from step "
        f"{step - 1} (the last finite one). Try a lower learning rate than lr={s.lr:g}{clip}.",
        result)
