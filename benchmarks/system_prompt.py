"""What the built-in tasks' short system message saves: training time with and without it.

Without a system message SmolLM2's chat template inserts its own default ("You are a helpful
AI assistant named SmolLM, trained by Hugging Face") into every example; the built-in tasks
send ``lorakit.tasks.SYSTEM`` ("Be brief.") instead. Same model, adapter (r=8, α=16, q_proj +
v_proj, seed 0), task data, batch 8, lr 2e-3 (the tour's), ``--steps`` steps per run; the two
prompts alternate A B A B so that a machine that speeds up or slows down affects both alike.
Each row: the median over its rounds.

    python benchmarks/system_prompt.py [--steps 30] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402

import lorakit as lk  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = lk.load_model(progress=False)
    task = lk.tasks.get("iso_dates")
    variants = {f'"{task.system}" (lorakit.tasks.SYSTEM)': task,
                "none (the template's default)": dataclasses.replace(task, system=None)}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, t in variants.items():
            pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
            start = time.perf_counter()
            res = lk.train(pm, tok, t, steps=args.steps, lr=2e-3, batch_size=8, seed=0,
                           progress=False)
            seconds = time.perf_counter() - start
            runs[name].append(dict(seconds=seconds, tokens=sum(res.tokens) / len(res.tokens),
                                   loss=res.losses[-1]))
            print(f"{name}: {seconds:.1f} s, {runs[name][-1]['tokens']:.0f} tokens/step, "
                  f"final loss {res.losses[-1]:.4f}", flush=True)
            model = lk.detach(pm)
    example = {name: len(lk.core.models.chat_prompt_ids(tok, t.train[0].prompt, t.system))
               for name, t in variants.items()}
    rows, med = [], {}
    for name, rs in runs.items():
        med[name] = statistics.median(r["seconds"] for r in rs)
        rows.append(f"| {name} | {example[name]} | {rs[0]['tokens']:.0f} | "
                    f"{med[name] / args.steps:.2f} | {rs[0]['loss']:.4f} |")
    short, default = list(med)
    ratio = med[short] / med[default]
    md = f"""## The built-in tasks' system message (benchmarks/system_prompt.py)

SmolLM2, LoRA r=8 α=16 on q_proj + v_proj, iso_dates, batch 8, lr 2e-3, {args.steps} steps per
run, the two prompts alternating for {args.rounds} rounds each (median), torch threads
{torch.get_num_threads()}:

| system message | prompt tokens (first example) | tokens per step | s per step | final loss |
|---|---:|---:|---:|---:|
{chr(10).join(rows)}

Time with the short message / without: **{ratio:.2f}×** ({(1 - ratio):.0%} less) for
{1 - runs[short][0]['tokens'] / runs[default][0]['tokens']:.0%} fewer tokens per step."""
    write_section("system_prompt", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
