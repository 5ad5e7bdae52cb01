"""Recorder overhead: training steps with the default Recorder (every=1) vs the plain PEFT loop.

Real SmolLM2-135M-Instruct (embedded, offline), LoRA r=8 on q_proj and v_proj, AdamW lr 1e-3,
batch 4 × 48 random tokens. After warm-up steps, plain and recorded steps ALTERNATE in one run
(ABBA order, so slow drift of the machine hits both equally); a recorded step is the same
training step followed by ``rec.on_step(step, loss)``. Reports median step times, their ratio
(target ≤ 1.03), the median cost of one ``on_step`` on its own, and the memory of a recording
of 200 frames, measured by actually recording 200 frames (``Recording.nbytes``) and checked
against the docstring formula (``Recorder.frame_bytes() × 200``).

Run: ``.venv/bin/python benchmarks/recorder_overhead.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import median, timeit, write_section  # noqa: E402

import lorakit  # noqa: E402
from lorakit.core.record import Recorder  # noqa: E402

BATCH, SEQ, LR, R = 4, 48, 1e-3, 8
WARMUP, PAIRS = 2, 12  # 2 warm-up steps (1 plain, 1 recorded), then 12 + 12 interleaved
TARGET = 1.03


def main() -> str:
    torch.manual_seed(0)
    model, tok = lorakit.load_model(progress=False)
    peft_model = lorakit.attach(model, r=R, alpha=2 * R, targets=["q_proj", "v_proj"], seed=0)
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=LR)
    vocab = peft_model.get_base_model().config.vocab_size
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (BATCH, SEQ), generator=g) for _ in range(4)]
    rec = Recorder(peft_model)  # the defaults: every=1, max_frames=200, display 64, top_k 8
    step = 0

    def train_step(record: bool, ids: torch.Tensor) -> tuple[float, float]:
        """One training step (+ on_step when recording): (wall seconds, process CPU seconds)."""
        nonlocal step
        t, c = time.perf_counter(), time.process_time()
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if record:
            with torch.no_grad():
                rec.on_step(step, loss.item())
        else:
            loss.item()  # the same host sync as the recorded step
        return time.perf_counter() - t, time.process_time() - c

    with torch.no_grad():
        rec.on_step(0, None)
    for i in range(WARMUP):
        train_step(record=i % 2 == 1, ids=batches[0])
    plain, recorded = [], []  # (wall, cpu) per step; pair i = plain[i], recorded[i]
    for i in range(PAIRS):
        order = (False, True) if i % 2 == 0 else (True, False)  # ABBA
        for record in order:
            (recorded if record else plain).append(train_step(record, batches[i % len(batches)]))
    # Every step is a multiple of stride 1, so every recorded step really recorded a frame.
    assert len(rec) == 1 + WARMUP // 2 + PAIRS

    # on_step alone (fresh recorder; each call records a frame).
    solo = Recorder(peft_model, max_frames=10_000)
    counter = iter(range(10_000))
    with torch.no_grad():
        on_step_times = timeit(lambda: solo.on_step(next(counter), 1.0), repeat=50, warmup=3)

    # Memory: record 200 real frames of the default modules.
    mem = Recorder(peft_model)
    with torch.no_grad():
        for s in range(200):
            mem.on_step(s, 1.0)
    recording = mem.recording
    assert len(recording) == 200
    measured, formula = recording.nbytes, 200 * mem.frame_bytes()

    p, r_ = median(w for w, _ in plain), median(w for w, _ in recorded)
    ratio = r_ / p
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    paired = median(rw / pw for (pw, _), (rw, _) in zip(plain, recorded, strict=True))
    cpu = median(c for _, c in recorded) / median(c for _, c in plain)
    solo_ratio = (p + median(on_step_times)) / p
    load = os.getloadavg()[0]
    modules = ", ".join(rec.modules)
    lines = [
        "## Recorder overhead (SmolLM2-135M, LoRA r=8 on q_proj, v_proj)",
        "",
        f"Training step = forward + backward + AdamW (lr {LR}) on {BATCH}×{SEQ} random tokens; "
        f"{PAIRS} plain and {PAIRS} recorded steps alternated (ABBA) after {WARMUP} "
        f"warm-up steps. Recorder defaults: every=1, display 64, top_k 8, modules {modules}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| median plain step | {p * 1e3:.1f} ms |",
        f"| median step + `on_step` (recording every step) | {r_ * 1e3:.1f} ms |",
        f"| ratio recorded / plain (target ≤ {TARGET}) | {ratio:.3f} **{verdict}** |",
        f"| paired: median of (recorded / plain) over adjacent pairs | {paired:.3f} |",
        f"| process CPU time: median recorded / median plain | {cpu:.3f} |",
        f"| median `on_step` alone (4 modules), timed by itself | "
        f"{median(on_step_times) * 1e3:.2f} ms → (plain + on_step) / plain = {solo_ratio:.4f} |",
        f"| recording memory, 200 frames (measured: 200 frames recorded, `Recording.nbytes`) "
        f"| {measured:,} B ({measured / 2**20:.2f} MiB) |",
        f"| formula `frame_bytes() × 200` | {formula:,} B ({mem.frame_bytes():,} B per frame) |",
        "",
        f"1-minute load average at the end: {load:.2f} on {os.cpu_count()} cores (other jobs "
        "running at the same time make single step times noisy; the `on_step`-alone row is "
        "the recorder's own cost).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    table = main()
    write_section("recorder_overhead", table)
    sys.stdout.write(table + "\n")
