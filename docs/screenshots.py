"""Make the README's screenshots from a real run: ``make screenshots`` (about 2 minutes on CPU).

Loads the embedded SmolLM2-135M-Instruct, attaches LoRA (r=8, α=16 on q_proj and v_proj,
seed 0), trains it on ``iso_dates`` for 60 steps with a Recorder, then writes each figure with
``lk.export_png`` (kaleido + Chromium) into this folder, and the A/B/ΔW animation of layer 0's
q_proj with ``lk.export_gif`` (``delta_evolution.gif``: 31 recorded steps, small enough for the
README). Every number in the pictures comes from that run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lorakit as lk

HERE = Path(__file__).resolve().parent
SIZE = dict(width=900, height=420, scale=1)   # small files; sharp enough for a README
GIF_SIZE = dict(width=720, height=330)         # one palette, 31 frames: about 1 MB


def main() -> int:
    model, tok = lk.load_model(progress=False)
    pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
    task = lk.tasks.get("iso_dates")
    before = task.accuracy(pm, tok, n=50)
    rec = lk.Recorder(pm, every=2)
    result = lk.train(pm, tok, task, steps=60, lr=2e-3, batch_size=8, recorder=rec, seed=0,
                      progress=False)
    after = task.accuracy(pm, tok, n=50)
    recording = rec.recording
    evolution = lk.figures.matrix_evolution(recording, "q_proj", layer=0, which="all")
    path = lk.export_gif(evolution, HERE / "delta_evolution.gif", fps=6, **GIF_SIZE)
    print(f"{path.name}: {path.stat().st_size:,} bytes, {len(evolution.frames)} frames")
    shots = {
        "param_bars.png": lk.figures.param_bars(lk.count_params(pm)),
        "loss_curve.png": lk.figures.loss_curve(result),
        "norms.png": lk.figures.norms_over_time(recording),
    }
    for name, fig in shots.items():
        path = lk.export_png(fig, HERE / name, **SIZE)
        print(f"{path.name}: {path.stat().st_size:,} bytes")
    print(f"iso_dates accuracy {before} → {after} after {result.steps_done} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
