"""A small standalone HTML report: a title and a list of sections made of blocks.

``lorakit tour`` writes its results with it; anything else can too. A ``Report`` is plain data
(sections of ``KeyValues``, ``Table``, ``Text``, ``Sparkline`` and ``Html`` blocks) rendered to
one self-contained HTML file with inline CSS. The blocks this module renders use no JavaScript
and no network; an ``Html`` block may carry some: the tour's plotly figures bring plotly.js,
inlined once so the report still works offline (or, with ``--cdn``, one ``<script src>`` from
plotly's CDN, which then needs a network).

Escaping is done here, once: every string a block holds (titles, table cells, keys, values,
labels: text a user typed or a model generated) goes through ``html.escape`` when rendered.
The only exception is ``Html``, which is for markup the caller built and trusts, e.g. a figure:
``Html(fig.to_html(full_html=False, include_plotlyjs=True))`` — so figures can be added to a
report as one more block, without this module importing plotly (docs/architecture.md: the core
never imports plotly). Reference: OWASP XSS Prevention Cheat Sheet, rule 1 (HTML-escape untrusted
data before putting it in element content or a quoted attribute), with Python's ``html.escape``.

    rep = Report("My run")
    rep.add("Accuracy", KeyValues([("before", "0/50"), ("after", "50/50")]))
    rep.add("Loss", Sparkline([2.3, 1.1, 0.2]), Table(["step", "loss"], [[1, 2.3], [2, 1.1]]))
    rep.write("run.html")
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from ..core.guards import write_atomic
from ._common import page, writable


def _e(value) -> str:
    """Any value as escaped HTML text (quotes too, so it is safe inside attributes)."""
    return escape(str(value), quote=True)


@dataclass
class Text:
    """A paragraph of plain text; blank lines start new paragraphs. ``pre`` keeps line breaks."""

    text: str
    pre: bool = False

    def to_html(self) -> str:
        if self.pre:
            return f"<pre>{_e(self.text)}</pre>"
        paras = [p.strip() for p in str(self.text).split("\n\n") if p.strip()]
        return "".join(f"<p>{_e(p)}</p>" for p in paras)


@dataclass
class KeyValues:
    """A two-column list of (label, value) pairs."""

    items: Sequence[tuple[object, object]]

    def to_html(self) -> str:
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in self.items)
        return f'<table class="kv">{rows}</table>'


@dataclass
class Table:
    """A table: ``headers`` and ``rows`` of cells (any values, shown with ``str``).

    ``numeric`` names the columns to right-align (default: those whose cells are all numbers
    or strings that look like one, such as "1,024" or "0.34%").
    """

    headers: Sequence[object]
    rows: Sequence[Sequence[object]]
    numeric: Sequence[int] | None = None
    caption: str | None = None

    def _numeric_columns(self) -> set[int]:
        if self.numeric is not None:
            return set(self.numeric)
        cols = set()
        for j in range(len(self.headers)):
            cells = [r[j] for r in self.rows if j < len(r)]
            if cells and all(_looks_numeric(c) for c in cells):
                cols.add(j)
        return cols

    def to_html(self) -> str:
        num = self._numeric_columns()

        def cell(tag, j, v):
            cls = ' class="num"' if j in num else ""
            return f"<{tag}{cls}>{_e(v)}</{tag}>"

        head = "".join(cell("th", j, h) for j, h in enumerate(self.headers))
        body = "".join("<tr>" + "".join(cell("td", j, v) for j, v in enumerate(r)) + "</tr>"
                       for r in self.rows)
        cap = f"<caption>{_e(self.caption)}</caption>" if self.caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _looks_numeric(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    s = str(value).strip().replace(",", "").replace("→", "").rstrip("%×sB ").strip()
    try:
        float(s)
    except ValueError:
        return False
    return True


@dataclass
class Sparkline:
    """A tiny inline SVG line chart of ``values`` (None / NaN / inf points are skipped).

    ``x`` gives the points' positions (e.g. training steps; default 0, 1, 2, ...). The label
    and the first/last/min/max values are written next to the line as text.
    """

    values: Sequence[float | None]
    label: str = ""
    x: Sequence[float] | None = None
    width: int = 240
    height: int = 48
    log: bool = False   # log-scale y (losses); non-positive values are skipped

    def points(self) -> list[tuple[float, float]]:
        """The (x, y) data points that are drawn, in order."""
        xs = list(self.x) if self.x is not None else list(range(len(self.values)))
        if len(xs) != len(self.values):
            raise ValueError(f"x has {len(xs)} values but values has {len(self.values)}")
        pts = []
        for xi, v in zip(xs, self.values, strict=True):
            if v is None or not math.isfinite(float(v)) or (self.log and float(v) <= 0):
                continue
            pts.append((float(xi), float(v)))
        return pts

    def to_html(self) -> str:
        pts = self.points()
        w, h, pad = self.width, self.height, 3
        if not pts:
            return f'<div class="spark"><span>{_e(self.label)}: no data</span></div>'
        ys = [math.log10(y) if self.log else y for _, y in pts]
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(ys), max(ys)

        def sx(x):
            return pad + (w - 2 * pad) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5)

        def sy(y):  # SVG's y grows downwards
            return h - pad - (h - 2 * pad) * ((y - y0) / (y1 - y0) if y1 > y0 else 0.5)

        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for (x, _), y in zip(pts, ys, strict=True))
        raw = [y for _, y in pts]
        note = (f"{raw[0]:.4g} → {raw[-1]:.4g} (min {min(raw):.4g}, max {max(raw):.4g}"
                f"{', log scale' if self.log else ''})")
        title = f"{self.label}: {note}" if self.label else note
        svg = (f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
               f'aria-label="{_e(title)}"><title>{_e(title)}</title>'
               f'<polyline fill="none" stroke="#3366cc" stroke-width="1.5" points="{coords}"/>'
               f'<circle cx="{sx(pts[-1][0]):.1f}" cy="{sy(ys[-1]):.1f}" r="2" '
               f'fill="#3366cc"/></svg>')
        label = f"<b>{_e(self.label)}</b> " if self.label else ""
        return f'<div class="spark">{svg}<span>{label}{_e(note)}</span></div>'


@dataclass
class Html:
    """Markup the caller built and trusts, inserted as is (NOT escaped): e.g. a figure's
    ``to_html(full_html=False)``. Never put user- or model-written text here unescaped."""

    html: str

    def to_html(self) -> str:
        return self.html


Block = Text | KeyValues | Table | Sparkline | Html


@dataclass
class Section:
    """A titled part of a report: blocks rendered in order."""

    title: str
    blocks: list = field(default_factory=list)

    def to_html(self) -> str:
        inner = "\n".join(b.to_html() for b in self.blocks)
        return f"<section><h2>{_e(self.title)}</h2>\n{inner}\n</section>"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 960px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.subtitle { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top;
         white-space: pre-wrap; }
thead th, table.kv th { background: #f5f5f5; } .num { text-align: right;
     font-variant-numeric: tabular-nums; }
caption { text-align: left; color: #666; padding-bottom: 0.2em; }
.spark { display: flex; align-items: center; gap: 0.8em; margin: 0.3em 0; }
.spark svg { border: 1px solid #eee; background: #fcfcfc; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; }
footer { margin-top: 2em; color: #888; font-size: 0.85em; }
"""


@dataclass
class Report:
    """A standalone HTML report: ``title``, optional ``subtitle`` and ``footer``, sections."""

    title: str
    sections: list[Section] = field(default_factory=list)
    subtitle: str = ""
    footer: str = ""

    def add(self, title: str, *blocks) -> Section:
        """Append a section with these blocks and return it (more blocks can be appended)."""
        section = Section(title, list(blocks))
        self.sections.append(section)
        return section

    def section(self, title: str) -> Section:
        """The first section with this title (KeyError if none)."""
        for s in self.sections:
            if s.title == title:
                return s
        raise KeyError(f"no section {title!r}; sections: {[s.title for s in self.sections]}")

    def to_html(self) -> str:
        """The whole document as one string."""
        sub = f'<p class="subtitle">{_e(self.subtitle)}</p>' if self.subtitle else ""
        foot = f"<footer>{_e(self.footer)}</footer>" if self.footer else ""
        body = "\n".join(s.to_html() for s in self.sections)
        return page(self.title, f"{sub}\n{body}\n{foot}", _CSS)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the HTML (UTF-8) to ``path``, replacing it atomically (an existing file keeps
        its permissions); its folder must exist. Returns the absolute path."""
        return write_atomic(writable(Path(path).expanduser().resolve()), self.to_html())


__all__ = ["Block", "Html", "KeyValues", "Report", "Section", "Sparkline", "Table", "Text"]
