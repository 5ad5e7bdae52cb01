"""What every figure lorakit builds or a notebook stores must satisfy (plotly JSON in, a list of
problems out): lorakit's template, axis titles, and one unit per axis.

Used by tests/view/test_figures.py (every builder) and tests/test_notebooks.py-style checks of
the figures stored in the committed notebooks (tests/view/test_notebook_figures.py).
"""

from __future__ import annotations

import re

from lorakit.view.figures import uses_lorakit_template

# units a trace name, hover text or axis title can carry; two different ones on one axis mix
UNITS = {"GB": "bytes", "MB": "bytes", "KB": "bytes", "bytes": "bytes", "B": "bytes",
         "s": "seconds", "sec": "seconds", "seconds": "seconds", "ms": "seconds",
         "min": "seconds", "%": "percent", "tokens/s": "rate", "steps/s": "rate"}
_UNIT = re.compile(r"(?<![\w/])(GB|MB|KB|bytes|seconds|sec|ms|min|tokens/s|steps/s|s|%)(?![\w/])")
_CARTESIAN = {"scatter", "scattergl", "bar", "heatmap", "histogram", "box", "violin"}


def _axis_refs(trace: dict) -> tuple[str, str]:
    return "xaxis" + trace.get("xaxis", "x")[1:], "yaxis" + trace.get("yaxis", "y")[1:]


def _title(layout: dict, axis: str) -> str:
    title = layout.get(axis, {}).get("title", {})
    return (title.get("text") if isinstance(title, dict) else title) or ""


def units(text: str) -> set[str]:
    """The kinds of unit ("bytes", "seconds", …) named in a name or a title, in parentheses
    or after a number ("3.1 GB", "time (s)")."""
    found = set()
    for part in re.findall(r"\(([^()]*)\)", text) + re.findall(r"\d\s*([A-Za-z%/]+)", text):
        found |= {UNITS[u] for u in _UNIT.findall(part)}
    return found


def problems(fig: dict) -> list[str]:
    """Why ``fig`` (plotly JSON: ``{"data": [...], "layout": {...}}``) breaks the rules."""
    layout, out = fig.get("layout", {}), []
    title = layout.get("title", {})
    name = (title.get("text") if isinstance(title, dict) else title) or "untitled figure"
    if not uses_lorakit_template(fig):
        out.append(f"{name!r}: not lorakit's template (plotly's default or another)")
    axes: dict[str, list[dict]] = {}
    for trace in fig.get("data", []):
        if trace.get("type", "scatter") in _CARTESIAN:
            for axis in _axis_refs(trace):
                axes.setdefault(axis, []).append(trace)
    for axis, traces in sorted(axes.items()):
        heat_only = all(t.get("type") == "heatmap" for t in traces)
        # side-by-side heatmaps name their rows in the panel titles (one y title fits);
        # stacked facets sharing one x axis label it once, under the lowest
        exempt = (heat_only and axis.startswith("yaxis") and axis != "yaxis") or \
            layout.get(axis, {}).get("matches") and \
            layout.get(axis, {}).get("showticklabels") is False
        if not _title(layout, axis) and not exempt:
            out.append(f"{name!r}: {axis} has no title")
        if axis.startswith("yaxis"):
            kinds = units(_title(layout, axis))
            for t in traces:
                kinds |= units(t.get("name") or "")
            if len(kinds) > 1:
                out.append(f"{name!r}: {axis} mixes units {sorted(kinds)}")
    return out
