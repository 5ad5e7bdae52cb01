"""Animations for slides and handouts: every frame of a plotly animation as a GIF or an MP4.

* ``export_gif(fig, path)`` / ``export_mp4(fig, path)``: every frame of a plotly animation (the
  ``lk.figures.matrix_evolution`` heatmaps of A, B or ΔW, ``lk.figures.low_rank_view``: ΔW
  beside Uᵀ·ΔW·V, where only r values are non-zero, or any figure with ``frames``) drawn
  as a still (frame data and frame title applied: the step and the loss stay in the title;
  Play button and slider left out), all frames in ONE kaleido browser session
  (``view.render``), then assembled: a looping GIF with Pillow (one palette for all frames,
  built around the figure's diverging colour scale, no dithering, so colours do not flicker
  between frames) or an H.264 MP4 with imageio-ffmpeg (yuv420p, even width and height,
  ``+faststart``: the profile PowerPoint, Keynote, Google Slides and browsers play).

A figure without frames has nothing to animate: ``export_gif``/``export_mp4`` raise a
ValueError pointing to ``export_png`` / ``export_svg`` (they never write a one-frame
"animation").

Needs: kaleido 1.x and a Chrome/Chromium (as ``export_png``), Pillow for GIF, imageio-ffmpeg for
MP4 (its wheel ships an ffmpeg binary); ``pip install 'lorakit[export]'`` installs all three.
References: kaleido's ``Kaleido`` context manager (one browser, many ``calc_fig`` calls),
Pillow's GIF writer (``save_all``, ``loop=0``, ``duration`` in ms), imageio-ffmpeg's
``write_frames``; H.264 for slides: yuv420p 4:2:0 chroma needs even dimensions.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from ..core.guards import kept_mode, write_atomic
from ..view.render import as_figure, frame_figures, need_kaleido, render
from ._common import (
    check_number,
    check_size,
    check_suffix,
    frame_bar,
    need_ffmpeg,
    need_pillow,
    writable,
)

GIF_MAX_FPS = 50          # GIF delays are in 1/100 s; browsers slow down anything faster
MP4_MAX_FPS = 60
# browser tabs rendering frames side by side in the one kaleido session (one per core, ≤ 4)


# --------------------------------------------------------------------------- checks


# --------------------------------------------------------------------------- rendering


def render_frames(fig, width: int, height: int, progress: bool = True) -> list[bytes]:
    """PNG bytes of every frame of ``fig`` at ``width × height`` pixels (one browser session).

    ``fig``: an animation, or the list ``frame_figures(fig)`` already made from one."""
    specs = fig if isinstance(fig, list) else frame_figures(fig)
    bar = frame_bar(len(specs), "rendering frames") if progress else None
    try:
        return render(specs, "png", width, height, 1,
                      progress=(lambda i: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def grow(fig, every: int = 1, title: str = "step") -> go.Figure:
    """An animation of a line chart over steps (``norms_over_time``, ``spectrum_over_time``,
    ``loss_curve``): frame k draws every line up to its k-th x value, so the lines grow.

    The x values of the first line-with-x are the steps (``every``: keep every n-th, the last
    always kept); each frame's title is the figure's title followed by "— step X". Axis ranges
    are fixed to the full data, so the picture does not rescale while it grows. The result
    works with ``export_gif``/``export_mp4`` like ``matrix_evolution``.
    """
    fig = as_figure(fig)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a whole number ≥ 1, got {every!r}")
    lines = [i for i, t in enumerate(fig.data) if t.type == "scatter" and t.x is not None]
    if not lines:
        raise ValueError("grow needs a line chart over steps (scatter traces with x values), "
                         "e.g. lk.figures.norms_over_time(recording)")
    steps = sorted({float(x) for i in lines for x in fig.data[i].x})
    keep = steps[::every] + ([steps[-1]] if (len(steps) - 1) % every else [])
    base_title = fig.layout.title.text or ""
    out = go.Figure(fig)
    # fixed ranges from the full data, so nothing rescales as the lines grow
    spans: dict[str, list[float]] = {}
    for i in lines:
        t = fig.data[i]
        for axis, values in ((f"xaxis{(t.xaxis or 'x')[1:]}", t.x),
                             (f"yaxis{(t.yaxis or 'y')[1:]}", t.y)):
            v = [float(a) for a in values if a is not None and math.isfinite(float(a))]
            if v:
                lo, hi = spans.get(axis, [min(v), max(v)])
                spans[axis] = [min(lo, *v), max(hi, *v)]
    for axis, (lo, hi) in spans.items():
        if out.layout[axis].type == "log":
            continue
        pad = 0.04 * (hi - lo or abs(hi) or 1) if axis.startswith("y") else 0
        out.layout[axis].range = [lo - pad, hi + pad]
    frames = []
    for s in keep:
        data = []
        for i in lines:
            t = fig.data[i]
            n = sum(1 for x in t.x if float(x) <= s)
            data.append(go.Scatter(x=list(t.x)[:n], y=list(t.y)[:n]))
        label = f"{s:g}"
        frames.append(go.Frame(name=label, data=data, traces=lines,
                               layout=go.Layout(title_text=f"{base_title} — {title} {label}")))
    out.frames = frames
    return out


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


def _scale_colours(scale: list, n: int) -> list[tuple[int, ...]]:
    from plotly.colors import sample_colorscale, unlabel_rgb

    cols = sample_colorscale(scale, [i / (n - 1) for i in range(n)], colortype="rgb")
    return [tuple(int(round(float(c))) for c in unlabel_rgb(col)) for col in cols]


def gif_palette(images: Sequence, scales: Sequence[list], Image):
    """A 256-colour ``P`` image whose palette is: 160 steps along each diverging colour scale
    (split between scales when there are several), 32 greys (text, axes, anti-aliasing) and
    the rest chosen by median cut from the first and last frames (any other colours)."""
    colours: list[tuple[int, ...]] = []
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
    p = writable(path)
    check_suffix(p, (".gif",), "export_gif")
    check_number("fps", fps, 1e-3, GIF_MAX_FPS)
    w, h = check_size(width, height)
    Image = need_pillow()
    need_kaleido()
    return write_atomic(p, gif_bytes(fig, fps, w, h, progress=progress, _image=Image))


def gif_bytes(fig, fps: float = 8, width: int | None = None, height: int | None = None, *,
              progress: bool = True, _image=None) -> bytes:
    """The GIF ``export_gif`` would write, as bytes (e.g. for a ``data:`` URI in a report)."""
    check_number("fps", fps, 1e-3, GIF_MAX_FPS)
    w, h = check_size(width, height)
    Image = _image or need_pillow()
    specs = frame_figures(fig)
    pngs = render_frames(specs, w, h, progress)
    return _gif_bytes(pngs, _colorscales(specs), fps, Image)


def gif_from_pngs(pngs: Sequence[bytes], specs: list[dict], fps: float = 8) -> bytes:
    """GIF bytes from frames already rendered (``render_frames(specs, ...)``)."""
    return _gif_bytes(pngs, _colorscales(specs), fps, need_pillow())


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
    ffmpeg = need_ffmpeg()
    Image = need_pillow()
    arrays = [_even_rgb(b, Image) for b in pngs]
    h, w = arrays[0].shape[:2]
    mode = kept_mode(path)
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
        os.chmod(tmp, mode)
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
    p = writable(path)
    check_suffix(p, (".mp4",), "export_mp4")
    check_number("fps", fps, 1e-3, MP4_MAX_FPS)
    check_number("crf", crf, 0, 51)
    w, h = check_size(width, height)
    need_ffmpeg()
    need_pillow()
    need_kaleido()
    return mp4_from_pngs(render_frames(fig, w, h, progress), p, fps, int(crf))


# --------------------------------------------------------------------------- SVG / PDF


__all__ = ["GIF_MAX_FPS", "MP4_MAX_FPS", "export_gif", "export_mp4", "gif_bytes", "gif_from_pngs",
           "gif_palette", "grow", "mp4_from_pngs", "render_frames"]
