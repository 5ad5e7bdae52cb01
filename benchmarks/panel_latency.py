"""Panel latency: one LoRAPanel control change → updated count text AND figure, end to end.

A learner drags the rank slider or ticks a target box; the "trainable N of M = p%" label and
the ``figures.param_bars`` chart must follow within a frame budget. ipywidgets runs observers
synchronously when ``.value`` is set from Python, so timing ``control.value = x`` measures the
whole update: ``lk.lora_param_count`` per checked module type, the ``ParamCounts``, the label,
``figures.param_bars`` and the hand-over to the front end (FigureWidget diff in "widget" mode,
plotly mime bundle into an ``Output`` in "static" mode).

On the real embedded SmolLM2-135M, in both display modes, a fixed sequence of 48 changes:
rank slider stops, free ranks typed into the box, target boxes ticked and unticked, variant
switches. After each change (outside the timing) the label and the chart are checked against
the analytic count. Also timed alone: the count and the figure builder, to show where the
time goes. Target: median and p90 ≤ 50 ms per change.

Run: python benchmarks/panel_latency.py   (about 30 s on 2 CPU cores)
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import median, timeit, write_section  # noqa: E402

import lorakit as lk  # noqa: E402
from lorakit.view import figures, widgets  # noqa: E402

MAX_MS = 50.0
MODES = ("widget", "static")
TARGETS = ("k_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def changes(panel) -> list[tuple[str, object, object]]:
    """(what, control, value): 48 changes touching every kind of control."""
    seq = []
    for r in (16, 32, 64, 128, 4, 2, 1, 8, 256, 16):
        seq.append((f"rank slider {r}", panel.rank_slider, r))
    for t in TARGETS:
        seq.append((f"tick {t}", panel.target_boxes[t], True))
    for r in (12, 48, 100, 3, 8):
        seq.append((f"rank box {r}", panel.rank_text, r))
    for v in ("dora", "rslora", "lora"):
        seq.append((f"variant {v}", panel.variant_buttons, v))
    for t in TARGETS:
        seq.append((f"untick {t}", panel.target_boxes[t], False))
    for r in (2, 4, 8, 16, 32, 64, 128, 256, 64, 16):
        seq.append((f"rank slider {r}", panel.rank_slider, r))
    for t in TARGETS[:2]:
        seq.append((f"tick {t}", panel.target_boxes[t], True))
    for v in ("dora", "lora"):
        seq.append((f"variant {v}", panel.variant_buttons, v))
    for r in (24, 8):
        seq.append((f"rank box {r}", panel.rank_text, r))
    for t in TARGETS[:2]:
        seq.append((f"untick {t}", panel.target_boxes[t], False))
    for r in (32, 8):
        seq.append((f"rank slider {r}", panel.rank_slider, r))
    return seq


def shown_trainable(panel) -> int:
    if panel.display_mode == "widget":
        return sum(panel.bar_figure.data[1].y)
    (out,) = panel.bar_view.widget.outputs
    return sum(out["data"]["application/vnd.plotly.v1+json"]["data"][1]["y"])


def run(model, mode: str) -> dict:
    panel = lk.LoRAPanel(model, display_mode=mode)
    seq = changes(panel)
    times = []
    for _what, control, value in seq:
        if control.value == value:
            raise AssertionError(f"{_what}: not a change")
        t = time.perf_counter()
        control.value = value                         # observers run synchronously
        times.append(time.perf_counter() - t)
        counts = panel.counts                         # checked outside the timing
        expected = lk.lora_param_count(model, panel.r, panel.targets,
                                       panel.variant_buttons.value) if panel.targets else 0
        assert counts.trainable == expected, (_what, counts.trainable, expected)
        assert panel.count_label.value == str(counts)
        assert shown_trainable(panel) == expected, _what
        assert panel.error.value == "", panel.error.value
    ms = sorted(t * 1e3 for t in times)
    return {"mode": mode, "n": len(ms), "median": median(ms),
            "p90": statistics.quantiles(ms, n=10)[-1], "max": ms[-1],
            "status": "PASS" if median(ms) <= MAX_MS and
            statistics.quantiles(ms, n=10)[-1] <= MAX_MS else "FAIL"}


def parts(model) -> dict:
    """Median ms of the pieces of one update (q, k, v, o checked, r = 16)."""
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    panel = lk.LoRAPanel(model, display_mode="static")
    for t in targets:
        panel.target_boxes[t].value = True
    counts, source = panel.counts, panel._source   # params.shape_source(model)

    def count(src):
        return median(timeit(lambda: [lk.lora_param_count(src, 16, [t]) for t in targets],
                             repeat=30)) * 1e3

    return {
        "source": type(source).__name__, "count": count(source), "count_model": count(model),
        "figure": median(timeit(lambda: figures.param_bars(counts), repeat=30)) * 1e3,
        "mime": median(timeit(lambda: widgets._display_data(figures.param_bars(counts)),
                              repeat=30)) * 1e3
        - median(timeit(lambda: figures.param_bars(counts), repeat=30)) * 1e3,
    }


def main():
    warnings.filterwarnings("ignore")
    model, _ = lk.load_model(progress=False)
    lk.LoRAPanel(model, display_mode="static")        # warm-up: first plotly/anywidget use
    lk.LoRAPanel(model, display_mode="widget")
    return [run(model, mode) for mode in MODES], parts(model)


def markdown(rows: list[dict], pieces: dict) -> str:
    lines = [
        "## Panel latency: LoRAPanel control change → count text and chart updated",
        "",
        "SmolLM2-135M, `lk.LoRAPanel`: each of the changes (rank slider stops, ranks typed "
        "into the box, target boxes ticked/unticked, variant switches) timed from "
        "`control.value = x` until the synchronous observers return, i.e. with the label "
        "(`lk.lora_param_count` per module type) and the `figures.param_bars` chart handed "
        "to the front end (FigureWidget diff / plotly mime bundle in an Output). Every "
        "change is checked against the analytic count. "
        f"Target: median and p90 ≤ {MAX_MS:g} ms.",
        "",
        "| display mode | changes | median ms | p90 ms | max ms | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for x in rows:
        lines.append(f"| {x['mode']} | {x['n']} | {x['median']:.1f} | {x['p90']:.1f} | "
                     f"{x['max']:.1f} | {x['status']} |")
    lines += [
        "",
        f"Where the time goes (medians, q/k/v/o checked): counting "
        f"{pieces['count']:.1f} ms (4 × `lk.lora_param_count` on the model's "
        f"{pieces['source']}, checked once to have the model's own Linear shapes; on the "
        f"model itself {pieces['count_model']:.1f} ms), "
        f"`figures.param_bars` {pieces['figure']:.1f} ms (mostly plotly validating the "
        f"shared template), static mime bundle {max(pieces['mime'], 0):.1f} ms.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    table = markdown(*main())
    write_section("panel_latency", table)
    print(table)
