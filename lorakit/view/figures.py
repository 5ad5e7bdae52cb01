"""Plotly figure builders: data in, ``go.Figure`` out (a view module; the core never imports it).

Every builder takes lorakit data (``ParamCounts``, ``Budget``, ``Recording``, ``TrainResult``,
plain lists/dicts) and returns a ``plotly.graph_objects.Figure``; nothing is shown or printed.
Figures can be rebuilt from a saved ``Recording`` alone, without the model.

Style, written once here and shared by all builders:
  * two plotly templates registered with ``plotly.io.templates``: "lorakit" (light, built on
    "plotly_white") and "lorakit_dark" (on "plotly_dark"), both with the Okabe–Ito
    colour-blind-safe palette (Okabe & Ito 2008, "Color Universal Design") as colorway, a
    14 px font for projection, no fixed width (figures fill their container);
    ``set_theme("auto" | "light" | "dark")`` picks one for every figure built afterwards and
    makes it plotly's default, so a notebook's own ``go.Figure()`` gets it too; "auto" reads
    JupyterLab's theme setting (``jupyterlab_theme``); ``style(fig, x=..., y=...)`` gives an
    ad-hoc figure the template, a title and axis titles;
  * log axes: one labelled tick per decade, or 1-2-5 ticks when the data spans under three
    decades, never plotly's crowded minor labels (``log_ticks``);
  * heatmaps: the diverging "RdBu" scale reversed (positive = red, negative = blue), centred at
    0 with ONE symmetric range ``[-m, m]`` for all frames, so colours compare across steps
    (CircuitsVis / TensorBoard histograms keep a fixed range for the same reason);
  * animations: Play/Pause buttons and a step slider (plotly's documented animation recipe,
    https://plotly.com/python/animations/), frame titles carrying the step and the loss;
  * smoothing: the debiased exponential moving average of TensorBoard's scalar dashboard
    (tensorboard/plugins/scalar/vz_line_chart2: ``last·w + (1-w)·v``, divided by ``1 - w^n``).

Heatmaps show the recorded ≤ 64 × 64 block means as they are (no upsampling), so a 60-frame
ΔW animation stays around 1 MB of JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from ..core.params import GB
from ..core.record import block_average

# Okabe–Ito: blue, orange, bluish green, vermillion, sky blue, reddish purple, yellow, black
# (yellow late: it is the hardest to see on white).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442",
             "#000000")
# on a dark background: the same hues, black replaced by light grey, sky blue first (the deep
# blue is too dark on black to project)
OKABE_ITO_DARK = ("#56B4E9", "#E69F00", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442",
                  "#DDDDDD")
FONT = "'Source Sans Pro', 'Open Sans', Verdana, Arial, sans-serif"   # marks lorakit's template
THEMES = ("light", "dark")
TEMPLATE_NAMES = {"light": "lorakit", "dark": "lorakit_dark"}
_THEME_COLOURS = {  # paper (= plot), text, grid, axis line
    "light": ("#FFFFFF", "#222222", "#E3E3E3", "#888888"),
    "dark": ("#111111", "#E6E6E6", "#333333", "#888888"),
}


def _make_template(theme: str) -> go.layout.Template:
    paper, text, grid, line = _THEME_COLOURS[theme]
    base = pio.templates["plotly_dark" if theme == "dark" else "plotly_white"]
    t = go.layout.Template(base)
    axis = dict(gridcolor=grid, zerolinecolor=grid, linecolor=line, automargin=True,
                title=dict(standoff=8), minor=dict(showgrid=False, ticks=""))
    t.layout.update(
        colorway=list(OKABE_ITO_DARK if theme == "dark" else OKABE_ITO), autosize=True,
        font=dict(family=FONT, size=14, color=text), paper_bgcolor=paper, plot_bgcolor=paper,
        title=dict(x=0.01, xanchor="left", font=dict(size=16)), hoverlabel=dict(namelength=-1),
        margin=dict(t=70, b=60, l=60, r=30), xaxis=axis, yaxis=axis,
        legend=dict(bgcolor="rgba(0,0,0,0)"), colorscale=dict(diverging=DIVERGING))
    # buttons: dark text on a mid grey, so the active (white) one stays readable in both themes
    t.layout.updatemenudefaults = dict(bgcolor="#9AA5B1" if theme == "dark" else "#F2F2F2",
                                       bordercolor=line, font=dict(color="#111111"))
    t.layout.sliderdefaults = dict(font=dict(color=text), bordercolor=line)
    return t


def _sequential(theme: str) -> list:
    """0 in the background colour up to RdBu_r's deep red: for values ≥ 0 (singular values)."""
    return [[0.0, _THEME_COLOURS[theme][0]], [0.5, "#D6604D"], [1.0, "#67001F"]]


DIVERGING = "RdBu_r"   # positive red, negative blue
TEMPLATES = {theme: _make_template(theme) for theme in THEMES}
for _theme, _name in TEMPLATE_NAMES.items():
    pio.templates[_name] = TEMPLATES[_theme]
TEMPLATE = TEMPLATES["light"]   # the light template (figures get a copy of the current one)
_current = {"theme": "light"}


def jupyterlab_theme() -> str | None:
    """"dark" or "light" from JupyterLab's saved theme setting, or None where none is saved.

    Reads ``@jupyterlab/apputils-extension/themes.jupyterlab-settings`` under
    ``$JUPYTERLAB_SETTINGS_DIR`` (default ``~/.jupyter/lab/user-settings``): the file
    JupyterLab writes when the theme is changed (Settings → Theme). The kernel runs beside the
    server, so it reads the same file; a remote front end (Colab, VS Code) has none.
    """
    folder = Path(os.environ.get("JUPYTERLAB_SETTINGS_DIR")
                  or Path.home() / ".jupyter" / "lab" / "user-settings")
    path = folder / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
    try:   # JSON5: drop // comments and trailing commas
        text = re.sub(r"^\s*//.*$", "", path.read_text(), flags=re.M)
        theme = json.loads(re.sub(r",(\s*[}\]])", r"\1", text)).get("theme")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(theme, str):
        return None
    return "dark" if "dark" in theme.lower() else "light"


def set_theme(theme: str = "auto") -> str:
    """Use the light or dark lorakit template for every figure built from now on.

    ``theme``: "light", "dark", or "auto" (JupyterLab's saved theme, ``jupyterlab_theme()``;
    light where none can be read). Also sets ``plotly.io.templates.default``, so a notebook's
    own ``go.Figure()`` is drawn in the same style. ``lk.setup_notebook()`` calls
    ``set_theme("auto")``; call it again after switching JupyterLab's theme, and re-run the
    cells that draw. Returns the theme now in use ("light" or "dark").
    """
    if theme not in ("auto", *THEMES):
        raise ValueError(f"theme must be 'auto', 'light' or 'dark', got {theme!r}")
    resolved = (jupyterlab_theme() or "light") if theme == "auto" else theme
    _current["theme"] = resolved
    pio.templates.default = TEMPLATE_NAMES[resolved]
    return resolved


def get_theme() -> str:
    """The theme figures are built in now: "light" or "dark" (see ``set_theme``)."""
    return _current["theme"]


def template() -> go.layout.Template:
    """The lorakit template of the current theme (``set_theme``)."""
    return TEMPLATES[_current["theme"]]


def uses_lorakit_template(fig) -> bool:
    """True when ``fig`` (a figure or its JSON dict) carries a lorakit template."""
    layout = fig.get("layout", {}) if isinstance(fig, dict) else fig.to_dict()["layout"]
    tpl = layout.get("template", {}).get("layout", {})
    return (tpl.get("font", {}).get("family") == FONT
            and tuple(tpl.get("colorway", ())) in (OKABE_ITO, OKABE_ITO_DARK))


WHICH = ("A", "B", "delta", "all")
_MATRIX = {"A": "A", "B": "B", "delta": "ΔW"}
_TINY = 1e-12          # colour range used when a matrix is zero in every frame


def _figure(title: str, fig: go.Figure | None = None, **layout) -> go.Figure:
    fig = go.Figure() if fig is None else fig
    fig.update_layout(template=template(), title_text=title, autosize=True, **layout)
    tidy_log_axes(fig)
    return fig


def style(fig: go.Figure | None = None, title: str | None = None, *, x: str | None = None,
          y: str | None = None, **layout) -> go.Figure:
    """Give a notebook's own figure lorakit's style: the current template, a title, axis
    titles (``x``, ``y``: say the unit, e.g. "memory (GB)") and readable log ticks.

    ``fig``: a ``go.Figure`` (None: a new empty one); ``layout``: more ``update_layout``
    keywords (``height=350``, ``yaxis_type="log"``, ``barmode="group"``). Returns ``fig``.
    """
    fig = go.Figure() if fig is None else fig
    if x is not None:
        fig.update_xaxes(title_text=x)
    if y is not None:
        fig.update_yaxes(title_text=y)
    return _figure(title if title is not None else fig.layout.title.text or "", fig, **layout)


def _nice(v: float) -> str:
    return f"{v:g}" if 1e-3 <= v < 1e5 else f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")


def log_ticks(lo: float, hi: float) -> dict:
    """Axis keys for a log axis over [lo, hi] (both > 0): labelled ticks at 10^k when the data
    spans three decades or more (at most 8 labels), else at 1, 2, 5 × 10^k (or 1, 2, 3, 5, 7
    × 10^k), never plotly's crowded minor labels; {} (plotly's ticks) for a very short range."""
    if not (0 < lo <= hi and math.isfinite(hi)):
        return {}
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if b - a >= 3:
        step = max(1, math.ceil((b - a + 1) / 8))
        vals = [10.0**k for k in range(a, b + 1, step)]
    else:   # 1, 2, 5 per decade; 1, 2, 3, 5, 7 where that leaves under three labels
        for marks in ((1, 2, 5), (1, 2, 3, 5, 7)):
            vals = [m * 10.0**k for k in range(a, b + 1) for m in marks
                    if lo / 1.0001 <= m * 10.0**k <= hi * 1.0001]
            if len(vals) >= 3:
                break
        if len(vals) < 2:   # under a factor 2 of range: plotly's own linear-looking ticks
            return {}
    return dict(tickmode="array", tickvals=vals, ticktext=[_nice(v) for v in vals])


def _axis_values(fig: go.Figure, axis: str) -> list[float]:
    """Positive finite data values drawn on layout axis ``axis`` ("yaxis", "xaxis2", …)."""
    letter, ref = axis[0], axis[0] + axis[5:]
    out: list[float] = []
    for t in fig.data:
        values = getattr(t, letter, None)
        if (getattr(t, f"{letter}axis", None) or letter) != ref or values is None:
            continue
        for v in np.asarray(values, dtype=object).ravel():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                    and math.isfinite(float(v)) and v > 0:
                out.append(float(v))
    return out


def tidy_log_axes(fig: go.Figure) -> go.Figure:
    """Readable ticks (``log_ticks``) on every log axis of ``fig`` without ticks of its own,
    and in the "log" button of a linear/log switch (the "linear" button puts plotly's back)."""
    for name in fig.layout:
        if re.fullmatch(r"[xy]axis\d*", name) and fig.layout[name].type == "log" \
                and fig.layout[name].tickvals is None:
            values = _axis_values(fig, name)
            if values:
                fig.layout[name].update(log_ticks(min(values), max(values)))
    for menu in fig.layout.updatemenus:
        for button in menu.buttons:
            if button.label not in ("log", "linear") or not button.args:
                continue
            args = dict(button.args[0])
            for key in [k for k in args if k.endswith(".type")]:
                axis = key[:-5]
                values = _axis_values(fig, axis)
                ticks = log_ticks(min(values), max(values)) if values else {}
                if button.label == "linear" or not ticks:
                    ticks = dict(tickmode="auto", tickvals=None, ticktext=None)
                args.update({f"{axis}.{k}": v for k, v in ticks.items()})
            button.args = [args, *button.args[1:]]
    return fig


def _scale_menu(axes: Sequence[str] = ("yaxis",), log: bool = False, extra=None) -> dict:
    """Buttons "linear" / "log" switching the type of ``axes`` (``extra``: more per-scale keys)."""
    extra = extra or {}

    def args(kind):
        return [{**{f"{a}.type": kind for a in axes}, **extra.get(kind, {})}]

    return dict(type="buttons", direction="right", x=1, xanchor="right", y=1.02,
                yanchor="bottom", showactive=True, active=int(log), pad=dict(r=0, t=0),
                buttons=[dict(label="linear", method="relayout", args=args("linear")),
                         dict(label="log", method="relayout", args=args("log"))])


def _sym_range(arrays) -> float:
    """m = max |value| over all ``arrays`` (all frames), or a tiny positive m if all are zero."""
    m = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
    return m if m > 0 and math.isfinite(m) else _TINY


def _animation_controls(names: Sequence[str], duration: int = 150, active: int = 0):
    """(updatemenus, sliders) for frames ``names``: Play/Pause buttons and a step slider.

    ``active``: the frame shown first; Play starts from it, or from the first frame when
    ``active`` is the last one."""
    def animate(ms, redraw=True):
        return {"frame": {"duration": ms, "redraw": redraw}, "mode": "immediate",
                "transition": {"duration": 0}}

    last = active == len(names) - 1 and active > 0
    play = dict(label="Play", method="animate", args=[None, {**animate(duration),
                                                             "fromcurrent": not last}])
    pause = dict(label="Pause", method="animate", args=[[None], animate(0, redraw=False)])
    menu = dict(type="buttons", direction="left", showactive=False, x=0, xanchor="left",
                y=-0.3, yanchor="top", pad=dict(t=0, r=10), buttons=[play, pause])
    slider = dict(active=active, x=0.16, len=0.84, y=-0.2, yanchor="top", pad=dict(t=0),
                  currentvalue=dict(prefix="step ", visible=True),
                  steps=[dict(method="animate", label=n, args=[[n], animate(0)]) for n in names])
    return [menu], [slider]


def _check_recording(recording) -> None:
    if len(recording) == 0 or not recording.data:
        raise ValueError("nothing to show: the recording has no frames. Record a run with "
                         "rec = lk.Recorder(peft_model) and lk.train(..., recorder=rec)")


def _module(recording, module: str, layer: int | None):
    """ModuleFrames for a short/full name, or a module type with ``layer=``; else ValueError."""
    _check_recording(recording)
    try:
        try:
            found = recording.frames(module)
        except KeyError:
            return recording.get(module, layer)
        if layer is not None and found.layer != layer:
            raise KeyError(f"{module!r} is in layer {found.layer}, not layer {layer}")
        return found
    except KeyError as e:
        types = sorted({m.module_type for m in recording.data.values()})
        raise ValueError(f"{e.args[0]}. Valid modules: {recording.modules}, or a type "
                         f"{types} with layer=") from None


def _loss_text(loss) -> str:
    return "loss n/a" if loss is None else f"loss {loss:.3g}"


def _where(f) -> str:
    return f.module_type if f.layer is None else f"{f.module_type}, layer {f.layer}"


# --------------------------------------------------------------------------- parameters


def param_bars(counts, by: str = "type", log: bool = False, *,
               empty_note: str = "no LoRA adapter to train — attach one with "
                                 "lk.attach(model, r=8)") -> go.Figure:
    """Frozen vs trainable parameters per module type (``by="type"``) or layer (``"layer"``).

    Linear scale: stacked bars (the height is the total); log scale (button or ``log=True``):
    grouped bars, so the small trainable counts stay visible next to the frozen ones.
    ``empty_note``: what the figure says when nothing trains (a panel says why in its terms).
    Notes go in a second title line, above the plot, never over the bars.
    """
    rows = counts.rows(by=by)
    x = [("outside blocks" if r[by] is None else str(r[by])) for r in rows]
    fig = go.Figure()
    for part in ("frozen", "trainable"):
        fig.add_bar(x=x, y=[r[part] for r in rows], name=part,
                    customdata=[r["total"] for r in rows],
                    hovertemplate="%{x}: %{y:,} " + part + " of %{customdata:,}<extra></extra>")
    what = "module type" if by == "type" else "layer"
    title = f"Parameters per {what}: trainable {counts.trainable:,} of {counts.total:,} = " \
            f"{counts.trainable_pct:.3f}%"
    note = None
    if counts.trainable == 0:
        title = f"Parameters per {what}: no trainable parameters ({counts.total:,} frozen)"
        note = f"trainable 0: {empty_note}"
    elif counts.trainable == counts.total:
        note = "every parameter is trainable: no LoRA adapter (this is full fine-tuning)"
    modes = {"linear": {"barmode": "stack"}, "log": {"barmode": "group"}}
    if note:
        title += f"<br><sup>{note}</sup>"
    _figure(title, fig, barmode="group" if log else "stack",
            xaxis=dict(title=what, type="category"),
            yaxis=dict(title="parameters", type="log" if log else "linear"),
            legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
            updatemenus=[_scale_menu(log=log, extra=modes)])
    if note:
        fig.update_layout(margin=dict(t=95), legend=dict(y=1.0))
    return fig


SUNBURST_MIN_SHARE = 0.05   # the trainable slice is drawn at least this wide (and says so)


def param_sunburst(counts) -> go.Figure:
    """All parameters → frozen / trainable → module types (zero-sized parts left out).

    A LoRA adapter is well under 1% of a model: drawn to scale, its slice is a hairline. So
    the trainable part is drawn at ``SUNBURST_MIN_SHARE`` of the circle when it is smaller
    (its label says "drawn enlarged"), in a contrasting colour; hover texts and labels keep
    the real counts and shares.
    """
    scale = {"frozen": 1.0, "trainable": 1.0}
    share = counts.trainable / counts.total if counts.total else 0.0
    if 0 < share < SUNBURST_MIN_SHARE:
        scale["trainable"] = SUNBURST_MIN_SHARE * counts.total / counts.trainable
        scale["frozen"] = (1 - SUNBURST_MIN_SHARE) * counts.total / counts.frozen
    ids, labels, parents, values, real = ["all"], ["all parameters"], [""], [counts.total], \
        [counts.total]
    colors = [""]
    for part, color in (("frozen", "#BBBBBB"), ("trainable", OKABE_ITO[3])):
        if getattr(counts, part):
            ids.append(part)
            pct = f"{100 * getattr(counts, part) / counts.total:.3g}%"
            labels.append(f"{part} {pct}" + (" (drawn enlarged)" if part == "trainable"
                                             and scale[part] > 1 else ""))
            parents.append("all")
            values.append(getattr(counts, part) * scale[part])
            real.append(getattr(counts, part))
            colors.append(color)
        for kind, c in counts.by_type.items():
            if getattr(c, part):
                ids.append(f"{part}/{kind}")
                labels.append(kind)
                parents.append(part)
                values.append(getattr(c, part) * scale[part])
                real.append(getattr(c, part))
                colors.append(color)
    fig = go.Figure(go.Sunburst(ids=ids, labels=labels, parents=parents, values=values,
                                branchvalues="total", maxdepth=3, customdata=real,
                                marker=dict(colors=colors),
                                hovertemplate="%{label}: %{customdata:,} parameters"
                                              "<extra></extra>"))
    return _figure(f"Parameters: trainable {counts.trainable:,} of {counts.total:,} = "
                   f"{counts.trainable_pct:.3f}%", fig)


def budget_bars(budget) -> go.Figure:
    """Training memory (GB, 10^9 bytes) of full fine-tuning vs LoRA vs QLoRA, stacked by part."""
    rows = budget.rows()
    x = [r["setup"] for r in rows]
    fig = go.Figure()
    for part in ("weights", "gradients", "optimizer", "master"):
        fig.add_bar(x=x, y=[r[part] / GB for r in rows], name=part,
                    customdata=[r[part] for r in rows],
                    hovertemplate="%{x}<br>" + part + ": %{y:.2f} GB (%{customdata:,} B)"
                                                      "<extra></extra>")
    for r in rows:
        fig.add_annotation(x=r["setup"], y=r["total"] / GB, text=f"{r['total'] / GB:.1f} GB",
                           showarrow=False, yanchor="bottom")
    # Two short lines, and room above the legend: one long line ran under the mode bar.
    title = (f"Training memory for {budget.name}: LoRA r={budget.r} on "
             f"{', '.join(budget.targets)}<br><sup>{budget.lora_params:,} trainable "
             f"({budget.trainable_pct:.3f}%) — activations not included</sup>")
    return _figure(title, fig, barmode="stack", yaxis_title="memory (GB, 10⁹ bytes)",
                   xaxis_title="fine-tuning setup",
                   margin=dict(t=110), legend=dict(orientation="h", y=1.02, yanchor="bottom",
                                                   x=0))


# --------------------------------------------------------------------------- recordings


def _frames_of(f, key: str) -> np.ndarray:
    return getattr(f, key).float().numpy()   # (F, rows, cols) as recorded, float32


def _axis_titles(f, key: str, shape) -> tuple[str, str]:
    """(x, y) titles: the real dimension and, when pooled, the block-mean factor."""
    rows, cols = {"A": ("r", "d_in"), "B": ("d_out", "r"), "delta": ("d_out", "d_in")}[key]
    dims = {"r": f.r, "d_in": f.d_in, "d_out": f.d_out}

    def title(dim, n):
        return dim if dims[dim] == n else f"{dim} ({dims[dim]} → {n} block means)"

    return title(cols, shape[1]), title(rows, shape[0])


def matrix_evolution(recording, module: str, layer: int | None = None, which: str = "delta",
                     *, shared_range: bool = False, duration: int = 150,
                     start: int = 0) -> go.Figure:
    """Animated heatmaps of a module's A, B or ΔW = s·B·A over the recorded steps.

    Args:
        recording: an ``lk.Recording`` (``rec.recording`` or ``Recording.load(path)``).
        module: a short name from ``recording.modules`` ("layers.0.q_proj"), a full name, or a
            module type ("q_proj") with ``layer=``.
        which: "A" (r, d_in), "B" (d_out, r), "delta" (d_out, d_in) or "all" (side by side).
        shared_range: with "all", one range for A, B and ΔW (else one per matrix: A's values
            are far larger than ΔW's, which would otherwise look blank).
        duration: milliseconds per frame when playing.
        start: the index of the frame shown before Play (0: the first recorded step, -1: the
            last, e.g. right after training).

    One frame per recorded step; each matrix keeps ONE colour range ``[-m, m]`` over all frames
    (m = its max |value|), so a colour means the same value at every step.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    f = _module(recording, module, layer)
    first = _start_index(recording, start)
    keys = ["A", "B", "delta"] if which == "all" else [which]
    data = {k: _frames_of(f, k) for k in keys}                      # k -> (F, rows, cols)
    ranges = {k: _sym_range(data.values() if shared_range else [data[k]]) for k in keys}
    where = _where(f)

    def heatmaps(i):
        return [go.Heatmap(z=data[k][i], zmin=-ranges[k], zmax=ranges[k], zmid=0) for k in keys]

    if which == "all":
        # the spacing leaves room for each colour bar and its tick labels (e.g. "−0.0005")
        # before the next panel's own tick labels
        fig = make_subplots(rows=1, cols=3, column_widths=[0.38, 0.14, 0.48],
                            horizontal_spacing=0.14,
                            subplot_titles=[f"A ({f.r}×{f.d_in})", f"B ({f.d_out}×{f.r})",
                                            f"ΔW = {f.scaling:g}·B·A ({f.d_out}×{f.d_in})"])
    else:
        fig = go.Figure()
    for col, (k, trace) in enumerate(zip(keys, heatmaps(first), strict=True), start=1):
        pos = dict(row=1, col=col) if which == "all" else {}
        x_title, y_title = _axis_titles(f, k, data[k].shape[1:])
        domain = fig.layout[f"xaxis{col if col > 1 else ''}"].domain or (0, 1)
        trace.update(colorscale=DIVERGING, name=_MATRIX[k],
                     colorbar=dict(len=0.8, thickness=10, x=domain[1] + 0.005, xanchor="left",
                                   nticks=5, tickfont=dict(size=10)),
                     hovertemplate=f"{_MATRIX[k]}[%{{y}}, %{{x}}] = %{{z:.3g}}<extra></extra>")
        fig.add_trace(trace, **pos)
        fig.update_xaxes(title_text=x_title, **pos)
        # side by side, only A's y title fits: B's and ΔW's rows (d_out) are in their titles
        fig.update_yaxes(title_text=y_title if col == 1 else None, autorange="reversed", **pos)

    what = "A, B and ΔW" if which == "all" else _MATRIX[which]

    def title(i):
        return (f"{where}: {what} — step {recording.steps[i]}, "
                f"{_loss_text(recording.losses[i])}")

    names = [str(s) for s in recording.steps]
    fig.frames = [go.Frame(name=n, data=heatmaps(i), traces=list(range(len(keys))),
                           layout=go.Layout(title_text=title(i)))
                  for i, n in enumerate(names)]
    menus, sliders = _animation_controls(names, duration, first)
    return _figure(title(first), fig, updatemenus=menus, sliders=sliders, height=500,
                   margin=dict(b=150))


def _start_index(recording, start) -> int:
    n = len(recording.steps)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) \
            or not -n <= start < n:
        raise ValueError(f"start must be a frame index in {-n}..{n - 1} (0: the first "
                         f"recorded step, -1: the last), got {start!r}")
    return int(start) % n


# The low-rank view's left panel: ΔW's block means, at most this many per side. It looks like
# noise at any size (that is its point), and a quarter of the recorded 64 × 64 keeps a stored
# animation of 40 steps at about a quarter of matrix_evolution's bytes.
LOW_RANK_BLOCKS = 32


def low_rank_view(recording, module: str, layer: int | None = None, *, pad: int = 4,
                  duration: int = 150, start: int = 0) -> go.Figure:
    """Why ΔW = s·B·A has rank ≤ r, animated over the recorded steps.

    Left: the block-mean heatmap of ΔW (d_out × d_in), which looks like noise. Right: the same
    ΔW in the basis of its own singular vectors, Uᵀ·ΔW·V = Σ: its top-left corner
    ((k + ``pad``)²; k = the recorded singular values, ≤ r) where only the diagonal σ_1 … σ_k
    can be non-zero, since B (d_out × r) · A (r × d_in) passes through r numbers. Shapes are
    in the titles; ``start`` and ``duration`` as in ``matrix_evolution``.
    """
    f = _module(recording, module, layer)
    first = _start_index(recording, start)
    delta = np.stack([block_average(d, min(LOW_RANK_BLOCKS, d.shape[0]),
                                    min(LOW_RANK_BLOCKS, d.shape[1])).numpy()
                      for d in f.delta.float()])                           # (F, ≤32, ≤32)
    sv = f.sv.float().numpy()                                              # (F, k)
    k = sv.shape[1]
    n = min(k + max(int(pad), 0), f.d_out, f.d_in)
    corners = np.zeros((sv.shape[0], n, n), dtype=np.float32)
    idx = np.arange(k)
    corners[:, idx, idx] = sv
    m_delta, m_sv = _sym_range([delta]), _sym_range([corners])
    ticks = list(range(1, n + 1))
    rank_note = f"only the r = {f.r} diagonal values" if k == f.r else \
        f"the first {k} of r = {f.r} values"
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.2,
                        subplot_titles=[
                            f"ΔW = {f.scaling:g}·B·A<br>{f.d_out}×{f.d_in}, block means",
                            f"Uᵀ·ΔW·V = Σ, corner {n}×{n}<br>non-zero: {rank_note}"])

    def traces(i):
        return [go.Heatmap(z=delta[i], zmin=-m_delta, zmax=m_delta, zmid=0),
                go.Heatmap(z=corners[i], x=ticks, y=ticks, zmin=0, zmax=m_sv)]

    for col, trace in enumerate(traces(first), start=1):
        domain = fig.layout[f"xaxis{col if col > 1 else ''}"].domain or (0, 1)
        trace.update(colorscale=DIVERGING if col == 1 else _sequential(get_theme()),
                     name="ΔW" if col == 1 else "Σ",
                     colorbar=dict(len=0.8, thickness=10, x=domain[1] + 0.005, xanchor="left",
                                   nticks=5, tickfont=dict(size=10)),
                     hovertemplate=("ΔW[%{y}, %{x}]" if col == 1 else "Σ[%{y}, %{x}]")
                     + " = %{z:.3g}<extra></extra>")
        fig.add_trace(trace, row=1, col=col)
    x_title, y_title = _axis_titles(f, "delta", delta.shape[1:])
    fig.update_xaxes(title_text=x_title, row=1, col=1)
    fig.update_yaxes(title_text=y_title, autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="right singular vector j", dtick=1, constrain="domain",
                     row=1, col=2)
    fig.update_yaxes(title_text="left singular vector i", dtick=1, autorange="reversed",
                     scaleanchor="x2", constrain="domain", row=1, col=2)

    def title(i):
        return (f"{_where(f)}: rank of ΔW ≤ r = {f.r} — step {recording.steps[i]}, "
                f"{_loss_text(recording.losses[i])}")

    names = [str(s) for s in recording.steps]
    fig.frames = [go.Frame(name=nm, data=traces(i), traces=[0, 1],
                           layout=go.Layout(title_text=title(i))) for i, nm in enumerate(names)]
    menus, sliders = _animation_controls(names, duration, first)
    return _figure(title(first), fig, updatemenus=menus, sliders=sliders, height=520,
                   margin=dict(t=120, b=150))


def norms_over_time(recording, modules: Sequence[str] | None = None) -> go.Figure:
    """‖A‖_F, ‖B‖_F and ‖ΔW‖_F (exact, full size) per recorded step: one facet per norm,
    one line per module (same colour in every facet). ``modules``: names or types; None = all.
    """
    _check_recording(recording)
    chosen = recording.modules if modules is None else recording.select(modules)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[f"‖{m}‖<sub>F</sub>" for m in ("A", "B", "ΔW")])
    for j, name in enumerate(chosen):
        f = recording.frames(name)
        color = OKABE_ITO[j % len(OKABE_ITO)]
        for row, key in enumerate(("norm_A", "norm_B", "norm_delta"), start=1):
            fig.add_scatter(x=recording.steps, y=getattr(f, key).tolist(), mode="lines",
                            name=name, legendgroup=name, showlegend=row == 1,
                            line=dict(color=color), row=row, col=1)
    fig.update_xaxes(title_text="step", row=3, col=1)
    for row in (1, 2, 3):
        fig.update_yaxes(title_text="Frobenius norm", row=row, col=1)
    return _figure(f"Norms of A, B and ΔW, steps {recording.steps[0]}–{recording.steps[-1]} "
                   f"(final {_loss_text(recording.losses[-1])})", fig, height=620)


def spectrum_over_time(recording, module: str, layer: int | None = None,
                       log: bool = False) -> go.Figure:
    """Top singular values σ_1 ≥ σ_2 ≥ … of ΔW per recorded step, one line per σ_i.

    A rank-r update has at most r non-zero σ; how fast σ_2, σ_3, … fall behind σ_1 shows how
    much of the rank the training actually uses. ``log``: start with a log y axis (button).
    """
    f = _module(recording, module, layer)
    sv = f.sv.numpy()                                                # (F, k)
    fig = go.Figure()
    for i in range(sv.shape[1]):
        fig.add_scatter(x=recording.steps, y=sv[:, i].tolist(), mode="lines", name=f"σ{i + 1}")
    return _figure(f"Singular values of ΔW, {_where(f)} (r={f.r}), steps "
                   f"{recording.steps[0]}–{recording.steps[-1]}", fig,
                   xaxis_title="step", yaxis=dict(title="σ (singular value)",
                                                     type="log" if log else "linear"),
                   updatemenus=[_scale_menu(log=log)])


# --------------------------------------------------------------------------- training


def _debiased_ema(values: Sequence[float], smooth: float) -> list[float]:
    """TensorBoard's smoothing: EMA started at 0 and divided by 1 - smooth^n (no bias to 0).

    Non-finite values pass through unchanged and do not enter the average.
    """
    out, last, n = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        n += 1
        last = last * smooth + (1 - smooth) * v
        out.append(last / (1 - smooth**n))
    return out


def loss_curve(source, smooth: float = 0.9, *, steps=None) -> go.Figure:
    """Raw and smoothed training loss per step.

    ``source``: a ``TrainResult`` (steps 1..n), a ``Recording`` (its steps; frames without a
    loss, like step 0, are skipped) or a plain list of losses (steps 1..n; None skipped).
    ``smooth`` in [0, 1): TensorBoard's debiased EMA weight (0 = no smoothing).
    ``steps``: with a plain list, the step of each loss (default 1..n), e.g. steps that
    continue an earlier run.
    """
    if not (isinstance(smooth, (int, float)) and 0 <= smooth < 1):
        raise ValueError(f"smooth must be in [0, 1) (e.g. 0.9), got {smooth!r}")
    if hasattr(source, "steps") and hasattr(source, "data"):          # Recording
        pairs = list(zip(source.steps, source.losses, strict=True))
    else:
        losses = getattr(source, "losses", source)                     # TrainResult or list
        if steps is not None and len(steps) != len(losses):
            raise ValueError(f"steps has {len(steps)} entries for {len(losses)} losses")
        pairs = list(zip(steps, losses, strict=True)) if steps is not None \
            else list(enumerate(losses, start=1))
    pairs = [(s, float(v)) for s, v in pairs if v is not None]
    if not pairs:
        raise ValueError("nothing to show: no losses (train first, e.g. lk.train(...))")
    steps, raw = [s for s, _ in pairs], [v for _, v in pairs]
    fig = go.Figure()
    colours = template().layout.colorway
    fig.add_scatter(x=steps, y=raw, mode="lines+markers" if len(raw) <= 60 else "lines",
                    name="loss (each step)", line=dict(color=colours[0], width=2.5),
                    marker=dict(size=4))
    fig.add_scatter(x=steps, y=_debiased_ema(raw, smooth), mode="lines",
                    name=f"smoothed (EMA {smooth:g}, lags behind)",
                    line=dict(color=colours[1], width=1.2, dash="dot"))
    if steps[-1] - steps[0] <= 12:          # few steps: one tick per step, never "1.5"
        fig.update_xaxes(dtick=1)
    fig.update_xaxes(tickformat="d")
    return _figure(f"Training loss — step {steps[-1]}: {raw[-1]:.3g} "
                   f"(first {raw[0]:.3g} at step {steps[0]})", fig,
                   xaxis_title="step", yaxis_title=LOSS_TITLE,
                   # inside, top right: a falling loss leaves it empty, and a narrow figure
                   # has no room for it beside the title
                   legend=dict(x=0.99, xanchor="right", y=0.99, yanchor="top"))


_SWEEP_METRICS = ("final_loss", "accuracy")
LOSS_TITLE = "loss (cross-entropy, nats)"


def rank_sweep(rows: Sequence[dict]) -> go.Figure:
    """Final loss and/or accuracy vs rank r (log2 axis) and vs trainable parameters (log axis).

    ``rows``: one dict per run, e.g. ``{"r": 4, "trainable": 230400, "final_loss": 0.02,
    "accuracy": 0.96}``; "r" and "trainable" are required, plus at least one metric in every
    row. Accuracy goes on a right-hand axis when both metrics are given.
    """
    rows = sorted(_check_sweep(rows), key=lambda r: (r["r"], r["trainable"]))
    metrics = [m for m in _SWEEP_METRICS if any(r.get(m) is not None for r in rows)]
    two = len(metrics) == 2
    fig = make_subplots(rows=1, cols=2, specs=[[{"secondary_y": two}] * 2],
                        subplot_titles=["vs rank r", "vs trainable parameters"],
                        horizontal_spacing=0.2 if two else 0.1)
    for col, key in enumerate(("r", "trainable"), start=1):
        for j, m in enumerate(metrics):
            pos = dict(row=1, col=col, **({"secondary_y": m == "accuracy"} if two else {}))
            have = [r for r in rows if r.get(m) is not None]
            fig.add_scatter(x=[r[key] for r in have], y=[r[m] for r in have], name=m,
                            mode="lines+markers", legendgroup=m, showlegend=col == 1,
                            line=dict(color=OKABE_ITO[j]), **pos)
            fig.update_yaxes(title_text=m, tickformat=".3~g", **pos)
    rs = sorted({r["r"] for r in rows})
    fig.update_xaxes(type="log", tickvals=rs, ticktext=[str(r) for r in rs], title_text="r",
                     row=1, col=1)
    fig.update_xaxes(type="log", title_text="trainable parameters", tickformat="~s", row=1,
                     col=2)
    what = " and ".join(metrics)
    return _figure(f"Rank sweep: {what} over {len(rows)} runs (r = {', '.join(map(str, rs))})",
                   fig, legend=dict(orientation="h", y=1.1, yanchor="bottom", x=1,
                                    xanchor="right"))


def _check_sweep(rows) -> list[dict]:
    if isinstance(rows, dict) or not isinstance(rows, Sequence) or not rows:
        raise ValueError("rows must be a non-empty list of dicts like {'r': 4, 'trainable': "
                         "230400, 'final_loss': 0.02, 'accuracy': 0.96}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"rows[{i}] must be a dict, got {type(row).__name__}")
        missing = [k for k in ("r", "trainable") if k not in row]
        if not any(row.get(m) is not None for m in _SWEEP_METRICS):
            missing.append(" or ".join(_SWEEP_METRICS))
        if missing:
            raise ValueError(f"rows[{i}] lacks {missing}; each row needs 'r', 'trainable' and "
                             f"'final_loss' and/or 'accuracy', got keys {sorted(row)}")
        for k in ("r", "trainable"):
            v = row[k]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"rows[{i}][{k!r}] must be a positive integer, got {v!r}")
        for m in _SWEEP_METRICS:
            v = row.get(m)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"rows[{i}][{m!r}] must be a finite number, got {v!r}")
    return list(rows)


__all__ = ["DIVERGING", "FONT", "LOSS_TITLE", "OKABE_ITO", "OKABE_ITO_DARK", "TEMPLATE",
           "TEMPLATES", "TEMPLATE_NAMES", "THEMES", "WHICH", "amplification_table",
           "budget_bars", "get_theme", "jupyterlab_theme", "log_ticks", "loss_curve",
           "low_rank_view", "matrix_evolution", "method_comparison", "norms_over_time",
           "param_bars", "param_sunburst", "rank_sweep", "set_theme", "similarity_heatmap",
           "spectra", "spectrum_over_time", "style", "template", "tidy_log_axes",
           "uses_lorakit_template"]


# -- what LoRA learned (lorakit.core.analysis) and variants -------------------------------------
def similarity_heatmap(grid, title: str = "subspace similarity φ(i, j)",
                       labels: tuple[str, str] = ("i (first adapter)", "j (second adapter)"),
                       baseline=None) -> go.Figure:
    """φ(i, j) from ``analysis.similarity_grid`` (Hu et al. 2021, Fig. 3), values in [0, 1].

    ``baseline``: a second grid (e.g. two random Gaussian A's) shown side by side for scale.
    """
    grids = [np.asarray(grid, dtype=float)] + ([np.asarray(baseline, float)]
                                               if baseline is not None else [])
    if any(g.ndim != 2 or not g.size for g in grids):
        raise ValueError("similarity_heatmap needs a non-empty 2-D grid (analysis.similarity_grid)")
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(grids), horizontal_spacing=0.12,
                        subplot_titles=["trained"] + (["random baseline"] if baseline is not None
                                                      else []))
    for k, g in enumerate(grids, start=1):
        fig.add_trace(go.Heatmap(
            z=g, x=np.arange(1, g.shape[1] + 1), y=np.arange(1, g.shape[0] + 1), zmin=0,
            zmax=1, colorscale="Viridis", showscale=k == 1,
            hovertemplate="i=%{y}, j=%{x}: φ=%{z:.3f}<extra></extra>"), row=1, col=k)
        fig.update_xaxes(title_text=labels[1], row=1, col=k)
        fig.update_yaxes(title_text=labels[0], autorange="reversed", row=1, col=k)
    return _figure(title, fig)


def spectra(named: dict, title: str = "singular values of ΔW", log: bool = True) -> go.Figure:
    """One line of singular values σ_1 ≥ σ_2 ≥ … per entry of ``named`` (name → 1-D values)."""
    if not named:
        raise ValueError("spectra needs at least one name → singular values entry")
    fig = go.Figure()
    for name, sv in named.items():
        sv = np.asarray(sv.detach().cpu() if hasattr(sv, "detach") else sv, float).ravel()
        fig.add_trace(go.Scatter(x=np.arange(1, sv.size + 1), y=sv, mode="lines+markers",
                                 name=str(name)))
    return _figure(title, fig, xaxis_title="index i", yaxis_title="σ_i (singular value)",
                   updatemenus=[_scale_menu(log=log)], yaxis_type="log" if log else "linear")


def amplification_table(amps: dict) -> go.Figure:
    """The LoRA paper's Table 7 for each ``name → analysis.Amplification``."""
    if not amps:
        raise ValueError("amplification_table needs at least one name → Amplification entry")
    cols = ["", "r", "‖ΔW‖_F", "U, V from", "‖UᵀWVᵀ‖_F", "‖ΔW‖_F / ‖UᵀWVᵀ‖_F"]
    cells: list[list[object]] = [[] for _ in cols]
    for name, amp in amps.items():
        for row in amp.rows():
            values = [str(name), amp.r, f"{amp.delta_norm:.4g}", row["U, V from"],
                      f"{row['‖UᵀWVᵀ‖_F']:.4g}", f"{row['‖ΔW‖_F / ‖UᵀWVᵀ‖_F']:.3g}"]
            for c, v in zip(cells, values, strict=True):
                c.append(v)
    fig = go.Figure(go.Table(header=dict(values=cols, align="left"),
                             cells=dict(values=cells, align="left")))
    return _figure("amplification of W's directions by ΔW (Hu et al. 2021, Table 7)", fig)


def method_comparison(results) -> go.Figure:
    """Loss curves of ``lk.compare_methods`` results, with final accuracy in the legend."""
    if not results:
        raise ValueError("method_comparison needs the list returned by lk.compare_methods")
    fig = go.Figure()
    for r in results:
        fig.add_trace(go.Scatter(
            x=np.arange(1, len(r.losses) + 1), y=r.losses, mode="lines",
            name=f"{r.name} ({r.trainable:,} params, acc {r.accuracy:.0%})"))
    return _figure("LoRA variants on the same budget: training loss", fig, xaxis_title="step",
                   yaxis_title=LOSS_TITLE, yaxis_type="log",
                   updatemenus=[_scale_menu(log=True)])
