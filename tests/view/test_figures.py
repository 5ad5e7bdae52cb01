"""Tests for lorakit.figures on a REAL recording (SmolLM2, r=8 on q_proj/v_proj, 12 steps):
frames == recorded steps, one symmetric colour range equal to max |value| over all frames,
frame titles carrying step and loss, Play/Pause/slider controls, ΔW = 0 at step 0, the "all"
layout, parameter/budget numbers equal to their sources, TensorBoard smoothing checked by hand,
input validation, save -> load -> identical figure, and the JSON size of a 60-frame animation."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch
from faults import case
from figure_rules import problems
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit as lk
from lorakit.core.record import Recording
from lorakit.view import figures

STEPS = 12




@pytest.fixture(scope="module")
def run(one_thread):
    """One real run: (tok, counts, recording, result) after 12 recorded steps."""
    model, tok = lk.load_model(progress=False)
    pm = lk.attach(model, r=8, alpha=16, targets=["q_proj", "v_proj"], seed=0)
    rec = lk.Recorder(pm, every=1)
    with one_thread():
        result = lk.train(pm, tok, lk.tasks.get("iso_dates"), steps=STEPS, lr=2e-3,
                          batch_size=4, recorder=rec, progress=False)
    return SimpleNamespace(tok=tok, counts=lk.count_params(pm), recording=rec.recording,
                           result=result)


def tiny_peft(hidden: int = 64, vocab: int = 256, layers: int = 1):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=vocab)
    return lk.attach(LlamaForCausalLM(config), r=4, alpha=8, targets=["q_proj", "v_proj"],
                     seed=0)


TITLE = re.compile(r"step (\d+), loss (n/a|[-+.\deE]+)")


def parse_title(text: str):
    m = TITLE.search(text)
    assert m, text
    return int(m.group(1)), (None if m.group(2) == "n/a" else float(m.group(2)))


def max_abs(t: torch.Tensor) -> float:
    return float(t.float().abs().max())


# --------------------------------------------------------------------------- matrix_evolution


def test_frames_range_titles_and_zero_delta(run):
    rec = run.recording
    assert len(rec) == STEPS + 1 and rec.steps == list(range(STEPS + 1))
    for name in rec.modules:
        f = rec.frames(name)
        fig = figures.matrix_evolution(rec, name)
        assert len(fig.frames) == len(rec)
        m = max_abs(f.delta)
        assert m > 0
        for i, frame in enumerate(fig.frames):
            (h,) = frame.data
            assert h.type == "heatmap"
            assert h.zmin == -m and h.zmax == m and h.zmid == 0        # one symmetric range
            np.testing.assert_array_equal(np.asarray(h.z), f.delta[i].float().numpy())
            step, loss = parse_title(frame.layout.title.text)
            assert step == rec.steps[i]
            if rec.losses[i] is None:
                assert loss is None
            else:
                assert loss == pytest.approx(rec.losses[i], rel=5e-3)
            assert f.module_type in frame.layout.title.text
        assert fig.data[0].zmin == -m and fig.data[0].zmax == m
        assert fig.layout.title.text == fig.frames[0].layout.title.text
        z0, z_last = np.asarray(fig.frames[0].data[0].z), np.asarray(fig.frames[-1].data[0].z)
        assert z0.shape == (64, 64) and np.all(z0 == 0)                # B = 0 at step 0
        assert np.any(z_last != 0)


def test_play_pause_and_slider(run):
    fig = figures.matrix_evolution(run.recording, "layers.0.q_proj")
    names = [fr.name for fr in fig.frames]
    assert names == [str(s) for s in run.recording.steps] and len(set(names)) == len(names)
    (menu,) = fig.layout.updatemenus
    play, pause = menu.buttons
    assert (play.label, play.method) == ("Play", "animate")
    assert play.args[0] is None and play.args[1]["fromcurrent"] is True
    assert play.args[1]["frame"]["redraw"] is True and play.args[1]["frame"]["duration"] > 0
    assert (pause.label, pause.method) == ("Pause", "animate")
    assert list(pause.args[0]) == [None] and pause.args[1]["mode"] == "immediate"
    (slider,) = fig.layout.sliders
    assert len(slider.steps) == len(fig.frames)
    for st, fr in zip(slider.steps, fig.frames, strict=True):
        assert st.method == "animate" and list(st.args[0]) == [fr.name] and st.label == fr.name
        assert st.args[1]["mode"] == "immediate"


def test_which_all_and_single_factors(run):
    rec = run.recording
    f = rec.get("v_proj", 29)
    fig = figures.matrix_evolution(rec, "v_proj", layer=29, which="all")
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    keys = ("A", "B", "delta")
    for frame in fig.frames:
        assert [t.type for t in frame.data] == ["heatmap"] * 3 and list(frame.traces) == [0, 1, 2]
        for t, key in zip(frame.data, keys, strict=True):
            m = max_abs(getattr(f, key))
            assert t.zmin == -m and t.zmax == m                        # per-matrix range
    np.testing.assert_array_equal(np.asarray(fig.frames[0].data[2].z), 0)
    assert np.asarray(fig.frames[-1].data[0].z).shape == (8, 64)       # A: (r, ≤D)
    assert np.asarray(fig.frames[-1].data[1].z).shape == (64, 8)       # B: (≤D, r)
    assert fig.layout.yaxis.autorange == "reversed"                    # row 0 at the top
    shared = figures.matrix_evolution(rec, "v_proj", layer=29, which="all", shared_range=True)
    m_all = max(max_abs(getattr(f, k)) for k in keys)
    assert {(t.zmin, t.zmax) for fr in shared.frames for t in fr.data} == {(-m_all, m_all)}
    for which, key in (("A", "A"), ("B", "B")):
        fig = figures.matrix_evolution(rec, "layers.29.v_proj", which=which)
        np.testing.assert_array_equal(np.asarray(fig.frames[5].data[0].z),
                                      getattr(f, key)[5].float().numpy())


def test_module_name_forms_and_errors(run):
    rec = run.recording
    want = figures.matrix_evolution(rec, "layers.0.q_proj").to_json()
    assert figures.matrix_evolution(rec, "q_proj", layer=0).to_json() == want
    assert figures.matrix_evolution(rec, "model.layers.0.self_attn.q_proj").to_json() == want
    with pytest.raises(ValueError, match=r"layers\.0\.q_proj.*layers\.29\.v_proj"):
        figures.matrix_evolution(rec, "k_proj", layer=0)
    with pytest.raises(ValueError, match="layer="):
        figures.matrix_evolution(rec, "q_proj")                        # two layers recorded
    with pytest.raises(ValueError, match="layer 5"):
        figures.matrix_evolution(rec, "q_proj", layer=5)
    with pytest.raises(ValueError, match="'delta', 'all'"):
        figures.matrix_evolution(rec, "layers.0.q_proj", which="dW")
    with pytest.raises(ValueError, match="layers.0.q_proj"):
        figures.spectrum_over_time(rec, "nope")


def test_empty_and_all_zero_recordings():
    pm = tiny_peft()
    empty = lk.Recorder(pm).recording
    for build in (lambda r: figures.matrix_evolution(r, "layers.0.q_proj"),
                  figures.norms_over_time,
                  lambda r: figures.spectrum_over_time(r, "layers.0.q_proj"),
                  figures.loss_curve):
        with pytest.raises(ValueError, match="nothing to show"):
            build(empty)
    rec = lk.Recorder(pm)
    rec.on_step(0, None)                                               # one frame, ΔW = 0
    fig = figures.matrix_evolution(rec.recording, "layers.0.q_proj")
    h = fig.frames[0].data[0]
    assert np.all(np.asarray(h.z) == 0) and 0 < h.zmax < 1e-6 and h.zmin == -h.zmax


def test_saved_recording_rebuilds_identical_figures(run, tmp_path):
    rec = run.recording
    loaded = Recording.load(rec.save(tmp_path / "run.safetensors"))
    for build in (lambda r: figures.matrix_evolution(r, "q_proj", layer=29, which="all"),
                  figures.norms_over_time,
                  lambda r: figures.spectrum_over_time(r, "layers.0.v_proj"),
                  figures.loss_curve):
        assert build(loaded).to_json() == build(rec).to_json()


def test_json_size_of_60_frame_animation(run, one_thread):
    """60 recorded steps of a 64×64 q_proj (a tiny Llama, the real tokenizer and lk.train)."""
    pm = tiny_peft(hidden=64, vocab=len(run.tok))
    rec = lk.Recorder(pm, modules=["q_proj"], every=1)
    with one_thread():
        lk.train(pm, run.tok, lk.tasks.get("iso_dates"), steps=59, batch_size=1, lr=1e-2,
                 recorder=rec, progress=False)
    fig = figures.matrix_evolution(rec.recording, "q_proj", which="delta")
    assert len(fig.frames) == 60 and np.asarray(fig.frames[-1].data[0].z).shape == (64, 64)
    size = len(fig.to_json())
    assert size < 2_000_000, size                                      # well under 5 MB


# --------------------------------------------------------------------------- norms, spectra


def test_norms_over_time(run):
    rec = run.recording
    fig = figures.norms_over_time(rec)
    assert len(fig.data) == 3 * len(rec.modules)
    for t in fig.data:
        assert list(t.x) == rec.steps
    by_name = {}
    for t in fig.data:
        by_name.setdefault(t.name, []).append(t)
    for name, traces in by_name.items():
        f = rec.frames(name)
        for t, key in zip(traces, ("norm_A", "norm_B", "norm_delta"), strict=True):
            np.testing.assert_allclose(t.y, getattr(f, key).numpy())
        assert [t.showlegend for t in traces] == [True, False, False]
        assert len({t.line.color for t in traces}) == 1
        assert traces[2].y[0] == 0 and traces[2].y[-1] > 0               # ‖ΔW‖ grows from 0
    only_q = figures.norms_over_time(rec, modules="q_proj")
    assert {t.name for t in only_q.data} == {"layers.0.q_proj", "layers.29.q_proj"}
    with pytest.raises(ValueError, match="k_proj"):
        figures.norms_over_time(rec, modules=["k_proj"])


def test_spectrum_over_time(run):
    rec = run.recording
    f = rec.get("q_proj", 0)
    fig = figures.spectrum_over_time(rec, "q_proj", layer=0)
    assert [t.name for t in fig.data] == [f"σ{i}" for i in range(1, 9)]
    sv = np.array([t.y for t in fig.data]).T                            # (F, k)
    np.testing.assert_array_equal(sv, f.sv.numpy())
    assert np.all(sv[0] == 0) and np.all(np.diff(sv[-1]) <= 0) and sv[-1, 0] > 0
    assert figures.spectrum_over_time(rec, "q_proj", layer=0, log=True).layout.yaxis.type == "log"


# --------------------------------------------------------------------------- parameters


def bar(fig, name):
    (t,) = [t for t in fig.data if t.name == name]
    return t


@pytest.mark.parametrize("by", ["type", "layer"])
def test_param_bars_totals(run, by):
    c = run.counts
    fig = figures.param_bars(c, by=by)
    assert sum(bar(fig, "trainable").y) == c.trainable == 460_800
    assert sum(bar(fig, "frozen").y) == c.frozen
    assert f"trainable {c.trainable:,} of {c.total:,} = {c.trainable_pct:.3f}%" in \
        fig.layout.title.text
    assert fig.layout.barmode == "stack" and not fig.layout.annotations
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["linear", "log"]
    assert [b.args[0]["yaxis.type"] for b in buttons] == ["linear", "log"]
    if by == "type":
        q = list(bar(fig, "trainable").x).index("q_proj")
        assert bar(fig, "trainable").y[q] == c.by_type["q_proj"].trainable
    else:
        assert list(bar(fig, "frozen").x)[:2] == ["0", "1"] and fig.layout.xaxis.type == "category"
    log = figures.param_bars(c, by=by, log=True)
    assert log.layout.yaxis.type == "log" and log.layout.barmode == "group"


def test_param_bars_without_lora():
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64,
                                         vocab_size=64))
    full = figures.param_bars(lk.count_params(model))                  # plain model: all train
    assert "no LoRA" in full.layout.title.text and not full.layout.annotations   # above the bars
    model.requires_grad_(False)
    counts = lk.count_params(model)
    fig = figures.param_bars(counts)
    assert counts.trainable == 0 and sum(bar(fig, "frozen").y) == counts.total
    assert "trainable 0" in fig.layout.title.text and "lk.attach" in fig.layout.title.text
    assert "no trainable parameters" in fig.layout.title.text and not fig.layout.annotations
    told = figures.param_bars(counts, empty_note="check a target")        # a panel's own words
    assert "check a target" in told.layout.title.text and "lk.attach" not in told.layout.title.text
    sun = figures.param_sunburst(counts)
    assert "trainable" not in sun.data[0].ids


def test_param_sunburst(run):
    c = run.counts
    (s,) = figures.param_sunburst(c).data
    value = dict(zip(s.ids, s.values, strict=True))
    real = dict(zip(s.ids, s.customdata, strict=True))        # the real counts (hover)
    parent = dict(zip(s.ids, s.parents, strict=True))
    assert real["all"] == c.total and real["frozen"] == c.frozen
    assert real["trainable"] == c.trainable
    assert real["trainable/q_proj"] == c.by_type["q_proj"].trainable and parent[
        "trainable/q_proj"] == "trainable"
    # drawn: the 0.3% adapter would be a hairline, so its slice is enlarged, and says so
    assert c.trainable / c.total < 0.01
    assert value["trainable"] / value["all"] == pytest.approx(figures.SUNBURST_MIN_SHARE)
    assert value["frozen"] + value["trainable"] == pytest.approx(value["all"])
    label = dict(zip(s.ids, s.labels, strict=True))["trainable"]
    assert "drawn enlarged" in label and f"{100 * c.trainable / c.total:.3g}%" in label
    assert s.marker.colors[s.ids.index("trainable")] != s.marker.colors[s.ids.index("frozen")]
    for part in ("frozen", "trainable"):
        assert sum(v for i, v in value.items() if parent[i] == part) == pytest.approx(value[part])


def test_budget_bars_llama_2_7b():
    b = lk.estimate("llama-2-7b", r=8, targets=["q_proj", "v_proj"])
    fig = figures.budget_bars(b)
    setups = ("full", "lora", "qlora")
    for part in ("weights", "gradients", "optimizer", "master"):
        t = bar(fig, part)
        assert list(t.customdata) == [getattr(b, f"{s}_{part}") for s in setups]
        assert list(t.y) == [getattr(b, f"{s}_{part}") / 1e9 for s in setups]
    totals = np.sum([bar(fig, p).y for p in ("weights", "gradients", "optimizer", "master")], 0)
    np.testing.assert_allclose(totals, [b.total_bytes(s) / 1e9 for s in setups])
    assert totals[0] == pytest.approx(16 * b.total_params / 1e9)      # 16 B/param, full FT
    assert fig.layout.barmode == "stack" and "llama-2-7b" in fig.layout.title.text
    # two short title lines, not one 120-character line running under the mode bar
    lines = fig.layout.title.text.replace("<sup>", "").replace("</sup>", "").split("<br>")
    assert len(lines) == 2 and max(map(len, lines)) <= 70 and fig.layout.margin.t >= 100
    assert [a.text for a in fig.layout.annotations] == [f"{x:.1f} GB" for x in totals]


# --------------------------------------------------------------------------- loss, sweeps


def test_loss_curve_debiased_ema_by_hand():
    fig = figures.loss_curve([1.0, 0.0, 0.5], smooth=0.5)
    raw, smooth = fig.data
    assert list(raw.x) == [1, 2, 3] and list(raw.y) == [1.0, 0.0, 0.5]
    # EMA from 0: 0.5, 0.25, 0.375; debiased by 1 - 0.5^n: 0.5, 0.75, 0.875
    np.testing.assert_allclose(smooth.y, [1.0, 1 / 3, 3 / 7])
    assert list(figures.loss_curve([1.0, 0.0], smooth=0).data[1].y) == [1.0, 0.0]
    skipped = figures.loss_curve([None, 2.0, 1.0])
    assert list(skipped.data[0].x) == [2, 3]
    for bad in (1, -0.1, 1.5):
        with pytest.raises(ValueError, match="smooth"):
            figures.loss_curve([1.0], smooth=bad)
    with pytest.raises(ValueError, match="nothing to show"):
        figures.loss_curve([])


def test_loss_curve_sources_agree(run):
    res, rec = run.result, run.recording
    a, b = figures.loss_curve(res), figures.loss_curve(rec)
    assert list(a.data[0].x) == list(range(1, STEPS + 1)) == list(b.data[0].x)
    np.testing.assert_allclose(a.data[0].y, res.losses)
    np.testing.assert_allclose(b.data[0].y, res.losses)
    np.testing.assert_allclose(a.data[1].y, b.data[1].y)
    assert f"step {STEPS}: {res.losses[-1]:.3g}" in a.layout.title.text


SWEEP = [{"r": 16, "trainable": 921_600, "final_loss": 0.01, "accuracy": 0.98},
         {"r": 4, "trainable": 230_400, "final_loss": 0.02, "accuracy": 0.96},
         {"r": 8, "trainable": 460_800, "final_loss": 0.015, "accuracy": 0.97}]


def test_rank_sweep():
    fig = figures.rank_sweep(SWEEP)
    loss_r, acc_r, loss_p, acc_p = fig.data
    assert list(loss_r.x) == [4, 8, 16] and list(loss_r.y) == [0.02, 0.015, 0.01]
    assert list(acc_p.x) == [230_400, 460_800, 921_600] and list(acc_p.y) == [0.96, 0.97, 0.98]
    assert loss_p.xaxis == "x2" and fig.layout.xaxis.type == "log"
    assert fig.layout.xaxis2.type == "log" and list(fig.layout.xaxis.tickvals) == [4, 8, 16]
    assert acc_r.yaxis != loss_r.yaxis                                   # accuracy: right axis
    only_loss = figures.rank_sweep([{k: v for k, v in r.items() if k != "accuracy"}
                                    for r in SWEEP])
    assert [t.name for t in only_loss.data] == ["final_loss", "final_loss"]


@pytest.mark.parametrize("rows, match", [
    ([], "non-empty"),
    ({"r": 4}, "non-empty"),
    ([{"r": 4, "final_loss": 0.1}], "trainable"),
    ([{"r": 4, "trainable": 10}], "final_loss.*accuracy"),
    ([{"r": 0, "trainable": 10, "final_loss": 0.1}], "positive integer"),
    ([{"r": True, "trainable": 10, "final_loss": 0.1}], "positive integer"),
    ([{"r": 4, "trainable": 10, "accuracy": float("nan")}], "finite"),
    ([(4, 10, 0.1)], "dict"),
])
def test_rank_sweep_validates(rows, match):
    with pytest.raises(ValueError, match=match):
        figures.rank_sweep(rows)


# --------------------------------------------------------------------------- style


def every_builder(run) -> list:
    """One figure of every lorakit builder (the low-rank and analysis ones included)."""
    rec, m = run.recording, "layers.0.q_proj"
    fake = SimpleNamespace(name="lora", losses=[1.0, 0.5, 0.2], trainable=100, accuracy=0.5)
    return [figures.param_bars(run.counts), figures.param_bars(run.counts, log=True),
            figures.param_sunburst(run.counts), figures.budget_bars(lk.estimate("smollm2-135m")),
            figures.matrix_evolution(rec, m), figures.matrix_evolution(rec, m, which="all"),
            figures.low_rank_view(rec, m), figures.norms_over_time(rec),
            figures.loss_curve(run.result), figures.spectrum_over_time(rec, m, log=True),
            figures.rank_sweep(SWEEP), figures.spectra({"a": [3.0, 1.0, 0.01]}),
            figures.similarity_heatmap(np.eye(3)), figures.method_comparison([fake]),
            figures.style(go.Figure(go.Bar(x=["a"], y=[1])), "ad hoc", x="kind", y="memory (GB)")]


@pytest.mark.parametrize("theme", figures.THEMES)
def test_every_figure_uses_the_template_has_axis_titles_and_one_unit_per_axis(run, capsys,
                                                                              theme):
    before = figures.get_theme()
    try:
        assert figures.set_theme(theme) == theme
        assert pio.templates.default == figures.TEMPLATE_NAMES[theme]
        figs = every_builder(run)
        adhoc = go.Figure(go.Scatter(x=[1, 2], y=[1, 2]))      # plotly's default is now ours
        adhoc_bg = pio.to_templated(adhoc).layout.template.layout.paper_bgcolor \
            if hasattr(pio, "to_templated") else None
    finally:
        figures.set_theme(before)
    for fig in figs:
        assert problems(fig.to_dict()) == [], fig.layout.title.text
        tpl = fig.layout.template.layout
        assert tpl.paper_bgcolor == ("#111111" if theme == "dark" else "#FFFFFF")
        assert fig.layout.width is None and fig.layout.autosize    # fills its container
        assert fig.layout.title.text
    assert adhoc_bg in (None, "#111111" if theme == "dark" else "#FFFFFF")
    assert capsys.readouterr() == ("", "")                             # builders never print


def test_the_rules_catch_plotlys_default_a_missing_title_and_mixed_units():
    plain = go.Figure(go.Bar(x=["a"], y=[1]), layout=dict(template="plotly_white"))
    assert any("not lorakit's template" in p for p in problems(plain.to_dict()))
    assert any("xaxis has no title" in p for p in problems(plain.to_dict()))
    mixed = figures.style(go.Figure([go.Bar(x=["lora"], y=[3.1], name="memory (GB)"),
                                     go.Bar(x=["lora"], y=[12], name="time (s)")]),
                          "LoRA vs full", x="setup", y="value")
    assert problems(mixed.to_dict()) == ["'LoRA vs full': yaxis mixes units ['bytes', "
                                         "'seconds']"]


def test_log_axes_get_readable_major_ticks_only():
    assert figures.log_ticks(0.004, 0.9)["ticktext"] == ["0.001", "0.01", "0.1", "1"]
    assert figures.log_ticks(2, 30)["ticktext"] == ["2", "5", "10", "20"]
    assert figures.log_ticks(0.015, 0.09)["ticktext"] == ["0.02", "0.03", "0.05", "0.07"]
    assert figures.log_ticks(1.1, 1.3) == {}                 # too short: plotly's own ticks
    assert figures.log_ticks(1e-9, 10)["tickvals"] == [1e-9, 1e-7, 1e-5, 1e-3, 1e-1, 10.0]
    fig = figures.spectra({"a": [3.0, 1.0, 0.5]})                    # one decade: 1-2-5
    assert fig.layout.yaxis.ticktext == ("0.5", "1", "2")
    bars = figures.param_bars(SimpleNamespace(
        rows=lambda by: [{"type": "q", "frozen": 100, "trainable": 2, "total": 102}],
        trainable=2, total=102, trainable_pct=1.96))
    log_button = next(b for b in bars.layout.updatemenus[0].buttons if b.label == "log")
    assert log_button.args[0]["yaxis.ticktext"] == ["2", "5", "10", "20", "50", "100"]
    lin_button = next(b for b in bars.layout.updatemenus[0].buttons if b.label == "linear")
    assert lin_button.args[0]["yaxis.tickmode"] == "auto"


def test_set_theme_auto_reads_jupyterlabs_saved_theme(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path))
    assert figures.jupyterlab_theme() is None                          # nothing saved
    path = tmp_path / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
    path.parent.mkdir(parents=True)
    path.write_text('{\n  // JupyterLab writes JSON5\n  "theme": "JupyterLab Dark",\n}')
    assert figures.jupyterlab_theme() == "dark"
    before = figures.get_theme()
    try:
        assert figures.set_theme() == "dark" and figures.template() is figures.TEMPLATES["dark"]
        assert figures.loss_curve([1.0, 0.5]).layout.template.layout.paper_bgcolor == "#111111"
        path.write_text('{"theme": "JupyterLab Light"}')
        assert figures.set_theme("auto") == "light"
        with pytest.raises(ValueError, match="'auto', 'light' or 'dark'"):
            figures.set_theme("solarized")
        assert figures.get_theme() == "light"                          # unchanged by the error
    finally:
        figures.set_theme(before)


def test_low_rank_view_shows_only_r_non_zero_values(run):
    rec = run.recording
    f = rec.frames("layers.0.q_proj")
    fig = figures.low_rank_view(rec, "layers.0.q_proj", start=-1)
    corner = np.asarray(fig.data[1].z, dtype=float)
    assert corner.shape == (f.r + 4, f.r + 4)
    np.testing.assert_allclose(np.diag(corner)[:f.r], f.sv[-1].numpy(), rtol=1e-6)
    assert not corner[f.r:].any() and not corner[:, f.r:].any()
    assert np.count_nonzero(corner) == f.r
    assert "576×576" in fig.layout.annotations[0].text
    assert f"only the r = {f.r} diagonal values" in fig.layout.annotations[1].text
    assert "step 12" in fig.layout.title.text and fig.layout.sliders[0].active == len(rec) - 1
    assert len(fig.frames) == len(rec) and not np.asarray(fig.frames[0].data[1].z).any()
    with pytest.raises(ValueError, match="start must be a frame index"):
        figures.low_rank_view(rec, "layers.0.q_proj", start=len(rec))


def test_one_template_and_diverging_scale(run, capsys):
    figs = [figures.param_bars(run.counts), figures.matrix_evolution(run.recording,
                                                                     "layers.0.q_proj")]
    for fig in figs:
        assert list(fig.layout.template.layout.colorway) == list(figures.OKABE_ITO)
        assert fig.layout.title.text
    scale = figs[1].data[0].colorscale
    assert scale[0][1] == "rgb(5,48,97)" and scale[-1][1] == "rgb(103,0,31)"  # blue → red
    assert capsys.readouterr() == ("", "")                             # builders never print


def test_loss_curve_takes_the_steps_of_a_continued_run():
    fig = figures.loss_curve([1.0, 0.5, 0.25], steps=[41, 42, 43])
    assert list(fig.data[0].x) == [41, 42, 43] and "step 43" in fig.layout.title.text
    with pytest.raises(ValueError, match="2 entries for 3 losses"):
        figures.loss_curve([1.0, 0.5, 0.25], steps=[1, 2])


@case("lk.set_theme('solarized')", "ValueError: theme must be 'auto', 'light' or 'dark'",
      "the theme in use and plotly's default template")
def test_set_theme_refuses_an_unknown_theme_and_keeps_the_current_one():
    theme, default = figures.get_theme(), pio.templates.default
    with pytest.raises(ValueError, match="theme must be 'auto', 'light' or 'dark'"):
        figures.set_theme("solarized")
    assert (figures.get_theme(), pio.templates.default) == (theme, default)


@case("figures.low_rank_view(recording, module, start=99) on 13 frames",
      "ValueError: start must be a frame index in -13..12", "the recording")
def test_low_rank_view_refuses_a_start_outside_the_frames(run):
    before = run.recording.frames("layers.0.q_proj").sv.clone()
    with pytest.raises(ValueError, match=r"start must be a frame index in -13\.\.12"):
        figures.low_rank_view(run.recording, "layers.0.q_proj", start=99)
    with pytest.raises(ValueError, match="start must be a frame index"):
        figures.matrix_evolution(run.recording, "layers.0.q_proj", start=True)
    assert torch.equal(run.recording.frames("layers.0.q_proj").sv, before)
