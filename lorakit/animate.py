"""Figures for slides and handouts: animations as GIF/MP4, print-quality SVG/PDF.

* ``export_gif(fig, path)`` / ``export_mp4(fig, path)``: every frame of a plotly animation (the
  ``lk.figures.matrix_evolution`` heatmaps of A, B or ΔW, or any figure with ``frames``) drawn
  as a still (frame data and frame title applied: the step and the loss stay in the title;
  Play button and slider left out), all frames in ONE kaleido browser session, then assembled:
  a looping GIF with Pillow (one palette for all frames, built around the figure's diverging
  colour scale, no dithering, so colours do not flicker between frames) or an H.264 MP4 with
  imageio-ffmpeg (yuv420p, even width and height, ``+faststart``: the profile PowerPoint,
  Keynote, Google Slides and browsers play).
* ``export_svg(fig, path, preset="slide")`` / ``export_pdf(...)``: vector images for slides,
  handouts and LaTeX/Beamer; a preset sets size, font sizes and line widths once
  (``PRESETS``).

A figure without frames has nothing to animate: ``export_gif``/``export_mp4`` raise a
ValueError pointing to ``export_png`` (they never write a one-frame "animation").

Needs: kaleido 1.x and a Chrome/Chromium (as ``export_png``), Pillow for GIF, imageio-ffmpeg for
MP4 (its wheel ships an ffmpeg binary); ``pip install 'lorakit[export]'`` installs all three.
References: kaleido's ``Kaleido`` context manager (one browser, many ``calc_fig`` calls),
Pillow's GIF writer (``save_all``, ``loop=0``, ``duration`` in ms), imageio-ffmpeg's
``write_frames``; H.264 for slides: yuv420p 4:2:0 chroma needs even dimensions.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from .export import _INSTALL, _as_figure, _check_suffix, _writable, find_browser, still

GIF_MAX_FPS = 50          # GIF delays are in 1/100 s; browsers slow down anything faster
MP4_MAX_FPS = 60
MIN_SIDE, MAX_WIDTH, MAX_HEIGHT = 64, 3840, 2160
DEFAULT_SIZE = (640, 480)
# browser tabs rendering frames side by side in the one kaleido session (one per core, ≤ 4)
TABS = max(1, min(4, os.cpu_count() or 1))
_PILLOW = ("GIF export needs Pillow: pip install Pillow (or pip install 'lorakit[export]')")
_FFMPEG = ("MP4 export needs imageio-ffmpeg, which brings its own ffmpeg: pip install "
           "imageio-ffmpeg (or pip install 'lorakit[export]'). GIF export works without it: "
           "lk.export_gif(fig, 'animation.gif')")


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


# --------------------------------------------------------------------------- checks


def _check_number(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")


def _check_size(width, height) -> tuple[int, int]:
    w, h = DEFAULT_SIZE[0] if width is None else width, DEFAULT_SIZE[1] if height is None \
        else height
    for name, v, top in (("width", w, MAX_WIDTH), ("height", h, MAX_HEIGHT)):
        if isinstance(v, bool) or not isinstance(v, int) or not MIN_SIDE <= v <= top:
            raise ValueError(f"{name} must be a whole number of pixels from {MIN_SIDE} to "
                             f"{top}, got {v!r}")
    return w, h


def _need_kaleido():
    try:
        import kaleido
    except ImportError as e:
        raise ImportError(f"kaleido is not installed. {_INSTALL}") from e
    browser = find_browser()
    if browser is None:
        raise RuntimeError(f"no Chrome/Chromium browser found. {_INSTALL}")
    return kaleido, browser


def _need_pillow():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(_PILLOW) from e
    return Image


def _need_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError(_FFMPEG) from e
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        raise RuntimeError(f"imageio-ffmpeg found no ffmpeg binary ({e}). {_FFMPEG}") from e
    return imageio_ffmpeg


# --------------------------------------------------------------------------- rendering


def _run_async(make_coro):
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
    kaleido, browser = _need_kaleido()
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
        return _run_async(work)
    except Exception as e:
        raise RuntimeError(f"kaleido could not render the figure with the browser {browser!r}: "
                           f"{type(e).__name__}: {e}. {_INSTALL}") from e


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
    fig = _as_figure(fig)
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


def _tqdm(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False)


def render_frames(fig, width: int, height: int, progress: bool = True) -> list[bytes]:
    """PNG bytes of every frame of ``fig`` at ``width × height`` pixels (one browser session).

    ``fig``: an animation, or the list ``frame_figures(fig)`` already made from one."""
    specs = fig if isinstance(fig, list) else frame_figures(fig)
    bar = _tqdm(len(specs), "rendering frames") if progress else None
    try:
        return render(specs, "png", width, height, 1,
                      progress=(lambda i: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------- GIF


def _colorscales(specs: Sequence[dict]) -> list[list]:
    """The colour scales of the first frame's traces (plotly names resolved), deduplicated."""
    from plotly.colors import get_colorscale

    scales, seen = [], set()
    for trace in specs[0].get("data", []) if specs else []:
        cs = trace.get("colorscale")
        if cs is None:
            continue
        if isinstance(cs, str):
            reverse = cs.endswith("_r")
            cs = get_colorscale(cs[:-2] if reverse else cs)
            if reverse:
                cs = [[1 - p, c] for p, c in reversed(cs)]
        key = json.dumps(cs)
        if key not in seen:
            seen.add(key)
            scales.append(cs)
    return scales


def _scale_colours(scale: list, n: int) -> list[tuple[int, int, int]]:
    from plotly.colors import sample_colorscale, unlabel_rgb

    cols = sample_colorscale(scale, [i / (n - 1) for i in range(n)], colortype="rgb")
    return [tuple(int(round(float(c))) for c in unlabel_rgb(col)) for col in cols]


def gif_palette(images: Sequence, scales: Sequence[list], Image):
    """A 256-colour ``P`` image whose palette is: 160 steps along each diverging colour scale
    (split between scales when there are several), 32 greys (text, axes, anti-aliasing) and
    the rest chosen by median cut from the first and last frames (any other colours)."""
    colours: list[tuple[int, int, int]] = []
    if scales:
        per = max(16, 160 // len(scales))
        for s in scales:
            colours += _scale_colours(s, per)
    colours += [(round(255 * i / 31),) * 3 for i in range(32)]
    colours = list(dict.fromkeys(colours))[:224]
    rest = 256 - len(colours)
    first, last = images[0], images[-1]
    both = Image.new("RGB", (first.width, first.height * 2))
    both.paste(first, (0, 0))
    both.paste(last, (0, first.height))
    extra = both.quantize(colors=rest, method=Image.Quantize.MEDIANCUT).getpalette()[:3 * rest]
    flat = [v for c in colours for v in c] + extra
    flat += [0] * (768 - len(flat))
    pal = Image.new("P", (1, 1))
    pal.putpalette(flat[:768])
    return pal


def _gif_bytes(pngs: Sequence[bytes], scales, fps: float, Image) -> bytes:
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in pngs]
    pal = gif_palette(images, scales, Image)
    frames = [im.quantize(palette=pal, dither=Image.Dither.NONE) for im in images]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=max(20, round(1000 / fps)), loop=0, optimize=False, disposal=1)
    return buf.getvalue()


def export_gif(fig, path, fps: float = 8, width: int | None = None, height: int | None = None,
               *, progress: bool = True) -> Path:
    """Write an animation (a figure with frames) as a looping GIF; return its absolute path.

    Args:
        fig: a plotly animation, e.g. ``lk.figures.matrix_evolution(recording, "q_proj",
            layer=0)``; each frame is drawn with its own title (step and loss).
        path: the ``.gif`` file (written atomically; its folder must exist).
        fps: frames per second, 0 < fps ≤ 50 (GIF delays are in 1/100 s).
        width, height: pixels, 64–3840 × 64–2160 (default 640 × 480).
        progress: a progress bar while the frames render.

    One palette for all frames (the colour scale's own steps, greys, and a few colours picked
    from the first and last frame), no dithering: a colour means the same value in every
    frame, and unchanged areas compress well. Needs kaleido + Chromium and Pillow; a figure
    with no frames raises ValueError (use ``export_png``).
    """
    p = _writable(path)
    _check_suffix(p, (".gif",), "export_gif")
    _check_number("fps", fps, 1e-3, GIF_MAX_FPS)
    w, h = _check_size(width, height)
    Image = _need_pillow()
    _need_kaleido()
    specs = frame_figures(fig)
    pngs = render_frames(specs, w, h, progress)
    return _write_bytes(p, _gif_bytes(pngs, _colorscales(specs), fps, Image))


def gif_from_pngs(pngs: Sequence[bytes], specs: list[dict], fps: float = 8) -> bytes:
    """GIF bytes from frames already rendered (``render_frames(specs, ...)``)."""
    return _gif_bytes(pngs, _colorscales(specs), fps, _need_pillow())


# --------------------------------------------------------------------------- MP4


def _even_rgb(png: bytes, Image):
    """An RGB numpy array with even width and height (edge pixels repeated when odd)."""
    import numpy as np

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    h, w = a.shape[:2]
    return np.ascontiguousarray(np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge"))


def mp4_from_pngs(pngs: Sequence[bytes], path: Path, fps: float = 8, crf: int = 23) -> Path:
    """Encode rendered frames as an H.264 MP4 at ``path`` (atomically): yuv420p, even size,
    ``+faststart``, High profile — plays in PowerPoint, Keynote and browsers."""
    ffmpeg = _need_ffmpeg()
    Image = _need_pillow()
    arrays = [_even_rgb(b, Image) for b in pngs]
    h, w = arrays[0].shape[:2]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        writer = ffmpeg.write_frames(
            tmp, (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(crf), "-preset", "medium", "-profile:v", "high",
                           "-tune", "animation", "-movflags", "+faststart", "-f", "mp4"])
        writer.send(None)
        for a in arrays:
            writer.send(a)
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def export_mp4(fig, path, fps: float = 8, width: int | None = None, height: int | None = None,
               *, crf: int = 23, progress: bool = True) -> Path:
    """Write an animation (a figure with frames) as an H.264 MP4; return its absolute path.

    Args:
        fig: a plotly animation (see ``export_gif``); each frame keeps its title.
        path: the ``.mp4`` file (written atomically; its folder must exist).
        fps: frames per second, 0 < fps ≤ 60.
        width, height: pixels, 64–3840 × 64–2160 (default 640 × 480); an odd size gets one
            repeated edge pixel (4:2:0 video needs even sizes).
        crf: x264 quality, 0 (lossless) to 51 (worst); 23 is x264's default.
        progress: a progress bar while the frames render.

    The file is what slide software plays: H.264 High profile, yuv420p, ``+faststart``.
    Needs imageio-ffmpeg (ImportError saying so, before anything renders; GIF export works
    without it), kaleido + Chromium and Pillow.
    """
    p = _writable(path)
    _check_suffix(p, (".mp4",), "export_mp4")
    _check_number("fps", fps, 1e-3, MP4_MAX_FPS)
    _check_number("crf", crf, 0, 51)
    w, h = _check_size(width, height)
    _need_ffmpeg()
    _need_pillow()
    _need_kaleido()
    return mp4_from_pngs(render_frames(fig, w, h, progress), p, fps, int(crf))


# --------------------------------------------------------------------------- SVG / PDF


def apply_preset(fig, preset: str = "slide", frame: int | str | None = None) -> go.Figure:
    """A still copy of ``fig`` (see ``export.still``) with a preset's size, fonts and lines."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}, "
                         f"got {preset!r}")
    ps = PRESETS[preset]
    out = still(_as_figure(fig), frame)
    out.layout.updatemenus = []                           # buttons do nothing on paper
    out.update_layout(width=ps.width, height=ps.height, font_size=ps.font,
                      title_font_size=ps.title, legend_font_size=ps.font)
    out.update_annotations(font_size=ps.font + 2)          # subplot titles
    out.update_xaxes(title_font_size=ps.font, tickfont_size=ps.font - 2)
    out.update_yaxes(title_font_size=ps.font, tickfont_size=ps.font - 2)
    for trace in out.data:
        if trace.type in ("scatter", "scattergl"):
            trace.update(line_width=ps.line, marker_size=ps.marker)
        if "colorbar" in trace:
            trace.update(colorbar_tickfont_size=ps.font - 2)
    return out


def _export_vector(fig, path, preset: str, frame, fmt: str, magic: bytes) -> Path:
    p = _writable(path)
    _check_suffix(p, (f".{fmt}",), f"export_{fmt}")
    figure = apply_preset(fig, preset, frame)
    data = render([figure], fmt)[0]
    head = data.lstrip()[:200]
    if not (head.startswith(magic) or (fmt == "svg" and b"<svg" in head)):
        raise RuntimeError(f"kaleido returned no {fmt.upper()} (starts {head[:20]!r})")
    return _write_bytes(p, data)


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


def _write_bytes(path: Path, data: bytes) -> Path:
    from .export import _write_atomic

    return _write_atomic(path, data)


__all__ = ["PRESETS", "Preset", "apply_preset", "export_gif", "export_mp4", "export_pdf",
           "export_svg", "frame_figures", "gif_palette", "render", "render_frames"]
