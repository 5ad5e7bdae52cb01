"""``make site``: the course as a static website, built from the committed notebooks.

The notebooks are not executed: their stored outputs are what the site shows. The steps:

1. check every notebook before anything is written: it parses and validates (nbformat), no
   cell stored an error, every stored plotly figure is a figure (a ``data`` list); a bad one
   stops the build with its path and cell;
2. stage the sources in a temporary folder: ``index.md`` (from this folder), the README, and
   each notebook with its plotly outputs given a ``text/html`` form (a ``<div>`` and a
   ``Plotly.newPlot`` script by plotly's own ``plotly.io.to_html``; animations keep their
   frames and Play button), solution cells folded (MyST-NB's ``hide-cell`` tag, labelled
   "Show the solution"), remote badge images turned into plain links, and a line of links
   back to the notebook (download, Colab, Binder);
3. ``sphinx-build`` (MyST-NB, ``conf.py`` here) into a temporary folder beside the target,
   warnings as errors; plotly.js comes from the installed ``plotly`` package and MathJax 3
   from npm's ``mathjax`` package (installed once into ``build/site-npm``), both into
   ``_static``: the site loads nothing from the network;
4. the figure folder of ``make figures`` (if built) is copied in as ``figures/``, then the new
   site replaces the old one in two renames. Whatever fails before that, the previous site
   stays as it was and the temporary folders are removed.

Run: ``python docs/site/build.py [--out dist/site] [--figures dist/figures]
[notebooks/00_start_here.ipynb ...]`` (default: every notebook in ``notebooks/``).
"""

from __future__ import annotations

import argparse
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REPO = "lorakit/lorakit"
GITHUB = f"https://github.com/{REPO}/blob/main"
COLAB = f"https://colab.research.google.com/github/{REPO}/blob/main"
BINDER = f"https://mybinder.org/v2/gh/{REPO}/main?labpath="
NPM_CACHE = ROOT / "build" / "site-npm"
MATHJAX_PKG = "mathjax@3.2.2"
MATHJAX_JS = Path("node_modules/mathjax/es5/tex-svg-full.js")
PLOTLY_MIME = "application/vnd.plotly.v1+json"
SOLUTION = "solution"
# ![alt](https://...): an image the browser would fetch from the network
REMOTE_IMAGE = re.compile(r"!\[([^\]]*)\]\((?:https?:)?//[^)\s]+(?:\s+\"[^\"]*\")?\)")
# [text](target): relative targets outside the site are rewritten (see for_site)
MD_LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?\)")


# MyST-NB's position of a notebook line in a warning: (cell index + 1) × 10000 + line
NB_POSITION = re.compile(r"(\S+\.ipynb):(\d+):")


class SiteError(RuntimeError):
    """The site cannot be built from these sources; the message names the file (and cell)."""


# --------------------------------------------------------------------------- checks


def cell_label(rel: str, index: int, cell) -> str:
    """``notebooks/x.ipynb, cell 12 (In [7]: first line)``: where a reader finds the cell."""
    first = next((ln.strip() for ln in cell.get("source", "").splitlines() if ln.strip()), "")
    count = cell.get("execution_count")
    prompt = f"In [{count}]: " if count else ""
    return f"{rel}, cell {index + 1} ({prompt}{first[:60]!r})"


def read_checked(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path``, checked as step 1 of the module docstring says."""
    rel = display_path(path)
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # nbformat raises JSON, validation and version errors
        raise SiteError(f"{rel}: not a valid notebook ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:300]}); fix or re-save it, "
                        "then build the site again") from e
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                raise SiteError(f"{cell_label(rel, i, cell)} stored an error "
                                f"({out.get('ename')}: {str(out.get('evalue'))[:200]}); "
                                "re-execute the notebook (python notebooks/execute.py) "
                                "before building the site")
            fig = out.get("data", {}).get(PLOTLY_MIME)
            if fig is not None and not (isinstance(fig, dict)
                                        and isinstance(fig.get("data"), list)):
                raise SiteError(f"{cell_label(rel, i, cell)}: its stored plotly figure "
                                f"({PLOTLY_MIME}) has no 'data' list; re-execute the notebook")
    return nb


def display_path(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --------------------------------------------------------------------------- staging


def plotly_html(fig: dict, div_id: str) -> str:
    """A ``<div>`` and the script that draws ``fig`` into it (plotly.js loaded by the page)."""
    import plotly.io as pio

    height = "100%" if fig.get("layout", {}).get("height") else "520px"
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, auto_play=False,
                       div_id=div_id, default_height=height, validate=False,
                       config={"responsive": True})


def links_cell(rel: str) -> nbformat.NotebookNode:
    name = Path(rel).name
    return nbformat.v4.new_markdown_cell(
        f"*This page is the notebook `{rel}` with its stored outputs:* "
        f"{{download}}`download it </downloads/{name}>` · "
        f"[run it on Colab]({COLAB}/{rel}) · [run it on Binder]({BINDER}{rel})")


def prepare(nb: nbformat.NotebookNode, rel: str, staged: set[str]) -> nbformat.NotebookNode:
    """A copy of ``nb`` as the site shows it (step 2 of the module docstring); ``staged``:
    the repository paths of the site's pages and files."""
    nb = nbformat.from_dict(nb)
    stem = re.sub(r"\W", "-", Path(rel).stem)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = for_site(cell.source, posixpath.dirname(rel), staged)
            continue
        tags = cell.metadata.setdefault("tags", [])
        if SOLUTION in tags and "hide-cell" not in tags:
            tags.append("hide-cell")
            cell.metadata["mystnb"] = {"code_prompt_show": "Show the solution",
                                       "code_prompt_hide": "Hide the solution"}
        for k, out in enumerate(cell.get("outputs", [])):
            fig = out.get("data", {}).get(PLOTLY_MIME)
            if fig is not None:
                out["data"]["text/html"] = plotly_html(fig, f"lk-{stem}-{i}-{k}")
                del out["data"][PLOTLY_MIME]
    if nb.cells and nb.cells[0].cell_type == "markdown":
        nb.cells.insert(1, links_cell(rel))
    else:
        nb.cells.insert(0, links_cell(rel))
    return nb


def for_site(markdown: str, folder: str, staged: set[str]) -> str:
    """Markdown of the README or a notebook (in ``folder`` of the repository) as the site
    shows it: remote badge images as plain links, and each relative link that is not a page
    or file of this site pointing at the repository on GitHub instead."""
    def link(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            return m.group(0)
        path = posixpath.normpath(posixpath.join(folder, target))
        if path in staged:
            return m.group(0)
        return f"{m.group(1)}{GITHUB}/{path}{m.group(3) or ''})"

    return MD_LINK.sub(link, REMOTE_IMAGE.sub(r"\1", markdown))


def index_for_site(notebooks: list[str], figures: bool) -> str:
    text = (HERE / "index.md").read_text()
    pages = "\n".join(["About lorakit (the README) <README>",
                       *(str(Path(n).with_suffix("")) for n in notebooks)])
    extra = ('<a href="figures/index.html">The figure folder</a>: every key figure of the '
             "course as SVG and PNG (slide size) and each animation as a GIF/MP4, for slides "
             "and handouts." if figures else
             "The figure folder for slides (`make figures`) was not built with this site.")
    return text.replace("{{pages}}", pages).replace("{{figures}}", extra)


def mathjax(cache: Path = NPM_CACHE) -> Path:
    """MathJax 3's single-file TeX-to-SVG bundle, installed from npm into ``cache`` once."""
    js = cache / MATHJAX_JS
    if js.exists():
        return js
    npm = shutil.which("npm")
    if npm is None:
        raise SiteError("npm not found: the site bundles MathJax from npm's "
                        f"{MATHJAX_PKG}; install Node.js and npm (Debian: apt-get install "
                        "nodejs npm), then build again")
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund",
                           "--prefix", str(cache), MATHJAX_PKG],
                          capture_output=True, text=True)
    if done.returncode or not js.exists():
        raise SiteError(f"npm install {MATHJAX_PKG} failed:\n{done.stderr[-2000:]}")
    return js


def stage(src: Path, notebooks: list[Path], figures: bool) -> None:
    """Write the Sphinx sources into the empty folder ``src`` (step 2)."""
    import plotly

    # every notebook is checked before anything is written; its page is notebooks/<name>
    checked = {f"notebooks/{p.name}": (p, read_checked(p)) for p in notebooks}
    static = src / "_static"
    (static / "mathjax").mkdir(parents=True)
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", static)
    shutil.copy2(mathjax(), static / "mathjax" / MATHJAX_JS.name)
    shutil.copy2(HERE / "conf.py", src / "conf.py")
    shutil.copytree(HERE / "_templates", src / "_templates")
    shutil.copy2(HERE / "site.css", static / "site.css")
    images = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.*")
              if p.suffix in (".png", ".gif", ".svg")}
    staged = images | set(checked)
    (src / "downloads").mkdir()
    (src / "notebooks").mkdir()
    for rel, (path, nb) in checked.items():
        nbformat.write(prepare(nb, rel, staged), src / rel)
        shutil.copy2(path, src / "downloads" / path.name)
    for rel in images:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    (src / "README.md").write_text(for_site((ROOT / "README.md").read_text(), "", staged))
    (src / "index.md").write_text(index_for_site(list(checked), figures))


# --------------------------------------------------------------------------- build


def sphinx(src: Path, out: Path) -> None:
    """``sphinx-build -b html -W`` from ``src`` into ``out``; a warning or error stops it."""
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",
           "-d", str(src / ".doctrees"), str(src), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        text = NB_POSITION.sub(cell_position, (done.stderr or done.stdout)
                               .replace(str(src) + "/", ""))
        raise SiteError(f"sphinx-build failed on the page(s) named below:\n{text[-4000:]}")


def cell_position(m: re.Match) -> str:
    """``x.ipynb:70020:`` (MyST-NB: (staged cell index + 1) × 10000 + line) as
    ``x.ipynb, cell 6, line 20:``, counting cells from 1 in the committed notebook (the staged
    one has the links cell at index 1)."""
    block, line = divmod(int(m.group(2)), 10_000)
    staged = block - 1
    if staged == 1:
        return f"{m.group(1)}, the links line build.py adds:"
    return f"{m.group(1)}, cell {staged + 1 if staged <= 0 else staged}, line {line}:"


def check_target(out: Path) -> None:
    """Refuse a target folder that is not a site built here (it would be replaced)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / ".buildinfo").exists())):
        raise SiteError(f"{out} exists and is not a site built by this script (no "
                        ".buildinfo): it would be replaced; pick an empty or new folder")
    if out.resolve() in (ROOT, ROOT / "docs", HERE, ROOT / "notebooks"):
        raise SiteError(f"{out} is a source folder; pick another folder for the site")


def build(out: Path, notebooks: list[Path] | None = None,
          figures: Path | None = None) -> Path:
    """Build the site into ``out`` (replacing a previous build only when all went well)."""
    out = Path(out).resolve()
    check_target(out)
    notebooks = [Path(p).resolve() for p in notebooks or
                 sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    missing = [str(p) for p in notebooks if not p.is_file() or p.suffix != ".ipynb"]
    if missing:
        raise SiteError(f"not a notebook file (.ipynb): {', '.join(missing)}")
    if len({p.name for p in notebooks}) < len(notebooks):
        raise SiteError("two notebooks share a file name; each becomes notebooks/<name>.html")
    has_figures = figures is not None and (Path(figures) / "index.html").is_file()
    out.parent.mkdir(parents=True, exist_ok=True)
    # beside the target (so the swap is a rename); MyST-NB also writes jupyter_execute/
    # beside its output folder, which goes with the work folder
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-new-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="lorakit-site-src-") as src:
            stage(Path(src), notebooks, has_figures)
            sphinx(Path(src), work / "html")
        if has_figures:
            shutil.copytree(Path(figures), work / "html" / "figures")
        swap(work / "html", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def swap(new: Path, out: Path) -> None:
    """Put ``new`` where ``out`` is: two renames, then the old site is removed."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
        out.rename(old / "site")
    try:
        new.rename(out)
    except BaseException:
        if old is not None:
            (old / "site").rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path,
                    help="notebooks to build (default: every notebooks/NN_*.ipynb)")
    ap.add_argument("--out", type=Path, default=ROOT / "dist" / "site")
    ap.add_argument("--figures", type=Path, default=ROOT / "dist" / "figures",
                    help="the folder of make figures, copied in when it has an index.html")
    args = ap.parse_args(argv)
    try:
        out = build(args.out, args.notebooks, args.figures)
    except SiteError as e:
        print(f"make site: {e}\nNothing was changed in {args.out}.", file=sys.stderr)
        return 1
    print(f"site: {out / 'index.html'} (serve it with: python -m http.server -d {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
