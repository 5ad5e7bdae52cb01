"""Slides and handouts on a REAL recording (the session's tiny Llama, ΔW exactly 64 × 64, 61
frames; tests/conftest.py): GIF and MP4 decoded back (Pillow, imageio) with their frame count,
size, looping, H.264/yuv420p and first-vs-last pixels; one kaleido session for all frames; the
GIF palette holding the diverging scale; SVG/PDF presets; the figure pack (every figure in every
format, index links, escaping, refusing a non-empty folder); and the bad-input cases, each
checked to raise before anything is written. Frames are few and small to keep kaleido cheap."""

from __future__ import annotations

import base64
import io
import re
import sys

import numpy as np
import pytest
from faults import case

import lorakit as lk
from lorakit.files import animate, pack
from lorakit.view import figures, render

needs_browser = pytest.mark.skipif(render.find_browser() is None,
                                   reason="needs Chrome/Chromium for kaleido")
EVIL = '<script>alert("x")</script>'
W, H = 320, 240


def z_of(z) -> np.ndarray:
    """A heatmap's z from plotly's JSON: a list, or a typed array {dtype, bdata, shape}."""
    if isinstance(z, dict):
        shape = [int(n) for n in str(z.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape)
    return np.asarray(z, dtype=float)


@pytest.fixture(scope="module")
def small(tiny_recording, recording_subset):
    """5 frames of the real run: steps 0, 15, 30, 45, 60."""
    return recording_subset(tiny_recording, [0, 15, 30, 45, 60])


@pytest.fixture(scope="module")
def anim(small):
    return figures.matrix_evolution(small, "q_proj", layer=0)


def test_frames_are_stills_with_step_and_loss_in_the_title(small, anim):
    specs = render.frame_figures(anim)
    assert len(specs) == len(small) == 5
    for spec, step, loss in zip(specs, small.steps, small.losses, strict=True):
        title = spec["layout"]["title"]["text"]
        assert f"step {step}," in title and figures._loss_text(loss) in title
        assert not spec["layout"].get("updatemenus") and not spec["layout"].get("sliders")
    z0, z4 = z_of(specs[0]["data"][0]["z"]), z_of(specs[-1]["data"][0]["z"])
    f = small.frames("layers.0.q_proj")
    np.testing.assert_allclose(z4, f.delta[-1].float().numpy(), rtol=1e-6)
    assert np.abs(z0).max() == 0 < np.abs(z4).max()          # B = 0 at step 0


@pytest.mark.slow
@needs_browser
def test_gif_decodes_with_every_frame_loops_and_changes(anim, tmp_path, monkeypatch):
    from PIL import Image

    sessions = []
    real = render.need_kaleido

    def counting():
        kaleido, browser = real()

        class Counted(kaleido.Kaleido):
            def __init__(self, *a, **k):
                sessions.append(1)
                super().__init__(*a, **k)

        return type("K", (), {"Kaleido": Counted}), browser

    monkeypatch.setattr(render, "need_kaleido", counting)
    path = lk.export_gif(anim, tmp_path / "delta.gif", fps=4, width=W, height=H,
                         progress=False)
    assert len(sessions) == 1                                   # one browser for 5 frames
    im = Image.open(path)
    assert im.format == "GIF" and im.n_frames == 5 and im.size == (W, H)
    assert im.info["loop"] == 0 and im.info["duration"] == 250
    palette = im.getpalette()
    colours = {tuple(palette[i:i + 3]) for i in range(0, len(palette), 3)}
    assert {(5, 48, 97), (103, 0, 31), (247, 247, 247)} <= colours   # RdBu ends and middle
    frames = []
    for i in range(im.n_frames):
        im.seek(i)
        frames.append(np.asarray(im.convert("RGB"), dtype=int))
    assert np.abs(frames[0] - frames[-1]).sum(axis=2).astype(bool).mean() > 0.05


@pytest.mark.slow
@needs_browser
def test_mp4_is_h264_yuv420p_with_every_frame(anim, tmp_path):
    import imageio.v2 as imageio
    import imageio_ffmpeg

    path = lk.export_mp4(anim, tmp_path / "delta.mp4", fps=5, width=W + 1, height=H,
                         progress=False)
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p")
    assert meta["size"] == (W + 2, H)                           # odd width padded to even
    reader = imageio.get_reader(path, format="ffmpeg")
    frames = [np.asarray(f, dtype=int) for f in reader]
    reader.close()
    assert len(frames) == 5 and frames[0].shape == (H, W + 2, 3)
    assert np.abs(frames[0] - frames[-1]).max() > 50
    assert path.read_bytes()[4:8] == b"ftyp"


@pytest.mark.slow
@needs_browser
def test_svg_and_pdf_presets_set_size_and_fonts(tiny_recording, tmp_path):
    fig = figures.norms_over_time(tiny_recording)
    svg = lk.export_svg(fig, tmp_path / "n.svg").read_text()
    assert re.search(r'<svg[^>]*width="1280"[^>]*height="720"', svg)
    assert "font-size: 28px" in svg and "font-size: 22px" in svg     # title, axis titles
    assert "stroke-width: 4px" in svg                                # slide lines
    assert "log" not in re.findall(r">(\w+)</text>", svg)            # no scale buttons
    hand = lk.export_svg(fig, tmp_path / "h.svg", preset="handout").read_text()
    assert re.search(r'<svg[^>]*width="720"[^>]*height="480"', hand)
    assert "font-size: 28px" not in hand
    pdf = lk.export_pdf(figures.matrix_evolution(tiny_recording, "q_proj", layer=0),
                        tmp_path / "d.pdf", preset="handout", frame=-1).read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 5_000


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_before_writing(anim, tiny_recording, tmp_path):
    still = figures.norms_over_time(tiny_recording)
    for fn in (lk.export_gif, lk.export_mp4):
        ext = ".gif" if fn is lk.export_gif else ".mp4"
        with pytest.raises(ValueError, match="no frames.*export_png"):
            fn(still, tmp_path / f"a{ext}", progress=False)
        for fps in (0, -1, float("nan"), 1000, True):
            with pytest.raises(ValueError, match="fps must be a number from"):
                fn(anim, tmp_path / f"a{ext}", fps=fps)
        for size in (dict(width=10), dict(height=100_000), dict(width=640.5)):
            with pytest.raises(ValueError, match="whole number of pixels from 64"):
                fn(anim, tmp_path / f"a{ext}", **size)
        with pytest.raises(ValueError, match=f"ending in {ext}"):
            fn(anim, tmp_path / "a.png")
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "no"))):
            fn(anim, tmp_path / "no" / f"a{ext}")
    with pytest.raises(ValueError, match="preset must be one of 'slide', 'handout', 'web'"):
        lk.export_svg(anim, tmp_path / "a.svg", preset="poster")
    assert list(tmp_path.iterdir()) == []


def test_missing_tools_say_what_to_install(anim, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(ImportError, match=r"pip install imageio-ffmpeg.*GIF export works"):
        lk.export_mp4(anim, tmp_path / "a.mp4")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install Pillow"):
        lk.export_gif(anim, tmp_path / "a.gif")
    monkeypatch.delitem(sys.modules, "PIL")
    monkeypatch.setattr(render, "find_browser", lambda: None)  # render.need_kaleido looks it up
    with pytest.raises(RuntimeError, match="no Chrome/Chromium.*apt-get install chromium"):
        lk.export_gif(anim, tmp_path / "a.gif")
    with pytest.raises(RuntimeError, match="no Chrome/Chromium"):
        lk.export_svg(anim, tmp_path / "a.svg")
    monkeypatch.setitem(sys.modules, "kaleido", None)
    with pytest.raises(ImportError, match="kaleido is not installed.*pip install kaleido"):
        lk.export_pdf(anim, tmp_path / "a.pdf")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the pack


def links(text: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, text))


@pytest.mark.slow
@needs_browser
def test_pack_holds_every_figure_in_every_format(small, tmp_path):
    result = lk.TrainResult(losses=[3.0, 2.0, 1.5, 1.0], lrs=[1e-3] * 4, step_times=[0.1] * 4,
                            tokens=[100] * 4, steps_planned=4)
    out = tmp_path / "pack"
    got = lk.export_pack(result, out, recording=small, size=(W, H), max_frames=3,
                         settings={"task": EVIL}, progress=False)
    assert got.index == out / "index.md" and str(got) == str(out / "index.md")
    kinds = {f.key: {x.kind for x in f.files} for f in got.figures}
    anims = {k for k in kinds if k.startswith(("delta_", "abdelta_", "rank_"))}
    assert set(kinds) == {"loss", "norms", "spectrum_layers_0_q_proj", *anims} and len(anims) == 3
    assert "rank_layers_0_q_proj" in anims                     # the low-rank view, animated
    for key, have in kinds.items():
        assert have == ({"png", "svg", "html", "gif", "mp4"} if key in anims
                        else {"png", "svg", "html"})
    for f in got.files:
        data = (out / f.name).read_bytes()
        assert len(data) > 500, f.name
        magic = {"png": b"\x89PNG", "gif": b"GIF8", "svg": b"<svg"}.get(f.kind)
        assert magic is None or data.startswith(magic) or magic in data[:300], f.name
    from PIL import Image

    assert Image.open(out / "delta_layers_0_q_proj.gif").n_frames == 3
    assert Image.open(out / "loss.png").size == (1280, 720)
    assert (out / "plotly.min.js").is_file()                        # shared, offline pages
    assert 'src="plotly.min.js"' in (out / "norms.html").read_text()
    md, page = got.index.read_text(), got.index_html.read_text()
    names = {f.name for f in got.files}
    assert links(md, r"\]\(([^)]+)\)") == names
    assert links(page, r'href="([^"]+)"') == names
    for text in (md, page):
        assert EVIL not in text and "&lt;script&gt;" in text
        assert "layers.0.q_proj" in text and "4 of 4" in text
    # a non-empty folder is refused, untouched; overwrite=True replaces the pack's files
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        lk.export_pack(small, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before


def test_pack_bad_input_raises_before_creating_anything(small, tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="TrainResult.*Recording or a Recorder"):
        lk.export_pack("run.safetensors", tmp_path / "p")
    with pytest.raises(ValueError, match="no steps"):
        lk.export_pack(lk.TrainResult(), tmp_path / "p")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=re.escape(str(tmp_path / "file"))):
        lk.export_pack(small, tmp_path / "file")
    for bad in (dict(html="pdf"), dict(fps=0), dict(size=(10, 10)), dict(max_frames=1)):
        with pytest.raises(ValueError):
            lk.export_pack(small, tmp_path / "p", **bad)
    monkeypatch.setattr(render, "find_browser", lambda: None)
    with pytest.raises(RuntimeError, match="no Chrome/Chromium"):
        lk.export_pack(small, tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_pack_accepts_recorder_and_skips_mp4_without_ffmpeg(small, tmp_path, monkeypatch):
    rec = lk.Recorder.__new__(lk.Recorder)
    monkeypatch.setattr(lk.Recorder, "recording", property(lambda self: small))
    result, recording = pack._sources(rec, None)
    assert result is None and recording is small
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    monkeypatch.setattr(render, "render_jobs", lambda jobs, progress=None: [
        _png() if o["format"] == "png" else b"<svg></svg>" for _, o in jobs])
    got = lk.export_pack(rec, tmp_path / "p", size=(W, H), max_frames=2, progress=False)
    assert not any(f.kind == "mp4" for f in got.files)
    assert got.skipped and "pip install imageio-ffmpeg" in got.skipped[0]
    assert "imageio-ffmpeg" in got.index.read_text()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (W, H), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_grow_turns_a_line_chart_over_steps_into_an_animation(small, anim):
    fig = figures.norms_over_time(small)
    g = animate.grow(fig, every=2)
    assert [f.name for f in g.frames] == ["0", "30", "60"]           # every 2nd, last kept
    specs = render.frame_figures(g)
    assert "— step 30" in specs[1]["layout"]["title"]["text"]
    assert [len(t["x"]) for t in specs[1]["data"]] == [3] * len(fig.data)   # steps 0, 15, 30
    for t, full in zip(specs[-1]["data"], fig.data, strict=True):
        assert list(t["x"]) == list(full.x) and np.allclose(z_of(t["y"]), full.y)
    assert list(g.layout.xaxis.range) == [0, 60]                    # no rescaling while growing
    with pytest.raises(ValueError, match="line chart over steps"):
        animate.grow(anim)
    with pytest.raises(ValueError, match="every must be"):
        animate.grow(fig, every=0)


@case("export_pack of a recording whose module name holds '/' or '..' ('../a/b')",
      "none: the module's file names are made of letters, digits, '_' and '-'",
      "nothing written outside the pack folder; no half-written pack")
def test_pack_file_names_from_any_module_name(small, tmp_path):
    import dataclasses

    assert pack.file_stem("layers.0.q_proj") == "layers_0_q_proj"
    assert pack.file_stem("../a/b") == "___a_b"
    odd = dataclasses.replace(small, data={"../a/b": dataclasses.replace(
        next(iter(small.data.values())), name="../a/b")})
    keys = [f.key for f, _ in pack._figures(None, odd)]
    assert all("/" not in k and ".." not in k for k in keys) and "delta____a_b" in keys


@needs_browser
def test_low_rank_view_animates_frame_by_frame(small, tmp_path):
    """The low-rank view (ΔW beside Uᵀ·ΔW·V = Σ) as stills and as a GIF: each frame's Σ holds
    that step's r singular values on its diagonal and nothing else."""
    from PIL import Image

    fig = figures.low_rank_view(small, "q_proj", layer=0)
    specs = render.frame_figures(fig)
    f = small.frames("layers.0.q_proj")
    assert len(specs) == len(small) == 5
    for i, spec in enumerate(specs):
        sigma = z_of(spec["data"][1]["z"])
        np.testing.assert_allclose(np.diag(sigma)[:f.r], f.sv[i].numpy(), rtol=1e-6)
        assert np.count_nonzero(sigma - np.diag(np.diag(sigma))) == 0
        assert f"step {small.steps[i]}," in spec["layout"]["title"]["text"]
    path = lk.export_gif(fig, tmp_path / "rank.gif", fps=4, width=W, height=H, progress=False)
    im = Image.open(path)
    assert im.n_frames == 5 and im.size == (W, H)
    first = im.convert("RGB").tobytes()
    im.seek(4)
    last = im.convert("RGB").tobytes()
    assert first != last
