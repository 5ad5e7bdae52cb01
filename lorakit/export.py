"""Export: figures and panels -> standalone HTML pages and PNG images for teaching material.

Two functions, both writing one file atomically (a temporary file in the same folder, then
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
  through ``choreographer``.

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
import json
import math
import os
import re
import shutil
import struct
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import plotly.graph_objects as go
from plotly.basedatatypes import BaseFigure

_HTML_SUFFIXES = (".html", ".htm")
# plotly's own rich-text tags in titles; left out of the plain-text <title> of the page
_PLOTLY_TAGS = re.compile(r"</?(?:b|i|em|sub|sup|br|span)\b[^>]*>", re.IGNORECASE)
_PLOTLY_MIME = "application/vnd.plotly.v1+json"
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                  "chrome")
_INSTALL = ("PNG export needs kaleido (pip install kaleido, or pip install 'lorakit[export]') "
            "and a Chrome/Chromium browser (Debian/Ubuntu: sudo apt-get install chromium; "
            "elsewhere: plotly_get_chrome or kaleido_get_chrome), or BROWSER_PATH=/path/to/it")
_CSS = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5rem auto;"
        "max-width:1100px;padding:0 1rem;color:#222}"
        "h1{font-size:1.4rem;font-weight:600}"
        ".lk-figure{margin:1rem 0}"
        "details.lk-state{margin:1rem 0;font-size:.9rem}"
        "details.lk-state li{margin:.15rem 0}"
        ".lk-note{color:#666;font-size:.85rem}")


# --------------------------------------------------------------------------- paths


def _writable(path) -> Path:
    """``path`` as an absolute Path, or an OSError naming it if it cannot be written there.

    Checked before anything is built or written, so a bad path leaves nothing behind.
    """
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise IsADirectoryError(f"cannot write {str(p)!r}: it is a directory; give a file "
                                f"name, e.g. {str(p / 'figure.html')!r}")
    parent = p.parent
    if not parent.exists():
        raise FileNotFoundError(f"cannot write {str(p)!r}: the folder {str(parent)!r} does "
                                f"not exist (create it first, e.g. os.makedirs)")
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {str(p)!r}: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PermissionError(f"cannot write {str(p)!r}: no permission to write there")
    return p


def _write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file next to ``path``, then ``os.replace`` it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _check_suffix(path: Path, allowed: tuple[str, ...], what: str) -> None:
    if path.suffix.lower() not in allowed:
        raise ValueError(f"{what} writes {allowed[0][1:].upper()}: give a path ending in "
                         f"{' or '.join(allowed)}, got {str(path)!r}")


# --------------------------------------------------------------------------- HTML


def _is_panel(obj) -> bool:
    try:
        import ipywidgets
    except ImportError:
        return False
    return isinstance(obj, ipywidgets.Widget) or isinstance(getattr(obj, "widget", None),
                                                            ipywidgets.Widget)


def _as_figure(obj) -> go.Figure:
    if isinstance(obj, BaseFigure):           # go.Figure and go.FigureWidget
        return go.Figure(obj)
    if isinstance(obj, dict) and ("data" in obj or "layout" in obj):
        return go.Figure(obj)
    raise TypeError(f"expected a plotly Figure (e.g. from lk.figures) or a lorakit panel "
                    f"(e.g. lk.LoRAPanel(model)), got {type(obj).__name__}")


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


def _page(title: str, body: list[str], heading: bool) -> str:
    t = html.escape(title, quote=True)
    h1 = f"<h1>{t}</h1>\n" if heading else ""
    parts = "\n".join(body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{t}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{h1}{parts}\n"
            f"</body>\n</html>\n")


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
    return _page(title, body, heading=True)


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
    p = _writable(path)
    _check_suffix(p, _HTML_SUFFIXES, "export_html")
    if _is_panel(fig_or_panel) and not isinstance(fig_or_panel, BaseFigure):
        page = _panel_html(fig_or_panel, title, offline)
    else:
        fig = _as_figure(fig_or_panel)
        page_title = title or _plain_title(fig) or "lorakit figure"
        body = [f'<div class="lk-figure">{d}</div>' for d in _figure_html([fig], offline)]
        page = _page(page_title, body, heading=title is not None)
    return _write_atomic(p, page.encode("utf-8"))


# --------------------------------------------------------------------------- PNG


def find_browser() -> str | None:
    """The Chrome/Chromium that ``export_png`` uses, or None.

    Order: ``$BROWSER_PATH``; ``chromium``/``chromium-browser``/``google-chrome``/``chrome``
    on ``PATH`` (Debian's ``apt-get install chromium`` gives ``/usr/bin/chromium``); then
    choreographer's own search (typical install paths, and a browser downloaded with
    ``plotly_get_chrome`` / ``kaleido_get_chrome``).
    """
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    return Chromium.find_browser(skip_local=False)


def _frame_of(fig: go.Figure, frame: int | str) -> go.Frame:
    names = [f.name for f in fig.frames]
    if isinstance(frame, str):
        if frame not in names:
            raise ValueError(f"no frame named {frame!r}; frames: {names[:5]}... ({len(names)})")
        return fig.frames[names.index(frame)]
    if not -len(names) <= frame < len(names):
        raise ValueError(f"frame {frame} out of range: the figure has {len(names)} frames")
    return fig.frames[frame]


def still(fig, frame: int | str | None = None) -> go.Figure:
    """A static copy of ``fig``: one frame applied, frames and animation controls removed.

    ``frame=None`` keeps the figure's own data: what the page shows before Play, which for
    the ``lk.figures`` animations is the FIRST recorded step. An index (``-1`` = the last
    step) or a frame name (the step, e.g. ``"12"``) shows that frame: its traces and its
    layout (title with step and loss). Animation buttons and sliders are dropped, and with
    them a bottom margin the figure set to make room for them (back to the template's).
    """
    fig = go.Figure(fig)
    if frame is not None and fig.frames:
        fr = _frame_of(fig, frame)
        targets = list(fr.traces) if fr.traces is not None else list(range(len(fr.data)))
        for t, trace in zip(targets, fr.data, strict=False):
            fig.data[t].update(trace.to_plotly_json())
        if fr.layout is not None:
            fig.update_layout(fr.layout.to_plotly_json())
    elif frame is not None:
        raise ValueError(f"frame={frame!r} given, but the figure is not an animation")
    if fig.frames:
        def animates(items):                 # Play/Pause buttons, the step slider
            return bool(items) and all(i.method == "animate" for i in items)

        # assigned, not update_layout(...): updating a list property with [] keeps it
        menus = [m for m in fig.layout.updatemenus if not animates(m.buttons)]
        sliders = [s for s in fig.layout.sliders if not animates(s.steps)]
        if (len(menus), len(sliders)) != (len(fig.layout.updatemenus), len(fig.layout.sliders)):
            fig.layout.margin.b = None       # the room kept below the plot for the controls
        fig.layout.updatemenus, fig.layout.sliders = menus, sliders
        fig.frames = []
    return fig


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk; ValueError if it is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file (wrong signature)")
    return struct.unpack(">II", data[16:24])


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
    p = _writable(path)
    _check_suffix(p, (".png",), "export_png")
    for name, v in (("width", width), ("height", height), ("scale", scale)):
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    return _write_atomic(p, png_bytes(fig, width, height, scale, frame=frame))


def png_bytes(fig, width: int | None = None, height: int | None = None, scale: float = 2, *,
              frame: int | str | None = None) -> bytes:
    """The PNG that ``export_png`` writes, as bytes (same arguments, same requirements)."""
    figure = still(_as_figure(fig), frame)
    try:
        import kaleido
    except ImportError as e:
        raise ImportError(f"kaleido is not installed. {_INSTALL}") from e
    browser = find_browser()
    if browser is None:
        raise RuntimeError(f"no Chrome/Chromium browser found. {_INSTALL}")
    layout = figure.layout
    opts = dict(format="png", width=width or layout.width or 700,
                height=height or layout.height or 500, scale=scale)
    try:
        data = kaleido.calc_fig_sync(json.loads(figure.to_json()), opts=opts,
                                     kopts=dict(path=browser, mathjax=False))
    except Exception as e:
        raise RuntimeError(f"kaleido could not render the PNG with the browser {browser!r}: "
                           f"{type(e).__name__}: {e}. {_INSTALL}") from e
    png_size(data)                                     # a PNG, or ValueError before writing
    return data


__all__ = ["export_html", "export_png", "find_browser", "png_bytes", "png_size", "still"]
