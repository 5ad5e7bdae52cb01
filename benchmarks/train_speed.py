"""Training speed: lorakit ``train`` vs TRL's ``SFTTrainer`` vs a plain PEFT loop, one run.

Same model (the embedded SmolLM2), task (iso_dates), adapter (r=8, α=16, q_proj + v_proj),
batch 8, peak lr 3e-3 with linear warm-up/decay, 40 steps, AdamW, gradient clipping 1.0:

- lorakit: ``lk.train`` (the model's own loss, output head only at answer positions through
  ``logits_to_keep``);
- TRL: ``SFTTrainer`` with PEFT's ``LoraConfig``, conversational prompt/completion data and
  ``completion_only_loss=True`` (the loss on the answer only, as lorakit's);
- plain loop: ``get_peft_model``, the same batches, ``loss = model(**batch).loss``.

Timed: the training call only (TRL's dataset preparation in the constructor is reported
apart). Each run then scores 50 held-out examples by exact match. The issue's targets:
lorakit ≥ 1.5× faster than TRL and ≥ 1.1× faster than the plain loop, at equal accuracy.

    python benchmarks/train_speed.py [--threads 1]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402

import lorakit as lk  # noqa: E402

R, ALPHA, TARGETS = 8, 16, ["q_proj", "v_proj"]
STEPS, BATCH, LR, WARMUP = 40, 8, 3e-3, 4
N_EVAL = 50


def _task():
    return lk.tasks.get("iso_dates")


def run_lorakit():
    model, tok = lk.load_model(progress=False)
    task = _task()
    pm = lk.attach(model, r=R, alpha=ALPHA, targets=TARGETS, seed=0)
    t = time.perf_counter()
    res = lk.train(pm, tok, task, steps=STEPS, lr=LR, batch_size=BATCH, warmup=WARMUP,
                   progress=False)
    seconds = time.perf_counter() - t
    return dict(name="lorakit `lk.train`", seconds=seconds, prep=0.0,
                loss=(res.losses[0], res.losses[-1]), acc=task.accuracy(pm, tok, n=N_EVAL))


def _peft_model(model):
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS,
                                                lora_dropout=0.0, task_type="CAUSAL_LM"))


def run_plain():
    model, tok = lk.load_model(progress=False)
    task = _task()
    pm = _peft_model(model)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / WARMUP if s < WARMUP else 1 - 0.9 * (s - WARMUP) / (STEPS - WARMUP))
    batches = task.batches(tok, BATCH, seed=0)
    losses = []
    pm.train()
    t = time.perf_counter()
    for _ in range(STEPS):
        loss = pm(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - t
    pm.eval()
    return dict(name="plain PEFT loop, `model(**batch).loss`", seconds=seconds, prep=0.0,
                loss=(losses[0], losses[-1]), acc=task.accuracy(pm, tok, n=N_EVAL))


def run_trl():
    import tempfile

    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tok = lk.load_model(progress=False)
    task = _task()
    rows = [{"prompt": [{"role": "user", "content": e.prompt}],
             "completion": [{"role": "assistant", "content": e.answer}]} for e in task.train]
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=STEPS, per_device_train_batch_size=BATCH,
                         learning_rate=LR, lr_scheduler_type="linear", warmup_steps=WARMUP,
                         weight_decay=0.0, max_grad_norm=1.0, completion_only_loss=True,
                         logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                         seed=0, dataloader_num_workers=0, disable_tqdm=True)
        t = time.perf_counter()
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok,
                             peft_config=LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                                    target_modules=TARGETS,
                                                    task_type="CAUSAL_LM"))
        prep = time.perf_counter() - t
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    pm = trainer.model
    pm.eval()
    return dict(name="TRL `SFTTrainer` (completion only, PEFT)", seconds=seconds, prep=prep,
                loss=(losses[0], losses[-1]), acc=task.accuracy(pm, tok, n=N_EVAL))


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for all three runs (default: torch's choice); 1 on a "
                        "machine shared with other jobs")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    trl_run = run_trl()          # first: the one most likely to fail on a new TRL version
    runs = [run_lorakit(), trl_run, run_plain()]
    ours = runs[0]["seconds"]
    lines = ["## Training speed: lorakit vs TRL SFTTrainer vs a plain PEFT loop",
             "", f"iso_dates on SmolLM2-135M, r={R} α={ALPHA} q_proj+v_proj, batch {BATCH}, "
             f"lr {LR:g}, {STEPS} steps, {torch.get_num_threads()} torch threads; "
             "one process, run one after the other.", "",
             "| trainer | train s | lorakit faster by | loss first→last | held-out acc |",
             "|---|---|---|---|---|"]
    for r in runs:
        prep = f" (+{r['prep']:.1f} s data prep)" if r["prep"] else ""
        lines.append(f"| {r['name']} | {r['seconds']:.1f}{prep} | "
                     f"{r['seconds'] / ours:.2f}× | {r['loss'][0]:.3f}→{r['loss'][1]:.4f} | "
                     f"{r['acc']} |")
    trl, plain = runs[1]["seconds"] / ours, runs[2]["seconds"] / ours
    verdict = "PASS" if trl >= 1.5 and plain >= 1.1 else "FAIL"
    lines += ["", f"Targets (≥ 1.5× TRL, ≥ 1.1× the plain loop): **{verdict}** "
              f"({trl:.2f}×, {plain:.2f}×)."]
    text = "\n".join(lines)
    write_section("train_speed", text)
    print(text)


if __name__ == "__main__":
    main()
