"""Notebook set-up: plotly figures and widgets that render in every front end, offline too.

``lk.setup_notebook()`` goes in each notebook's first code cell. It picks plotly's renderer
for the front end the kernel is running under:

* **JupyterLab / Notebook 7 / Binder** (also with no network): ``plotly_mimetype``. The figure
  is stored as plotly JSON (``application/vnd.plotly.v1+json``) and drawn by the
  ``jupyterlab-plotly`` extension that the ``plotly`` wheel itself installs (plotly ≥ 5 ships
  it prebuilt under ``share/jupyter/labextensions``, with plotly.js bundled inside), so no
  CDN is involved. ``notebook_connected`` (the previous choice) loads plotly.js from
  ``cdn.plot.ly`` and leaves an empty box offline.
* **VS Code**: ``plotly_mimetype`` as well; VS Code's notebook renderers draw that mimetype.
* **Google Colab**: ``colab`` (plotly's HTML renderer for Colab; Colab has network), and
  ``google.colab.output.enable_custom_widget_manager()``, which Colab needs before it shows
  third-party widgets such as plotly's ``FigureWidget`` and anywidget-based panels.
* **Outside a notebook** (a script, a terminal IPython, pytest): nothing changes; a one-line
  note says so. It never raises.

GitHub and nbviewer draw neither plotly's mimetype nor its JavaScript. For the figures that
matter there, ``lk.show(fig)`` displays the figure as above **plus** a small PNG in the same
output (rendered through kaleido and a local Chrome/Chromium, see ``lk.export_png``): Jupyter,
VS Code and Colab pick the interactive figure, static viewers the picture.

**Notebooks executed for storing** (``notebooks/execute.py`` sets ``LORAKIT_STATIC_OUTPUTS=1``
for its kernel; ``storing_static()`` reads it): ``setup_notebook`` then gives *every* output a
static fallback beside its interactive form, made in the kernel, where the figure and the
panel's state are known:

* every plotly figure: its PNG (``figure_png``; an animation: its first and last frames, one
  above the other), through the ``lorakit_png`` plotly renderer added to the default;
* every lorakit panel and explorer (``is_panel``): a PNG snapshot of its current view
  (``panel_png``: controls, readouts and figures drawn as static HTML by ``panel_html``, then
  photographed by headless Chrome/Chromium), through IPython's ``image/png`` formatter, next
  to the widget view; panels draw their figures in "static" display mode, so the widget state
  the notebook stores holds plain figures, not a FigureWidget's JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: the renderer per front end (keys: what ``front_end()`` returns)
RENDERERS = {"colab": "colab", "vscode": "plotly_mimetype", "jupyter": "plotly_mimetype"}
#: set to 1 (by ``notebooks/execute.py``) in a kernel whose notebook is executed for storing
STATIC_ENV = "LORAKIT_STATIC_OUTPUTS"
#: the plotly renderer that adds a figure's PNG (``figure_png``) to its output
STATIC_RENDERER = "lorakit_png"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
SNAPSHOT_WIDTH = 760                     # layout pixels of a panel snapshot
_NOT_IN_JUPYTER = ("lk.setup_notebook(): not running in a Jupyter kernel, nothing to set up "
                   "(figures keep plotly's default renderer).")


def front_end() -> str | None:
    """Where this kernel runs: ``"colab"``, ``"vscode"``, ``"jupyter"``, or None (no kernel).

    Colab: the ``google.colab`` module is loaded (Colab imports it into every kernel).
    VS Code: its ``VSCODE_PID``/``VSCODE_CWD`` environment variables (what plotly itself
    checks). Jupyter: an IPython shell attached to a kernel (JupyterLab, Notebook 7, Binder,
    nbval/nbclient runs).
    """
    if "google.colab" in sys.modules:
        return "colab"
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    if "VSCODE_PID" in os.environ or "VSCODE_CWD" in os.environ:
        return "vscode"
    return "jupyter"


def _enable_colab_widgets() -> None:
    colab = sys.modules["google.colab"]
    output = getattr(colab, "output", None)
    if output is None:
        import importlib

        output = importlib.import_module("google.colab.output")
    output.enable_custom_widget_manager()


def storing_static() -> bool:
    """True in a kernel whose notebook is executed for storing (``LORAKIT_STATIC_OUTPUTS=1``)."""
    return os.environ.get(STATIC_ENV, "").strip() not in ("", "0")


def setup_notebook(quiet: bool = True) -> None:
    """Make every plotly figure and widget render in this notebook's front end.

    Call it once, in the first code cell (``import lorakit as lk; lk.setup_notebook()``);
    calling it again is harmless. See the module docstring for what is chosen where. Sets
    ``plotly.io.renderers.default`` and lorakit's template as plotly's default
    (``lk.set_theme("auto")``: dark when JupyterLab's saved theme is dark); on Colab also
    enables Colab's custom widget manager. In a kernel executed for storing (``storing_static()``) it also switches the static
    fallbacks on (``add_static_fallbacks``).

    Args:
        quiet: True (default) prints nothing inside a notebook; False prints one line naming
            the front end and renderer. Outside a notebook a one-line note is always printed.
    """
    where = front_end()
    if where is None:
        print(_NOT_IN_JUPYTER)
        return
    import plotly.io as pio

    from .figures import set_theme

    pio.renderers.default = RENDERERS[where]
    theme = set_theme("auto")      # lorakit's template, light or dark as JupyterLab is
    if where == "colab":
        _enable_colab_widgets()
    if storing_static():
        add_static_fallbacks()
    if not quiet:
        print(f"lk.setup_notebook(): {where}; plotly renderer {pio.renderers.default!r}; "
              f"{theme} theme")


# --------------------------------------------------------------------------- static fallbacks


def _stack_pngs(pngs: list[bytes], gap: int = 12) -> bytes:
    """PNGs one above the other on white, ``gap`` pixels apart, as one PNG (Pillow)."""
    from PIL import Image

    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    width = max(i.width for i in images)
    out = Image.new("RGB", (width, sum(i.height for i in images) + gap * (len(images) - 1)),
                    "white")
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height + gap
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def small_png(png: bytes, colors: int = 256) -> bytes:
    """``png`` with at most ``colors`` colours (Pillow's median cut), usually a third of the
    bytes for a chart; ``png`` itself when Pillow is missing or cannot read it."""
    try:
        from PIL import Image

        image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colors)
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=True)
    except (ImportError, OSError, ValueError):
        return png
    return buf.getvalue() if buf.tell() < len(png) else png


def figure_png(fig, width: int | None = None, height: int | None = None,
               scale: float = 1) -> bytes:
    """The picture a static viewer (GitHub, nbviewer) shows for ``fig``, as PNG bytes.

    A still figure: its PNG at ``width × height`` layout pixels (default: the figure's own
    width, else 700; its own height, else 450) and ``scale``, with no animation controls.
    An animation (a figure with ``frames``): its first and its last frame, one above the
    other (each frame's title says its step). ``fig``: a ``go.Figure`` or a figure dict.
    Reduced to 256 colours (``small_png``): a static fallback, kept small for the notebook.
    Needs kaleido and a Chrome/Chromium (ImportError/RuntimeError saying what to install);
    an animation also needs Pillow.
    """
    from . import render

    figure = render.as_figure(fig)
    width = width or figure.layout.width or 700
    height = height or figure.layout.height or 450
    if not figure.frames:
        return small_png(render.png_bytes(figure, width=width, height=height, scale=scale))
    frames = render.frame_figures(figure)
    pngs = render.render([frames[0], frames[-1]], "png", width, height, scale)
    return small_png(_stack_pngs(pngs))


def _png_renderer():
    """plotly's renderer object for ``STATIC_RENDERER``: a figure's ``figure_png``."""
    from plotly.io.base_renderers import MimetypeRenderer

    class StaticPng(MimetypeRenderer):
        def to_mimebundle(self, fig_dict):
            return {"image/png": base64.b64encode(figure_png(fig_dict)).decode("ascii")}

    return StaticPng()


def add_static_fallbacks() -> None:
    """Give every figure and panel displayed from now on a static picture in its output.

    Figures: the ``lorakit_png`` renderer joins plotly's default renderer (``"…+lorakit_png"``).
    Panels and explorers: IPython's ``image/png`` formatter draws ``panel_png`` for them, and
    panels built from now on use the "static" display mode. For kernels executed for storing
    (``setup_notebook`` calls it there); harmless to call twice. Needs an IPython shell.
    """
    import ipywidgets
    import plotly.io as pio
    from IPython import get_ipython

    from .widgets import ShowsWidget, set_display_mode

    pio.renderers[STATIC_RENDERER] = _png_renderer()
    names = pio.renderers.default.split("+")
    if STATIC_RENDERER not in names:
        pio.renderers.default = "+".join([*names, STATIC_RENDERER])
    set_display_mode("static")
    shell = get_ipython()
    if shell is not None:
        png = shell.display_formatter.formatters["image/png"]
        for cls in (ShowsWidget, ipywidgets.Widget):
            png.for_type(cls, lambda obj: panel_png(obj) if is_panel(obj) else None)


def is_panel(obj) -> bool:
    """True for a lorakit panel or explorer: a lorakit object that is, or has, a root widget."""
    import ipywidgets

    return type(obj).__module__.startswith("lorakit.") and (
        isinstance(obj, ipywidgets.Widget)
        or isinstance(getattr(obj, "widget", None), ipywidgets.Widget))


def _img(png: bytes) -> str:
    return (f'<img style="max-width:100%" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">')


def _outputs_html(outputs) -> str:
    """An ``Output`` widget's outputs as static HTML: figures as PNGs, text as text."""
    parts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            parts.append(f"<pre>{html.escape(out.get('text', ''))}</pre>")
            continue
        data = out.get("data", {})
        if "image/png" in data:                   # a figure's PNG already made, or a picture
            parts.append(f'<img style="max-width:100%" src="data:image/png;base64,'
                         f'{data["image/png"]}">')
        elif PLOTLY_MIME in data:
            parts.append(_img(figure_png(data[PLOTLY_MIME])))
        elif "text/html" in data:
            parts.append(str(data["text/html"]))
        elif "text/plain" in data:
            parts.append(f"<pre>{html.escape(str(data['text/plain']))}</pre>")
    return "".join(parts)


def _control_html(w) -> str:
    """One control (slider, checkbox, text box, choice, button) as static HTML."""
    import ipywidgets as W

    label = html.escape(w.description or "")
    if isinstance(w, W.Button):
        return f"<button disabled>{label or html.escape(w.icon or '')}</button>"
    if isinstance(w, W.Checkbox):
        return f'<label><input type="checkbox" disabled{" checked" * bool(w.value)}> {label}</label>'
    if isinstance(w, (W.FloatProgress, W.IntProgress)):
        return f'{label} <progress max="{w.max - w.min}" value="{w.value - w.min}"></progress>'
    if isinstance(w, (W.IntSlider, W.FloatSlider)):
        return (f'<label>{label} <input type="range" disabled min="{w.min}" max="{w.max}" '
                f'step="{w.step}" value="{w.value}"> <b>{w.value:g}</b></label>')
    if isinstance(w, W.SelectionSlider) and w.index is not None:
        return (f'<label>{label} <input type="range" disabled min="0" '
                f'max="{len(w.options) - 1}" value="{w.index}"> '
                f"<b>{html.escape(str(w.label))}</b></label>")
    shown = w.label if hasattr(w, "label") and w.label is not None else w.value
    if isinstance(shown, (list, tuple)):
        shown = ", ".join(map(str, shown))
    return f"<label>{label} <b>{html.escape(str(shown))}</b></label>"


def widget_html(w) -> str:
    """A widget tree as static HTML, as it looks now (no JavaScript; hidden widgets left out).

    Boxes keep their direction (HBox: a wrapping row), HTML and labels keep their text,
    controls show their description and value, ``Output`` widgets their outputs, and every
    figure (a FigureWidget, or plotly output of an ``Output``) becomes its ``figure_png``.
    """
    import ipywidgets as W
    from plotly.basedatatypes import BaseFigure

    if isinstance(w, BaseFigure):
        return _img(figure_png(w))
    if isinstance(w, W.DOMWidget) and w.layout.display == "none":
        return ""
    if isinstance(w, W.Box):
        row = isinstance(w, W.HBox)
        inner = "".join(widget_html(c) for c in w.children)
        style = "flex-flow:row wrap;align-items:center" if row else "flex-direction:column"
        return f'<div style="display:flex;{style};gap:6px 16px">{inner}</div>'
    if isinstance(w, (W.HTML, W.HTMLMath)):
        label = f"<b>{html.escape(w.description)}</b> " if w.description else ""
        return f"<div>{label}{w.value}</div>"
    if isinstance(w, W.Label):
        return f"<div>{html.escape(w.value)}</div>"
    if isinstance(w, W.Output):
        return f"<div>{_outputs_html(w.outputs)}</div>"
    if isinstance(w, (W.ValueWidget, W.Button)):
        return f"<div>{_control_html(w)}</div>"
    return ""


def panel_html(panel, width: int = SNAPSHOT_WIDTH) -> str:
    """A standalone HTML page of ``panel`` (a lorakit panel or explorer, or any widget) as it
    looks now: ``widget_html`` of its root widget in a ``width``-pixel column."""
    import ipywidgets

    root = panel if isinstance(panel, ipywidgets.Widget) else panel.widget
    return ('<!DOCTYPE html><html><head><meta charset="utf-8"><style>'
            "body{margin:0;background:#fff;color:#222;font:13px/1.4 sans-serif}"
            f".lk-snapshot{{box-sizing:border-box;width:{width}px;padding:10px}}"
            "table{border-collapse:collapse}td,th{padding:1px 6px}"
            "pre{margin:2px 0;white-space:pre-wrap;overflow-wrap:anywhere}"
            f'</style></head><body><div class="lk-snapshot">{widget_html(root)}</div>'
            "</body></html>")


def _crop_white(png: bytes, margin: int = 10) -> bytes:
    """The PNG cut just below its last non-white row (a screenshot of a tall window)."""
    from PIL import Image, ImageOps

    image = Image.open(io.BytesIO(png)).convert("RGB")
    box = ImageOps.invert(image.convert("L")).getbbox()
    bottom = min(image.height, (box[3] if box else 1) + margin)
    buf = io.BytesIO()
    image.crop((0, 0, image.width, bottom)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def panel_png(panel, width: int = SNAPSHOT_WIDTH, max_height: int = 3000) -> bytes:
    """A PNG snapshot of ``panel`` as it looks now: ``panel_html`` photographed by headless
    Chrome/Chromium (``render.find_browser``), cut below its content (at most ``max_height``
    pixels). Needs kaleido (its figures), Pillow and the browser; RuntimeError naming what
    to install, or what the browser said, otherwise."""
    from .render import INSTALL_HINT, find_browser

    browser = find_browser()
    if browser is None:
        raise RuntimeError(f"no Chrome/Chromium browser for the panel snapshot. {INSTALL_HINT}")
    page = panel_html(panel, width)
    with tempfile.TemporaryDirectory(prefix="lorakit-snapshot-") as tmp:
        src, shot = Path(tmp, "panel.html"), Path(tmp, "panel.png")
        src.write_text(page, encoding="utf-8")
        cmd = [browser, "--headless", "--disable-gpu", "--hide-scrollbars",
               "--force-device-scale-factor=1", f"--window-size={width},{max_height}",
               f"--screenshot={shot}", src.as_uri()]
        if hasattr(os, "geteuid") and os.geteuid() == 0:   # Chromium refuses root otherwise
            cmd.insert(1, "--no-sandbox")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if not shot.is_file():
            raise RuntimeError(f"{browser} made no snapshot (exit {done.returncode}): "
                               f"{done.stderr.strip()[-300:]}")
        return small_png(_crop_white(shot.read_bytes()))


def show(fig, png: bool = True, width: int = 700, height: int | None = None,
         scale: float = 1) -> None:
    """Display ``fig`` with the notebook's renderer plus a small PNG for static viewers.

    One output holds both: the interactive figure (what ``setup_notebook`` chose) and an
    ``image/png`` of ``width × height`` layout pixels at ``scale`` (default 700 wide, the
    figure's own height or 450; 256 colours, about 10–30 KB; an animation: its first and
    last frames; see ``figure_png``), which GitHub and nbviewer show. Use it for a
    notebook's key figures; plain figures need only ``fig`` as the cell's last line.

    If the PNG cannot be made (no kaleido, no Chrome/Chromium), the figure is shown without
    it and a one-line note says why. Outside a notebook: ``fig.show()``.
    """
    import plotly.io as pio

    if front_end() is None:
        fig.show()
        return
    from IPython.display import display

    fig_dict = fig.to_dict()
    bundle: dict = {}
    for name in pio.renderers.default.split("+"):
        renderer = pio.renderers[name]
        if hasattr(renderer, "to_mimebundle") and name != STATIC_RENDERER:
            renderer.activate()
            bundle.update(renderer.to_mimebundle(fig_dict))
    if png:
        try:
            data = figure_png(fig, width=width, height=height, scale=scale)
            bundle["image/png"] = base64.b64encode(data).decode("ascii")
        except (ImportError, RuntimeError) as e:
            print(f"lk.show(): no static PNG ({type(e).__name__}: {str(e)[:160]})")
    display(bundle, raw=True)


__all__ = ["PLOTLY_MIME", "RENDERERS", "STATIC_ENV", "STATIC_RENDERER", "add_static_fallbacks",
           "figure_png", "front_end", "is_panel", "panel_html", "panel_png", "setup_notebook",
           "show", "small_png", "storing_static", "widget_html"]
