"""The course website (``make site``, docs/site/build.py) in a real Chromium, with no network.

The module builds the whole site once from the committed notebooks (about 15 s: nothing is
executed) and opens every page from ``file://`` with every http(s) request aborted and counted:
each page asserts that every plotly figure drew (SVG paths with data), that an animation's Play
advances its frames, that no maths is left as raw ``$…$``/``\\(…\\)`` text, that every image
loaded and every link inside the site leads to a file of the site (and an anchor on it), and
that the solution dropdowns open. The fault cases (no browser) build from small notebooks of
their own: a bad notebook stops the build naming it, and the previous site stays.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest
from faults import case, files, raises

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("site_build", ROOT / "docs" / "site" / "build.py")
site = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(site)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PLOTLY = "application/vnd.plotly.v1+json"
META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}}

FIGURES_DRAWN = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(gd => {
  const paths = Array.from(gd.querySelectorAll('svg.main-svg path'))
    .filter(p => (p.getAttribute('d') || '').length > 2);
  const images = gd.querySelectorAll('svg.main-svg image').length;  // heatmaps draw an image
  const cells = gd.querySelectorAll('g.table text').length;          // tables draw text
  return {id: gd.id, drawn: !!gd._fullLayout, marks: paths.length + images + cells,
          frames: (gd._transitionData && gd._transitionData._frames || []).length};
})"""
# text nodes outside code, scripts and typeset maths that still hold TeX delimiters
RAW_MATH = r"""() => {
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight, svg';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const out = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement.closest(skip)) continue;
    const t = n.textContent;
    if (/\$[^$\s][^$]*\$|\\\(|\\\[/.test(t)) out.push(t.trim().slice(0, 120));
  }
  return out;
}"""
IMAGES = """() => Array.from(document.images).map(i => ({src: i.currentSrc || i.src,
  ok: i.complete && i.naturalWidth > 0}))"""
LINKS = """() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"""
ANCHORS = """() => Array.from(document.querySelectorAll('[id]')).map(e => e.id)"""


def stored_figures(path: Path) -> list[dict]:
    nb = json.loads(path.read_text())
    return [o["data"][PLOTLY] for c in nb["cells"] for o in c.get("outputs", [])
            if PLOTLY in o.get("data", {})]


def solution_lines(path: Path) -> list[str]:
    """The first line of each solution cell of the notebook at ``path``."""
    nb = json.loads(path.read_text())
    return ["".join(c["source"]).strip().splitlines()[0] for c in nb["cells"]
            if "solution" in c["metadata"].get("tags", [])]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The whole site, built once into a temporary folder (no figure folder)."""
    out = tmp_path_factory.mktemp("site") / "site"
    site.build(out, NOTEBOOKS, figures=None)
    return out


def pages(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.html") if "_static" not in p.parts)


def open_page(page, path: Path) -> None:
    """Open ``path`` and wait until every figure has its plotly state and MathJax (on the
    pages that load it) has typeset the page."""
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.wait_for_function("""() => Array.from(document.querySelectorAll('.plotly-graph-div'))
        .every(gd => gd._fullLayout)""")
    page.evaluate("""() => window.MathJax && MathJax.startup && MathJax.startup.promise
        ? MathJax.startup.promise.then(() => true) : null""")


def local_target(url: str, out: Path) -> tuple[Path, str] | None:
    """(file, fragment) of a link into the site; None for a link leaving it."""
    u = urlparse(url)
    if u.scheme != "file":
        return None
    return Path(unquote(u.path)), u.fragment


@pytest.mark.browser
def test_every_page_renders_offline(built, offline_page):
    page = offline_page
    notebooks = {p.stem: p for p in NOTEBOOKS}
    seen_math = 0
    for path in pages(built):
        open_page(page, path)
        where = path.relative_to(built)
        figs = page.evaluate(FIGURES_DRAWN)
        if path.stem in notebooks:
            assert len(figs) == len(stored_figures(notebooks[path.stem])), where
        assert all(f["drawn"] and f["marks"] > 0 for f in figs), (where, figs)
        assert page.evaluate(RAW_MATH) == [], where
        seen_math += page.locator("mjx-container").count()
        bad = [i["src"] for i in page.evaluate(IMAGES) if not i["ok"]]
        assert bad == [], (where, bad)
        anchors = set(page.evaluate(ANCHORS))
        for url in page.evaluate(LINKS):
            target = local_target(url, built)
            if target is None:
                continue
            file, fragment = target
            assert file.is_file() and built in file.parents, (where, url)
            if file == path and fragment:
                assert fragment in anchors, (where, url)
    assert page.blocked == []          # not one request left the machine
    assert seen_math > 20              # the tutorials' maths was typeset


@pytest.mark.browser
def test_each_animation_advances_when_played(built, offline_page):
    page = offline_page
    animated = [p for p in NOTEBOOKS if any(f.get("frames") for f in stored_figures(p))]
    assert len(animated) >= 2
    state = """id => { const gd = document.getElementById(id);
        return {active: gd._fullLayout.sliders[0].active, title: gd._fullLayout.title.text}; }"""
    for nb in animated:
        open_page(page, built / "notebooks" / f"{nb.stem}.html")
        anims = [f for f in page.evaluate(FIGURES_DRAWN) if f["frames"] > 1]
        assert anims, nb.name
        for fig in anims:
            before = page.evaluate(state, fig["id"])
            gd = page.locator(f"#{fig['id']}")
            gd.scroll_into_view_if_needed()
            gd.locator("g.updatemenu-button", has_text="Play").click()
            page.wait_for_function(f"""() => {{ const gd = document.getElementById('{fig["id"]}');
                return gd._fullLayout.sliders[0].active !== {before["active"]}; }}""")
            gd.locator("g.updatemenu-button", has_text="Pause").click()
            after = page.evaluate(state, fig["id"])
            assert after["title"] != before["title"], (nb.name, before, after)
    assert page.blocked == []


@pytest.mark.browser
def test_solutions_are_folded_and_open(built, offline_page):
    page = offline_page
    for nb in NOTEBOOKS:
        open_page(page, built / "notebooks" / f"{nb.stem}.html")
        folded = page.locator("details.hide", has_text="Show the solution")
        sources = solution_lines(nb)
        assert folded.count() == len(sources) > 0, nb.name
        for i in range(folded.count()):
            d = folded.nth(i)
            assert d.get_attribute("open") is None
            body = d.locator(".cell_input")
            assert not body.is_visible()
            d.locator("summary").click()
            assert d.get_attribute("open") is not None
            assert body.is_visible() and sources[i] in body.inner_text(), (nb.name, i)
    assert page.blocked == []


@pytest.mark.browser
def test_each_page_links_back_to_its_notebook(built):
    for nb in NOTEBOOKS:
        html = (built / "notebooks" / f"{nb.stem}.html").read_text()
        rel = f"notebooks/{nb.name}"
        assert f"https://colab.research.google.com/github/lorakit/lorakit/blob/main/{rel}" in html
        assert f"https://mybinder.org/v2/gh/lorakit/lorakit/main?labpath={rel}" in html
        download = re.search(rf'href="(\.\./_downloads/[0-9a-f]+/{nb.name})"', html)
        assert download, nb.name
        got = (built / "notebooks" / download.group(1)).resolve().read_bytes()
        assert got == nb.read_bytes()    # the committed notebook itself
    index = (built / "index.html").read_text()
    assert all(f"notebooks/{nb.stem}.html" in index for nb in NOTEBOOKS)
    assert (built / "search.html").is_file() and (built / "searchindex.js").is_file()


# --------------------------------------------------------------------------- bad input


def tiny_notebook(path: Path, *cells) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A page\n\n$x^2$"),
                                         *cells], metadata=META)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def small_site(tmp_path_factory):
    """A site built once from one small notebook."""
    base = tmp_path_factory.mktemp("small")
    good = tiny_notebook(base / "good.ipynb", nbformat.v4.new_code_cell("1 + 1"))
    site.build(base / "site", [good])
    return base


@pytest.fixture
def previous(tmp_path, small_site):
    """A copy of the small site in ``tmp_path/out/site``, and its files as they are."""
    shutil.copy2(small_site / "good.ipynb", tmp_path / "good.ipynb")
    out = tmp_path / "out" / "site"
    shutil.copytree(small_site / "site", out)
    return out, files(out.parent)


@case("make site: a notebook that is not valid JSON",
      "SiteError naming the notebook: not a valid notebook",
      "the previous site, file for file; no temporary folder left")
def test_a_broken_notebook_stops_the_build_and_keeps_the_site(tmp_path, previous):
    out, before = previous
    bad = tmp_path / "broken.ipynb"
    bad.write_text('{"cells": [')
    raises(site.SiteError, r"broken\.ipynb: not a valid notebook", site.build, out,
           [tmp_path / "good.ipynb", bad])
    assert files(out.parent) == before
    assert [p.name for p in out.parent.iterdir()] == ["site"]   # no work folder left


@case("make site: a notebook whose stored output is an error",
      "SiteError naming the notebook and cell: stored an error (ZeroDivisionError)",
      "the previous site, file for file")
def test_a_stored_error_names_the_notebook_and_cell(tmp_path, previous):
    out, before = previous
    cell = nbformat.v4.new_code_cell("1 / 0", execution_count=3, outputs=[
        nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                               traceback=[])])
    bad = tiny_notebook(tmp_path / "fails.ipynb", cell)
    err = raises(site.SiteError, r"fails\.ipynb, cell 2 \(In \[3\]: '1 / 0'\) stored an error",
                 site.build, out, [bad])
    assert "ZeroDivisionError" in str(err)
    assert files(out.parent) == before
    assert [p.name for p in out.parent.iterdir()] == ["site"]   # no work folder left


@case("make site: a notebook Sphinx cannot render (an unknown directive in a Markdown cell)",
      "SiteError from sphinx-build naming the notebook, cell and line",
      "the previous site, file for file; no temporary folder left")
def test_a_page_sphinx_rejects_stops_the_build(tmp_path, previous):
    out, before = previous
    bad = tiny_notebook(tmp_path / "odd.ipynb",
                        nbformat.v4.new_markdown_cell("text\n\n```{no-such-directive}\n```"))
    raises(site.SiteError, r"notebooks/odd\.ipynb, cell 2, line \d+:.*no-such-directive",
           site.build, out, [bad])
    assert files(out.parent) == before
    assert [p.name for p in out.parent.iterdir()] == ["site"]   # no work folder left


@case("make site: a target folder that holds something other than a built site",
      "SiteError: is not a site built by this script",
      "the folder's files, untouched")
def test_a_foreign_target_folder_is_refused(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    good = tiny_notebook(tmp_path / "good.ipynb")
    raises(site.SiteError, "is not a site built by this script", site.build, target, [good])
    assert files(tmp_path / "mine") == {"notes.txt": b"keep me"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.ipynb", "mine"]


def test_a_rebuild_replaces_the_site_and_copies_the_figure_folder(tmp_path, previous):
    out, _ = previous
    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "index.html").write_text("<html>figures</html>")
    site.build(out, [tiny_notebook(tmp_path / "other.ipynb")], figures=figs)
    assert (out / "notebooks" / "other.html").is_file()
    assert not (out / "notebooks" / "good.html").exists()
    assert (out / "figures" / "index.html").read_text() == "<html>figures</html>"
    assert 'href="figures/index.html"' in (out / "index.html").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["site"]   # nothing left over
    shutil.rmtree(out)


# --------------------------------------------------------------------------- make figures

FSPEC = importlib.util.spec_from_file_location("site_figures",
                                               ROOT / "docs" / "site" / "figures.py")
figures_script = importlib.util.module_from_spec(FSPEC)
FSPEC.loader.exec_module(figures_script)


@case("make figures: a figure that cannot be rendered (no Chrome/Chromium found)",
      "SiteError naming the notebook, cell and figure, and how to install Chromium",
      "the previous figure folder, file for file; no work folder left")
def test_a_figure_that_cannot_render_names_it_and_keeps_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    out = tmp_path / "figures"
    out.mkdir()
    (out / "index.html").write_text("<html>before</html>")
    (out / "01-old.svg").write_text("<svg/>")
    fig = {"data": [{"type": "bar", "y": [1, 2]}], "layout": {"title": {"text": "Bars"}}}
    nb = tiny_notebook(tmp_path / "05_small.ipynb", nbformat.v4.new_code_cell(
        "fig", outputs=[nbformat.v4.new_output("display_data", data={PLOTLY: fig})]))
    before = files(tmp_path)
    raises(figures_script.SiteError, r"05_small\.ipynb, cell 2 .*'Bars' could not be exported"
           r".*apt-get install chromium", figures_script.build, out, [nb])
    assert files(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["05_small.ipynb", "figures"]


@pytest.mark.browser
def test_make_figures_writes_each_figure_and_an_index(tmp_path, chromium, monkeypatch):
    """A notebook with one stored bar chart and one 3-frame animation -> SVG + PNG each, GIF
    (+ MP4) for the animation, an index linking them; the site copies the folder in."""
    monkeypatch.setenv("BROWSER_PATH", chromium)
    bar = {"data": [{"type": "bar", "x": ["a", "b"], "y": [1, 2]}],
           "layout": {"title": {"text": "Two bars: a and b"}}}
    frames = [{"name": str(k), "data": [{"type": "heatmap", "z": [[k, 1], [2, 3]]}],
               "layout": {"title": {"text": f"Grid: step {k}"}}} for k in range(3)]
    anim = {"data": frames[0]["data"], "layout": {"title": {"text": "Grid: step 0"}},
            "frames": frames}
    cells = [nbformat.v4.new_code_cell("fig", outputs=[nbformat.v4.new_output(
        "display_data", data={PLOTLY: f, "text/plain": "Figure"})]) for f in (bar, anim)]
    nb = tiny_notebook(tmp_path / "05_small.ipynb", *cells)
    out = tmp_path / "figures"
    assert figures_script.build(out, [nb]) == 2
    names = sorted(p.name for p in out.iterdir())
    assert {"05-two-bars.svg", "05-two-bars.png", "05-grid.svg", "05-grid.png", "05-grid.gif",
            "index.html"} <= set(names)
    assert (out / "05-grid.svg").read_text().lstrip().startswith(("<svg", "<?xml"))
    assert (out / "05-grid.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    index = (out / "index.html").read_text()
    linked = set(re.findall(r'href="([^"]+)"', index))
    assert linked == set(names) - {"index.html"}
    assert "Grid: step 2" in index                     # the still is the last frame
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".figures-")]
    built = site.build(tmp_path / "site", [nb], figures=out)
    assert (built / "figures" / "05-grid.gif").is_file()
