"""A real exported animation in a real Chromium: a tiny Llama (hidden 64, so ΔW is 64 × 64)
with LoRA r=8 on q_proj/v_proj, trained 60 steps on iso_dates by lk.train with an lk.Recorder;
``lk.figures.matrix_evolution`` -> ``lk.export_html(offline=True)`` -> opened from file:// with
every http(s) request aborted. Play advances the frames (slider and title step move together),
Pause stops them, and the heatmap drawn is exactly the recorded ΔW of the frame shown. The page
makes no network request at all; the CDN version (≤ 5 MB) does need plotly's CDN."""

from __future__ import annotations

import re

import numpy as np
import pytest

import lorakit as lk
from lorakit.view import figures

pytestmark = pytest.mark.browser

STEPS = 60
MB = 1_000_000
STATE = """() => {
  const gd = document.getElementById('lorakit-figure-0');
  return {active: gd._fullLayout.sliders[0].active, title: gd._fullLayout.title.text,
          z: gd._fullData[0].z.map(row => Array.from(row))};
}"""
READY = """() => { const gd = document.getElementById('lorakit-figure-0');
  return !!(gd && gd._fullLayout && gd._fullLayout.sliders && gd._fullLayout.sliders.length
            && gd._transitionData && gd._transitionData._frames.length > 0); }"""




@pytest.fixture(scope="module")
def recording(tiny_recording):
    return tiny_recording  # 61 frames of a tiny Llama's real run (tests/conftest.py)


@pytest.fixture(scope="module")
def anim(recording):
    return figures.matrix_evolution(recording, "q_proj", layer=0, duration=100)


def step_of(title: str) -> int:
    m = re.search(r"step (\d+),", title)
    assert m, title
    return int(m.group(1))


def test_offline_animation_plays_in_chromium_without_network(recording, anim, tmp_path,
                                                             offline_page):
    page = offline_page
    path = lk.export_html(anim, tmp_path / "anim.html", offline=True)
    assert path.stat().st_size > 4.5 * MB                       # plotly.js is inlined
    page.goto(path.as_uri())
    page.wait_for_function(READY, timeout=30_000)
    delta = recording.get("q_proj", 0).delta.float().numpy()   # (61, 64, 64)

    before = page.evaluate(STATE)
    assert before["active"] == 0 and step_of(before["title"]) == 0
    np.testing.assert_array_equal(np.array(before["z"]), delta[0])   # all zero: B = 0

    page.locator("g.updatemenu-button", has_text="Play").click()
    page.wait_for_function(
        "() => document.getElementById('lorakit-figure-0')._fullLayout.sliders[0].active >= 10",
        timeout=30_000)
    page.locator("g.updatemenu-button", has_text="Pause").click()
    page.wait_for_timeout(500)                                  # let the frame in flight land
    paused = page.evaluate(STATE)
    page.wait_for_timeout(1_000)
    still = page.evaluate(STATE)
    assert still["active"] == paused["active"] >= 10            # Pause stopped it
    assert still["title"] == paused["title"]
    i = still["active"]
    assert step_of(still["title"]) == recording.steps[i] == i   # slider and title agree
    np.testing.assert_allclose(np.array(still["z"]), delta[i], rtol=0, atol=0)
    assert np.abs(delta[i]).max() > 0
    assert page.blocked == []                                   # no request left the machine


def test_cdn_version_is_small_and_needs_the_network(anim, tmp_path, offline_page,
                                                    record_property):
    path = lk.export_html(anim, tmp_path / "cdn.html", offline=False)
    size = path.stat().st_size
    record_property("cdn_60_frames_bytes", size)
    assert len(anim.frames) == STEPS + 1 and size <= 5 * MB, size
    offline_page.goto(path.as_uri())
    offline_page.wait_for_timeout(500)
    assert any(u.startswith("https://cdn.plot.ly/plotly-") for u in offline_page.blocked)
    assert offline_page.evaluate("() => typeof window.Plotly") == "undefined"
