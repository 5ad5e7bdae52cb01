"""Tests for lorakit.export on a REAL recording: a tiny Llama (hidden 64, so ΔW is exactly
64 × 64) with LoRA r=8 on q_proj/v_proj, trained 60 steps on iso_dates by lk.train with an
lk.Recorder (61 frames). Checked: plotly.js inlined (offline) vs the CDN script tag, and the
size difference being plotly.js itself; every recorded frame in the page, with its step and the
recorded ΔW values; no auto-play; a 60-frame animation ≤ 5 MB with the CDN; escaping of
<script> in titles, labels and values; unwritable paths raising before anything is written;
atomic replacement; panel pages embedding the widget state; PNG export (magic bytes, size,
frames) through kaleido + Chromium, and its error messages."""

from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import plotly
import plotly.graph_objects as go
import pytest
import torch
from faults import case, raises
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit as lk
from lorakit.files import export
from lorakit.view import figures, render

STEPS = 60
MB = 1_000_000
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"




def tiny_peft(tok):
    """A tiny Llama (hidden 64: ΔW is 64 × 64) with SmolLM2's tokenizer, LoRA r=8 on q, v."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=len(tok),
                         pad_token_id=tok.pad_token_id)
    return lk.attach(LlamaForCausalLM(config), r=8, alpha=16, targets=["q_proj", "v_proj"],
                     seed=0)


@pytest.fixture(scope="module")
def recording(tiny_recording):
    """61 frames (steps 0..60) of a real LoRA run on the tiny Llama (tests/conftest.py)."""
    assert len(tiny_recording) == STEPS + 1
    return tiny_recording


@pytest.fixture(scope="module")
def anim(recording):
    return figures.matrix_evolution(recording, "q_proj", layer=0)


def frames_in(page: str, div: str = "lorakit-figure-0") -> list[dict]:
    """The frames plotly's to_html passes to Plotly.addFrames, parsed back from the page."""
    m = re.search(rf"Plotly\.addFrames\('{div}', (\[.*\])\);", page, re.DOTALL)
    assert m, "no Plotly.addFrames call in the page"
    return json.loads(m.group(1))


def b64_array(spec: dict) -> np.ndarray:
    """plotly's typed-array JSON ({"dtype", "bdata", "shape"}) back to numpy."""
    shape = tuple(int(s) for s in spec["shape"].split(","))
    return np.frombuffer(base64.b64decode(spec["bdata"]), dtype=spec["dtype"]).reshape(shape)


class Texts(HTMLParser):
    """Text content of the <title>, <h1> and <li> elements of a page."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.found: dict[str, list[str]] = {"title": [], "h1": [], "li": []}
        self._open: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag in self.found:
            self._open = tag
            self.found[tag].append("")

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None

    def handle_data(self, data):
        if self._open:
            self.found[self._open][-1] += data


# --------------------------------------------------------------------------- HTML: figures


def test_offline_inlines_plotly_js_and_cdn_uses_script_tag(anim, tmp_path):
    off = export.export_html(anim, tmp_path / "off.html", offline=True)
    cdn = export.export_html(anim, tmp_path / "cdn.html", offline=False)
    assert off == (tmp_path / "off.html").absolute() and cdn.is_file()
    page_off, page_cdn = off.read_text("utf-8"), cdn.read_text("utf-8")
    version = plotly.offline.get_plotlyjs_version()
    tag = f'src="https://cdn.plot.ly/plotly-{version}.min.js"'
    assert tag in page_cdn
    assert not re.search(r"<script[^>]*\ssrc=", page_off)      # nothing loaded from outside
    assert plotly.offline.get_plotlyjs()[:2000] in page_off
    assert plotly.offline.get_plotlyjs()[:2000] not in page_cdn
    # the two pages differ by plotly.js itself (4.8 MB), give or take the two tags
    extra = off.stat().st_size - cdn.stat().st_size
    assert abs(extra - PLOTLY_JS.stat().st_size) < 2_000, (extra, PLOTLY_JS.stat().st_size)
    # the same figure data in both
    assert frames_in(page_off) == frames_in(page_cdn)


def test_every_frame_is_in_the_page_with_its_step_and_values(recording, anim, tmp_path):
    page = export.export_html(anim, tmp_path / "a.html", offline=False).read_text("utf-8")
    frames = frames_in(page)
    assert [f["name"] for f in frames] == [str(s) for s in recording.steps]
    assert len(frames) == STEPS + 1
    delta = recording.get("q_proj", 0).delta.float().numpy()           # (F, 64, 64)
    assert delta.shape == (STEPS + 1, 64, 64)
    for i in (0, 1, STEPS // 2, STEPS):
        z = b64_array(frames[i]["data"][0]["z"])
        np.testing.assert_array_equal(z, delta[i])
        assert f"step {recording.steps[i]}," in frames[i]["layout"]["title"]["text"]
    assert np.abs(delta[0]).max() == 0 and np.abs(delta[-1]).max() > 0   # B = 0 at step 0
    # Play/Pause and the slider are there; nothing starts by itself (auto_play=False)
    assert '"label":"Play"' in page and '"label":"Pause"' in page
    assert "Plotly.animate(" not in page
    titles = Texts(page).found
    assert titles["title"] == ["q_proj, layer 0: ΔW — step 0, loss n/a"] and titles["h1"] == []


def test_60_frame_animation_with_cdn_is_at_most_5_mb(anim, tmp_path, record_property):
    size = export.export_html(anim, tmp_path / "a.html", offline=False).stat().st_size
    record_property("cdn_60_frames_bytes", size)
    assert len(anim.frames) == STEPS + 1
    # 61 frames of 64 × 64 float32 in base64: 61 · 16,384 · 4/3 ≈ 1.33 MB of data
    assert 1.3 * MB < size <= 5 * MB, size


def test_title_and_figure_text_are_escaped(anim, tmp_path):
    evil = "<script>alert('x')</script> & <b>"
    page = export.export_html(anim, tmp_path / "t.html", title=evil).read_text("utf-8")
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert Texts(page).found["title"] == [evil] and Texts(page).found["h1"] == [evil]
    # text inside a figure (a module name, a prompt in a title) is JSON with "<" escaped,
    # and becomes the page's <title> escaped
    fig = go.Figure(go.Bar(x=["<script>alert(1)</script>"], y=[1]),
                    layout_title_text="<script>alert(2)</script> q_proj")
    page = export.export_html(fig, tmp_path / "f.html", offline=False).read_text("utf-8")
    assert "<script>alert" not in page
    assert "\\u003cscript\\u003ealert(1)" in page
    assert Texts(page).found["title"] == ["<script>alert(2)</script> q_proj"]


# --------------------------------------------------------------------------- paths


def test_unwritable_paths_raise_naming_the_path_and_write_nothing(anim, tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "fig.html"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        export.export_html(anim, missing)
    assert not (tmp_path / "no").exists()
    with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
        export.export_html(anim, tmp_path)
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    with pytest.raises(NotADirectoryError, match=re.escape(str(a_file / "fig.html"))):
        export.export_html(anim, a_file / "fig.html")
    with pytest.raises(ValueError, match=r"\.html"):
        export.export_html(anim, tmp_path / "fig.png")
    with pytest.raises(ValueError, match=r"\.png"):
        export.export_png(anim, tmp_path / "fig.html")
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing.with_suffix(".png")))):
        export.export_png(anim, missing.with_suffix(".png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    assert a_file.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder, so "
                    "there is no permission error to see")
def test_read_only_folder_raises_permission_error(anim, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=re.escape(str(ro / "f.html"))):
            export.export_html(anim, ro / "f.html")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_replaces_atomically_and_leaves_no_temporary_file(anim, tmp_path):
    path = tmp_path / "fig.html"
    path.write_text("old")
    export.export_html(anim, path, offline=False)
    assert path.read_text("utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["fig.html"]
    with pytest.raises(TypeError, match="plotly Figure"):
        export.export_html(object(), path)              # fails while building: file kept
    assert path.read_text("utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["fig.html"]


# --------------------------------------------------------------------------- HTML: panels


def widget_state(page: str) -> dict:
    m = re.search(r'<script type="application/vnd\.jupyter\.widget-state\+json">\s*(.*?)'
                  r"\s*</script>", page, re.DOTALL)
    assert m, "no embedded widget state"
    return json.loads(m.group(1))


def test_widget_tree_page_embeds_state_figures_and_escaped_text(anim, tmp_path):
    """Any ipywidgets tree (what a panel's .widget is): state, view, figures, text."""
    ipw = pytest.importorskip("ipywidgets")
    slider = ipw.IntSlider(value=16, min=1, max=64, description="r")
    label = ipw.HTML("<b>trainable 921,600</b> of 135,436,608 <script>alert(3)</script>")
    prompt = ipw.Text(value="<script>alert(4)</script>", description="prompt")
    out = ipw.Output()
    out.outputs = ({"output_type": "display_data", "metadata": {},
                    "data": {"application/vnd.plotly.v1+json": json.loads(anim.to_json()),
                             "text/plain": "Figure"}},)
    root = ipw.VBox([slider, ipw.HBox([label, prompt]), out])
    page = export.export_html(root, tmp_path / "panel.html", offline=False,
                              title="LoRA <panel>").read_text("utf-8")
    state = widget_state(page)["state"]
    assert {slider.model_id, label.model_id, prompt.model_id, out.model_id,
            root.model_id} <= set(state)
    assert state[slider.model_id]["state"]["value"] == 16
    views = re.findall(r'<script type="application/vnd\.jupyter\.widget-view\+json">\s*(.*?)'
                       r"\s*</script>", page, re.DOTALL)
    assert [json.loads(v)["model_id"] for v in views] == [root.model_id]
    # the figure shown in the Output is also a plain plotly figure, frames and all
    assert len(frames_in(page)) == STEPS + 1
    # text snapshot: escaped, readable without any script
    items = Texts(page).found["li"]
    assert items == ["r: 16", "trainable 921,600 of 135,436,608",
                     "prompt: <script>alert(4)</script>"]
    assert "<script>alert(" not in page.replace("\\u003cscript", "")
    assert Texts(page).found["title"] == ["LoRA <panel>"]


@pytest.mark.parametrize("mode", ["widget", "static"])
def test_lora_panel_page_embeds_its_last_state(smol, tmp_path, mode):
    widgets = pytest.importorskip("lorakit.view.widgets")
    model, _ = smol
    panel = widgets.LoRAPanel(model, display_mode=mode)
    panel.rank_text.value = 16                                  # as a user would, r 8 -> 16
    expected = lk.lora_param_count(model, r=16, targets=["q_proj", "v_proj"])
    total = lk.count_params(model).total + expected
    text = f"trainable {expected:,} of {total:,} = {100 * expected / total:.3f}%"
    assert text == "trainable 921,600 of 135,436,608 = 0.680%"
    page = export.export_html(panel, tmp_path / "lora.html").read_text("utf-8")
    state = widget_state(page)["state"]
    views = re.findall(r'<script type="application/vnd\.jupyter\.widget-view\+json">\s*(.*?)'
                       r"\s*</script>", page, re.DOTALL)
    assert [json.loads(v)["model_id"] for v in views] == [panel.widget.model_id]
    # the last state: r = 16 in the box and on the slider, and the count label's text
    assert state[panel.rank_text.model_id]["state"]["value"] == 16
    assert state[panel.count_label.model_id]["state"]["value"] == text
    assert state[panel.target_boxes["q_proj"].model_id]["state"]["value"] is True
    # only the panel's widgets, not every widget the kernel knows
    other = widgets.LoRAPanel(model, display_mode=mode)
    page = export.export_html(panel, tmp_path / "lora.html").read_text("utf-8")
    assert other.widget.model_id not in widget_state(page)["state"]
    # its chart as a plain plotly figure, with the r = 16 numbers, and the text snapshot
    m = re.search(r'Plotly\.newPlot\(\s*"lorakit-figure-0",\s*(\[.*?\]),\s*\{"', page, re.DOTALL)
    assert m, "the panel's bar chart is not in the page"
    bars = {t["name"]: t for t in json.loads(m.group(1))}
    assert sum(bars["trainable"]["y"]) == expected
    items = Texts(page).found["li"]
    assert text in items and "rank r: 16" in items and "q_proj (576→576): on" in items
    assert Texts(page).found["title"] == ["lorakit LoRAPanel"]


def test_train_panel_page_holds_its_loss_curve_and_animation(smol, tmp_path, one_thread):
    widgets = pytest.importorskip("lorakit.view.widgets")
    _, tok = smol
    panel = widgets.TrainPanel(tiny_peft(tok), tok, "iso_dates", steps=4, batch_size=2,
                               measure_accuracy=False, background=False)
    with one_thread():
        result = panel.train()
    page = export.export_html(panel, tmp_path / "train.html", offline=False).read_text("utf-8")
    assert '"text":"Training loss' in page                   # the live loss curve
    # the ΔW animation the panel shows: every recorded step (0..4) is a frame in the page
    frames = frames_in(page, "lorakit-figure-1")
    assert [f["name"] for f in frames] == [str(s) for s in range(5)]
    assert len(result.losses) == 4
    assert widget_state(page)["state"][panel.steps_text.model_id]["state"]["value"] == 4


# --------------------------------------------------------------------------- PNG

needs_browser = pytest.mark.skipif(
    render.find_browser() is None,
    reason="no Chrome/Chromium for kaleido: apt-get install chromium (make test does)")


def test_still_applies_a_frame_and_drops_the_controls(recording, anim):
    last = render.still(anim, -1)
    assert not last.frames and not last.layout.updatemenus and not last.layout.sliders
    np.testing.assert_array_equal(np.asarray(last.data[0].z),
                                  recording.get("q_proj", 0).delta[-1].float().numpy())
    assert f"step {STEPS}," in last.layout.title.text
    assert render.still(anim, str(STEPS)).layout.title.text == last.layout.title.text
    first = render.still(anim)
    assert "step 0," in first.layout.title.text and not np.asarray(first.data[0].z).any()
    assert anim.frames and anim.layout.updatemenus            # the original is untouched
    with pytest.raises(ValueError, match="out of range"):
        render.still(anim, STEPS + 1)
    with pytest.raises(ValueError, match="not an animation"):
        render.still(go.Figure(go.Bar(y=[1])), 0)


@needs_browser
def test_png_is_a_real_png_of_the_requested_size(anim, tmp_path):
    first = export.export_png(anim, tmp_path / "first.png")
    data = first.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert render.png_size(data) == (700 * 2, 500 * 2)        # plotly's width, fig's height
    last = export.export_png(anim, tmp_path / "last.png", width=400, height=300, scale=1,
                             frame=-1)
    assert render.png_size(last.read_bytes()) == (400, 300)
    small_first = export.export_png(anim, tmp_path / "small_first.png", width=400,
                                    height=300, scale=1)
    assert small_first.read_bytes() != last.read_bytes()      # a different frame is drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.png", "last.png",
                                                          "small_first.png"]


def test_png_without_browser_or_kaleido_says_what_to_install(anim, tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    with pytest.raises(RuntimeError, match="apt-get install chromium"):
        export.export_png(anim, tmp_path / "x.png")
    monkeypatch.setitem(__import__("sys").modules, "kaleido", None)
    with pytest.raises(ImportError, match="pip install kaleido"):
        export.export_png(anim, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="scale"):
        export.export_png(anim, tmp_path / "x.png", scale=0)


# -- bad input and faults: a clear error, nothing changed (docs/reliability.md) --------------------
@case("export_html into an unwritable folder (/proc)", "PermissionError: cannot write the file "
      "'/proc/…'", "checked before anything is rendered")
def test_export_unwritable_before_render(monkeypatch):
    import plotly.graph_objects as go

    from lorakit.files import export

    rendered = []
    monkeypatch.setattr(export, "write_atomic", lambda *a: rendered.append(a))
    raises(PermissionError, "cannot write the file '/proc/f.html'", export.export_html,
           go.Figure(), "/proc/f.html")
    assert rendered == []
