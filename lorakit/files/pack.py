"""``export_pack``: everything a teacher needs from one training run, in one folder.

For a ``Recording`` (or the ``Recorder`` holding one) and/or a ``TrainResult``:

* every figure (loss curve, norms of A/B/ΔW, singular values of ΔW, the A/B/ΔW heatmaps)
  as PNG (a 1280 × 720 slide), SVG (the "slide" preset of ``lk.export_svg``) and an
  interactive HTML page;
* the animations (ΔW; A, B, ΔW side by side; ΔW beside its singular-vector view, which
  shows its rank ≤ r; over the recorded steps) as a looping GIF
  and an H.264 MP4 (``lk.export_gif`` / ``lk.export_mp4``), the last step as PNG and SVG;
* ``index.md`` and ``index.html``: the run's settings and one caption per file, each file
  linked (HTML-escaped in both: Markdown passes raw HTML through).

All images come from ONE kaleido browser session (``animate.render_jobs``); the GIF and the
MP4 of an animation share its rendered frames. The HTML pages load one ``plotly.min.js``
written into the folder (``html="shared"``: offline and small), or each inlines it
(``"inline"``, +4.8 MB a page), or load it from plotly's CDN (``"cdn"``).
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.guards import probe_writable, write_atomic
from ..core.record import Recorder, Recording
from ..core.train import TrainResult
from ..view import render
from . import animate
from ._common import (
    DEFAULT_SIZE,
    check_number,
    check_size,
    figure_page,
    frame_bar,
    need_ffmpeg,
    need_pillow,
)

HTML_MODES = ("shared", "inline", "cdn")
SLIDE = render.PRESETS["slide"]


@dataclass
class PackFile:
    """One file of a pack: its name (relative to the folder), kind and caption."""

    name: str
    kind: str          # "png", "svg", "html", "gif", "mp4"
    caption: str


@dataclass
class PackFigure:
    """One figure and its files."""

    key: str
    title: str
    caption: str
    files: list[PackFile] = field(default_factory=list)
    animated: bool = False


@dataclass
class Pack:
    """What ``export_pack`` wrote. ``index`` is ``index.md``; ``str(pack)`` is its path."""

    folder: Path
    index: Path
    index_html: Path
    figures: list[PackFigure]
    settings: list[tuple[str, str]]
    skipped: list[str]
    seconds: float

    @property
    def files(self) -> list[PackFile]:
        return [f for fig in self.figures for f in fig.files]

    def __str__(self) -> str:
        return str(self.index)

    def __fspath__(self) -> str:
        return str(self.index)


# --------------------------------------------------------------------------- inputs


def _sources(run_or_recording, recording) -> tuple[TrainResult | None, Recording | None]:
    obj = run_or_recording
    result = obj if isinstance(obj, TrainResult) else None
    if isinstance(obj, Recorder):
        obj = obj.recording
    rec = obj if isinstance(obj, Recording) else None
    if result is None and rec is None:
        raise TypeError(f"export_pack needs a TrainResult (lk.train's result), a Recording "
                        f"or a Recorder, got {type(run_or_recording).__name__}")
    if recording is not None:
        if rec is not None:
            raise TypeError("recording= is for a TrainResult; a Recording was given already")
        rec = recording.recording if isinstance(recording, Recorder) else recording
        if not isinstance(rec, Recording):
            raise TypeError(f"recording must be a Recording or a Recorder, got "
                            f"{type(recording).__name__}")
    if rec is not None and len(rec) == 0:
        raise ValueError("the recording has no frames: record a run with "
                         "rec = lk.Recorder(peft_model) and lk.train(..., recorder=rec)")
    if rec is None:
        assert result is not None  # checked above: not both None
        if not result.losses:
            raise ValueError("the TrainResult has no steps, so there is nothing to draw")
    return result, rec


def check_folder(folder, overwrite: bool) -> Path:
    """The pack folder (absolute); refused before any work if it cannot be used."""
    p = Path(folder).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"cannot write the pack into {str(p)!r}: it is a file, "
                                 f"not a folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise FileExistsError(f"the folder {str(p)!r} exists and is not empty; choose a new "
                              f"folder, or pass overwrite=True to replace the pack's files in it")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot create {str(p)!r}: {str(existing)!r} is a file")
    try:
        probe_writable(existing)
    except OSError as err:
        raise PermissionError(f"cannot write the pack into {str(p)!r}: no permission to write "
                              f"in {str(existing)!r} ({err.strerror})") from err
    return p


def run_settings(result: TrainResult | None, rec: Recording | None) -> list[tuple[str, str]]:
    """(label, value) lines describing the run, from what the result and recording hold."""
    rows: list[tuple[str, str]] = []
    if rec is not None:
        first = next(iter(rec.data.values()))
        rows += [("model", rec.model_name or "(not recorded)"),
                 ("recorded modules", ", ".join(rec.modules)),
                 ("LoRA rank r", str(first.r)), ("scaling alpha/r", f"{first.scaling:g}"),
                 ("recorded steps", f"{rec.steps[0]}–{rec.steps[-1]} ({len(rec)} frames, "
                                    f"every {rec.stride})")]
    if result is not None:
        rows += [("steps done", f"{result.steps_done} of {result.steps_planned}"
                  + (" (interrupted)" if result.interrupted else "")),
                 ("training time", f"{result.elapsed:.1f} s"),
                 ("tokens per second", f"{result.tokens_per_s:,.0f}")]
        if result.losses:
            rows.append(("loss first → last", f"{result.losses[0]:.4f} → "
                                              f"{result.losses[-1]:.4f}"))
    elif rec is not None:
        losses = [v for v in rec.losses if v is not None]
        if losses:
            rows.append(("loss first → last (recorded)", f"{losses[0]:.4f} → {losses[-1]:.4f}"))
    return rows


def file_stem(module: str) -> str:
    """A module's name as part of a file name: every character but letters, digits, ``_`` and
    ``-`` becomes ``_`` (``layers.0.q_proj`` -> ``layers_0_q_proj``), so no name (one holding
    ``/`` or ``..``) can point outside the pack or fail half-way through writing it."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", module)


def _figures(result, rec) -> list[tuple[PackFigure, object]]:
    """(PackFigure, go.Figure) for every figure of the run."""
    from ..view import figures

    out = []
    loss_src = result if result is not None else rec
    if loss_src is not None and (result is not None or any(v is not None for v in rec.losses)):
        out.append((PackFigure("loss", "Training loss",
                               "Training loss per step and its smoothed trend."),
                    figures.loss_curve(loss_src)))
    if rec is not None:
        m = rec.modules[0]
        slug = file_stem(m)
        out.append((PackFigure("norms", "Norms of A, B and ΔW",
                               "Frobenius norms of A, B and ΔW of each recorded module over "
                               "the training steps."), figures.norms_over_time(rec)))
        out.append((PackFigure(f"spectrum_{slug}", f"Singular values of ΔW, {m}",
                               f"Top singular values of ΔW of {m} per recorded step: how much "
                               f"of the rank the update uses."),
                    figures.spectrum_over_time(rec, m)))
        out.append((PackFigure(f"delta_{slug}", f"ΔW of {m} over training",
                               f"Heatmap of ΔW = (alpha/r)·B·A of {m} at every recorded step "
                               f"(one colour range for all steps; title: step and loss).",
                               animated=True),
                    figures.matrix_evolution(rec, m, which="delta")))
        out.append((PackFigure(f"abdelta_{slug}", f"A, B and ΔW of {m} over training",
                               f"A, B and ΔW of {m} side by side at every recorded step: B "
                               f"starts at 0, so ΔW does too.", animated=True),
                    figures.matrix_evolution(rec, m, which="all")))
        out.append((PackFigure(f"rank_{slug}", f"The rank of ΔW of {m}",
                               f"ΔW of {m} beside ΔW in the basis of its singular vectors "
                               f"(Uᵀ·ΔW·V = Σ): only r values are ever non-zero, since "
                               f"B (d_out × r) · A (r × d_in) passes through r numbers.",
                               animated=True),
                    figures.low_rank_view(rec, m)))
    return out


# --------------------------------------------------------------------------- writing


def _thin(items: list, most: int | None) -> list:
    """At most ``most`` items, evenly spaced, the first and the last kept."""
    n = len(items)
    if most is None or n <= most:
        return items
    return [items[round(i * (n - 1) / (most - 1))] for i in range(most)]


def _html_page(fig, mode: str) -> str:
    include = {"shared": "directory", "inline": True, "cdn": "cdn"}[mode]
    return fig.to_html(full_html=True, include_plotlyjs=include, auto_play=False,
                       config={"responsive": True})


def _write(folder: Path, name: str, data: bytes | str) -> Path:
    p = folder / name
    return write_atomic(p, data.encode("utf-8") if isinstance(data, str) else data)


def export_pack(run_or_recording, folder, overwrite: bool = False, *, recording=None,
                title: str | None = None, settings=None, fps: float = 8,
                size: tuple[int, int] = DEFAULT_SIZE, html: str = "shared",
                max_frames: int | None = None, progress: bool = True) -> Pack:
    """Write every figure of one training run into ``folder``; return a ``Pack`` (``.index``
    is the path of ``index.md``, ``.index_html`` that of ``index.html``).

    Args:
        run_or_recording: a ``Recording`` (``rec.recording`` or ``Recording.load``), the
            ``Recorder`` itself, or a ``TrainResult`` (then only the loss curve, unless
            ``recording=`` is given too).
        folder: the folder to fill; created (with its parents) if missing. An existing
            non-empty folder is refused unless ``overwrite=True`` (files of the same name
            are then replaced; others are left alone).
        recording: with a ``TrainResult``, its ``Recording``/``Recorder``.
        title: the index's heading (default "lorakit figure pack").
        settings: extra (label, value) pairs or a dict for the settings table (e.g. the
            learning rate and task, which a Recording does not hold).
        fps, size: the animations' frames per second and (width, height) in pixels.
        html: "shared" (default: one plotly.min.js in the folder, pages work offline),
            "inline" (each page self-contained, ~4.8 MB each) or "cdn" (needs a network).
        max_frames: at most this many frames in each GIF/MP4 (evenly spaced, first and last
            step kept); None: every recorded step. The HTML pages keep every step.
        progress: a progress bar while images render.

    Static figures: PNG (1280 × 720), SVG ("slide" preset), HTML. Animations: GIF and MP4
    (sharing the rendered frames), HTML with Play/slider, and the last step as PNG + SVG.
    Without imageio-ffmpeg the MP4s are skipped and listed in ``Pack.skipped`` and the
    index. Everything is checked (input, folder, kaleido, browser, Pillow) before the
    folder is created or anything is rendered.
    """
    t0 = time.perf_counter()
    result, rec = _sources(run_or_recording, recording)
    width, height = _check_options(html, fps, size, max_frames)
    extra = list(settings.items()) if isinstance(settings, dict) else list(settings or [])
    p = check_folder(folder, overwrite)
    need_pillow()
    render.need_kaleido()
    skipped = []
    try:
        need_ffmpeg()
        mp4 = True
    except (ImportError, RuntimeError) as e:
        mp4 = False
        skipped.append(f"MP4 files: {e}")

    items = _figures(result, rec)
    by_key = _render(items, width, height, max_frames, progress)
    p.mkdir(parents=True, exist_ok=True)
    if html == "shared":
        from plotly.offline import get_plotlyjs

        _write(p, "plotly.min.js", get_plotlyjs())
    figs_out = [_write_figure(p, fig_info, fig, by_key[fig_info.key], html, fps, mp4)
                for fig_info, fig in items]
    rows = [(str(a), str(b)) for a, b in extra] + run_settings(result, rec)
    head = title or "lorakit figure pack"
    pack = Pack(folder=p, index=p / "index.md", index_html=p / "index.html", figures=figs_out,
                settings=rows, skipped=skipped, seconds=0.0)
    _write(p, "index.md", index_markdown(head, pack))
    _write(p, "index.html", index_html(head, pack))
    pack.seconds = time.perf_counter() - t0
    return pack


def _check_options(html: str, fps, size, max_frames) -> tuple[int, int]:
    """``export_pack``'s options checked; returns the animations' (width, height)."""
    if html not in HTML_MODES:
        raise ValueError(f"html must be one of {', '.join(map(repr, HTML_MODES))}, got {html!r}")
    check_number("fps", fps, 1e-3, animate.GIF_MAX_FPS)
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"size must be (width, height) in pixels, got {size!r}")
    width, height = check_size(*size)
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                   or max_frames < 2):
        raise ValueError(f"max_frames must be None or a whole number ≥ 2, got {max_frames!r}")
    return width, height


def _render(items, width: int, height: int, max_frames: int | None,
            progress: bool) -> dict[str, dict]:
    """Every image of the pack in one browser session: per figure key, "png"/"svg" (the
    statics) and 0, 1, ... (the animation frames)."""
    jobs = []
    slots: list[tuple[str, str | int]] = []  # (figure key, "png"/"svg" or frame number)
    for fig_info, fig in items:
        still = render.apply_preset(fig, "slide", -1 if fig_info.animated else None)
        spec = json.loads(still.to_json())
        for fmt in ("png", "svg"):
            jobs.append((spec, dict(format=fmt, width=SLIDE.width, height=SLIDE.height,
                                    scale=1)))
            slots.append((fig_info.key, fmt))
        if fig_info.animated:
            for k, fr in enumerate(_thin(render.frame_figures(fig), max_frames)):
                jobs.append((fr, dict(format="png", width=width, height=height, scale=1)))
                slots.append((fig_info.key, k))
    bar = frame_bar(len(jobs), "figure pack") if progress else None
    try:
        images = render.render_jobs(jobs, (lambda i: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    by_key: dict[str, dict] = {}
    for (key, what), data in zip(slots, images, strict=True):
        by_key.setdefault(key, {})[what] = data
    return by_key


def _write_figure(p: Path, fig_info: PackFigure, fig, got: dict, html: str, fps: float,
                  mp4: bool) -> PackFigure:
    """Write one figure's files (PNG, SVG, HTML; GIF and MP4 if animated); list them."""
    k = fig_info.key
    last = " (the last recorded step)" if fig_info.animated else ""
    _write(p, f"{k}.png", got["png"])
    _write(p, f"{k}.svg", got["svg"])
    _write(p, f"{k}.html", _html_page(fig, html))
    fig_info.files += [
        PackFile(f"{k}.png", "png", f"{fig_info.title}{last}: image for slides, 1280 × 720"),
        PackFile(f"{k}.svg", "svg", f"{fig_info.title}{last}: vector image (slides, print)"),
        PackFile(f"{k}.html", "html", f"{fig_info.title}: interactive page"
                                      + (" with Play and a step slider"
                                         if fig_info.animated else ""))]
    if fig_info.animated:
        frames = [got[i] for i in sorted(x for x in got if isinstance(x, int))]
        specs = render.frame_figures(fig)[:1]
        _write(p, f"{k}.gif", animate.gif_from_pngs(frames, specs, fps))
        fig_info.files.append(PackFile(f"{k}.gif", "gif", f"{fig_info.title}: looping "
                                       f"animation, {len(frames)} frames at {fps:g} fps"))
        if mp4:
            animate.mp4_from_pngs(frames, p / f"{k}.mp4", fps)
            fig_info.files.append(PackFile(f"{k}.mp4", "mp4", f"{fig_info.title}: H.264 "
                                           f"video for PowerPoint/Keynote"))
    return fig_info


def delta_gif_blocks(recording: Recording, width: int = 480, height: int = 360) -> list:
    """The first module's ΔW animation as a GIF ``<img>`` block for a ``report.Report`` (it
    shows in mail clients and learning platforms: no JavaScript); a note instead when kaleido,
    a browser or Pillow is missing."""
    import base64

    from ..view import figures
    from .report import Html, Text

    module = recording.modules[0]
    fig = figures.matrix_evolution(recording, module, which="delta")
    try:
        data = animate.gif_bytes(fig, fps=8, width=width, height=height, progress=False)
    except (ImportError, RuntimeError) as err:
        return [Text(f"(No GIF of the ΔW animation: {err})")]
    alt = html.escape(f"ΔW of {module} at each recorded step (animated GIF)", quote=True)
    return [Html(f'<figure class="lk-gif"><img src="data:image/gif;base64,'
                 f'{base64.b64encode(data).decode("ascii")}" width="{width}" height="{height}" '
                 f'alt="{alt}"><figcaption>{alt}</figcaption></figure>')]


def _md(text: str) -> str:
    """Text for Markdown: HTML-escaped (Markdown passes raw HTML through), pipes escaped."""
    return html.escape(str(text), quote=True).replace("|", "\\|")


def index_markdown(title: str, pack: Pack) -> str:
    lines = [f"# {_md(title)}", "", "## Settings of the run", "", "| setting | value |",
             "|---|---|"]
    lines += [f"| {_md(a)} | {_md(b)} |" for a, b in pack.settings]
    lines += ["", "## Figures", ""]
    for fig in pack.figures:
        lines += [f"### {_md(fig.title)}", "", _md(fig.caption), ""]
        shown = next((f for f in fig.files if f.kind == "gif"), None) or fig.files[0]
        lines += [f"![{_md(shown.caption)}]({shown.name})", ""]
        lines += [f"- [{f.name}]({f.name}): {_md(f.caption)}" for f in fig.files]
        lines.append("")
    if pack.skipped:
        lines += ["## Not written", ""] + [f"- {_md(s)}" for s in pack.skipped] + [""]
    lines += ["Written by `lk.export_pack`. SVG and PDF for other sizes: "
              "`lk.export_svg(fig, path, preset=\"handout\")`.", ""]
    return "\n".join(lines)


def index_html(title: str, pack: Pack) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(a)}</th><td>{e(b)}</td></tr>" for a, b in pack.settings)
    body = ["<h2>Settings of the run</h2>", f'<table class="lk-settings">{rows}</table>',
            "<h2>Figures</h2>"]
    for fig in pack.figures:
        shown = next((f for f in fig.files if f.kind == "gif"), None) or fig.files[0]
        links = "".join(f'<li><a href="{e(f.name)}">{e(f.name)}</a>: {e(f.caption)}</li>'
                        for f in fig.files)
        body.append(f'<section class="lk-figure"><h3>{e(fig.title)}</h3><p>{e(fig.caption)}'
                    f'</p><img src="{e(shown.name)}" alt="{e(shown.caption)}" '
                    f'style="max-width:100%"><ul>{links}</ul></section>')
    if pack.skipped:
        body.append("<h2>Not written</h2><ul>" + "".join(f"<li>{e(s)}</li>"
                                                         for s in pack.skipped) + "</ul>")
    return figure_page(title, body, heading=True)


__all__ = ["Pack", "PackFigure", "PackFile", "check_folder", "delta_gif_blocks", "export_pack",
           "file_stem", "run_settings"]
