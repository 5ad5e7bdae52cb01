"""What the files package shares: the HTML page shell, the target-path checks, the optional
dependencies an export needs, argument checks and the progress bar.

Private to ``lorakit.files``: ``export``, ``animate``, ``pack`` and ``report`` import from here;
nothing outside the package does.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from ..core.guards import writable_file


def page(title: str, body: str, css: str, heading: bool = True) -> str:
    """A whole standalone HTML document: ``<title>`` (and ``<h1>``) from ``title``, ``body``."""
    t = html.escape(title, quote=True)
    h1 = f"<h1>{t}</h1>\n" if heading else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{t}</title>\n<style>{css}</style>\n</head>\n<body>\n{h1}{body}\n"
            f"</body>\n</html>\n")


def writable(path) -> Path:
    """``path`` as an absolute Path, or an OSError naming it if it cannot be written there
    (``guards.writable_file``: checked before anything is built or written)."""
    return writable_file(path)


def check_suffix(path: Path, allowed: tuple[str, ...], what: str) -> None:
    if path.suffix.lower() not in allowed:
        raise ValueError(f"{what} writes {allowed[0][1:].upper()}: give a path ending in "
                         f"{' or '.join(allowed)}, got {str(path)!r}")


FIGURE_CSS = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5rem auto;"
        "max-width:1100px;padding:0 1rem;color:#222}"
        "h1{font-size:1.4rem;font-weight:600}"
        ".lk-figure{margin:1rem 0}"
        "details.lk-state{margin:1rem 0;font-size:.9rem}"
        "details.lk-state li{margin:.15rem 0}"
        ".lk-note{color:#666;font-size:.85rem}")


def figure_page(title: str, body: list[str], heading: bool) -> str:
    return page(title, "\n".join(body), FIGURE_CSS, heading)


MIN_SIDE, MAX_WIDTH, MAX_HEIGHT = 64, 3840, 2160


DEFAULT_SIZE = (640, 480)


PILLOW_HINT = ("GIF export needs Pillow: pip install Pillow (or pip install 'lorakit[export]')")


FFMPEG_HINT = ("MP4 export needs imageio-ffmpeg, which brings its own ffmpeg: pip install "
           "imageio-ffmpeg (or pip install 'lorakit[export]'). GIF export works without it: "
           "lk.export_gif(fig, 'animation.gif')")


def check_number(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")


def check_size(width, height) -> tuple[int, int]:
    w, h = DEFAULT_SIZE[0] if width is None else width, DEFAULT_SIZE[1] if height is None \
        else height
    for name, v, top in (("width", w, MAX_WIDTH), ("height", h, MAX_HEIGHT)):
        if isinstance(v, bool) or not isinstance(v, int) or not MIN_SIDE <= v <= top:
            raise ValueError(f"{name} must be a whole number of pixels from {MIN_SIDE} to "
                             f"{top}, got {v!r}")
    return w, h


def need_pillow():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(PILLOW_HINT) from e
    return Image


def need_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError(FFMPEG_HINT) from e
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        raise RuntimeError(f"imageio-ffmpeg found no ffmpeg binary ({e}). {FFMPEG_HINT}") from e
    return imageio_ffmpeg


def frame_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False)
