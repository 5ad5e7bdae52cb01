"""Rendering: plotly figures to still images, in memory (kaleido 1.x driving Chrome/Chromium).

The view layer's one way to turn a figure into pixels or vectors: ``png_bytes`` (one figure,
what ``lk.show`` puts beside a figure for static viewers and ``lk.export_png`` writes),
``render``/``render_jobs`` (many figures in one browser session), ``still`` and
``frame_figures`` (an animation's frames as static figures) and ``apply_preset`` (sizes and
fonts for slides, handouts and web pages). Nothing here writes a file: ``lorakit.files`` does.

Needs kaleido 1.x and a Chrome/Chromium browser (``find_browser``); without them an
ImportError or RuntimeError says what to install. MathJax is off (it would be fetched from a
CDN) and plotly.js comes from the installed plotly package, so no network is needed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.basedatatypes import BaseFigure

from ..core.settings import POSITIVE

_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                  "chrome")


INSTALL_HINT = ("PNG export needs kaleido (pip install kaleido, or pip install 'lorakit[export]') "
            "and a Chrome/Chromium browser (Debian/Ubuntu: sudo apt-get install chromium; "
            "elsewhere: plotly_get_chrome or kaleido_get_chrome), or BROWSER_PATH=/path/to/it")


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


def as_figure(obj) -> go.Figure:
    if isinstance(obj, BaseFigure):           # go.Figure and go.FigureWidget
        return go.Figure(obj)
    if isinstance(obj, dict) and ("data" in obj or "layout" in obj):
        return go.Figure(obj)
    raise TypeError(f"expected a plotly Figure (e.g. from lk.figures) or a lorakit panel "
                    f"(e.g. lk.LoRAPanel(model)), got {type(obj).__name__}")


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


def need_kaleido():
    """(the kaleido module, a Chrome/Chromium path), or an error that says what to install."""
    try:
        import kaleido
    except ImportError as e:
        raise ImportError(f"kaleido is not installed. {INSTALL_HINT}") from e
    browser = find_browser()
    if browser is None:
        raise RuntimeError(f"no Chrome/Chromium browser found. {INSTALL_HINT}")
    return kaleido, browser


def png_bytes(fig, width: int | None = None, height: int | None = None, scale: float = 2, *,
              frame: int | str | None = None) -> bytes:
    """The PNG that ``export_png`` writes, as bytes (same arguments, same requirements)."""
    for name, v in (("width", width), ("height", height), ("scale", scale)):
        POSITIVE.or_none()(name, v)
    figure = still(as_figure(fig), frame)
    kaleido, browser = need_kaleido()
    layout = figure.layout
    opts = dict(format="png", width=width or layout.width or 700,
                height=height or layout.height or 500, scale=scale)
    try:
        data = kaleido.calc_fig_sync(json.loads(figure.to_json()), opts=opts,
                                     kopts=dict(path=browser, mathjax=False))
    except Exception as e:
        raise RuntimeError(f"kaleido could not render the PNG with the browser {browser!r}: "
                           f"{type(e).__name__}: {e}. {INSTALL_HINT}") from e
    png_size(data)                                     # a PNG, or ValueError before writing
    return data


TABS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Preset:
    """Size (layout pixels), font sizes and line widths for one kind of material."""

    width: int
    height: int
    font: int           # axis labels, ticks, legend
    title: int          # figure title
    line: float         # line traces' width
    marker: int         # marker size of line+marker traces


PRESETS = {
    # 16:9 slide at 1280 × 720: read from the back of a room
    "slide": Preset(1280, 720, font=22, title=28, line=4, marker=10),
    # half an A4/Letter page (≈ 19 × 12.7 cm at 96 px/in): printed at 100 %
    "handout": Preset(720, 480, font=12, title=14, line=1.5, marker=5),
    # a page column on screen
    "web": Preset(900, 500, font=13, title=15, line=2, marker=6),
}


def run_async(make_coro):
    """Run a coroutine to completion in a thread of its own (works inside Jupyter's loop)."""
    box: dict = {}

    def target():
        try:
            box["result"] = asyncio.run(make_coro())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="lorakit-kaleido")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def render(figures: Sequence[dict | go.Figure], fmt: str = "png", width: int | None = None,
           height: int | None = None, scale: float = 1,
           progress: Callable[[int], object] | None = None) -> list[bytes]:
    """Render plotly figures to images in ONE kaleido browser session; one bytes per figure.

    ``fmt``: "png", "svg" or "pdf". ``width``/``height``: layout pixels (default: each
    figure's own, else 700 × 500). ``progress(i)`` is called after each image. Raises the
    same ImportError/RuntimeError as ``export_png`` when kaleido or a browser is missing.
    """
    jobs = []
    for f in figures:
        spec = f if isinstance(f, dict) else json.loads(f.to_json())
        lay = spec.get("layout", {})
        jobs.append((spec, dict(format=fmt, scale=scale,
                                width=width or lay.get("width") or 700,
                                height=height or lay.get("height") or 500)))
    return render_jobs(jobs, progress)


def render_jobs(jobs: Sequence[tuple[dict, dict]],
                progress: Callable[[int], object] | None = None) -> list[bytes]:
    """Render ``(figure dict, kaleido opts)`` pairs in ONE browser session (``TABS`` tabs)."""
    kaleido, browser = need_kaleido()
    tabs = max(1, min(TABS, len(jobs)))

    async def work():
        out: list = [None] * len(jobs)
        queue: asyncio.Queue = asyncio.Queue()
        for item in enumerate(jobs):
            queue.put_nowait(item)
        async with kaleido.Kaleido(n=tabs, path=browser, mathjax=False) as k:
            async def worker():
                while not queue.empty():
                    i, (spec, opts) = queue.get_nowait()
                    out[i] = await k.calc_fig(spec, opts=opts)
                    if progress is not None:
                        progress(i)

            await asyncio.gather(*(worker() for _ in range(tabs)))
        return out

    try:
        return run_async(work)
    except Exception as e:
        raise RuntimeError(f"kaleido could not render the figure with the browser {browser!r}: "
                           f"{type(e).__name__}: {e}. {INSTALL_HINT}") from e


def _merge(base: dict, update: dict) -> dict:
    """``base`` updated by ``update``, nested dicts merged (as Plotly.animate applies a frame)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def frame_figures(fig) -> list[dict]:
    """Each frame of an animation as a plain figure dict (a still: no Play button, no slider).

    Frame ``i`` is the figure's first state with frame ``i``'s traces and layout (its title:
    step and loss) applied, as ``export.still(fig, i)`` gives it; built on plain dicts, so
    60 frames cost one JSON round trip, not 60 figure copies. ValueError when the figure has
    no frames.
    """
    fig = as_figure(fig)
    if not fig.frames:
        raise ValueError("the figure has no frames, so there is nothing to animate: make an "
                         "animation such as lk.figures.matrix_evolution(recording, module), or "
                         "write one picture with lk.export_png / lk.export_svg")
    frames = json.loads(go.Figure(frames=fig.frames).to_json()).get("frames", [])
    base = json.loads(still(fig).to_json())                # controls dropped, no frames
    out = []
    for fr in frames:
        data = [copy.copy(t) for t in base.get("data", [])]
        targets = fr.get("traces", list(range(len(fr.get("data", [])))))
        for t, trace in zip(targets, fr.get("data", []), strict=False):
            if t < len(data):
                data[t] = _merge(data[t], trace)
        out.append({"data": data, "layout": _merge(base.get("layout", {}),
                                                   fr.get("layout", {}))})
    return out


def apply_preset(fig, preset: str = "slide", frame: int | str | None = None) -> go.Figure:
    """A still copy of ``fig`` (see ``export.still``) with a preset's size, fonts and lines."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}, "
                         f"got {preset!r}")
    ps = PRESETS[preset]
    out = still(as_figure(fig), frame)
    out.layout.updatemenus = []                           # buttons do nothing on paper
    out.update_layout(width=ps.width, height=ps.height, font_size=ps.font,
                      title_font_size=ps.title, legend_font_size=ps.font,
                      # room for the title above subplot titles at this font size
                      margin_t=max(70, round(2.2 * ps.title + 1.4 * ps.font)))
    out.update_annotations(font_size=ps.font + 2)          # subplot titles
    out.update_xaxes(title_font_size=ps.font, tickfont_size=ps.font - 2)
    out.update_yaxes(title_font_size=ps.font, tickfont_size=ps.font - 2)
    for trace in out.data:
        if trace.type in ("scatter", "scattergl"):
            trace.update(line_width=ps.line, marker_size=ps.marker)
        if "colorbar" in trace:
            trace.update(colorbar_tickfont_size=ps.font - 2)
    return out


__all__ = ["INSTALL_HINT", "PRESETS", "Preset", "apply_preset", "as_figure", "find_browser",
           "frame_figures", "need_kaleido", "png_bytes", "png_size", "render", "render_jobs",
           "still"]
