"""Generation latency: base model vs unmerged LoRA vs merged LoRA (SmolLM2-135M, float32).

Three copies of the real SmolLM2-135M-Instruct (embedded, offline): the base; the base with an
unmerged LoRA adapter (r=8, α=16 on q_proj and v_proj, B random and non-zero, so the adapter
really changes the model); and that adapter saved (``lk.save_adapter``), loaded onto a
third copy (``load_adapter``) and merged (``merge``, whose logit check must pass). Each call
generates greedily exactly NEW tokens for one fixed chat prompt (``min_new_tokens`` = max, so
all three do the same work). After one warm-up call each, the three are ALTERNATED in one run,
rotating the order every round, and the median wall times are compared: merged / base should
be ≈ 1 (target ≤ 1.02: merging removes the adapter's cost), unmerged / base shows what the
extra B·A path costs per token.

Torch runs on ONE thread here: on a shared 2-core machine, multi-threaded kernels stall
whenever one of their threads is descheduled (at load 4.5, two threads took 0.5 s per token and
one thread 0.1 s), which drowned the few-percent differences measured here.

Run: ``.venv/bin/python benchmarks/merge_latency.py`` (1–3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import median, write_section  # noqa: E402

import lorakit  # noqa: E402
from lorakit.core import serve  # noqa: E402

PROMPT = "Convert to ISO date: March 5, 2021"
NEW, ROUNDS, R = 32, 9, 8
THREADS = 1
TARGET = 1.02


def main() -> str:
    torch.set_num_threads(THREADS)
    base, tok = lorakit.load_model(progress=False)
    lora_base, _ = lorakit.load_model(progress=False)
    lora = lorakit.attach(lora_base, r=R, alpha=2 * R, targets=["q_proj", "v_proj"], seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    lora.eval()
    with tempfile.TemporaryDirectory() as tmp:
        saved = serve.save_adapter(lora, tmp)
        merged = serve.merge(serve.load_adapter(lorakit.load_model(progress=False)[0], tmp))
    check = merged.merge_check
    assert check.ok and check.adapter_effect > 0.1, check

    models = {"base": base, "unmerged LoRA": lora, "merged": merged}
    names = list(models)
    replies = {n: lorakit.generate(m, tok, PROMPT, max_new_tokens=NEW)
               for n, m in models.items()}           # warm-up call, and what each one says
    assert replies["merged"] == replies["unmerged LoRA"], replies
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(ROUNDS):
        order = names[i % 3:] + names[:i % 3]          # rotate: each model leads in turn
        for n in order:
            times[n].extend(serve.latency(models[n], tok, PROMPT, NEW, repeat=1, warmup=0).times)

    med = {n: median(t) for n, t in times.items()}
    ratio_merged = med["merged"] / med["base"]
    ratio_lora = med["unmerged LoRA"] / med["base"]
    paired = median(m / b for m, b in zip(times["merged"], times["base"], strict=True))
    verdict = "PASS" if ratio_merged <= TARGET else "FAIL"
    tensors = lorakit.lora_param_count(base, r=R, targets=["q_proj", "v_proj"]) * 4
    load = os.getloadavg()[0]
    lines = [
        "## Merge latency (SmolLM2-135M fp32, LoRA r=8 on q_proj, v_proj)",
        "",
        f"Greedy generation of exactly {NEW} new tokens (`min_new_tokens` = max) for one chat "
        f"prompt, batch 1, {THREADS} torch thread. {ROUNDS} rounds, the three models alternated in rotating order after "
        "one warm-up call each; medians of wall time. The merged model is the saved adapter "
        f"loaded onto a fresh base and merged by `lk.merge` (check: max |Δlogit| "
        f"{check.max_abs_diff:.2g} vs the adapter's own effect {check.adapter_effect:.2g}); "
        "its greedy reply equals the unmerged model's (asserted).",
        "",
        "| model | median ms | tokens/s | ratio to base |",
        "|---|---:|---:|---:|",
    ]
    for n in names:
        lines.append(f"| {n} | {med[n] * 1e3:.0f} | {NEW / med[n]:.1f} | "
                     f"{med[n] / med['base']:.3f} |")
    lines += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| merged / base (target ≤ {TARGET}) | {ratio_merged:.3f} **{verdict}** |",
        f"| paired: median of (merged / base) within a round | {paired:.3f} |",
        f"| unmerged LoRA / base (the B·A path's cost) | {ratio_lora:.3f} |",
        f"| adapter on disk (`save_adapter`: config + safetensors) | {saved.bytes:,} B "
        f"({saved.megabytes:.2f} MB; tensors {tensors:,} B = 460,800 params × 4 B) |",
        "",
        f"1-minute load average at the end: {load:.2f} on {os.cpu_count()} cores.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    table = main()
    write_section("merge_latency", table)
    sys.stdout.write(table + "\n")
