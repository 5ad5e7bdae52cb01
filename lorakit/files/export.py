"""Export: one figure or panel -> one file: a standalone HTML page, a PNG, an SVG or a PDF.

Each function writes one file atomically (a temporary file in the same folder, then
``os.replace``), after checking that the path can be written, so a failed export never leaves
a half-written file behind:

* ``export_html(fig_or_panel, path)``: a standalone page. plotly.js is inlined (``offline=True``,
  ~4.8 MB, works with no network: a classroom, a file server, an e-mail attachment) or loaded
  from plotly's CDN (``offline=False``, a few hundred KB per figure). Animations keep their
  frames, Play/Pause buttons and step slider, and do not start by themselves. A panel
  (``lk.LoRAPanel(...)`` etc., anything with a ``.widget``) becomes its ipywidgets state,
  embedded the way ``ipywidgets.embed.embed_minimal_html`` does it, plus its current figures
  as plain plotly figures and a plain-text snapshot of its controls and labels.
* ``export_png(fig, path)``: a PNG through kaleido 1.x, which drives a Chrome/Chromium browser
  through ``choreographer`` (the rendering is ``view.render.png_bytes``).
* ``export_svg(fig, path, preset="slide")`` / ``export_pdf(...)``: vector images for slides,
  handouts and LaTeX/Beamer; a preset sets size, font sizes and line widths once
  (``view.render.PRESETS``).

References: plotly's ``plotly.io.to_html`` (https://plotly.com/python/interactive-html-export/),
ipywidgets' ``ipywidgets.embed`` ("Embedding Jupyter Widgets in Other Contexts than the
Notebook"), kaleido 1.x (https://github.com/plotly/Kaleido). Escaping follows the OWASP XSS
Prevention Cheat Sheet, rule 1: every piece of text lorakit writes into HTML itself (page
title, panel labels, values, prompts, module names) goes through ``html.escape``; text inside
figures and widget state is JSON in ``<script>`` blocks, where plotly and ipywidgets replace
``<`` by ``\\u003c``.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import plotly.graph_objects as go
from plotly.basedatatypes import BaseFigure

from ..core.guards import write_atomic
from ..view.render import apply_preset, as_figure, png_bytes, render
from ._common import check_suffix, figure_page, writable

_HTML_SUFFIXES = (".html", ".htm")
# plotly's own rich-text tags in titles; left out of the plain-text <title> of the page
_PLOTLY_TAGS = re.compile(r"</?(?:b|i|em|sub|sup|br|span)\b[^>]*>", re.IGNORECASE)
_PLOTLY_MIME = "application/vnd.plotly.v1+json"


# --------------------------------------------------------------------------- paths


# --------------------------------------------------------------------------- HTML


def _is_panel(obj) -> bool:
    try:
        import ipywidgets
    except ImportError:
        return False
    return isinstance(obj, ipywidgets.Widget) or isinstance(getattr(obj, "widget", None),
                                                            ipywidgets.Widget)


def _plain_title(fig: go.Figure) -> str | None:
    text = fig.layout.title.text
    return _PLOTLY_TAGS.sub(" ", text).strip() if text else None


def _figure_html(figs: list[go.Figure], offline: bool) -> list[str]:
    """One ``<div>`` per figure; plotly.js comes once, with the first."""
    out = []
    for i, fig in enumerate(figs):
        include = (True if offline else "cdn") if i == 0 else False
        out.append(fig.to_html(full_html=False, include_plotlyjs=include, auto_play=False,
                               div_id=f"lorakit-figure-{i}", config={"responsive": True}))
    return out


class _TextOnly(HTMLParser):
    """The text of an HTML fragment (an ``ipywidgets.HTML`` value): tags, scripts, styles dropped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0                        # inside <script>/<style>: not text

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)

    @classmethod
    def text(cls, fragment: str) -> str:
        parser = cls()
        parser.feed(fragment)
        parser.close()
        return " ".join(" ".join(parser.parts).split())


def _value_text(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _walk(widget, lines: list[str], figs: list[go.Figure], seen: set[int]) -> None:
    """Depth first over a widget tree: text lines (unescaped) and figures, in page order."""
    import ipywidgets as w

    if id(widget) in seen:
        return
    seen.add(id(widget))
    if isinstance(widget, BaseFigure):                              # go.FigureWidget
        figs.append(go.Figure(widget))
        return
    if isinstance(widget, w.DOMWidget) and widget.layout.display == "none":   # hidden
        return
    if isinstance(widget, (w.HTML, w.HTMLMath, w.Label)):
        text = _TextOnly.text(widget.value) if isinstance(widget, (w.HTML, w.HTMLMath)) \
            else widget.value
        if text:
            lines.append(f"{widget.description}: {text}" if widget.description else text)
    elif isinstance(widget, w.Output):
        for out in widget.outputs:
            data = out.get("data", {}) if out.get("output_type") != "stream" else {}
            if _PLOTLY_MIME in data:
                figs.append(go.Figure(data[_PLOTLY_MIME]))
            elif "text/plain" in data:
                lines.append(str(data["text/plain"]))
            elif out.get("output_type") == "stream" and out.get("text", "").strip():
                lines.append(out["text"].strip())
    elif isinstance(widget, w.ValueWidget) and not isinstance(widget, w.Button):
        label = widget.description or type(widget).__name__
        lines.append(f"{label}: {_value_text(widget.value)}")
    for child in getattr(widget, "children", ()) or ():
        _walk(child, lines, figs, seen)


def _panel_html(panel, title: str | None, offline: bool) -> str:
    """A panel's page: embedded widget state, its figures and a text snapshot.

    The figures are the ``FigureWidget``s and the plotly outputs of ``Output`` widgets found
    in the widget tree (a panel's live charts, in "widget" and "static" display modes).
    Only the panel's own widgets go into the state (``dependency_state``), not every widget
    the kernel knows.
    """
    import ipywidgets
    from ipywidgets.embed import dependency_state, embed_snippet

    root = panel if isinstance(panel, ipywidgets.Widget) else panel.widget
    lines: list[str] = []
    figs: list[go.Figure] = []
    _walk(root, lines, figs, set())
    title = title or f"lorakit {type(panel).__name__}"
    state = dependency_state([root], drop_defaults=True)
    snippet = embed_snippet([root], state=state, requirejs=True)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    body = [f'<div class="lk-panel">{snippet}</div>',
            '<p class="lk-note">Above: the panel as it was when exported, drawn by the '
            "Jupyter widgets HTML manager from a CDN (needs a network connection; its "
            "controls no longer compute anything). Below: its figures and its state as "
            "text, which need no network.</p>",
            *(f'<div class="lk-figure">{d}</div>' for d in _figure_html(figs, offline)),
            f'<details class="lk-state" open><summary>Panel state as text</summary><ul>{items}'
            "</ul></details>"]
    return figure_page(title, body, heading=True)


def export_html(fig_or_panel, path, offline: bool = True, title: str | None = None) -> Path:
    """Write a figure or a panel as one standalone HTML page; return its absolute path.

    Args:
        fig_or_panel: a ``go.Figure`` (any ``lk.figures`` builder; animations keep their
            frames, Play button and slider, with no auto-play) or a panel (``lk.LoRAPanel``
            and friends: anything with a ``.widget``, or an ipywidgets widget itself).
        path: the ``.html``/``.htm`` file to write (replaced atomically if it exists). Its
            folder must exist; an unwritable path raises an OSError naming it, before
            anything is written.
        offline: True inlines plotly.js (~4.8 MB, no network needed); False loads it from
            plotly's CDN with a ``<script src>`` tag (small file, needs the network).
        title: the page title (``<title>`` and, for panels or when given, a heading);
            default: the figure's title, or the panel's class name. Escaped.

    A panel's page holds (1) its widget state embedded as ``ipywidgets.embed`` does it (the
    widget views load the Jupyter widgets HTML manager from a CDN, so they need a network,
    whatever ``offline`` says), (2) its current figures as plain plotly figures, and (3) a
    plain-text list of its labels and control values; (2) and (3) work offline.
    """
    p = writable(path)
    check_suffix(p, _HTML_SUFFIXES, "export_html")
    if _is_panel(fig_or_panel) and not isinstance(fig_or_panel, BaseFigure):
        page = _panel_html(fig_or_panel, title, offline)
    else:
        fig = as_figure(fig_or_panel)
        page_title = title or _plain_title(fig) or "lorakit figure"
        body = [f'<div class="lk-figure">{d}</div>' for d in _figure_html([fig], offline)]
        page = figure_page(page_title, body, heading=title is not None)
    return write_atomic(p, page.encode("utf-8"))


# --------------------------------------------------------------------------- PNG


def export_png(fig, path, width: int | None = None, height: int | None = None,
               scale: float = 2, *, frame: int | str | None = None) -> Path:
    """Write ``fig`` as a PNG of ``(width·scale) × (height·scale)`` pixels; return its path.

    Args:
        fig: a ``go.Figure``.
        path: the ``.png`` file to write (atomically; its folder must exist).
        width, height: layout pixels; default: the figure's own ``layout.width/height``, else
            plotly's defaults (700 × 500).
        scale: pixel density (2 = sharp on slides and high-DPI screens).
        frame: for an animation, which frame to draw. Default None: the figure as it opens,
            i.e. the FIRST step for ``lk.figures.matrix_evolution``; ``-1`` for the last
            step, or a frame name (the step as a string). Play buttons and sliders are left
            out of the image (see ``still``).

    Needs kaleido 1.x and a Chrome/Chromium browser (kaleido drives it through
    ``choreographer``): ``pip install kaleido`` (or ``pip install 'lorakit[export]'``) and,
    on Debian/Ubuntu, ``sudo apt-get install chromium`` (``/usr/bin/chromium``), or set
    ``BROWSER_PATH`` to any Chrome/Chromium executable (see ``find_browser``). Without them:
    ImportError (kaleido) or RuntimeError (browser) saying what to install. MathJax is off
    (it would be fetched from a CDN); plotly.js comes from the installed plotly package, so
    no network is needed.
    """
    p = writable(path)
    check_suffix(p, (".png",), "export_png")
    return write_atomic(p, png_bytes(fig, width, height, scale, frame=frame))


# --------------------------------------------------------------------------- SVG / PDF


def _export_vector(fig, path, preset: str, frame, fmt: str, magic: bytes) -> Path:
    p = writable(path)
    check_suffix(p, (f".{fmt}",), f"export_{fmt}")
    figure = apply_preset(fig, preset, frame)
    data = render([figure], fmt)[0]
    head = data.lstrip()[:200]
    if not (head.startswith(magic) or (fmt == "svg" and b"<svg" in head)):
        raise RuntimeError(f"kaleido returned no {fmt.upper()} (starts {head[:20]!r})")
    return write_atomic(p, data)


def export_svg(fig, path, preset: str = "slide", *, frame: int | str | None = None) -> Path:
    """Write ``fig`` as an SVG sized for ``preset`` ("slide", "handout", "web"); return its path.

    The preset sets width × height, font sizes and line widths (``PRESETS``): "slide" is a
    1280 × 720 16:9 slide with 22 px text and 4 px lines, "handout" half a printed page,
    "web" a page column. ``frame`` picks an animation's frame (default: the first; -1 the
    last); Play buttons and sliders are left out. Needs kaleido + Chromium.
    """
    return _export_vector(fig, path, preset, frame, "svg", b"<svg")


def export_pdf(fig, path, preset: str = "slide", *, frame: int | str | None = None) -> Path:
    """Write ``fig`` as a one-page vector PDF for ``preset`` (LaTeX/Beamer ``\\includegraphics``);
    see ``export_svg`` for the presets and ``frame``."""
    return _export_vector(fig, path, preset, frame, "pdf", b"%PDF")


__all__ = ["export_html", "export_pdf", "export_png", "export_svg"]
