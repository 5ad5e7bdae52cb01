"""Notebook set-up: plotly figures and widgets that render in every front end, offline too.

``lk.setup_notebook()`` goes in each notebook's first code cell. It picks plotly's renderer
for the front end the kernel is running under:

* **JupyterLab / Notebook 7 / Binder** (also with no network): ``plotly_mimetype``. The figure
  is stored as plotly JSON (``application/vnd.plotly.v1+json``) and drawn by the
  ``jupyterlab-plotly`` extension that the ``plotly`` wheel itself installs (plotly ≥ 5 ships
  it prebuilt under ``share/jupyter/labextensions``, with plotly.js bundled inside), so no
  CDN is involved. ``notebook_connected`` (the previous choice) loads plotly.js from
  ``cdn.plot.ly`` and leaves an empty box offline.
* **VS Code**: ``plotly_mimetype`` as well; VS Code's notebook renderers draw that mimetype.
* **Google Colab**: ``colab`` (plotly's HTML renderer for Colab; Colab has network), and
  ``google.colab.output.enable_custom_widget_manager()``, which Colab needs before it shows
  third-party widgets such as plotly's ``FigureWidget`` and anywidget-based panels.
* **Outside a notebook** (a script, a terminal IPython, pytest): nothing changes; a one-line
  note says so. It never raises.

GitHub and nbviewer draw neither plotly's mimetype nor its JavaScript. For the figures that
matter there, ``lk.show(fig)`` displays the figure as above **plus** a small PNG in the same
output (rendered through kaleido and a local Chrome/Chromium, see ``lk.export_png``): Jupyter,
VS Code and Colab pick the interactive figure, static viewers the picture.
"""

from __future__ import annotations

import base64
import os
import sys

#: the renderer per front end (keys: what ``front_end()`` returns)
RENDERERS = {"colab": "colab", "vscode": "plotly_mimetype", "jupyter": "plotly_mimetype"}
_NOT_IN_JUPYTER = ("lk.setup_notebook(): not running in a Jupyter kernel, nothing to set up "
                   "(figures keep plotly's default renderer).")


def front_end() -> str | None:
    """Where this kernel runs: ``"colab"``, ``"vscode"``, ``"jupyter"``, or None (no kernel).

    Colab: the ``google.colab`` module is loaded (Colab imports it into every kernel).
    VS Code: its ``VSCODE_PID``/``VSCODE_CWD`` environment variables (what plotly itself
    checks). Jupyter: an IPython shell attached to a kernel (JupyterLab, Notebook 7, Binder,
    nbval/nbclient runs).
    """
    if "google.colab" in sys.modules:
        return "colab"
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    if "VSCODE_PID" in os.environ or "VSCODE_CWD" in os.environ:
        return "vscode"
    return "jupyter"


def _enable_colab_widgets() -> None:
    colab = sys.modules["google.colab"]
    output = getattr(colab, "output", None)
    if output is None:
        import importlib

        output = importlib.import_module("google.colab.output")
    output.enable_custom_widget_manager()


def setup_notebook(quiet: bool = True) -> None:
    """Make every plotly figure and widget render in this notebook's front end.

    Call it once, in the first code cell (``import lorakit as lk; lk.setup_notebook()``);
    calling it again is harmless. See the module docstring for what is chosen where. Sets
    ``plotly.io.renderers.default``; on Colab also enables Colab's custom widget manager.

    Args:
        quiet: True (default) prints nothing inside a notebook; False prints one line naming
            the front end and renderer. Outside a notebook a one-line note is always printed.
    """
    where = front_end()
    if where is None:
        print(_NOT_IN_JUPYTER)
        return
    import plotly.io as pio

    pio.renderers.default = RENDERERS[where]
    if where == "colab":
        _enable_colab_widgets()
    if not quiet:
        print(f"lk.setup_notebook(): {where}; plotly renderer {pio.renderers.default!r}")


def show(fig, png: bool = True, width: int = 700, height: int | None = None,
         scale: float = 1) -> None:
    """Display ``fig`` with the notebook's renderer plus a small PNG for static viewers.

    One output holds both: the interactive figure (what ``setup_notebook`` chose) and an
    ``image/png`` of ``width × height`` layout pixels at ``scale`` (default 700 wide, the
    figure's own height or 450; about 30–80 KB), which GitHub and nbviewer show. Use it for
    a notebook's key figures; plain figures need only ``fig`` as the cell's last line.

    If the PNG cannot be made (no kaleido, no Chrome/Chromium), the figure is shown without
    it and a one-line note says why. Outside a notebook: ``fig.show()``.
    """
    import plotly.io as pio

    if front_end() is None:
        fig.show()
        return
    from IPython.display import display

    fig_dict = fig.to_dict()
    bundle: dict = {}
    for name in pio.renderers.default.split("+"):
        renderer = pio.renderers[name]
        if hasattr(renderer, "to_mimebundle"):
            renderer.activate()
            bundle.update(renderer.to_mimebundle(fig_dict))
    if png:
        from .render import png_bytes

        try:
            data = png_bytes(fig, width=width, height=height or fig.layout.height or 450,
                             scale=scale)
            bundle["image/png"] = base64.b64encode(data).decode("ascii")
        except (ImportError, RuntimeError) as e:
            print(f"lk.show(): no static PNG ({type(e).__name__}: {str(e)[:160]})")
    display(bundle, raw=True)


__all__ = ["RENDERERS", "front_end", "setup_notebook", "show"]
