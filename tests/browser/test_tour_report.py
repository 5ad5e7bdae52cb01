"""The `lorakit tour` report opened as a new user would, with no network: Chromium loads it from
file:// with every http(s) request aborted. Built by ``tour_report`` from a real recording
(the session's tiny Llama, 7 of its 61 frames, so the GIF renders quickly): every plotly figure
draws (a non-empty SVG with its traces), the ΔW GIF ``<img>`` decodes, nothing asked for the
network. A screenshot is written to ``tour-report.png`` in the test's folder (and to
``$LORAKIT_SCREENSHOTS`` when set), for a person to look at."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lorakit.app.tour import Generation, ModuleSummary, TourResult, TourSettings, tour_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DRAWN = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(gd => ({
  svgs: gd.querySelectorAll('svg.main-svg').length,
  traces: gd.querySelectorAll('.trace, .hm, image').length,
  ready: !!gd._fullLayout}))"""
GIF = """() => Array.from(document.querySelectorAll('figure.lk-gif img')).map(img => ({
  complete: img.complete, w: img.naturalWidth, h: img.naturalHeight}))"""


def tour_of(recording, out: Path) -> TourResult:
    """A TourResult around a real recording (numbers for the tables made up, plausible)."""
    modules = [ModuleSummary(
        name=m.name, d_in=m.d_in, d_out=m.d_out, r=m.r, scaling=m.scaling,
        norm_delta_first=float(m.norm_delta[0]), norm_delta_last=float(m.norm_delta[-1]),
        norm_delta=[float(v) for v in m.norm_delta], top_sv=[float(v) for v in m.sv[-1]])
        for m in recording.data.values()]
    losses = [v for v in recording.losses if v is not None]
    return TourResult(
        settings=TourSettings.of(out=str(out), steps=len(losses)), report=out,
        model_name="tiny Llama", total_params=1000, trainable_params=100, frozen_params=900,
        base_memory_bytes=2**20, memory_bytes=2**20 + 400, adapter_bytes=400,
        correct_before=0, correct_after=3, eval_total=4, losses=losses,
        step_times=[0.1] * len(losses), steps_done=len(losses), interrupted=False,
        train_seconds=1.0, tokens_per_s=100.0, recorded_steps=list(recording.steps),
        modules=modules, generations=[Generation("<b>p</b>", "x", "y", "x")],
        errors_after=[], timings={"train": 1.0}, wall_seconds=2.0, recording=recording)


def test_tour_report_draws_every_figure_offline(tiny_recording, recording_subset, tmp_path,
                                                offline_page):
    rec = recording_subset(tiny_recording, list(range(0, 61, 10)))
    path = tour_report(tour_of(rec, tmp_path / "tour.html")).write(tmp_path / "tour.html")
    page = offline_page
    page.goto(path.as_uri())
    page.wait_for_function("() => document.querySelectorAll('.plotly-graph-div').length === 3"
                           " && Array.from(document.querySelectorAll('.plotly-graph-div'))"
                           ".every(gd => gd._fullLayout && gd.querySelector('svg.main-svg'))")
    page.wait_for_function("() => Array.from(document.querySelectorAll('figure.lk-gif img'))"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    drawn = page.evaluate(DRAWN)
    assert len(drawn) == 3                                   # loss, A/B/ΔW animation, norms
    for fig in drawn:
        assert fig["ready"] and fig["svgs"] >= 1 and fig["traces"] >= 1, fig
    assert page.evaluate(GIF) == [{"complete": True, "w": 480, "h": 360}]
    assert page.blocked == []                                # nothing asked for the network
    shot = tmp_path / "tour-report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("LORAKIT_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["LORAKIT_SCREENSHOTS"]) / shot.name)
