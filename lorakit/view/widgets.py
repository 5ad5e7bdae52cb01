"""ipywidgets panels: thin glue, no maths (a view module; the core never imports it).

Three panels, each driving the public API and showing ``lk.figures`` builders:

* ``LoRAPanel(model)``: rank, α (with an "α = 2r" link), variant, dropout and target-module
  checkboxes; a live "trainable N of M = p%" label and the ``figures.param_bars`` chart, both
  from the ANALYTIC count ``lk.lora_param_count`` (nothing is wrapped while you move a
  control); "Apply" attaches for real (``lk.attach``) and shows PEFT's own
  ``get_nb_trainable_parameters()``.
* ``TrainPanel(peft_model, tok, task)``: steps / lr / batch size, Train and Stop, a progress
  bar, the live ``figures.loss_curve``, accuracy before/after, then
  ``figures.matrix_evolution`` of the run's ``lk.Recorder`` recording.
* ``AdapterPanel(models_or_peft_model, tok)``: the same prompts through several adapters,
  replies side by side (PEFT ``set_adapter`` for a PeftModel holding several adapters).

Every panel is built, driven and checked from Python: set a control's ``.value`` or call
``button.click()``; observers run synchronously, so labels and figures are up to date when the
call returns. ``panel.widget`` is the root ipywidgets container; a panel shows itself when it
is the last expression of a cell (``ShowsWidget._repr_mimebundle_``, which the explorers share),
the only place lorakit displays anything.

Errors raised inside a callback (an observer or a button) are shown in the panel, in red with
the exception type and message (``shows_errors``), never lost in the log console. Methods
called directly from code (``panel.apply()``, ``panel.train()``) raise as usual.

Display mode: ``set_display_mode("auto" | "widget" | "static")``, read back with
``get_display_mode()``. The one switch is a small explicit settings object
(``DisplaySettings``), read when a panel is built (a panel's ``display_mode=`` argument
overrides it for that panel). "widget" updates a plotly ``FigureWidget`` in place (plotly ≥ 6
builds it on anywidget); "static" re-renders a plain ``go.Figure`` into an ``Output`` widget
on every update (the plotly mime bundle, plus plotly's Colab HTML in Colab). "auto" resolves to
"static" everywhere: the mime renderer sizes a figure to its output area, while a
``FigureWidget`` (plotly 6, anywidget) is drawn before it is attached and stays at plotly.js's
700 px, clipped in a narrow notebook (the browser test at 800 px shows it). "widget" stays
available where anywidget is installed. Animated figures (``matrix_evolution``) are always
static: ``FigureWidget`` does not support frames.

Works with ipywidgets 8 and 7.7.1 (Colab's): tooltips go to ``tooltip`` (8) or
``description_tooltip`` (7); only widgets both versions have are used.

References: ipywidgets "Widget Events" (observe/on_click) and "Asynchronous Widgets"
(training in a thread keeps the kernel responsive); plotly "FigureWidget"
(https://plotly.com/python/figurewidget/); mpl-interactions (controls driven from code).
"""

from __future__ import annotations

import contextlib
import functools
import html
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass, field, replace
from typing import Literal, cast, get_args

try:
    import ipywidgets as W
    import plotly.graph_objects as go
    import plotly.io as pio
except ImportError as e:  # pragma: no cover - exercised only without the viz extra
    raise ImportError("lorakit's panels need ipywidgets and plotly: "
                      "pip install 'lorakit[viz]' (ipywidgets, plotly, anywidget)") from e

from ..core import tasks
from ..core.adapters import BASE
from ..core.attach import attach, find_targets, is_peft, max_rank, rank_too_large, settings_of
from ..core.models import generate
from ..core.naming import tuner_layers
from ..core.params import (
    ParamCounts,
    count_params,
    linear_modules,
    projected_counts,
    shape_source,
    targeted,
)
from ..core.record import Recorder
from ..core.settings import (
    UNSET,
    VARIANTS,
    LoraSettings,
    TrainSettings,
    check_choice,
    help_text,
    settings_with,
)
from ..core.task import Accuracy
from ..core.train import TrainResult, train
from . import figures

DisplayMode = Literal["auto", "widget", "static"]
DISPLAY_MODES: tuple[str, ...] = get_args(DisplayMode)
RANKS: tuple[int, ...] = tuple(2**i for i in range(9))   # the rank slider's stops, 1 … 256
MAX_RANK = RANKS[-1]                                       # the rank box accepts any 1 … 256
NO_ADAPTER = BASE     # AdapterPanel's base-model column: AdapterBank's "no adapter" name
_ERROR_COLOR = "#b00020"
_WARN_COLOR = "#8a5300"


# --------------------------------------------------------------------------- display mode


@dataclass(frozen=True)
class DisplaySettings:
    """How panels draw live figures (the one display switch; see the module docstring)."""

    mode: DisplayMode = field(default="auto", metadata={"help": (
        "widget: a plotly FigureWidget updated in place (needs anywidget). static: a plain "
        "figure re-rendered into an Output widget on each update (works everywhere, e.g. "
        "Colab). auto: static (it fills the notebook's width; a FigureWidget stays 700 px).")})

    def __post_init__(self):
        check_choice("display mode", self.mode, DISPLAY_MODES)


# The switch itself: explicit, documented, replaced (never mutated) by set_display_mode.
_display = DisplaySettings()


def set_display_mode(mode: DisplayMode) -> str:
    """Set how panels built from now on draw figures: "auto", "widget" or "static".

    Returns the previous mode (to restore it). Panels already built keep their mode.
    """
    global _display
    previous, _display = _display.mode, DisplaySettings(mode)
    return previous


def get_display_mode() -> DisplayMode:
    """The display switch as set: "auto" (the default), "widget" or "static"."""
    return _display.mode


def _in_colab() -> bool:
    return "google.colab" in sys.modules


def figure_widget_available() -> bool:
    """True when plotly's ``FigureWidget`` can be built here (plotly ≥ 6 needs anywidget)."""
    try:
        import anywidget  # noqa: F401
    except ImportError:
        return False
    return go.FigureWidget.__module__ != "plotly.missing_anywidget"


def resolve_display_mode(mode: DisplayMode | None = None) -> str:
    """The concrete mode, "widget" or "static", for ``mode`` (None: the switch's value)."""
    mode = get_display_mode() if mode is None else DisplaySettings(mode).mode
    if mode == "auto":
        return "static"
    if mode == "widget" and not figure_widget_available():
        raise ImportError("display mode 'widget' needs plotly's FigureWidget, which needs "
                          "anywidget: pip install anywidget (or use set_display_mode('static'))")
    return mode


class FigureView:
    """One live figure of a panel: ``show(fig)`` puts a plain ``go.Figure`` on screen.

    "widget": ``widget`` is a ``go.FigureWidget``, updated in place with only what changed
    (no flicker, no re-sent template). "static": ``widget`` is an ``ipywidgets.Output`` whose
    one output is replaced by the figure's mime bundle. ``figure`` is the last figure shown.
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.figure: go.Figure | None = None
        self._shown: dict | None = None          # JSON of the figure on screen (widget mode)
        # autosize from the first draw: plotly.js sizes a widget only then (its default,
        # autosize off, is a fixed 700 px that a narrow notebook clips)
        self.widget = go.FigureWidget(layout=dict(autosize=True)) if mode == "widget" \
            else W.Output()

    def show(self, fig: go.Figure) -> None:
        self.figure = fig
        if self.mode == "widget":
            self._sync(fig)
        else:
            self.widget.outputs = (_display_data(fig),)

    def _sync(self, fig: go.Figure) -> None:
        """Copy ``fig`` into the FigureWidget: changed trace/layout keys only."""
        new = fig.to_plotly_json()
        old = self._shown or {"data": [], "layout": {}}
        fw = self.widget
        layout = {k: v for k, v in new["layout"].items() if k != "template"}
        old_layout = {k: v for k, v in old["layout"].items() if k != "template"}
        same = [t.get("type") for t in old["data"]] == [t.get("type") for t in new["data"]]
        with fw.batch_update():
            if "template" in new["layout"] and new["layout"]["template"] != old["layout"].get(
                    "template"):
                fw.layout.template = new["layout"]["template"]
            if same:
                for trace, before, after in zip(fw.data, old["data"], new["data"], strict=True):
                    changed = _changed(before, after)
                    if changed:
                        trace.update(changed, overwrite=True)
            else:
                fw.data = ()
                fw.add_traces(list(fig.data))
            changed = _changed(old_layout, layout)
            if changed:
                fw.layout.update(changed, overwrite=True)
        self._shown = new


def _changed(before: dict, after: dict) -> dict:
    """Keys whose value differs (removed keys map to None, which resets them in plotly)."""
    out = {k: v for k, v in after.items() if before.get(k) != v}
    out.update({k: None for k in before if k not in after})
    return out


def _display_data(fig: go.Figure) -> dict:
    """One Jupyter ``display_data`` output for ``fig``, made by plotly's own renderers."""
    data = {"text/plain": f"<plotly figure: {fig.layout.title.text or 'untitled'}>"}
    data.update(pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict()))
    if _in_colab():  # Colab's front end does not render the plotly mime type: its HTML does
        data.update(pio.renderers["colab"].to_mimebundle(fig.to_dict()))
    return {"output_type": "display_data", "data": data, "metadata": {}}


def _placeholder(title: str) -> go.Figure:
    """An empty figure in lorakit's style, shown until there is data: no axes (they would
    show a meaningless −1…6 range), one line saying what will appear."""
    fig = go.Figure(layout=dict(template=figures.template(), title_text=title, height=320,
                                autosize=True,
                                xaxis=dict(visible=False), yaxis=dict(visible=False)))
    fig.add_annotation(text="nothing yet: the loss appears here step by step", showarrow=False,
                       xref="paper", yref="paper", x=0.5, y=0.5, font=dict(color="#777"))
    return fig


def _trained_before(model) -> bool:
    """True when some LoRA B of ``model`` is non-zero (a fresh adapter has B = 0)."""
    return any(p.detach().any() for _, layer in tuner_layers(model, lora_only=True)
               for p in layer.lora_B.parameters())  # type: ignore[union-attr]


# --------------------------------------------------------------------------- shared parts

# Panels and explorers: text wraps between words (JupyterLab's output CSS breaks <pre> text
# anywhere, ipywidgets' Label never wraps) and nothing is wider than the notebook.
PANEL_CSS = (
    "<style>.lk-panel{max-width:100%;box-sizing:border-box}"
    ".lk-panel .widget-label,.lk-panel .widget-html-content,.lk-panel .widget-html-content pre"
    "{white-space:pre-wrap;word-break:normal;overflow-wrap:break-word;height:auto;"
    "line-height:1.35}"
    ".lk-panel .widget-html-content pre{white-space:pre-wrap}"
    ".lk-panel .widget-label{white-space:normal}</style>")


def panel_style() -> W.HTML:
    """A hidden HTML widget holding ``PANEL_CSS`` (hidden: exports and texts leave it out;
    the style sheet applies all the same) for a box with the class "lk-panel"."""
    return W.HTML(PANEL_CSS, layout=W.Layout(display="none"))


def panel_box(children) -> W.VBox:
    """The root box of a panel or an explorer: ``children`` under lorakit's panel CSS, as
    wide as the notebook and no wider."""
    box = W.VBox([panel_style(), *children], layout=W.Layout(max_width="100%"))
    box.add_class("lk-panel")
    return box



def _tooltip(widget, text: str):
    """Set a hover text on ipywidgets 8 (``tooltip``) or 7 (``description_tooltip``)."""
    if widget.has_trait("tooltip"):           # ipywidgets 8 (and 7's Button)
        widget.tooltip = text
    elif widget.has_trait("description_tooltip"):
        widget.description_tooltip = text     # ipywidgets 7
    return widget


def _wide() -> dict:
    """Style giving a description its natural width (a fresh dict per widget)."""
    return {"description_width": "initial"}


def _help(name: str) -> str:
    return help_text(LoraSettings, name)


def _colored(text: str, color: str) -> str:
    return f'<div style="color:{color}">{text}</div>' if text else ""


def shows_errors(method):
    """Decorate a panel callback: an exception is shown in the panel's error box, in red.

    The box is cleared when the callback starts; the exception is kept as
    ``panel.last_error``. Used by every observer and button handler of every panel.
    """
    @functools.wraps(method)
    def callback(self, *args, **kwargs):
        self._clear_error()
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._show_error(exc)
            return None

    return callback


class ShowsWidget:
    """Shows ``self.widget`` when the object is the last expression of a cell: the widget's
    own mime bundle (ipywidgets 8 and 7), ``repr(self)`` as plain text. The panels and the
    adapter explorers (``lorakit.view.explorers``) show themselves through it."""

    widget: W.Box

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        """Jupyter shows the root widget (ipywidgets 8 and 7); plain text elsewhere."""
        root = self.widget
        if hasattr(root, "_repr_mimebundle_"):            # ipywidgets 8
            data = dict(root._repr_mimebundle_(include=include, exclude=exclude, **kwargs))
        else:                                             # ipywidgets 7: what its display sends
            data = {"application/vnd.jupyter.widget-view+json": {
                "version_major": 2, "version_minor": 0, "model_id": root.model_id}}
        data["text/plain"] = repr(self)
        return data


class _Panel(ShowsWidget):
    """What the panels share: the error box and showing themselves in Jupyter."""

    def __init__(self, display_mode: str | None):
        # any str is accepted here: DisplaySettings checks it against DISPLAY_MODES
        self.display_mode = resolve_display_mode(cast("DisplayMode | None", display_mode))
        self.error = W.HTML(value="", layout=W.Layout(display="none"))
        self.last_error: BaseException | None = None

    def _show_error(self, exc: BaseException) -> None:
        self.last_error = exc
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.error.value = (
            f'<div style="color:{_ERROR_COLOR}"><b>{html.escape(type(exc).__name__)}</b>: '
            f"{html.escape(str(exc))}<details><summary>traceback</summary>"
            f'<pre style="font-size:11px">{html.escape(trace)}</pre></details></div>')
        self.error.layout.display = None

    def _clear_error(self) -> None:
        if self.error.value:
            self.error.value = ""
            self.error.layout.display = "none"


@contextlib.contextmanager
def _held(panel):
    """Programmatic control updates inside this block do not trigger the panel's observers."""
    panel._hold += 1
    try:
        yield
    finally:
        panel._hold -= 1


# --------------------------------------------------------------------------- LoRAPanel


class LoRAPanel(_Panel):
    """Choose LoRA settings and see what they cost, live; "Apply" attaches for real.

    Args:
        model: a transformers model (plain, or one ``lk.attach`` already wrapped: the panel
            then starts from that adapter's settings).
        tok: its tokenizer, kept as ``panel.tok`` for the next panels.
        seed: passed to ``lk.attach`` so Apply gives the same A every time.
        display_mode: None (the switch, ``get_display_mode()``), "auto", "widget", "static".

    Controls (attributes): ``rank_slider`` (the stops 1, 2, 4, …, 256) and ``rank_text`` (any
    r in 1 … 256, kept in sync; the slider sits on the largest stop ≤ r), ``alpha_text``,
    ``link_box`` (α = 2r while on: α follows r and its box is disabled; setting α from code
    to another value turns the link off), ``variant_buttons``, ``dropout_slider``,
    ``target_boxes`` (suffix → Checkbox, from ``lk.find_targets(model)``; q_proj and v_proj
    checked, or the first module when the model has neither), ``apply_button``.

    Outputs: ``count_label`` ("trainable 460,800 of 134,975,808 = 0.341%") and the
    ``param_bars`` chart (``bar_figure``) from ``lk.lora_param_count`` (trainable) and the
    model's own parameter count (frozen); ``counts`` is that ``ParamCounts`` (per module type;
    its ``by_layer`` is empty: the analytic path counts per type). ``message`` explains what
    blocks Apply; ``peft_label`` shows PEFT's count after Apply; ``peft_model`` is the result.

    Rank above min(d_in, d_out) of a checked module (e.g. r = 256 on k_proj, 576→192): the
    count is still shown, the message names the module and its shape, and Apply is REFUSED
    (button disabled; ``apply()`` raises ValueError) — ΔW there cannot reach rank r, so the
    extra parameters would be wasted. Nothing checked, or an invalid α: message, Apply
    disabled.
    """

    def __init__(self, model, tok=None, *, seed: int | None = 0,
                 display_mode: str | None = None):
        super().__init__(display_mode)
        self.model, self.tok, self.seed = model, tok, seed
        self.peft_model = None
        self.settings: LoraSettings | None = None
        self.counts: ParamCounts | None = None
        self.verified: tuple[int, int] | None = None   # PEFT's (trainable, total) after Apply
        self.problems: list[str] = []                  # what blocks Apply (plain text)
        self._hold = 0
        self.targets_table = find_targets(model)
        if not self.targets_table:
            raise ValueError("this model has no Linear module LoRA can target")
        self._base = count_params(model)       # computed once; projected_counts reuses
        self._source = shape_source(model)
        start = settings_of(model) or LoraSettings()
        names = self.targets_table.names
        checked = [t for t in start.targets if t in names] or [names[0]]

        self.rank_slider = _tooltip(W.SelectionSlider(
            options=RANKS, value=_stop_below(start.r), description="rank r", readout=False,
            style=_wide()), _help("r"))
        self.rank_text = _tooltip(W.BoundedIntText(
            value=start.r, min=1, max=max(MAX_RANK, start.r),
            layout=W.Layout(width="6em")), _help("r"))
        self.alpha_text = _tooltip(W.FloatText(
            value=start.alpha, description="alpha α", style=_wide(),
            layout=W.Layout(width="14em")), _help("alpha"))
        self.link_box = _tooltip(W.Checkbox(
            value=start.alpha == 2 * start.r, description="α = 2r", indent=False,
            layout=W.Layout(width="auto")), "Keep α = 2r while r changes (a common choice). "
                                            + _help("alpha"))
        self.alpha_text.disabled = self.link_box.value
        self.variant_buttons = _tooltip(W.ToggleButtons(
            options=list(VARIANTS), value=start.variant, description="variant",
            tooltips=[_help("variant")] * len(VARIANTS), style=_wide()), _help("variant"))
        self.dropout_slider = _tooltip(W.FloatSlider(
            value=min(start.dropout, 0.5), min=0.0, max=0.5, step=0.01, description="dropout",
            readout_format=".2f", style=_wide()), _help("dropout"))
        self.target_boxes: dict[str, W.Checkbox] = {}
        for t in self.targets_table:
            shapes = ", ".join(f"{i}→{o}" for i, o in t.shapes)
            box = W.Checkbox(value=t.suffix in checked, description=f"{t.suffix} ({shapes})",
                             indent=False, layout=W.Layout(width="auto", margin="0 12px 0 0"))
            self.target_boxes[t.suffix] = _tooltip(
                box, f"{t.suffix}: {t.count} modules, d_in→d_out {shapes}. {_help('targets')}")
        self.count_label = W.Label()
        self.scale_label = W.Label()
        self.message = W.HTML()
        self.bar_view = FigureView(self.display_mode)
        self.apply_button = _tooltip(W.Button(
            description="Apply", button_style="primary", icon="check"),
            "Attach LoRA with these settings through PEFT (lk.attach); replaces an earlier "
            "adapter on this model.")
        self.peft_label = W.Label()
        self._applied: LoraSettings | None = None       # the settings of the last Apply

        self._wire()
        self.refresh()

    def _wire(self) -> None:
        """Connect the controls to their observers and lay the panel out (``self.widget``)."""
        self.rank_slider.observe(self._on_rank, "value")
        self.rank_text.observe(self._on_rank, "value")
        self.alpha_text.observe(self._on_alpha, "value")
        self.link_box.observe(self._on_link, "value")
        for control in (self.variant_buttons, self.dropout_slider, *self.target_boxes.values()):
            control.observe(self._on_change, "value")
        self.apply_button.on_click(self._on_apply)

        targets_row = W.HBox(list(self.target_boxes.values()),
                             layout=W.Layout(flex_flow="row wrap"))
        self.widget = panel_box([
            W.HTML("<b>LoRA settings</b> — the counts update as you move the controls; "
                   "<i>Apply</i> attaches the adapter for real."),
            W.HBox([self.rank_slider, self.rank_text]),
            W.HBox([self.alpha_text, self.link_box]),
            self.variant_buttons, self.dropout_slider,
            _tooltip(W.HTML("target modules:"), _help("targets")), targets_row,
            self.count_label, self.scale_label, self.message, self.bar_view.widget,
            W.HBox([self.apply_button, self.peft_label]), self.error,
        ])

    # -- state -----------------------------------------------------------------------------
    @property
    def r(self) -> int:
        return int(self.rank_text.value)

    @property
    def targets(self) -> tuple[str, ...]:
        """Checked target suffixes, in model order."""
        return tuple(t for t, box in self.target_boxes.items() if box.value)

    @property
    def bar_figure(self):
        """The parameter chart: the live FigureWidget ("widget") or the last go.Figure shown."""
        return self.bar_view.widget if self.display_mode == "widget" else self.bar_view.figure

    @functools.cached_property
    def _linears(self):
        """The model's Linear modules (what the rank check reads), walked once."""
        return linear_modules(self.model)

    # -- observers -------------------------------------------------------------------------
    @shows_errors
    def _on_rank(self, change) -> None:
        if self._hold:
            return
        r = int(change["new"])
        with _held(self):
            self.rank_text.value = r
            self.rank_slider.value = _stop_below(r)
            if self.link_box.value:
                self.alpha_text.value = 2 * r
        self.refresh()

    @shows_errors
    def _on_alpha(self, change) -> None:
        if self._hold:
            return
        if self.link_box.value and change["new"] != 2 * self.r:
            with _held(self):                 # an explicit α wins over the link
                self.link_box.value = False
                self.alpha_text.disabled = False
        self.refresh()

    @shows_errors
    def _on_link(self, change) -> None:
        if self._hold:
            return
        with _held(self):
            self.alpha_text.disabled = change["new"]
            if change["new"]:
                self.alpha_text.value = 2 * self.r
        self.refresh()

    @shows_errors
    def _on_change(self, change) -> None:
        if not self._hold:
            self.refresh()

    @shows_errors
    def _on_apply(self, button) -> None:
        self.apply()

    # -- what the observers do -------------------------------------------------------------
    def refresh(self) -> None:
        """Recompute the label, message and chart from the controls (analytic; nothing wraps)."""
        r, targets, variant = self.r, self.targets, self.variant_buttons.value
        problems: list[str] = []
        self.settings = None
        if not targets:
            problems.append("No target module is checked: check at least one (q_proj and "
                            "v_proj are the classic choice).")
        else:
            try:
                self.settings = LoraSettings(r=r, alpha=self.alpha_text.value, targets=targets,
                                             dropout=self.dropout_slider.value, variant=variant)
            except ValueError as e:
                problems.append(str(e))
        too_big = rank_too_large(r, targeted(self._linears, targets)) if targets else []
        for suffix in dict.fromkeys(i.suffix for i in too_big):    # attach refuses these
            t = self.targets_table[suffix]
            shapes = ", ".join(f"{i}→{o}" for i, o in t.shapes)
            limit = max_rank(i for i in too_big if i.suffix == suffix)
            problems.append(
                f"r = {r} is larger than min(d_in, d_out) = {limit} of {t.suffix} "
                f"({shapes}, {t.count} modules): ΔW there cannot have rank above {limit}. "
                f"Lower r to ≤ {limit} or uncheck {t.suffix}.")
        # α does not change the count: an invalid α still shows what r and targets cost.
        counted = self.settings or (LoraSettings(r=r, targets=targets, variant=variant)
                                    if targets else None)
        self.counts = projected_counts(self.model, counted, base=self._base,
                                       source=self._source)
        self.count_label.value = str(self.counts)
        if self.settings is not None:
            rule = "α/√r, rsLoRA" if variant == "rslora" else "α/r"
            self.scale_label.value = f"ΔW = {self.settings.scaling:g}·B·A  (scale {rule})"
        else:
            self.scale_label.value = ""
        if problems:
            problems.append("Apply is disabled until this is fixed.")
        self.problems = problems
        self.message.value = _colored("<br>".join(map(html.escape, problems)), _WARN_COLOR)
        self.apply_button.disabled = bool(problems)
        self._update_peft_label()
        self.bar_view.show(figures.param_bars(
            self.counts, empty_note="no target module checked: check at least one above"))

    def _update_peft_label(self) -> None:
        """PEFT's count of the *applied* adapter, compared with the live count — or why not."""
        if self.verified is None:
            self.peft_label.value = ""
            return
        trainable, total = self.verified
        assert self.counts is not None  # refresh() sets it; __init__ calls refresh
        peft = (f"PEFT get_nb_trainable_parameters of the applied adapter: trainable "
                f"{trainable:,} of {total:,} = {100 * trainable / total:.3f}%")
        if self.settings != self._applied:
            self.peft_label.value = (peft + " — the controls have changed since Apply; "
                                            "Apply again to compare")
        elif self.verified == (self.counts.trainable, self.counts.total):
            self.peft_label.value = peft + " ✓ same as the live count above"
        else:
            self.peft_label.value = peft + " ✗ differs from the live count above"

    def apply(self):
        """Attach LoRA with the current settings (``lk.attach``; re-attach replaces).

        Returns the PeftModel (also ``panel.peft_model``) and shows PEFT's own count. Raises
        ValueError, changing nothing, when the panel shows a problem (see the class doc).
        """
        self.refresh()
        if self.problems or self.settings is None:
            raise ValueError("Apply refused: " + " ".join(self.problems))
        s = self.settings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            peft_model = attach(self.model, s, seed=self.seed)
        self.peft_model = peft_model
        self._base = count_params(self.model)   # now wrapped in place: the base is frozen
        trainable, total = peft_model.get_nb_trainable_parameters()
        self.verified = (int(trainable), int(total))
        self._applied = s
        self._update_peft_label()
        notes = [html.escape(str(w.message)) for w in caught]
        self.message.value = _colored("<br>".join(notes), _WARN_COLOR)
        return peft_model

    def __repr__(self) -> str:
        s = f"r={self.r}, alpha={self.alpha_text.value:g}, variant={self.variant_buttons.value!r}"
        return f"LoRAPanel({s}, targets={list(self.targets)}): {self.count_label.value}"


def _stop_below(r: int) -> int:
    """The largest slider stop ≤ r (the smallest stop for r < 1)."""
    return max([p for p in RANKS if p <= r] or [RANKS[0]])


# --------------------------------------------------------------------------- TrainPanel


def _recorded_losses(recorder, history=None) -> tuple[list[int], list[float]]:
    """(steps, losses) the panel's chart starts with: every step of ``history`` (the
    ``TrainResult`` of the run so far: steps 1..n, the losses the loop logged), else the
    frames a recorder already holds (thinned by its ``every``)."""
    if history is not None:
        return list(range(1, len(history.losses) + 1)), [float(v) for v in history.losses]
    if recorder is None or not len(recorder):
        return [], []
    known = [(s, v) for s, v in zip(recorder.recording.steps, recorder.recording.losses,
                                    strict=True) if v is not None]
    return [s for s, _ in known], [v for _, v in known]


# the TrainPanel's starting controls: short runs that redraw often
PANEL_TRAINING = TrainSettings(steps=20, batch_size=4)


class TrainPanel(_Panel):
    """Train an adapter from a panel: settings, Train/Stop, progress, live loss, what changed.

    Args:
        peft_model: the model to train (``lk.attach(...)`` or ``LoRAPanel.peft_model``).
        tok: its tokenizer. task: a ``Task`` or a built-in task name ("iso_dates").
        settings: the ``TrainSettings`` the controls start from (default: 20 steps, lr 2e-3,
            batch 4); ``steps``, ``lr``, ``batch_size``, ``precision`` change those fields
            of it. Fields without a control (seed, LoRA+, clipping, precision, ...) are
            trained with as given.
        eval_n: held-out examples scored for accuracy.
        measure_accuracy: measure it before and after each run (the "Accuracy now" button
            measures on demand).
        callbacks: extra ``lk.train`` callbacks, called after the panel's own each step.
        background: the Train button trains in a thread, so the notebook stays responsive
            (Stop works while it runs). ``panel.train(block=True)`` always runs in the caller.
        display_mode: as for ``LoRAPanel``; the evolution animation is always static.
        recorder: an ``lk.Recorder`` of the run so far: steps and animation continue it.
        history: the ``TrainResult`` of that run: the loss chart starts with its every step
            (1..n), the losses the training loop logged (without it, a recorder's frames).

    Training is ``lk.train(peft_model, tok, task, ..., recorder=panel.recorder,
    callbacks=[progress, *callbacks, stop])``: the progress callback moves the bar and redraws
    ``figures.loss_curve``; Stop sets a flag that the last callback returns (truthy: training
    stops after the current step). One ``lk.Recorder`` is kept across runs (a second run
    continues its steps); after each run ``figures.matrix_evolution`` of its recording is
    shown at the last recorded step for the module picked in ``module_dropdown`` (and
    ``which_buttons``; "rank" shows ``figures.low_rank_view``). Stop greys itself out.
    Results: ``result`` (the last ``TrainResult``), ``losses`` (all runs), ``recorder``,
    ``accuracy_before`` / ``accuracy_after``.
    """

    def __init__(self, peft_model, tok, task, settings: TrainSettings | None = None, *,
                 steps: int = UNSET, lr: float = UNSET, batch_size: int = UNSET,
                 precision: str = UNSET, eval_n: int = 20, measure_accuracy: bool = True,
                 callbacks=(), background: bool = True, display_mode: str | None = None,
                 recorder=None, history: TrainResult | None = None):
        super().__init__(display_mode)
        start = settings_with(TrainSettings, settings or PANEL_TRAINING, steps=steps, lr=lr,
                              batch_size=batch_size, precision=precision)
        self._start = start
        self.peft_model, self.tok = peft_model, tok
        self.task = tasks.get(task) if isinstance(task, str) else task
        self.callbacks, self.background = list(callbacks), background
        self.recorder: Recorder | None = recorder  # given: steps and animation continue
        self.result: TrainResult | None = None
        # the overall step of each loss (across runs), and the steps before the current run
        self.loss_steps, self.losses = _recorded_losses(recorder, history)
        self._offset = 0
        self.accuracy_before: Accuracy | None = None
        self.accuracy_after: Accuracy | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False

        self.steps_text = _tooltip(W.BoundedIntText(
            value=start.steps, min=1, max=100_000, description="steps", style=_wide(),
            layout=W.Layout(width="11em")), help_text(TrainSettings, "steps"))
        self.lr_text = _tooltip(W.BoundedFloatText(
            value=start.lr, min=1e-7, max=1.0, step=1e-4, description="lr", style=_wide(),
            layout=W.Layout(width="11em")), help_text(TrainSettings, "lr"))
        self.batch_text = _tooltip(W.BoundedIntText(
            value=start.batch_size, min=1, max=256, description="batch", style=_wide(),
            layout=W.Layout(width="10em")), help_text(TrainSettings, "batch_size"))
        self.accuracy_box = _tooltip(W.Checkbox(
            value=measure_accuracy, description="accuracy before/after", indent=False,
            layout=W.Layout(width="auto")),
            "Measure exact-match accuracy on held-out examples before and after each run "
            "(greedy generation: a few seconds per 10 examples on a CPU).")
        self.eval_n_text = _tooltip(W.BoundedIntText(
            value=min(eval_n, len(self.task.test)), min=1, max=len(self.task.test),
            description="eval_n", style=_wide(), layout=W.Layout(width="9em")),
            "How many held-out examples the accuracy uses.")
        self.train_button = _tooltip(W.Button(
            description="Train", button_style="success", icon="play"),
            "Train the adapter with these settings (lk.train).")
        self.stop_button = _tooltip(W.Button(
            description="Stop", button_style="danger", icon="stop", disabled=True),
            "Stop after the current step; the adapter keeps what it learned so far.")
        self.accuracy_button = _tooltip(W.Button(description="Accuracy now"),
                                        "Measure accuracy now (task.accuracy).")
        self.progress = W.IntProgress(value=0, min=0, max=start.steps, description="progress",
                                      style=_wide())
        self.status = W.Label()
        self.accuracy_label = W.HTML()
        self.loss_view = FigureView(self.display_mode)
        self.loss_view.show(_placeholder("Training loss — press Train") if not self.losses
                            else figures.loss_curve(self.losses, steps=self.loss_steps))
        if recorder is None and _trained_before(peft_model):
            self.status.value = ("This adapter was trained before (B ≠ 0): the panel's steps "
                                 "and frames count from here. Pass recorder= to continue an "
                                 "earlier recording.")
        self.module_dropdown = _tooltip(W.Dropdown(
            options=[], description="module", style=_wide()),
            "Which recorded module the evolution figure shows.")
        self.which_buttons = _tooltip(W.ToggleButtons(
            options=[*figures.WHICH, "rank"], value="delta", style=_wide()),
            "delta: ΔW = s·B·A; A: (r, d_in); B: (d_out, r); all: side by side; rank: ΔW in "
            "the basis of its singular vectors (only r values can be non-zero).")
        self.evolution_view = FigureView("static")   # animations: FigureWidget has no frames

        self._wire()

    def _wire(self) -> None:
        """Connect the buttons and pickers to their handlers and lay the panel out."""
        self.train_button.on_click(self._on_train)
        self.stop_button.on_click(self._on_stop)
        self.accuracy_button.on_click(self._on_accuracy)
        self.module_dropdown.observe(self._on_evolution, "value")
        self.which_buttons.observe(self._on_evolution, "value")
        self.widget = panel_box([
            W.HTML(f"<b>Training</b> on <i>{html.escape(self.task.name)}</i>: "
                   f"{html.escape(self.task.description)}"),
            W.HBox([self.steps_text, self.lr_text, self.batch_text]),
            W.HBox([self.accuracy_box, self.eval_n_text, self.accuracy_button]),
            W.HBox([self.train_button, self.stop_button, self.progress]),
            self.status, self.accuracy_label, self.loss_view.widget,
            W.HBox([self.module_dropdown, self.which_buttons]), self.evolution_view.widget,
            self.error,
        ])

    @property
    def running(self) -> bool:
        return self._running

    @property
    def loss_figure(self):
        """The loss chart: the live FigureWidget ("widget") or the last go.Figure shown."""
        return self.loss_view.widget if self.display_mode == "widget" else self.loss_view.figure

    @property
    def settings(self) -> TrainSettings:
        """The ``TrainSettings`` the controls show (validated: a bad value raises here); the
        fields without a control keep the values the panel started from."""
        return replace(self._start, steps=self.steps_text.value, lr=self.lr_text.value,
                       batch_size=self.batch_text.value)

    @property
    def evolution_figure(self) -> go.Figure | None:
        return self.evolution_view.figure

    # -- buttons ---------------------------------------------------------------------------
    @shows_errors
    def _on_train(self, button) -> None:
        self.train(block=not self.background)

    @shows_errors
    def _on_stop(self, button) -> None:
        self.stop()

    @shows_errors
    def _on_accuracy(self, button) -> None:
        acc = self.task.accuracy(self.peft_model, self.tok, n=self.eval_n_text.value)
        self.accuracy_label.value = f"accuracy now: {html.escape(str(acc))}"

    @shows_errors
    def _on_evolution(self, change) -> None:
        self.show_evolution()

    # -- actions ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask a running training to stop after its current step (Stop greys out)."""
        self._stop.set()
        self.stop_button.disabled = True

    def train(self, block: bool = True):
        """Run ``lk.train`` with the panel's settings.

        ``block=True``: in this thread; returns the ``TrainResult`` (exceptions propagate).
        ``block=False``: in a background thread (returned; ``wait()`` joins it); an exception
        there is shown in the panel's error box.
        """
        if self._running:
            raise RuntimeError("training is already running; press Stop (or wait) first")
        self._running = True
        self._stop.clear()
        self.train_button.disabled = True
        self.stop_button.disabled = False
        if block:
            return self._run()
        self._thread = threading.Thread(target=self._run_in_background, daemon=True,
                                        name="lorakit-train")
        self._thread.start()
        return self._thread

    def wait(self, timeout: float | None = None):
        """Wait for a background run to finish; return the last ``TrainResult``."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result

    def _run_in_background(self) -> None:
        self._clear_error()
        try:
            self._run()
        except Exception as exc:
            self._show_error(exc)

    def _run(self):
        try:
            steps, n = self.steps_text.value, self.eval_n_text.value
            self.progress.max, self.progress.value = steps, 0
            if self.accuracy_box.value:
                self.status.value = f"measuring accuracy on {n} held-out examples…"
                self.accuracy_before = self.task.accuracy(self.peft_model, self.tok, n=n)
                self.accuracy_after = None
                self._show_accuracy()
            if self.recorder is None:
                self.recorder = Recorder(self.peft_model)
            # train continues the recorder's step count; the panel's status and chart too
            self._offset = self.recorder.last_step or (self.loss_steps[-1] if self.loss_steps
                                                       else 0)
            self.status.value = f"training {steps} steps…"
            self.result = train(
                self.peft_model, self.tok, self.task, self.settings,
                recorder=self.recorder,
                callbacks=[self._on_step, *self.callbacks, self._stop_requested],
                progress=False)
            done = self.result.steps_done
            stopped = f"stopped at step {done} of {steps}: " if done < steps else "done: "
            self.status.value = stopped + str(self.result)
            if self.accuracy_box.value:
                self.accuracy_after = self.task.accuracy(self.peft_model, self.tok, n=n)
                self._show_accuracy()
            self._update_modules()
            self.show_evolution()
            return self.result
        finally:
            self._running = False
            self.train_button.disabled = False
            self.stop_button.disabled = True

    def _on_step(self, info) -> None:
        """lk.train callback: progress bar, status and the loss figure after each step."""
        overall = self._offset + info.step
        self.losses.append(info.loss)
        self.loss_steps.append(overall)
        self.progress.value = info.step
        run = f" (this run {info.step}/{info.steps})" if overall != info.step else \
            f"/{info.steps}"
        self.status.value = f"step {overall}{run} · loss {info.loss:.4f} · lr {info.lr:.2e}"
        self.loss_view.show(figures.loss_curve(self.losses, steps=self.loss_steps))

    def _stop_requested(self, info) -> bool:
        """lk.train callback, called last: truthy once Stop was pressed."""
        return self._stop.is_set()

    def _show_accuracy(self) -> None:
        before = self.accuracy_before
        after = self.accuracy_after
        text = f"accuracy on held-out examples: before {before}" if before else ""
        if after is not None:
            text += f" → after {after}"
        self.accuracy_label.value = html.escape(text)

    def _update_modules(self) -> None:
        modules = self.recorder.modules if self.recorder is not None else []
        current = self.module_dropdown.value
        self.module_dropdown.unobserve(self._on_evolution, "value")
        try:           # show_evolution runs once afterwards, not once per changed trait
            self.module_dropdown.options = modules
            if modules:
                self.module_dropdown.value = current if current in modules else modules[0]
        finally:
            self.module_dropdown.observe(self._on_evolution, "value")

    def show_evolution(self) -> None:
        """Show the picked module's animation at the last recorded step (Play replays it):
        ``figures.matrix_evolution``, or ``figures.low_rank_view`` for "rank"."""
        if self.recorder is None or not len(self.recorder) or not self.module_dropdown.value:
            return
        rec, module, which = self.recorder.recording, self.module_dropdown.value, \
            self.which_buttons.value
        self.evolution_view.show(
            figures.low_rank_view(rec, module, start=-1) if which == "rank"
            else figures.matrix_evolution(rec, module, which=which, start=-1))

    def __repr__(self) -> str:
        state = str(self.result) if self.result is not None else "not trained yet"
        return f"TrainPanel(task={self.task.name!r}): {state}"


# --------------------------------------------------------------------------- AdapterPanel


class AdapterPanel(_Panel):
    """The same prompts through several adapters, replies side by side.

    Args:
        models: a dict name → model (PeftModels or plain models, each used as it is), or one
            PeftModel holding named adapters (``add_adapter`` / ``load_adapter``): each
            adapter is made active in turn with PEFT's ``set_adapter``, and ``NO_ADAPTER``
            runs the base model (``disable_adapter``) when ``base`` is True. The active
            adapter and every ``requires_grad`` flag are put back afterwards.
        tok: the tokenizer.
        prompts: the Textarea's starting text, one prompt per line.

    ``generate()`` (the Generate button) greedy-decodes every line of the Textarea with each
    picked adapter (``lk.generate``) and shows an HTML table: one row per prompt, one column
    per adapter, every text escaped with ``html.escape``. ``replies`` is name → replies.
    """

    def __init__(self, models, tok, *, prompts: str = "Convert to ISO date: March 5, 2021",
                 max_new_tokens: int = 24, base: bool = True, display_mode: str | None = None):
        super().__init__(display_mode)
        self.tok = tok
        self.replies: dict[str, list[str]] = {}
        self.prompts: list[str] = []
        self._sources = self._resolve(models, base)      # name -> (model, adapter or None)
        names = list(self._sources)
        self.adapter_select = _tooltip(W.SelectMultiple(
            options=names, value=tuple(names), rows=min(len(names), 6),
            description="adapters", style=_wide()), "Which adapters answer (Ctrl/Shift-click).")
        self.prompt_text = _tooltip(W.Textarea(
            value=prompts, description="prompts", style=_wide(),
            layout=W.Layout(width="90%", height="6em")), "One prompt per line.")
        self.tokens_text = _tooltip(W.BoundedIntText(
            value=max_new_tokens, min=1, max=512, description="max new tokens", style=_wide(),
            layout=W.Layout(width="14em")), "Longest reply, in tokens (greedy decoding).")
        self.generate_button = _tooltip(W.Button(
            description="Generate", button_style="primary", icon="comments"),
            "Generate a reply to every prompt with every selected adapter.")
        self.output = W.HTML()
        self.generate_button.on_click(self._on_generate)
        self.widget = panel_box([
            W.HTML("<b>Compare adapters</b>: the same prompts, replies side by side."),
            W.HBox([self.adapter_select, self.tokens_text]), self.prompt_text,
            self.generate_button, self.output, self.error,
        ])

    @staticmethod
    def _resolve(models, base: bool) -> dict:
        if isinstance(models, dict):
            if not models:
                raise ValueError("give at least one model: {'name': model, ...}")
            return {str(name): (m, None) for name, m in models.items()}
        if is_peft(models):
            names = {a: (models, a) for a in models.peft_config}
            if base:
                names[NO_ADAPTER] = (models, NO_ADAPTER)
            return names
        raise TypeError(f"expected a dict name → model or a PeftModel with named adapters, "
                        f"got {type(models).__name__}")

    @shows_errors
    def _on_generate(self, button) -> None:
        self.generate()

    def generate(self) -> dict[str, list[str]]:
        """Replies of every selected adapter to every prompt line; also shown as a table."""
        prompts = [p.strip() for p in self.prompt_text.value.splitlines() if p.strip()]
        if not prompts:
            raise ValueError("type a prompt first (one per line)")
        names = list(self.adapter_select.value)
        if not names:
            raise ValueError("select at least one adapter")
        replies = {}
        for name in names:
            model, adapter = self._sources[name]
            with _active_adapter(model, adapter):
                replies[name] = generate(model, self.tok, prompts,
                                            max_new_tokens=self.tokens_text.value)
        self.prompts, self.replies = prompts, replies
        self.output.value = _table(prompts, replies)
        return replies

    def __repr__(self) -> str:
        return f"AdapterPanel(adapters={list(self._sources)})"


@contextlib.contextmanager
def _active_adapter(model, adapter):
    """Run with ``adapter`` active through ``AdapterBank.use`` (``NO_ADAPTER``: the base
    model; None: the model as it is); the active adapter and requires_grad flags come back."""
    if adapter is None:
        yield
        return
    from ..core.serve import AdapterBank

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    bank = AdapterBank(model)
    previous = bank.active
    try:
        bank.use(adapter)
        yield
    finally:
        bank.use(previous)
        for n, p in model.named_parameters():   # set_adapter marks the adapter trainable
            p.requires_grad_(flags[n])


def _table(prompts: list[str], replies: dict[str, list[str]]) -> str:
    cell = ('style="border:1px solid #ccc;padding:4px 8px;vertical-align:top;'
            'text-align:left;white-space:pre-wrap"')
    head = "".join(f"<th {cell}>{html.escape(h)}</th>" for h in ["prompt", *replies])
    rows = []
    for i, prompt in enumerate(prompts):
        cells = [prompt, *(r[i] for r in replies.values())]
        rows.append("<tr>" + "".join(f"<td {cell}>{html.escape(c)}</td>" for c in cells)
                    + "</tr>")
    return (f'<table style="border-collapse:collapse"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


__all__ = ["DISPLAY_MODES", "MAX_RANK", "NO_ADAPTER", "RANKS", "AdapterPanel",
           "DisplaySettings", "FigureView", "LoRAPanel", "PANEL_CSS", "ShowsWidget",
           "TrainPanel", "panel_box", "panel_style",
           "figure_widget_available", "get_display_mode", "resolve_display_mode",
           "set_display_mode", "shows_errors"]
