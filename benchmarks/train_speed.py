"""Training speed: lorakit ``train`` (auto and fp32) vs TRL's ``SFTTrainer`` vs a plain PEFT loop.

Same model (the embedded SmolLM2), task (iso_dates), adapter (r=8, α=16, q_proj + v_proj),
batch 8, peak lr 3e-3 with linear warm-up/decay, 40 steps, AdamW, gradient clipping 1.0, and
the same tokens: every trainer sees lorakit's chat-formatted prompt (the task's system message
"Be brief." included) followed by the answer and the end-of-turn token, and learns the answer
only. ``same_tokens`` asserts it before each baseline trains (tests/test_benchmarks.py too).

- lorakit: ``lk.train`` with ``precision="auto"`` (bf16 autocast on a CPU with native bf16)
  and ``"fp32"``;
- TRL: ``SFTTrainer`` with PEFT's ``LoraConfig``, prompt/completion text rows and
  ``completion_only_loss=True``, in its default fp32 and with ``bf16=True``;
- plain loop: ``get_peft_model``, the same batches, ``loss = model(**batch).loss``, without and
  with ``torch.autocast("cpu", dtype=torch.bfloat16)``.

Timed: the training call only (TRL's dataset preparation in the constructor is reported apart).
Each run then scores 50 held-out examples by exact match. "Distance to the limit": the FLOPs of
lorakit's steps, counted from the model's Linear shapes, attention and the answer-only output
head, per second of training, over the rate ``torch.mm`` reaches on the same shapes in the same
precision.

    python benchmarks/train_speed.py [--steps 40] [--eval-n 50] [--threads 1]

Only the full run (40 steps, 50 examples) writes its table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402

import lorakit as lk  # noqa: E402
from lorakit.core.loss import answer_positions  # noqa: E402

R, ALPHA, TARGETS = 8, 16, ["q_proj", "v_proj"]
STEPS, BATCH, LR, WARMUP = 40, 8, 3e-3, 4
N_EVAL = 50
BF16 = torch.bfloat16


def _task():
    return lk.tasks.get("iso_dates")


# -- the same tokens for every trainer -------------------------------------------------------
def lorakit_tokens(task, tok) -> list[tuple[list[int], list[int]]]:
    """(input ids, learned mask) of each training example exactly as ``lk.train`` sees it."""
    out = []
    for e in task.train:
        b = task.encode(tok, [e])
        ids = b["input_ids"][0].tolist()
        learned = (b["labels"][0] != -100).long().tolist()
        out.append((ids, learned))
    return out


def trl_rows(task, tok) -> list[dict[str, str]]:
    """TRL's prompt/completion rows: lorakit's chat-formatted prompt text (system message
    included) and the answer ending in the end-of-turn token lorakit trains on."""
    return [{"prompt": task.prompt_text(tok, e.prompt), "completion": e.answer + tok.eos_token}
            for e in task.train]


def trl_tokens(dataset) -> list[tuple[list[int], list[int]]]:
    """(input ids, learned mask) of each row of an ``SFTTrainer``'s prepared train dataset
    (its ``labels`` column, -100 where nothing is learned; older TRL: ``completion_mask``)."""
    return [(list(r["input_ids"]), [int(v != -100) for v in r["labels"]] if "labels" in r
             else list(r["completion_mask"])) for r in dataset]


def plain_batches(task, tok):
    """The plain loop's batches: lorakit's own (``Task.batches``, seed 0)."""
    return task.batches(tok, BATCH, seed=0)


def same_tokens(name: str, theirs, ours) -> int:
    """Assert that a baseline trains on exactly lorakit's tokens; their total count."""
    n_theirs, n_ours = sum(len(i) for i, _ in theirs), sum(len(i) for i, _ in ours)
    assert n_theirs == n_ours, f"{name}: {n_theirs} tokens vs lorakit's {n_ours}"
    bad = [k for k, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b]
    assert not bad, f"{name}: example {bad[0]} is tokenized differently from lorakit's"
    return n_ours


# -- the runs --------------------------------------------------------------------------------
def run_lorakit(precision: str, steps: int):
    model, tok = lk.load_model(progress=False)
    task = _task()
    pm = lk.attach(model, r=R, alpha=ALPHA, targets=TARGETS, seed=0)
    t = time.perf_counter()
    res = lk.train(pm, tok, task, steps=steps, lr=LR, batch_size=BATCH, warmup=WARMUP,
                   precision=precision, progress=False)
    seconds = time.perf_counter() - t
    return dict(name=f"lorakit `lk.train`, precision={precision!r} ({res.precision})",
                seconds=seconds, prep=0.0, loss=(res.losses[0], res.losses[-1]),
                acc=task.accuracy(pm, tok, n=N_EVAL), precision=res.precision, model=pm)


def _peft_model(model):
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS,
                                                lora_dropout=0.0, task_type="CAUSAL_LM"))


def run_plain(autocast: bool, steps: int):
    import contextlib

    model, tok = lk.load_model(progress=False)
    task = _task()
    pm = _peft_model(model)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / WARMUP if s < WARMUP else 1 - 0.9 * (s - WARMUP) / (steps - WARMUP))
    batches, ours = plain_batches(task, tok), task.batches(tok, BATCH, seed=0)  # lk.train's
    losses = []
    pm.train()
    t = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        assert torch.equal(batch["input_ids"], next(ours)["input_ids"]), "plain loop: other tokens"
        with torch.autocast("cpu", dtype=BF16) if autocast else contextlib.nullcontext():
            loss = pm(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - t
    pm.eval()
    how = "under `torch.autocast(bf16)`" if autocast else "fp32"
    return dict(name=f"plain PEFT loop, `model(**batch).loss`, {how}", seconds=seconds, prep=0.0,
                loss=(losses[0], losses[-1]), acc=task.accuracy(pm, tok, n=N_EVAL))


def trl_trainer(model, tok, task, steps: int, bf16: bool, out: str):
    """An ``SFTTrainer`` on lorakit's tokens (its dataset checked against them)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH,
                     learning_rate=LR, lr_scheduler_type="linear", warmup_steps=WARMUP,
                     weight_decay=0.0, max_grad_norm=1.0, completion_only_loss=True,
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=bf16,
                     seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(trl_rows(task, tok)),
                         processing_class=tok,
                         peft_config=LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                                target_modules=TARGETS, task_type="CAUSAL_LM"))
    same_tokens("TRL SFTTrainer", trl_tokens(trainer.train_dataset), lorakit_tokens(task, tok))
    return trainer


def run_trl(bf16: bool, steps: int):
    import tempfile

    model, tok = lk.load_model(progress=False)
    task = _task()
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        trainer = trl_trainer(model, tok, task, steps, bf16, out)
        prep = time.perf_counter() - t
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    pm = trainer.model
    pm.eval()
    how = "`bf16=True`" if bf16 else "default (fp32)"
    return dict(name=f"TRL `SFTTrainer` (completion only, PEFT), {how}", seconds=seconds,
                prep=prep, loss=(losses[0], losses[-1]), acc=task.accuracy(pm, tok, n=N_EVAL))


# -- distance to the limit -------------------------------------------------------------------
def linear_shapes(model) -> tuple[list[tuple[int, int]], list[tuple[int, int]], tuple[int, int]]:
    """(frozen base Linears, LoRA Linears, output head) as (d_in, d_out) shapes."""
    base, lora, head = [], [], None
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        shape = (m.in_features, m.out_features)
        if name.endswith("lm_head"):
            head = shape
        elif ".lora_A." in name + "." or ".lora_B." in name + ".":
            lora.append(shape)
        else:
            base.append(shape)
    assert head is not None, "the model has no lm_head"
    return base, lora, head


def step_flops(model, batch) -> float:
    """FLOPs of one training step on ``batch`` (padded, as lorakit computes it): frozen Linears
    forward + input gradient (2 products), LoRA forward + both gradients (3), attention's two
    products per layer (3), the output head at the answer positions only (2)."""
    cfg = model.config
    rows, seq = batch["input_ids"].shape
    tokens = rows * seq
    base, lora, (d, vocab) = linear_shapes(model)
    flops = sum(2 * tokens * i * o for i, o in base) * 2
    flops += sum(2 * tokens * i * o for i, o in lora) * 3
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size //
                                               cfg.num_attention_heads)
    flops += cfg.num_hidden_layers * 2 * (2 * rows * seq * seq * d_attn) * 3
    flops += 2 * rows * answer_positions(batch["labels"]).numel() * d * vocab * 2
    return float(flops)


def mm_rate(model, tokens: int, dtype: torch.dtype, reps: int = 3) -> float:
    """FLOP/s of ``torch.mm`` on the model's frozen Linear shapes ((tokens × d_in) by
    (d_in × d_out)), each weighted by how often the model has it; best of ``reps``."""
    from collections import Counter

    flops = seconds = 0.0
    for (i, o), count in Counter(linear_shapes(model)[0]).items():
        a, b = torch.randn(tokens, i).to(dtype), torch.randn(i, o).to(dtype)
        torch.mm(a, b)
        best = min(_timed(torch.mm, a, b) for _ in range(reps))
        flops += count * 2 * tokens * i * o
        seconds += count * best
    return flops / seconds


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def limit_row(run: dict, steps: int) -> str:
    """Achieved GFLOP/s of a lorakit run over ``torch.mm``'s on the same shapes and precision."""
    task, tok = _task(), lk.load_model(progress=False)[1]
    batches = task.batches(tok, BATCH, seed=0)
    sizes = [next(batches) for _ in range(steps)]
    flops = sum(step_flops(run["model"], b) for b in sizes)
    tokens = round(sum(b["input_ids"].numel() for b in sizes) / steps)
    dtype = BF16 if run["precision"] == "bf16" else torch.float32
    achieved, limit = flops / run["seconds"], mm_rate(run["model"], tokens, dtype)
    return (f"| {run['precision']} | {achieved / 1e9:.0f} | {limit / 1e9:.0f} | "
            f"{achieved / limit:.2f} |")


def table(runs: list[dict], steps: int) -> list[str]:
    ours = runs[0]["seconds"]
    lines = ["## Training speed: lorakit (auto, fp32) vs TRL SFTTrainer vs a plain PEFT loop",
             "", f"iso_dates on SmolLM2-135M, r={R} α={ALPHA} q_proj+v_proj, batch {BATCH}, "
             f"lr {LR:g}, {steps} steps, {torch.get_num_threads()} torch threads; the same "
             "tokens for every trainer (system message included, asserted); one process, run "
             "one after the other.", "",
             "| trainer | train s | lorakit auto faster by | loss first→last | held-out acc |",
             "|---|---|---|---|---|"]
    for r in runs:
        prep = f" (+{r['prep']:.1f} s data prep)" if r["prep"] else ""
        lines.append(f"| {r['name']} | {r['seconds']:.1f}{prep} | "
                     f"{r['seconds'] / ours:.2f}× | {r['loss'][0]:.3f}→{r['loss'][1]:.4f} | "
                     f"{r['acc']} |")
    return lines


def main(argv=None):
    global N_EVAL
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=STEPS,
                   help="training steps of every run (2 for a smoke test; the targets need 40)")
    p.add_argument("--eval-n", type=int, default=N_EVAL,
                   help="held-out examples each run scores (fewer for a smoke test)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for all runs (default: torch's choice); 1 on a "
                        "machine shared with other jobs")
    args = p.parse_args(argv)
    N_EVAL = args.eval_n
    if args.threads:
        torch.set_num_threads(args.threads)
    s = args.steps
    trl = [run_trl(False, s), run_trl(True, s)]   # first: most likely to fail on a new TRL
    runs = [run_lorakit("auto", s), run_lorakit("fp32", s), *trl, run_plain(False, s),
            run_plain(True, s)]
    t = {name: r["seconds"] / runs[0]["seconds"] for name, r in zip(
        ("auto", "fp32", "trl", "trl_bf16", "plain", "plain_bf16"), runs, strict=True)}
    lines = table(runs, s)
    lines += ["", "Distance to the limit: lorakit's FLOPs per second of training over "
              "`torch.mm`'s rate on the same shapes, same precision.", "",
              "| precision | achieved GFLOP/s | torch.mm GFLOP/s | achieved / limit |",
              "|---|---|---|---|", limit_row(runs[0], s), limit_row(runs[1], s)]
    ok = (t["fp32"] >= 1.3 and t["trl"] >= 2.2 and t["trl_bf16"] >= 1.6
          and t["plain_bf16"] >= 1.1)
    lines += ["", f"Targets (auto ≥ 1.3× fp32, ≥ 2.2× TRL fp32, ≥ 1.6× TRL bf16, ≥ 1.1× the "
              f"plain loop under autocast): **{'PASS' if ok else 'FAIL'}** ({t['fp32']:.2f}×, "
              f"{t['trl']:.2f}×, {t['trl_bf16']:.2f}×, {t['plain_bf16']:.2f}×)."]
    text = "\n".join(lines)
    if s == STEPS and N_EVAL == 50:
        write_section("train_speed", text)
    print(text)


if __name__ == "__main__":
    main()
