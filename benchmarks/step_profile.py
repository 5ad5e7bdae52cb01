"""Where a training step's time goes: ``lk.train``'s steps under torch's profiler, by kind of op.

The run of ``train_speed.py`` (iso_dates on the embedded SmolLM2, r=8 α=16 q_proj+v_proj,
batch 8), in fp32 and in bf16 on the CPU: a few warm-up steps, then ``--steps`` profiled steps.
Each op's *self* CPU time is put in one group: matrix products (forward and backward),
attention, dtype casts and copies, the optimizer (AdamW's foreach kernels, the gradient norm),
and everything else (element-wise work: norms, activations, rotary embeddings, the loss).
The products' own rate is the step's FLOPs as ``train_speed.step_flops`` counts them (Linear
layers, attention, the answer-only head) over the time of the products and attention, next to
``torch.mm``'s rate on the same shapes: what a step would gain from faster products is bounded
by their share of the step.

    python benchmarks/step_profile.py [--steps 5]
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402
from train_speed import mm_rate, step_flops  # noqa: E402

import lorakit as lk  # noqa: E402

GROUPS = (("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
                               "aten::linear", "mkldnn")),
          ("attention", ("attention", "sdpa", "flash")),
          ("casts and copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone",
                                "aten::contiguous")),
          ("optimizer and gradient norm", ("_foreach", "aten::norm", "aten::linalg_vector_norm",
                                           "Optimizer", "aten::clamp")))


def group_of(name: str) -> str:
    """The group an op's name falls in (the first that matches), else "element-wise and rest"."""
    low = name.lower()
    for group, keys in GROUPS:
        if any(k.lower() in low for k in keys):
            return group
    return "element-wise and rest"


def profile(precision: str, steps: int) -> dict:
    """Self CPU seconds per group per step, the step's wall time and its Linear FLOPs."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, tok = lk.load_model(progress=False)
    pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
    task = lk.tasks.get("iso_dates")
    lk.train(pm, tok, task, steps=3, batch_size=8, lr=1e-5, precision=precision, progress=False)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        res = lk.train(pm, tok, task, steps=steps, batch_size=8, lr=1e-5, precision=precision,
                       progress=False)
    seconds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        seconds[group_of(event.key)] += event.self_cpu_time_total / 1e6 / steps
    batch = next(task.batches(tok, 8, seed=0))
    tokens = int(batch["input_ids"].numel())
    dtype = torch.bfloat16 if res.precision == "bf16" else torch.float32
    return {"precision": res.precision, "groups": dict(seconds), "step": sum(res.step_times) / steps,
            "flops": step_flops(pm, batch), "mm_rate": mm_rate(pm, tokens, dtype)}


def table(runs: list[dict]) -> list[str]:
    names = [g for g, _ in GROUPS] + ["element-wise and rest"]
    lines = ["| group | " + " | ".join(f"{r['precision']} ms/step (share)" for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for name in names:
        cells = []
        for r in runs:
            total = sum(r["groups"].values())
            s = r["groups"].get(name, 0.0)
            cells.append(f"{1000 * s:.0f} ({s / total:.0%})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| profiled self time, all ops | " + " | ".join(
        f"{1000 * sum(r['groups'].values()):.0f}" for r in runs) + " |")
    lines.append("| step wall time | " + " | ".join(f"{1000 * r['step']:.0f}" for r in runs) + " |")
    return lines


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="profiled steps per precision")
    args = p.parse_args(argv)
    runs = [profile(prec, args.steps) for prec in ("fp32", "bf16")]
    lines = ["## Where a training step's time goes (torch profiler, self CPU time by group)", "",
             f"The run of train_speed.py (iso_dates, SmolLM2-135M, r=8 q_proj+v_proj, batch 8), "
             f"{args.steps} steps profiled after 3 warm-up steps, per precision.", ""]
    lines += table(runs)
    lines += ["", "| precision | GFLOP per step | products' own GFLOP/s | torch.mm GFLOP/s "
              "| products' and attention's share of the step |", "|---|---|---|---|---|"]
    for r in runs:
        mm = r["groups"].get("matrix products", 0.0) + r["groups"].get("attention", 0.0)
        total = sum(r["groups"].values())
        lines.append(f"| {r['precision']} | {r['flops'] / 1e9:.0f} | {r['flops'] / mm / 1e9:.0f} | "
                     f"{r['mm_rate'] / 1e9:.0f} | {mm / total:.0%} |")
    text = "\n".join(lines)
    print(text)
    write_section("step_profile", text)


if __name__ == "__main__":
    main()
