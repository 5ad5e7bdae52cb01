"""The tutorials as a reader without a kernel meets them, and their editions.

* Committed notebooks, opened the way GitHub shows them (nbconvert HTML, no kernel, no
  JavaScript, so neither plotly.js nor the widget manager): every figure cell and every panel
  cell shows a picture; no solution cell stores output; each notebook is within the size
  budget (``notebooks/execute.py``'s ``MAX_BYTES``). These read the stored outputs, which
  ``notebooks/execute.py`` writes.
* ``notebooks/execute.py``'s cleaning and checks, on small hand-made notebooks.
* The kernel side (``lorakit.view.notebook``): the PNG renderer, the panel snapshot hook.
* ``notebooks/editions.py``: the student and the teacher edition.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from faults import case, files, raises

from lorakit.view import notebook, render

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"
# What a viewer that runs no JavaScript can draw, best first: nbconvert's HTML priority without
# the two JavaScript-only kinds (a widget view needs the widget manager, a script needs a page
# that runs it). plotly's JSON is in neither list: without plotly.js nothing draws it.
NO_JAVASCRIPT = ["text/html", "text/markdown", "image/svg+xml", "text/latex", "image/png",
                 "image/jpeg", "text/plain"]
# nbconvert warns for each output it cannot draw (a plotly figure alone): what the tests count
quiet_nbconvert = pytest.mark.filterwarnings("ignore:Your element with mimetype")
needs_browser = pytest.mark.skipif(render.find_browser() is None,
                                   reason="needs a Chrome/Chromium (make chromium)")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "notebooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute = _script("execute")
editions = _script("editions")


def _png(width: int = 40, height: int = 20) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), "steelblue").save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- the committed notebooks


def figure_cells(nb) -> list[int]:
    """Indices of the code cells whose outputs hold a plotly figure or a widget view."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any(
        PLOTLY in o.get("data", {}) or WIDGET_VIEW in o.get("data", {}) for o in c.outputs)]


@pytest.fixture(scope="module")
def static_html():
    """nbconvert's HTML exporter as a viewer without a kernel or JavaScript renders."""
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config()
    config.NbConvertBase.display_data_priority = NO_JAVASCRIPT
    return HTMLExporter(config=config, template_name="basic")


def _shows_picture(exporter, nb, index: int) -> bool:
    one = nbformat.v4.new_notebook(metadata=nb.metadata, cells=[nb.cells[index]])
    body, _ = exporter.from_notebook_node(one)
    return "<img" in body or "<svg" in body


@quiet_nbconvert
def test_a_figure_and_a_panel_cell_render_as_pictures(static_html):
    """The check itself: a figure with its PNG shows an <img>, one without it does not."""
    fig = json.loads(go.Figure(go.Bar(y=[1, 2])).to_json())
    png = base64.b64encode(_png()).decode()
    with_png = nbformat.v4.new_output("display_data", {PLOTLY: fig, "image/png": png})
    bare = nbformat.v4.new_output("display_data", {PLOTLY: fig, "text/plain": "Figure"})
    view = nbformat.v4.new_output("display_data", {WIDGET_VIEW: {"model_id": "ab"},
                                                   "image/png": png, "text/plain": "panel"})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[o])
                                         for o in (with_png, bare, view)])
    assert figure_cells(nb) == [0, 1, 2]
    assert [_shows_picture(static_html, nb, i) for i in range(3)] == [True, False, True]


@quiet_nbconvert
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_and_panel_shows_a_picture_without_a_kernel(path, static_html):
    nb = nbformat.read(path, as_version=4)
    cells = figure_cells(nb)
    blank = [i for i in cells if not _shows_picture(static_html, nb, i)]
    shown = (len(cells) - len(blank)) / len(cells) if cells else 1.0
    assert shown == 1.0, (f"{path.name}: {len(blank)} of {len(cells)} figure/panel cells show "
                          f"no picture without a kernel: cells {blank} (re-execute it with "
                          "notebooks/execute.py)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_solution_cell_stores_output(path):
    nb = nbformat.read(path, as_version=4)
    solutions = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    shown = [i for i, c in enumerate(nb.cells) if c in solutions and c.get("outputs")]
    assert not shown, f"{path.name}: solution cells {shown} store output (an answer)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_within_the_size_budget(path):
    assert execute.MAX_BYTES == 2_000_000
    assert execute.budget_report(path) is None, execute.budget_report(path)


def test_the_budget_report_names_the_largest_outputs(tmp_path, monkeypatch):
    cells = [nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "stream", name="stdout", text="x" * n)]) for n in (10, 5000, 300)]
    path = tmp_path / "big.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    assert execute.budget_report(path) is None
    monkeypatch.setattr(execute, "MAX_BYTES", 1000)
    report = execute.budget_report(path)
    assert report.startswith("big.ipynb: ") and "over the budget of 1,000" in report
    assert report.index("cell [1] stream") < report.index("cell [2] stream")


# ---------------------------------------------------------------- execute.py: clean, problems


def _executed() -> nbformat.NotebookNode:
    """A notebook as nbclient leaves it: a figure, a panel, a progress bar, a solution, stderr."""
    png = base64.b64encode(_png()).decode()
    out = nbformat.v4.new_output
    here = str(ROOT / "notebooks")
    cells = [
        nbformat.v4.new_code_cell("fig", outputs=[
            out("display_data", {PLOTLY: {}, "image/png": png})]),
        nbformat.v4.new_code_cell("panel", outputs=[
            out("stream", name="stderr", text=f"{here}/x.py: a warning\n"),
            out("display_data", {WIDGET_VIEW: {"model_id": "bar"}, "text/plain": "0%"}),
            out("execute_result", {WIDGET_VIEW: {"model_id": "box"}, "image/png": png,
                                   "text/plain": "panel"}, execution_count=2),
            out("stream", name="stdout", text=f"saved to {here}/adapters/a\n")]),
        nbformat.v4.new_code_cell("answer", metadata={"tags": ["solution"]},
                                  outputs=[out("stream", name="stdout", text="the answer is 4\n")]),
    ]
    state = {"box": {"state": {"children": ["IPY_MODEL_child"], "layout": "IPY_MODEL_lay"}},
             "child": {"state": {"value": 3, "x": None}},
             "lay": {"model_name": "LayoutModel", "state": {"display": None, "width": "9em"}},
             "bar": {"state": {"layout": "IPY_MODEL_barlay"}}, "barlay": {"state": {}}}
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["widgets"] = {execute.WIDGET_STATE: {"state": state, "version_major": 2,
                                                     "version_minor": 0}}
    return nb


def test_clean_keeps_pictures_and_panel_state_and_drops_answers_bars_and_stderr():
    nb = execute.clean(_executed(), folder=ROOT / "notebooks")
    fig, panel, solution = nb.cells
    assert set(fig.outputs[0].data) == {PLOTLY, "image/png"}
    assert [o.output_type for o in panel.outputs] == ["execute_result", "stream"]
    assert panel.outputs[1].text == "saved to adapters/a\n"            # no build path
    assert solution.outputs == [] and solution.execution_count is None
    state = nb.metadata.widgets[execute.WIDGET_STATE]["state"]
    assert sorted(state) == ["box", "child", "lay"]                   # the bar's models dropped
    assert state["lay"]["state"] == {"width": "9em"}                  # a layout's nulls too
    assert state["child"]["state"] == {"value": 3, "x": None}
    assert execute.problems(nb) == []


def test_problems_names_each_cell_that_would_show_nothing_or_an_answer():
    nb = _executed()
    nb.cells[0].outputs[0].data.pop("image/png")
    nb.cells[2].outputs.append(nbformat.v4.new_output("error", ename="KeyError", evalue="'x'",
                                                      traceback=[]))
    found = execute.problems(execute.clean(nb))
    assert found[0] == "cell [0]: a plotly figure without its PNG"
    nb = execute.clean(_executed())
    nb.metadata.pop("widgets")
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="4")]
    assert execute.problems(nb) == ["cell [1]: a widget view whose state is not stored",
                                    "cell [2]: a solution cell with stored output"]


@case("notebooks/execute.py on a notebook whose figure gets no PNG", "StaticOutputError: "
      "cell [0]: a plotly figure without its PNG", "the notebook file, byte for byte")
def test_execute_does_not_write_a_notebook_with_a_problem(tmp_path, monkeypatch):
    path = tmp_path / "n.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("fig")]), path)
    before = path.read_bytes()

    def run(nb, path, timeout):              # what a kernel without the PNG renderer leaves
        nb.cells[0].outputs = [nbformat.v4.new_output("display_data", {PLOTLY: {}})]

    monkeypatch.setattr(execute, "_run", run)
    raises(execute.StaticOutputError, r"cell \[0\]: a plotly figure without its PNG",
           execute.execute, path)
    assert path.read_bytes() == before


@case("notebooks/execute.py without a Chrome/Chromium", "exit status 2: no Chrome/Chromium "
      "browser found ... apt-get install chromium", "every notebook, byte for byte (none run)")
def test_execute_without_a_browser_says_what_to_install_and_runs_nothing(
        tmp_path, monkeypatch, capsys):
    path = tmp_path / "n.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
    before = path.read_bytes()
    monkeypatch.setattr(render, "find_browser", lambda: None)
    monkeypatch.setattr(execute, "_run", lambda *a: pytest.fail("a notebook ran"))
    assert execute.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "no Chrome/Chromium browser found" in err and "apt-get install chromium" in err
    assert path.read_bytes() == before


# ---------------------------------------------------------------- the kernel side


@pytest.fixture
def storing(monkeypatch):
    """A kernel executed for storing; plotly's renderer and the display mode restored after."""
    from lorakit.view.widgets import set_display_mode

    before = pio.renderers.default
    monkeypatch.setenv(notebook.STATIC_ENV, "1")
    previous = set_display_mode("auto")
    yield
    pio.renderers.default = before
    set_display_mode(previous)


def test_storing_adds_a_png_to_every_figure_and_a_snapshot_to_every_panel(storing, monkeypatch):
    import ipywidgets
    from IPython.core.formatters import DisplayFormatter

    from lorakit.view.explorers import RankExplorer
    from lorakit.view.widgets import get_display_mode

    class Shell:                                 # an IPython shell attached to a kernel
        display_formatter = DisplayFormatter()
        kernel = object()

    monkeypatch.setattr("IPython.get_ipython", lambda: Shell)
    monkeypatch.setattr(render, "png_bytes", lambda fig, **kw: _png(kw["width"], kw["height"]))
    monkeypatch.setattr(notebook, "panel_png", lambda panel: b"snapshot")
    assert notebook.storing_static()
    notebook.setup_notebook()
    assert pio.renderers.default == "plotly_mimetype+lorakit_png"
    notebook.add_static_fallbacks()                                   # twice: harmless
    assert pio.renderers.default == "plotly_mimetype+lorakit_png"
    assert get_display_mode() == "static"
    bundle = go.Figure(go.Bar(y=[1, 2]))._repr_mimebundle_()
    assert set(bundle) == {PLOTLY, "image/png"}
    assert render.png_size(base64.b64decode(bundle["image/png"])) == (700, 450)
    data, _ = Shell.display_formatter.format(RankExplorer())
    assert data["image/png"] == b"snapshot" and WIDGET_VIEW in data
    assert "image/png" not in Shell.display_formatter.format(ipywidgets.IntSlider())[0]


def test_a_kernel_not_storing_gets_no_static_fallbacks(storing, monkeypatch):
    class Shell:
        kernel = object()

    monkeypatch.setattr("IPython.get_ipython", lambda: Shell)
    monkeypatch.setattr(notebook, "add_static_fallbacks", lambda: pytest.fail("switched on"))
    for value in ("0", ""):
        monkeypatch.setenv(notebook.STATIC_ENV, value)
        assert not notebook.storing_static()
        notebook.setup_notebook()
        assert pio.renderers.default == "plotly_mimetype"


def test_panel_html_shows_controls_readouts_and_figures_but_not_hidden_widgets(monkeypatch):
    import ipywidgets as W

    from lorakit.view.explorers import RankExplorer

    page = notebook.panel_html(RankExplorer(r=2, true_rank=4))
    assert 'type="range"' in page and "LoRA r" in page and "a rank-2 update holds" in page
    monkeypatch.setattr(notebook, "figure_png", lambda fig: _png())
    out = W.Output()
    out.outputs = ({"output_type": "display_data", "data": {PLOTLY: {}}, "metadata": {}},)
    hidden = W.HTML("a secret", layout=W.Layout(display="none"))
    page = notebook.widget_html(W.VBox([W.Checkbox(True, description="α = 2r"), out, hidden]))
    assert "checked" in page and "α = 2r" in page and "<img" in page and "secret" not in page


@needs_browser
def test_panel_png_and_animation_png_are_real_pictures():
    from lorakit.view.explorers import RankExplorer

    width, height = render.png_size(notebook.panel_png(RankExplorer(r=2, true_rank=4)))
    assert width == notebook.SNAPSHOT_WIDTH and 60 < height < 600
    frames = [go.Frame(data=[go.Heatmap(z=[[i, 1], [2, 3]])], name=str(i)) for i in range(3)]
    anim = go.Figure(go.Heatmap(z=[[0, 1], [2, 3]]), frames=frames, layout=dict(height=300))
    assert render.png_size(notebook.figure_png(anim)) == (700, 2 * 300 + 12)  # first, last


# ---------------------------------------------------------------- editions


def test_student_edition_has_no_solution_cell_and_no_output(tmp_path):
    paths = editions.build("student", tmp_path / "student")
    assert [p.name for p in paths] == [p.name for p in NOTEBOOKS]
    for path, src in zip(paths, NOTEBOOKS, strict=True):
        nb, orig = nbformat.read(path, as_version=4), nbformat.read(src, as_version=4)
        assert not [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code")
        assert "widgets" not in nb.metadata
        kept = [c.source for c in orig.cells if "solution" not in c.metadata.get("tags", [])]
        assert [c.source for c in nb.cells] == kept


def test_teacher_edition_keeps_every_cell_and_output_and_unfolds_solutions(tmp_path):
    path = editions.build("teacher", tmp_path / "teacher", [NOTEBOOKS[2]])[0]
    nb, orig = nbformat.read(path, as_version=4), nbformat.read(NOTEBOOKS[2], as_version=4)
    assert [c.source for c in nb.cells] == [c.source for c in orig.cells]
    assert [c.get("outputs") for c in nb.cells] == [c.get("outputs") for c in orig.cells]
    solutions = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert solutions and not any(c.metadata.get("jupyter", {}).get("source_hidden")
                                 for c in solutions)


@case("notebooks/editions.py with an unknown edition or a missing notebook",
      "ValueError: edition must be one of student, teacher / FileNotFoundError naming it",
      "the previous edition's folder, byte for byte")
def test_a_bad_edition_or_notebook_leaves_the_previous_edition(tmp_path):
    target = tmp_path / "student"
    editions.build("student", target, [NOTEBOOKS[0]])
    before = files(target)
    raises(ValueError, "edition must be one of student, teacher", editions.build, "pupil",
           target)
    raises(FileNotFoundError, "nope.ipynb", editions.build, "student", target,
           [NOTEBOOKS[1], tmp_path / "nope.ipynb"])
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    raises(nbformat.reader.NotJSONError, "not appear to be JSON", editions.build, "student", target,
           [NOTEBOOKS[1], broken])
    assert files(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.ipynb", "student"]
