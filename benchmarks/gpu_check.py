"""``make gpu-check``: everything lorakit does on CUDA, in one prepared run (< 8 min on a T4).

1. the ``gpu``-marked tests (QLoRA with the card's compute dtype, CUDA training paths);
2. notebook 04 (QLoRA) executed top to bottom under nbval on the GPU; ``lk.load_model``
   picks the compute dtype for the card: bf16 where supported (Ampere and newer), fp16 on a
   T4/V100;
3. LoRA vs QLoRA (nf4) on the embedded SmolLM2, side by side in one run: mean step time and
   peak CUDA memory (``torch.cuda.max_memory_allocated``), written to benchmarks/RESULTS.md;
4. ``lk.train``'s precisions on the card, side by side: fp32, bf16 autocast (where the card
   has it) and fp16 autocast with a gradient scaler (steps it skipped reported).

Without CUDA it stops at once with exit status 2 and says why; nothing runs, nothing is written.

    python benchmarks/gpu_check.py [--skip-tests] [--skip-notebook] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = 2


def cuda_or_exit():
    """torch with a CUDA device, or exit status 2 with a message naming what is missing."""
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        print(f"gpu-check: no CUDA device: torch {torch.__version__} (CUDA {built}) sees no GPU "
              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
              "Run it on a machine with an NVIDIA GPU and a CUDA build of torch; nothing was "
              "run.", file=sys.stderr)
        sys.exit(NO_CUDA)
    return torch


def pytest(*args: str) -> float:
    """Run pytest with ``args`` from the repository root; its wall time, or exit on failure."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"gpu-check: pytest {' '.join(args)} failed (exit {done.returncode})")
    return time.perf_counter() - t


def bench(torch, steps: int) -> list[dict]:
    """LoRA (compute-dtype base) and QLoRA (nf4) r=8 on q,v: step time and peak memory."""
    import lorakit as lk

    task = lk.tasks.get("iso_dates")
    rows = []
    for quantize in (None, "nf4"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model, tok = lk.load_model(quantize=quantize, progress=False)
        pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
        lk.train(pm, tok, task, steps=3, lr=2e-3, batch_size=8, progress=False)   # warm-up
        torch.cuda.synchronize()
        res = lk.train(pm, tok, task, steps=steps, lr=2e-3, batch_size=8, progress=False)
        torch.cuda.synchronize()
        rows.append(dict(
            setup="QLoRA (nf4)" if quantize else "LoRA",
            dtype=str(lk.core.models.default_compute_dtype("cuda")).replace("torch.", ""),
            step_ms=1000 * sum(res.step_times) / len(res.step_times),
            peak_mib=torch.cuda.max_memory_allocated() / 2**20,
            loss=f"{res.losses[0]:.3f} → {res.losses[-1]:.3f}"))
        del pm, model
    return rows


def bench_precision(torch, steps: int) -> list[str]:
    """LoRA r=8 on q,v in each precision the card runs: step time, loss, skipped fp16 steps."""
    import lorakit as lk
    from lorakit.core.precision import cuda_has_bf16

    task = lk.tasks.get("iso_dates")
    names = ["fp32", "bf16", "fp16"] if cuda_has_bf16() else ["fp32", "fp16"]
    rows = ["| precision | step (ms) | loss | fp16 steps skipped | held-out acc (20) |",
            "|---|---:|---|---:|---|"]
    for name in names:
        model, tok = lk.load_model(dtype=torch.float32, progress=False)
        pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
        lk.train(pm, tok, task, steps=3, lr=3e-3, precision=name, progress=False)  # warm-up
        torch.cuda.synchronize()
        res = lk.train(pm, tok, task, steps=steps, lr=3e-3, precision=name, progress=False)
        torch.cuda.synchronize()
        assert res.precision == name and all(
            p.dtype == torch.float32 for p in pm.parameters() if p.requires_grad)
        rows.append(f"| {name} | {1000 * res.elapsed / res.steps_done:.1f} | "
                    f"{res.losses[0]:.3f} → {res.losses[-1]:.3f} | {res.skipped_steps} | "
                    f"{task.accuracy(pm, tok, n=20)} |")
        del pm, model
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch = cuda_or_exit()
    card = torch.cuda.get_device_name(0)
    start = time.perf_counter()
    times = {}
    if not args.skip_tests:
        times["gpu tests"] = pytest("-m", "gpu", "tests")
    if not args.skip_notebook:
        times["notebook 04"] = pytest("notebooks/04_qlora.ipynb")
    rows = bench(torch, args.steps)
    lora, qlora = rows
    precisions = bench_precision(torch, args.steps)
    table = ["| setup | compute dtype | step (ms) | peak CUDA memory (MiB) | loss |",
             "|---|---|---:|---:|---|"]
    table += [f"| {r['setup']} | {r['dtype']} | {r['step_ms']:.1f} | {r['peak_mib']:.0f} | "
              f"{r['loss']} |" for r in rows]
    ratio = (f"QLoRA / LoRA: step time × {qlora['step_ms'] / lora['step_ms']:.2f}, "
             f"peak memory × {qlora['peak_mib'] / lora['peak_mib']:.2f}.")
    ran = ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) or "tests skipped"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _results import write_section

    write_section("gpu-check", "\n".join([
        f"## GPU check (`make gpu-check`): {card}", "",
        f"LoRA vs QLoRA, r=8 on q_proj+v_proj, batch 8, {args.steps} timed steps after 3 "
        "warm-up steps, the embedded SmolLM2-135M.", "", *table, "", ratio, "",
        "", "`lk.train` precisions (fp32 weights, base loaded in fp32; autocast):", "",
        *precisions, "",
        f"Passed: {ran}; whole check {time.perf_counter() - start:.0f} s."]))
    print("\n".join(table), "\n" + ratio, "\n" + "\n".join(precisions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
