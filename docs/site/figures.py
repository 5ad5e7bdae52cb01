"""``make figures``: every figure of the course, for slides and handouts, in one folder.

The figures are the ones the committed notebooks stored (their ``application/vnd.plotly.v1+json``
outputs): no model is loaded and nothing is trained, so the folder is exactly what the executed
notebooks and the website show. Each figure is written with lorakit's own export API:

* ``lk.export_svg(fig, preset="slide")`` and ``lk.export_png`` of the same "slide" still
  (1280 × 720, text sized for the back of a room; ``lorakit.view.render.apply_preset``);
* for an animation, the still is its last frame, and ``lk.export_gif`` and (with
  imageio-ffmpeg installed) ``lk.export_mp4`` write every frame;
* ``index.html`` (lorakit's ``Report``) shows each figure with links to its files.

The files go into a temporary folder beside the target, which replaces the previous folder
only when every figure was written; a figure that cannot be rendered (no Chromium, say) stops
the run naming the notebook, the cell and the figure, with what to install.

Run: ``python docs/site/figures.py [--out dist/figures] [notebooks/02_attach_and_count.ipynb
...]``. ``make site`` copies the folder into the site as ``figures/`` when it exists.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the site's build script (docs/site/build.py): its notebook checks, errors and swap
_spec = importlib.util.spec_from_file_location("lorakit_site_build", HERE / "build.py")
site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(site)
PLOTLY_MIME, ROOT, SiteError = site.PLOTLY_MIME, site.ROOT, site.SiteError

TAGS = re.compile(r"<[^>]+>")
PNG_SCALE = 2            # 2560 × 1440 pixels: sharp on a projector and a high-DPI screen


def stored_figures(path: Path) -> list[tuple[str, dict]]:
    """(where, figure) of each plotly figure the notebook at ``path`` stored, in order."""
    nb = site.read_checked(path)
    rel = f"notebooks/{path.name}"
    return [(site.cell_label(rel, i, cell), out["data"][PLOTLY_MIME])
            for i, cell in enumerate(nb.cells) for out in cell.get("outputs", [])
            if PLOTLY_MIME in out.get("data", {})]


def title_of(fig: dict) -> str:
    """The figure's title as plain text; an animation's is that of its last frame (the still)."""
    frames = fig.get("frames") or [{}]
    title = (frames[-1].get("layout", {}).get("title")
             or fig.get("layout", {}).get("title", ""))
    text = title.get("text", "") if isinstance(title, dict) else str(title)
    return html.unescape(TAGS.sub(" ", text.split("<br>")[0])).strip()


def file_stem(prefix: str, title: str, taken: set[str]) -> str:
    """``02-parameters-per-module-type``: the notebook's number and the title, unique."""
    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")

    head = slug(re.split(r":|—|\(| = ", title)[0])  # "Training loss: step 40, ..." -> ...
    name = head if len(head) >= 3 else slug(title) or "figure"
    stem, n = f"{prefix}-{name}", 2
    while stem in taken:
        stem, n = f"{prefix}-{name}-{n}", n + 1
    taken.add(stem)
    return stem


def export_one(fig: dict, folder: Path, stem: str) -> list[str]:
    """Write one figure's files into ``folder``; return their names."""
    import plotly.graph_objects as go

    import lorakit as lk
    from lorakit.view.render import apply_preset

    figure = go.Figure(fig)
    animated = len(fig.get("frames") or []) > 1
    frame = -1 if animated else None
    names = [f"{stem}.svg", f"{stem}.png"]
    lk.export_svg(figure, folder / names[0], preset="slide", frame=frame)
    lk.export_png(apply_preset(figure, "slide", frame), folder / names[1], scale=PNG_SCALE)
    if animated:
        lk.export_gif(figure, folder / f"{stem}.gif", progress=False)
        names.append(f"{stem}.gif")
        try:
            lk.export_mp4(figure, folder / f"{stem}.mp4", progress=False)
            names.append(f"{stem}.mp4")
        except ImportError as e:   # imageio-ffmpeg is optional: the GIF is enough
            print(f"figures: no MP4 of {stem} ({e})", file=sys.stderr)
    return names


def card(title: str, names: list[str]) -> str:
    """One figure in the index: the PNG, the title, a link per file."""
    links = " · ".join(f'<a href="{html.escape(n)}">{n.rsplit(".", 1)[1].upper()}</a>'
                       for n in names)
    png = html.escape(next(n for n in names if n.endswith(".png")))
    return (f'<figure style="margin:1em 0"><a href="{png}"><img src="{png}" alt="'
            f'{html.escape(title)}" style="width:100%;max-width:640px;border:1px solid #ddd">'
            f"</a><figcaption>{html.escape(title)}<br>{links}</figcaption></figure>")


def write_all(folder: Path, notebooks: list[Path]) -> int:
    """Export every stored figure of ``notebooks`` into ``folder`` with an index; the count."""
    from lorakit.files.report import Html, Report

    rep = Report("lorakit: the course's figures",
                 subtitle="Every figure of the tutorials as SVG and PNG for a 16:9 slide "
                 "(1280 × 720), each animation also as a GIF and an MP4 (its still is the "
                 "last frame). Made by make figures from the executed notebooks.")
    taken: set[str] = set()
    count = 0
    for path in notebooks:
        figures = stored_figures(path)
        if not figures:
            continue
        section = rep.add(path.stem)
        for where, fig in figures:
            title = title_of(fig) or where
            stem = file_stem(path.stem[:2], title, taken)
            try:
                names = export_one(fig, folder, stem)
            except (ImportError, RuntimeError, ValueError, OSError) as e:
                raise SiteError(f"{where}: the figure {title!r} could not be exported: "
                                f"{e}") from e
            section.blocks.append(Html(card(title, names)))
            count += 1
    rep.write(folder / "index.html")
    return count


def build(out: Path, notebooks: list[Path] | None = None) -> int:
    """Write the figure folder ``out`` (replacing it only when all went well)."""
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not (out / "index.html").exists():
        raise SiteError(f"{out} exists and is not a figure folder (no index.html): it would "
                        "be replaced; pick an empty or new folder")
    notebooks = [Path(p).resolve() for p in notebooks or
                 sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-new-", dir=out.parent))
    try:
        (work / "figures").mkdir()
        count = write_all(work / "figures", notebooks)
        site.swap(work / "figures", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path,
                    help="notebooks to take figures from (default: every notebooks/NN_*.ipynb)")
    ap.add_argument("--out", type=Path, default=ROOT / "dist" / "figures")
    args = ap.parse_args(argv)
    try:
        count = build(args.out, args.notebooks)
    except SiteError as e:
        print(f"make figures: {e}\nNothing was changed in {args.out}.", file=sys.stderr)
        return 1
    print(f"figures: {count} figures in {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
