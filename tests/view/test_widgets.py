"""The panels (lorakit/widgets.py), driven from Python on the real SmolLM2: no browser.

Controls are set through ``.value`` and buttons through ``.click()``; observers run
synchronously, so every label and figure is checked right after. Counts are checked against
PEFT's own ``get_nb_trainable_parameters`` on a separately wrapped model. The last test runs
tests/ipywidgets7_check.py under ipywidgets 7.7.1 (Colab's), installed once into the pytest
cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import lorakit as lk
from lorakit.core.attach import has_adapter
from lorakit.core.settings import LoraSettings, help_text
from lorakit.view import widgets

ROOT = Path(__file__).resolve().parents[2]
PLOTLY = "application/vnd.plotly.v1+json"
MODES = ("static", "widget")
SMOL_BASE = 134_515_008          # SmolLM2-135M parameters (tied embedding once)


def peft_text(model, **config) -> tuple[str, int, int]:
    """PEFT's own count for ``config`` on ``model`` (wrapped here, independently of lorakit)."""
    peft_model = get_peft_model(model, LoraConfig(**config))
    trainable, total = peft_model.get_nb_trainable_parameters()
    return f"trainable {trainable:,} of {total:,} = {100 * trainable / total:.3f}%", \
        trainable, total


def shown_plotly(view) -> dict:
    """The plotly JSON an Output widget (static mode) holds."""
    (out,) = view.widget.outputs
    return out["data"][PLOTLY]


def trainable_on_screen(panel) -> int:
    """Sum of the 'trainable' bars as the front end gets them, in either mode."""
    if panel.display_mode == "widget":
        fw = panel.bar_figure
        assert type(fw).__name__ == "FigureWidget"
        return sum(fw.data[1].y)
    data = shown_plotly(panel.bar_view)["data"]
    assert data[1]["name"] == "trainable"
    return sum(data[1]["y"])


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Training and generation on a shared 2-core machine: one torch thread is ~10× faster."""
    with one_thread():
        yield


@pytest.fixture
def trainable_model(fresh):
    model, tok = fresh
    return lk.attach(model, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0), tok


# --------------------------------------------------------------------------- LoRAPanel


@pytest.mark.parametrize("mode", MODES)
def test_rank_16_count_is_peft_count(smol, fresh, mode):
    model, _ = smol
    expected, trainable, total = peft_text(fresh[0], r=16, lora_alpha=32,
                                           target_modules=["q_proj", "v_proj"])
    panel = lk.LoRAPanel(model, display_mode=mode)
    assert panel.display_mode == mode
    assert panel.targets == ("q_proj", "v_proj")
    assert panel.count_label.value == "trainable 460,800 of 134,975,808 = 0.341%"  # r=8
    panel.rank_slider.value = 16
    assert panel.rank_text.value == 16
    assert panel.count_label.value == expected
    assert (panel.counts.trainable, panel.counts.total) == (trainable, total)
    assert trainable_on_screen(panel) == trainable
    assert panel.bar_view.figure.layout.title.text.endswith(expected.removeprefix("trainable"))
    assert not panel.apply_button.disabled and panel.error.value == ""
    assert not has_adapter(model)           # nothing was wrapped while counting


def test_free_rank_entry_and_alpha_link(smol):
    model, _ = smol
    panel = lk.LoRAPanel(model, display_mode="static")
    assert panel.link_box.value and panel.alpha_text.disabled         # α = 2r = 16 at start
    panel.rank_slider.value = 32
    assert (panel.rank_text.value, panel.alpha_text.value) == (32, 64)
    panel.rank_text.value = 12               # not a slider stop: the slider sits below it
    assert panel.rank_slider.value == 8 and panel.alpha_text.value == 24
    # q: 576→576, v: 576→192, 30 layers each: 12 · (1152 + 768) · 30
    assert panel.counts.trainable == 691_200
    assert panel.scale_label.value.startswith("ΔW = 2·B·A")
    panel.link_box.value = False
    assert not panel.alpha_text.disabled
    panel.rank_slider.value = 4
    assert panel.alpha_text.value == 24                                 # unlinked: α stays
    assert panel.scale_label.value.startswith("ΔW = 6·B·A")
    panel.link_box.value = True
    assert panel.alpha_text.value == 8 and panel.alpha_text.disabled
    panel.alpha_text.value = 5.0             # an explicit α from code wins over the link
    assert not panel.link_box.value and panel.alpha_text.value == 5.0
    panel.alpha_text.value = 0.0
    assert panel.apply_button.disabled and "alpha must be a finite number &gt; 0" in panel.message.value
    panel.variant_buttons.value = "rslora"
    panel.alpha_text.value = 8.0
    assert panel.scale_label.value.startswith("ΔW = 4·B·A") and "α/√r" in \
        panel.scale_label.value


def test_targets_and_variant_change_the_count(smol):
    model, _ = smol
    panel = lk.LoRAPanel(model, display_mode="static")
    assert set(panel.target_boxes) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                       "up_proj", "down_proj"}
    before = panel.counts.trainable
    panel.target_boxes["k_proj"].value = True
    assert panel.counts.trainable == before + 8 * (576 + 192) * 30
    assert panel.counts.by_type["k_proj"].trainable == 8 * (576 + 192) * 30
    assert trainable_on_screen(panel) == panel.counts.trainable
    panel.variant_buttons.value = "dora"     # + the magnitude vector m: (d_out,) per module
    assert panel.counts.trainable == before + 8 * 768 * 30 + (576 + 192 + 192) * 30
    assert panel.count_label.value == str(panel.counts)
    for box in panel.target_boxes.values():
        box.value = False
    assert panel.apply_button.disabled
    assert "No target module is checked" in panel.message.value
    assert panel.count_label.value == f"trainable 0 of {SMOL_BASE:,} = 0.000%"
    title = panel.bar_view.figure.layout.title.text     # the chart says why, in panel terms
    assert "no target module checked" in title and "lk.attach" not in title
    assert not panel.bar_view.figure.layout.annotations  # nothing drawn over the bars
    with pytest.raises(ValueError, match="No target module"):
        panel.apply()


def test_rank_too_large_for_k_proj_refuses_apply(fresh):
    model, _ = fresh
    panel = lk.LoRAPanel(model, display_mode="static")
    panel.target_boxes["v_proj"].value = False
    panel.target_boxes["k_proj"].value = True
    panel.rank_slider.value = 256
    assert "k_proj (576→192, 30 modules)" in panel.message.value
    assert "min(d_in, d_out) = 192" in panel.message.value
    assert "q_proj" not in panel.message.value            # 576→576 takes r = 256
    assert panel.apply_button.disabled
    assert panel.counts.trainable == 256 * (1152 + 768) * 30    # still counted and shown
    with pytest.raises(ValueError, match="k_proj"):
        panel.apply()
    panel.apply_button.click()                 # from the UI: refused, shown in the panel
    assert "ValueError" in panel.error.value and "k_proj" in panel.error.value
    assert panel.peft_model is None and not has_adapter(model)
    panel.rank_text.value = 192                # r = min(d_in, d_out) is allowed
    assert not panel.apply_button.disabled and panel.message.value == ""
    assert panel.error.value == ""             # the next callback clears the error


def test_apply_attaches_for_real_and_reattach_replaces(fresh):
    model, _ = fresh
    panel = lk.LoRAPanel(model, display_mode="widget")
    panel.rank_slider.value = 16
    panel.target_boxes["o_proj"].value = True
    panel.variant_buttons.value = "rslora"
    panel.dropout_slider.value = 0.05
    panel.apply_button.click()
    assert panel.error.value == ""
    pm = panel.peft_model
    assert isinstance(pm, PeftModel)
    cfg = pm.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.use_rslora) == (16, 32, 0.05, True)
    assert set(cfg.target_modules) == {"q_proj", "v_proj", "o_proj"}
    trainable, total = pm.get_nb_trainable_parameters()
    assert trainable == panel.counts.trainable == 16 * (1152 + 768 + 1152) * 30
    assert panel.verified == (trainable, total)
    assert panel.peft_label.value.startswith(
        f"PEFT get_nb_trainable_parameters of the applied adapter: trainable {trainable:,} "
        f"of {total:,} = ")
    assert panel.peft_label.value.endswith("✓ same as the live count above")
    panel.rank_slider.value = 2                # sliders after Apply: analytic, no re-wrap
    assert panel.peft_model is pm and pm.peft_config["default"].r == 16
    # no "same as above" for counts it did not compare
    assert "✓" not in panel.peft_label.value and "changed since Apply" in panel.peft_label.value
    assert f"trainable {trainable:,}" in panel.peft_label.value   # still PEFT's applied count
    panel.rank_slider.value = 16               # back to the applied settings: compared again
    assert panel.peft_label.value.endswith("✓ same as the live count above")
    panel.rank_slider.value = 2
    panel.apply_button.click()                 # re-attach replaces the adapter
    assert panel.peft_model is not pm and panel.peft_model.peft_config["default"].r == 2
    assert panel.verified[0] == 2 * (1152 + 768 + 1152) * 30 == panel.counts.trainable
    assert panel.verified[1] - panel.verified[0] == SMOL_BASE
    lk.detach(panel.peft_model)


def test_error_in_callback_is_shown_in_the_panel(smol, monkeypatch):
    model, _ = smol
    panel = lk.LoRAPanel(model, display_mode="static")

    def broken_attach(*args, **kwargs):
        raise RuntimeError("attach failed <on purpose> & loudly")

    monkeypatch.setattr(widgets, "attach", broken_attach)
    assert panel.error.layout.display == "none"
    panel.apply_button.click()                 # no exception escapes the callback
    assert isinstance(panel.last_error, RuntimeError)
    assert panel.error.layout.display != "none"
    assert "<b>RuntimeError</b>: attach failed &lt;on purpose&gt; &amp; loudly" in \
        panel.error.value
    assert _RED in panel.error.value and "traceback" in panel.error.value
    assert panel.peft_model is None
    panel.rank_slider.value = 4                # the next callback clears it
    assert panel.error.value == "" and panel.error.layout.display == "none"


_RED = widgets._ERROR_COLOR


def _tip(widget) -> str:
    """The hover text on ipywidgets 8 (``tooltip``) or 7.7.1 (``description_tooltip``)."""
    return widget.tooltip if widget.has_trait("tooltip") else widget.description_tooltip


def test_tooltips_and_self_display(smol):
    model, _ = smol
    panel = lk.LoRAPanel(model, display_mode="static")
    assert _tip(panel.rank_text) == help_text(LoraSettings, "r")
    assert _tip(panel.alpha_text) == help_text(LoraSettings, "alpha")
    assert _tip(panel.variant_buttons) == help_text(LoraSettings, "variant")
    assert _tip(panel.dropout_slider) == help_text(LoraSettings, "dropout")
    assert _tip(panel.target_boxes["k_proj"]).startswith("k_proj: 30 modules, d_in→d_out "
                                                         "576→192.")
    bundle = panel._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == panel.widget.model_id
    assert bundle["text/plain"].startswith("LoRAPanel(r=8, alpha=16, variant='lora', "
                                           "targets=['q_proj', 'v_proj']): trainable 460,800")


def test_panel_starts_from_an_attached_adapter(fresh):
    model, _ = fresh
    lk.attach(model, r=4, alpha=4, targets=["k_proj"], variant="dora")
    panel = lk.LoRAPanel(model, display_mode="static")
    assert (panel.r, panel.alpha_text.value, panel.variant_buttons.value) == (4, 4, "dora")
    assert panel.targets == ("k_proj",) and not panel.link_box.value
    # the base is the frozen part; the existing adapter is not counted twice
    assert panel.counts.frozen == SMOL_BASE
    assert panel.counts.trainable == lk.count_params(model).trainable


# --------------------------------------------------------------------------- display modes


def test_display_mode_switch(monkeypatch):
    assert widgets.get_display_mode() == "auto"
    previous = widgets.set_display_mode("static")
    try:
        assert previous == "auto" and widgets.get_display_mode() == "static"
        assert widgets.resolve_display_mode() == "static"
        with pytest.raises(ValueError, match="display mode"):
            widgets.set_display_mode("fancy")
        assert widgets.get_display_mode() == "static"
    finally:
        widgets.set_display_mode(previous)
    assert widgets.figure_widget_available()                    # anywidget is installed here
    assert widgets.resolve_display_mode("auto") == "static"       # but auto fills the width
    # Colab: static, and the plotly output carries Colab's HTML renderer too
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert widgets.resolve_display_mode("auto") == "static"
    view = widgets.FigureView("static")
    view.show(widgets._placeholder("colab"))
    assert {"text/html", PLOTLY} <= set(view.widget.outputs[0]["data"])
    monkeypatch.delitem(sys.modules, "google.colab")
    # no anywidget (e.g. VS Code without it): auto falls back, "widget" says what to install
    monkeypatch.setitem(sys.modules, "anywidget", None)
    assert not widgets.figure_widget_available()
    assert widgets.resolve_display_mode("auto") == "static"
    with pytest.raises(ImportError, match="pip install anywidget"):
        widgets.resolve_display_mode("widget")


def test_figure_view_updates_in_both_modes():
    figs = [lk.figures.loss_curve([2.0, 1.0]), lk.figures.loss_curve([2.0, 1.0, 0.5])]
    static, live = widgets.FigureView("static"), widgets.FigureView("widget")
    for fig in figs:
        static.show(fig)
        live.show(fig)
        shown = shown_plotly(static)
        assert shown["data"][0]["y"] == list(fig.data[0].y)
        assert list(live.widget.data[0].y) == list(fig.data[0].y)
        assert live.widget.layout.title.text == fig.layout.title.text == \
            shown["layout"]["title"]["text"]
    assert len(static.widget.outputs) == 1                   # replaced, not appended
    live.show(widgets._placeholder("empty again"))           # structure changes: traces go
    assert len(live.widget.data) == 0 and live.widget.layout.title.text == "empty again"


# --------------------------------------------------------------------------- TrainPanel


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_train_panel_short_run(trainable_model, mode):
    pm, tok = trainable_model
    panel = lk.TrainPanel(pm, tok, "iso_dates", steps=3, batch_size=2, eval_n=2,
                          measure_accuracy=mode == "static", display_mode=mode)
    empty = panel.loss_view.figure
    assert empty.layout.title.text.startswith("Training loss — press Train")
    assert empty.layout.xaxis.visible is False and empty.layout.yaxis.visible is False
    assert "nothing yet" in empty.layout.annotations[0].text
    result = panel.train(block=True)
    assert result.steps_done == 3 and not panel.running
    assert panel.progress.max == panel.progress.value == 3
    assert panel.status.value.startswith("done: 3/3 steps")
    assert panel.losses == result.losses and all(v > 0 for v in result.losses)
    if mode == "widget":
        assert list(panel.loss_figure.data[0].y) == result.losses
    else:
        assert shown_plotly(panel.loss_view)["data"][0]["y"] == result.losses
        assert panel.accuracy_before.total == panel.accuracy_after.total == 2
        assert "before" in panel.accuracy_label.value and "→ after" in panel.accuracy_label.value
    assert panel.module_dropdown.options == tuple(panel.recorder.modules)
    evo = panel.evolution_figure
    assert len(evo.frames) == len(panel.recorder) == 4               # steps 0..3
    assert shown_plotly(panel.evolution_view)["frames"]
    panel.which_buttons.value = "A"
    assert panel.evolution_figure is not evo and panel.error.value == ""
    assert "A" in panel.evolution_figure.data[0].name
    assert not panel.train_button.disabled and panel.stop_button.disabled


@pytest.mark.slow
def test_train_panel_stop_from_a_callback(trainable_model):
    pm, tok = trainable_model
    seen = []

    def press_stop(info):
        seen.append(info.step)
        if info.step == 2:
            panel.stop_button.click()

    panel = lk.TrainPanel(pm, tok, "iso_dates", steps=50, batch_size=2, callbacks=[press_stop],
                          measure_accuracy=False, display_mode="static")
    result = panel.train(block=True)
    assert seen == [1, 2] and result.steps_done == 2
    assert panel.progress.value == 2 < panel.progress.max == 50
    assert panel.status.value.startswith("stopped at step 2 of 50")


@pytest.mark.slow
def test_train_panel_background_thread_stop_and_errors(trainable_model):
    pm, tok = trainable_model
    panel = lk.TrainPanel(pm, tok, "iso_dates", steps=50, batch_size=2,
                          measure_accuracy=False, display_mode="widget")
    assert panel.background
    panel.train_button.click()                 # returns at once: training runs in a thread
    assert panel.running and panel.train_button.disabled and not panel.stop_button.disabled
    with pytest.raises(RuntimeError, match="already running"):
        panel.train(block=True)
    deadline = time.monotonic() + 60
    while panel.progress.value < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    panel.stop_button.click()
    result = panel.wait(timeout=60)
    assert not panel.running and 1 <= result.steps_done < 50
    assert panel.error.value == "" and not panel.train_button.disabled

    def fail(info):
        raise ValueError(f"callback failed at step {info.step}")

    panel.callbacks = [fail]
    panel.steps_text.value = 3
    panel.train_button.click()
    panel.wait(timeout=60)
    assert isinstance(panel.last_error, ValueError)
    assert "ValueError</b>: callback failed at step 1" in panel.error.value
    assert not panel.running and not panel.train_button.disabled


# --------------------------------------------------------------------------- AdapterPanel


def test_adapter_panel_side_by_side(trainable_model):
    pm, tok = trainable_model
    pm.add_adapter("noisy", LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():                      # a non-zero B, so "noisy" changes the replies
        for name, p in pm.named_parameters():
            if "lora_B.noisy" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    flags = {n: p.requires_grad for n, p in pm.named_parameters()}
    prompt = "Convert to ISO date: <b>May 1, 2020</b> & more"
    panel = lk.AdapterPanel(pm, tok, prompts=prompt, max_new_tokens=8)
    assert panel.adapter_select.options == ("default", "noisy", widgets.NO_ADAPTER)
    panel.generate_button.click()
    assert panel.error.value == ""
    assert list(panel.replies) == ["default", "noisy", widgets.NO_ADAPTER]
    pm.set_adapter("noisy")
    noisy = lk.generate(pm, tok, [prompt], max_new_tokens=8)
    pm.set_adapter("default")
    with pm.disable_adapter():
        base = lk.generate(pm, tok, [prompt], max_new_tokens=8)
    assert panel.replies["noisy"] == noisy and panel.replies[widgets.NO_ADAPTER] == base
    # the set-up is meaningful: "noisy" changes what the model computes (its logits; eight
    # greedy tokens of a random adapter may still coincide with the base's)
    ids = tok([prompt], return_tensors="pt")
    pm.set_adapter("noisy")
    with torch.no_grad():
        noisy_logits = pm(**ids).logits
    pm.set_adapter("default")
    with torch.no_grad(), pm.disable_adapter():
        assert (noisy_logits - pm(**ids).logits).abs().max() > 1.0
    assert pm.active_adapter == "default"
    assert flags == {n: p.requires_grad for n, p in pm.named_parameters()}
    table = panel.output.value
    assert "&lt;b&gt;May 1, 2020&lt;/b&gt; &amp; more" in table and "<b>May" not in table
    assert table.count("</th>") == 4 and table.count("<tr>") == 2      # header + one prompt
    panel.adapter_select.value = ("noisy",)
    panel.prompt_text.value = "   "
    panel.generate_button.click()
    assert "ValueError" in panel.error.value and "type a prompt" in panel.error.value


def test_adapter_panel_from_a_dict(smol):
    model, tok = smol
    panel = lk.AdapterPanel({"SmolLM2 <base>": model}, tok, prompts="Say hi\nSay bye",
                            max_new_tokens=4)
    replies = panel.generate()
    assert replies == {"SmolLM2 <base>": lk.generate(model, tok, ["Say hi", "Say bye"],
                                                     max_new_tokens=4)}
    assert "SmolLM2 &lt;base&gt;" in panel.output.value and panel.output.value.count("<tr>") == 3
    with pytest.raises(TypeError, match="PeftModel"):
        lk.AdapterPanel(model, tok)


# --------------------------------------------------------------------------- ipywidgets 7


IPYWIDGETS_7 = ["ipywidgets==7.7.1", "widgetsnbextension==3.6.*", "jupyterlab_widgets==1.1.*",
                "ipython_genutils==0.2.0"]   # ipywidgets 7 imports ipython_genutils
_OFFLINE = ("Could not find a version", "No matching distribution", "NewConnectionError",
            "Failed to establish", "Temporary failure in name resolution", "Network is "
            "unreachable", "ConnectTimeout", "ProxyError")


def _ipywidgets_7(request) -> Path:
    """A folder with ipywidgets 7.7.1, installed once into the pytest cache."""
    cache = Path(request.config.cache.mkdir("ipywidgets7"))
    target = cache / "site"
    if (target / "ipywidgets" / "__init__.py").exists():
        return target
    tmp = cache / f"site.{os.getpid()}"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--disable-pip-version-check", "--target", str(tmp), *IPYWIDGETS_7],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        if any(s in proc.stderr for s in _OFFLINE):
            pytest.skip(f"cannot install ipywidgets 7.7.1 (no package registry?): "
                        f"{proc.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"pip install {IPYWIDGETS_7} failed:\n{proc.stderr}")
    try:
        tmp.rename(target)
    except OSError:                            # another run installed it meanwhile
        pass
    return target


@pytest.mark.slow
def test_ipywidgets_7(request):
    site = _ipywidgets_7(request)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ipywidgets7_check.py")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "ipywidgets 7.7.1 OK" in proc.stdout


@pytest.mark.slow
def test_train_panel_second_run_and_an_earlier_recording_continue_the_steps(trainable_model):
    pm, tok = trainable_model
    rec = lk.Recorder(pm)
    lk.train(pm, tok, lk.tasks.get("iso_dates"), steps=2, batch_size=2, recorder=rec)
    fresh_panel = lk.TrainPanel(pm, tok, "iso_dates", measure_accuracy=False,
                                display_mode="static")
    assert "trained before" in fresh_panel.status.value      # B ≠ 0 and no recorder given
    panel = lk.TrainPanel(pm, tok, "iso_dates", steps=2, batch_size=2, measure_accuracy=False,
                          display_mode="static", recorder=rec)
    assert panel.loss_steps == [1, 2]                         # the earlier losses are on the chart
    panel.train(block=True)
    panel.train(block=True)                                   # a second run
    assert panel.loss_steps == [1, 2, 3, 4, 5, 6] and len(panel.losses) == 6
    chart = shown_plotly(panel.loss_view)["data"][0]
    assert list(chart["x"]) == panel.loss_steps
    # the last status line ("done: …") is replaced by the step line of a callback's view:
    seen = []
    panel.callbacks.append(lambda info: seen.append(panel.status.value))
    panel.train(block=True)
    assert seen[-1].startswith("step 8 (this run 2/2)") and chart["x"][-1] == 6
    assert list(shown_plotly(panel.loss_view)["data"][0]["x"])[-1] == 8   # status = chart
    assert panel.recorder is rec and rec.recording.steps[0] == 0 and rec.last_step == 8
    assert panel.evolution_figure.frames[-1].name == "8"                 # the animation goes on


@pytest.mark.slow
def test_train_panel_train_stop_train_on_a_tiny_model(tiny, tok, task):
    """Train → Stop → Train: the buttons, every step on the chart (step 1 first, with the
    loss the loop logged), the ΔW view at the last step, defaults from the given settings."""
    pm = lk.attach(tiny, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
    settings = lk.TrainSettings(steps=6, lr=3e-3, batch_size=2, seed=0)
    logged, states = [], []

    def watch(info):
        logged.append((info.step, info.loss))
        if info.step == 2 and len(logged) == 2:        # the first run: press Stop at step 2
            panel.stop_button.click()
            states.append((panel.train_button.disabled, panel.stop_button.disabled))

    panel = lk.TrainPanel(pm, tok, task, settings, measure_accuracy=False, background=False,
                          callbacks=[watch], display_mode="static")
    assert (panel.steps_text.value, panel.lr_text.value, panel.batch_text.value) == (6, 3e-3, 2)
    assert panel.settings == settings
    assert not panel.train_button.disabled and panel.stop_button.disabled
    panel.train_button.click()
    assert states == [(True, True)]              # running: Train off; Stop greyed once pressed
    assert panel.error.value == "" and panel.result.steps_done == 2
    assert not panel.train_button.disabled and panel.stop_button.disabled
    chart = shown_plotly(panel.loss_view)["data"][0]
    assert list(chart["x"]) == [1, 2] and list(chart["y"]) == [v for _, v in logged]
    panel.train_button.click()                   # Train again: the full 6 steps, continuing
    assert panel.result.steps_done == 6 and panel.stop_button.disabled
    chart = shown_plotly(panel.loss_view)["data"][0]
    assert list(chart["x"]) == list(range(1, 9)) and list(chart["y"]) == [v for _, v in logged]
    assert chart["x"][0] == 1 and chart["y"][0] == logged[0][1]
    evo = panel.evolution_figure
    last = len(evo.frames) - 1
    assert evo.layout.sliders[0].active == last and evo.frames[last].name == "8"
    assert "step 8" in evo.layout.title.text
    np.testing.assert_array_equal(np.asarray(evo.data[0].z, dtype=float),
                                  np.asarray(evo.frames[last].data[0].z, dtype=float))
    assert np.abs(np.asarray(evo.data[0].z, dtype=float)).max() > 0    # not the blank step 0
    panel.which_buttons.value = "rank"
    assert panel.error.value == "" and "rank of ΔW ≤ r = 4" in panel.evolution_figure.layout.title.text


@pytest.mark.slow
def test_train_panel_history_plots_every_step_of_the_earlier_run(tiny, tok, task):
    """A thinned recording (every 2nd step) plus the run's TrainResult: the chart holds every
    step 1..n with the logged losses, and the next run continues at n + 1."""
    pm = lk.attach(tiny, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)
    rec = lk.Recorder(pm, every=2)
    result = lk.train(pm, tok, task, steps=5, batch_size=2, recorder=rec, progress=False)
    thinned = lk.TrainPanel(pm, tok, task, measure_accuracy=False, display_mode="static",
                            recorder=rec)
    assert thinned.loss_steps[0] != 1 or len(thinned.loss_steps) < 5     # what it used to plot
    panel = lk.TrainPanel(pm, tok, task, steps=1, batch_size=2, measure_accuracy=False,
                          display_mode="static", recorder=rec, history=result,
                          background=False)
    chart = shown_plotly(panel.loss_view)["data"][0]
    assert list(chart["x"]) == [1, 2, 3, 4, 5] and list(chart["y"]) == result.losses
    panel.train()
    assert panel.loss_steps == [1, 2, 3, 4, 5, 6]
