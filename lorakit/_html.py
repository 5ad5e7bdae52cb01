"""The one HTML page shell and atomic file write shared by lorakit.export and lorakit.report.

Core code: no plotly, no ipywidgets. ``page`` escapes the title; the body is markup the
caller built (and escaped) already.
"""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path


def page(title: str, body: str, css: str, heading: bool = True) -> str:
    """A whole standalone HTML document: ``<title>`` (and ``<h1>``) from ``title``, ``body``."""
    t = html.escape(title, quote=True)
    h1 = f"<h1>{t}</h1>\n" if heading else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{t}</title>\n<style>{css}</style>\n</head>\n<body>\n{h1}{body}\n"
            f"</body>\n</html>\n")


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` (str: UTF-8) to a temporary file next to ``path``, then ``os.replace`` it:
    a reader never sees a half-written file, and a failed write leaves the old one."""
    if isinstance(data, str):
        data = data.encode("utf-8")
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
