"""Slider latency: analytic ``lk.lora_param_count`` vs re-wrapping with PEFT and counting.

A rank/targets slider must answer in well under a frame budget. Without an analytic path it
would rebuild the model (on the meta device, for a config) and call ``peft.get_peft_model``
plus ``get_nb_trainable_parameters`` on every move. This script times both side by side, in
one run, on

  (a) the built-in Llama-2-70B config (analytic shapes vs meta model + get_peft_model), and
  (b) the real embedded SmolLM2-135M (walk its modules vs lk.attach + PEFT count),

checks that both ways give the same count, and writes a table to benchmarks/RESULTS.md.
Targets: analytic median ≤ 20 ms and ≥ 20× faster than the PEFT way.

Run: python benchmarks/slider_latency.py   (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import median, timeit, write_section  # noqa: E402

import lorakit as lk  # noqa: E402
from lorakit.core.params import builtin_config, lora_param_count, meta_model  # noqa: E402

MAX_MS = 20.0
MIN_RATIO = 20.0
ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SETTINGS = [(8, ("q_proj", "v_proj")), (16, ("q_proj", "k_proj", "v_proj", "o_proj")),
            (64, ALL7)]


def peft_count_config(cfg, r, targets) -> int:
    """What a slider does without the analytic path: rebuild on meta, wrap, count."""
    from peft import LoraConfig, get_peft_model

    model = meta_model(cfg)
    peft_model = get_peft_model(model, LoraConfig(r=r, target_modules=list(targets)))
    return peft_model.get_nb_trainable_parameters()[0]


def row(model_name, r, targets, fast, slow, n_fast, n_slow) -> dict:
    fast_ms, slow_ms = median(fast) * 1e3, median(slow) * 1e3
    ratio = slow_ms / fast_ms
    ok = fast_ms <= MAX_MS and ratio >= MIN_RATIO
    return {"model": model_name, "r": r, "targets": "+".join(t.split("_")[0] for t in targets),
            "fast_ms": fast_ms, "n_fast": n_fast, "slow_ms": slow_ms, "n_slow": n_slow,
            "ratio": ratio, "status": "PASS" if ok else "FAIL"}


def main() -> list[dict]:
    warnings.filterwarnings("ignore")
    rows = []
    cfg = builtin_config("llama-2-70b")
    for r, targets in SETTINGS:
        expected = peft_count_config(cfg, r, targets)  # also warms up PEFT's imports
        got = lora_param_count(cfg, r, targets)
        assert got == expected, (r, targets, got, expected)
        fast = timeit(lambda r=r, t=targets: lora_param_count(cfg, r, t), repeat=50)
        slow = timeit(lambda r=r, t=targets: peft_count_config(cfg, r, t), repeat=3, warmup=0)
        rows.append(row("llama-2-70b config", r, targets, fast, slow, 50, 3))

    model, _ = lk.load_model(progress=False)
    for r, targets in SETTINGS:
        def attach_count(r=r, t=targets):
            nonlocal model
            peft_model = lk.attach(model, r=r, alpha=2 * r, targets=t)
            n = peft_model.get_nb_trainable_parameters()[0]
            model = lk.detach(peft_model)
            return n

        expected = attach_count()
        got = lora_param_count(model, r, targets)
        assert got == expected, (r, targets, got, expected)
        fast = timeit(lambda r=r, t=targets: lora_param_count(model, r, t), repeat=50)
        slow = timeit(attach_count, repeat=5, warmup=0)
        rows.append(row("SmolLM2-135M model", r, targets, fast, slow, 50, 5))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "## Slider latency: analytic LoRA count vs PEFT re-wrap",
        "",
        "`lk.lora_param_count` (analytic Σ r·(d_in+d_out), no wrapping) against what a slider "
        "would do without it: for a config, instantiate on the meta device + "
        "`get_peft_model` + `get_nb_trainable_parameters`; for the loaded SmolLM2, "
        "`lk.attach` + count + `lk.detach`. Both give identical counts (asserted). Medians of "
        f"n runs. Target: analytic ≤ {MAX_MS:g} ms and ≥ {MIN_RATIO:g}× faster.",
        "",
        "| model | r | targets | analytic ms (n) | PEFT way ms (n) | speed-up | target |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for x in rows:
        lines.append(f"| {x['model']} | {x['r']} | {x['targets']} | {x['fast_ms']:.3f} "
                     f"({x['n_fast']}) | {x['slow_ms']:.0f} ({x['n_slow']}) | "
                     f"{x['ratio']:,.0f}× | {x['status']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    table = markdown(main())
    write_section("slider_latency", table)
    print(table)
