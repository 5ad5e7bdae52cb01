"""Tests for lorakit.app.cli and lorakit.app.tour (`lorakit tour`): bad flags exit non-zero with
argparse's message before any model is loaded; (slow: they train) a short real tour on the
embedded SmolLM2 writes an HTML report with the accuracy numbers and escaped model/user text,
and the default tour reaches ≥ 90% accuracy. The report writer itself:
tests/files/test_report.py."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest
import torch
from faults import case

from lorakit.app import cli
from lorakit.app.cli import main
from lorakit.app.tour import TourResult, TourSettings, run_tour, tour_report
from lorakit.core.settings import LoraSettings, TrainSettings

EVIL = '<script>alert("x")</script> & "quotes"'


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize("argv, message", [
    (["tour", "--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
    (["tour", "-r", "-2"], "argument -r/--r: must be a positive integer"),
    (["tour", "--variant", "qlora"], "argument --variant: invalid choice: 'qlora'"),
    (["tour", "--batch-size", "2.5"], "argument --batch-size: must be a positive integer"),
    (["tour", "--eval-n", "zero"], "argument --eval-n: must be a positive integer"),
    (["tour", "--lr", "nan"], "argument --lr: must be a finite number > 0"),
    (["tour", "--alpha", "0"], "argument --alpha: must be a finite number > 0"),
    (["tour", "--targets", " , "], "argument --targets: must be comma-separated"),
    (["tour", "--quantize", "nf3"], "argument --quantize: invalid choice: 'nf3'"),
    (["tour", "--task", "poems"], "argument --task: invalid choice: 'poems'"),
    (["tour", "--threads", "0"], "argument --threads: must be a positive integer"),
    (["tour", "--out", "{tmp}/missing/r.html"], "does not exist"),
    (["tour", "--out", "{tmp}"], "is a folder"),
    (["tour", "--prompt", "  "], "prompts must be non-empty strings"),
    (["tour", "--pack", "{tmp}/.."], "exists and is not empty"),
    (["tour", "--stepz", "3"], "unrecognized arguments: --stepz"),
    (["nope"], "invalid choice: 'nope'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_flags_exit_2_with_a_message(argv, message, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("run_tour must not start on bad flags")

    monkeypatch.setattr(cli, "run_tour", never)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: lorakit" in err and message in err


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    assert "tour" in capsys.readouterr().out
    assert main(["tour", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--quantize", "--r", "--alpha", "--targets", "--dropout", "--variant", "--init",
                 "--steps", "--lr", "--batch-size", "--seed", "--eval-n", "--out", "--prompt",
                 "--threads"):
        assert flag in out
    for f in [*dataclasses.fields(LoraSettings), *dataclasses.fields(TrainSettings)]:
        assert "--" + f.name.replace("_", "-") in out      # every field of both is a flag
    out = " ".join(out.split())    # argparse wraps lines at the terminal width
    assert "(default: q_proj,v_proj)" in out and "(default: 40)" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("lorakit ")


def test_flags_become_settings(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run_tour(settings, log):
        seen["settings"] = settings
        log("a progress line")
        raise KeyboardInterrupt   # also checks Ctrl-C outside training: exit 130

    monkeypatch.setattr(cli, "run_tour", fake_run_tour)
    out = tmp_path / "t.html"
    code = main(["tour", "--steps", "5", "-r", "4", "--alpha", "8", "--targets",
                 "q_proj, k_proj,", "--lr", "1e-3", "--batch-size", "2", "--eval-n", "7",
                 "--quantize", "nf4", "--seed", "3", "--threads", "1", "--out", str(out),
                 "--prompt", "hi", "--prompt", "<b>"])
    assert code == 130
    assert seen["settings"] == TourSettings(
        lora=LoraSettings(r=4, alpha=8.0, targets=("q_proj", "k_proj")),
        train=TrainSettings(steps=5, lr=1e-3, batch_size=2, seed=3),
        eval_n=7, quantize="nf4", threads=1, out=str(out), prompts=("hi", "<b>"))
    assert seen["settings"] == TourSettings.of(
        steps=5, r=4, alpha=8.0, targets=("q_proj", "k_proj"), lr=1e-3, batch_size=2,
        eval_n=7, quantize="nf4", seed=3, threads=1, out=str(out), prompts=("hi", "<b>"))
    captured = capsys.readouterr()
    assert "a progress line" in captured.out and "interrupted" in captured.err


def test_settings_validate_before_any_work(tmp_path):
    for bad in ({"steps": 0}, {"r": 1.5}, {"lr": -1.0}, {"alpha": math.inf},
                {"eval_n": True}, {"targets": ()}, {"targets": [" "]}, {"task": "nope"},
                {"quantize": "nf3"}, {"threads": 0}, {"seed": "0"}, {"prompts": [""]},
                {"out": str(tmp_path)}, {"out": str(tmp_path / "no" / "r.html")}):
        with pytest.raises(ValueError):
            run_tour(**bad)           # raises in TourSettings, before loading the model
    assert TourSettings.of(targets="q_proj").lora.targets == ("q_proj",)
    with pytest.raises(TypeError, match="either"):
        run_tour(TourSettings(), steps=3)
    with pytest.raises(TypeError, match="unexpected keyword 'rank'; allowed: .*alpha"):
        run_tour(rank=4)
    with pytest.raises(TypeError, match="train must be a TrainSettings"):
        TourSettings(train=LoraSettings())


def test_wrong_target_fails_right_after_loading(tmp_path):
    lines = []
    with pytest.raises(ValueError, match="Linear modules are: q_proj, k_proj, v_proj"):
        run_tour(targets=("qv_proj",), out=str(tmp_path / "r.html"), log=lines.append)
    assert lines == [] and not (tmp_path / "r.html").exists()     # no eval, no report


def test_busy_machine_hint(monkeypatch):
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (4.5, 4.0, 3.0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--threads 1" in cli._busy_hint(TourSettings())
    assert cli._busy_hint(TourSettings(threads=2)) is None      # the user chose already
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.3, 0.3, 0.3))
    assert cli._busy_hint(TourSettings()) is None


# --------------------------------------------------------------------------- a real tour


@pytest.fixture(scope="module")
def short_tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour") / "tour.html"
    lines: list[str] = []
    # 1 thread: tiny matrices, and robust on a machine shared with other jobs.
    result = run_tour(steps=3, eval_n=4, batch_size=4, out=str(out), prompts=(EVIL,),
                      threads=1, pack=str(out.parent / "pack"), log=lines.append)
    return result, lines


@pytest.mark.slow
def test_short_tour_result(short_tour):
    r, lines = short_tour
    assert isinstance(r, TourResult)
    assert r.trainable_params == 460_800                    # r=8 on q_proj, v_proj (30 layers)
    assert r.total_params == r.trainable_params + r.frozen_params == 134_975_808
    assert r.memory_bytes > r.base_memory_bytes > 100 * 2**20
    assert r.adapter_bytes == 4 * r.trainable_params        # float32
    assert r.eval_total == 4 and 0 <= r.correct_before <= 4 and 0 <= r.correct_after <= 4
    assert r.steps_done == 3 and len(r.losses) == len(r.step_times) == 3
    assert all(math.isfinite(v) for v in r.losses) and r.tokens_per_s > 0
    assert r.recorded_steps == [0, 1, 2, 3]
    assert [m.name for m in r.modules] == ["layers.0.q_proj", "layers.0.v_proj",
                                          "layers.29.q_proj", "layers.29.v_proj"]
    for m in r.modules:
        assert m.norm_delta_first == 0.0 < m.norm_delta_last      # B starts at 0
        assert len(m.norm_delta) == 4 and len(m.top_sv) == 8
        assert m.top_sv == sorted(m.top_sv, reverse=True)
    assert [g.expected is None for g in r.generations] == [False, False, False, True]
    assert r.generations[3].prompt == EVIL
    assert list(r.timings) == ["load model", "accuracy before", "generations before", "attach",
                               "train", "accuracy after", "generations after", "report",
                               "figure pack"]
    assert r.wall_seconds >= sum(r.timings.values()) - 1e-6
    assert lines[0].startswith("[1/7] loaded SmolLM2-135M-Instruct")
    assert lines[-1] == f"[7/7] wrote {r.report} and the figure pack {r.pack}"
    assert sum("step " in line and "loss" in line for line in lines) == 3


@pytest.mark.slow
def test_short_tour_report(short_tour):
    r, _ = short_tour
    html = Path(r.report).read_text("utf-8")
    assert f"{r.correct_before}/{r.eval_total} → {r.correct_after}/{r.eval_total}" in html
    assert "460,800" in html and "134,975,808" in html and "0.341%" in html
    assert f"{r.loss_first:.4f} → {r.loss_last:.4f}" in html
    for m in r.modules:
        assert m.name in html
    assert 'alert("x")' not in html                   # the prompt is shown, escaped
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    for g in r.generations:                            # model text, escaped
        assert escape(g.before) in html and escape(g.after) in html
    assert "Wall time per phase" in html and "whole tour" in html
    # loss + one ‖ΔW‖ line per module (counted by their own attributes: plotly.js is inlined)
    assert html.count('viewBox="0 0 240 48" role="img"') == 1 + len(r.modules)
    # the plotly figures: loss curve, A/B/ΔW animation, norms; plotly.js inlined once (offline)
    assert html.count('class="plotly-graph-div"') == 3 and "addFrames" in html
    assert html.count("* plotly.js v") == 1 and 'src="https://cdn.plot.ly' not in html
    assert "Q4_1 GGUF" in html and "full precision" not in html    # what the weights are
    gif = re.search(r'<img src="data:image/gif;base64,([A-Za-z0-9+/=]+)"', html)
    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(gif.group(1))))
    assert im.n_frames == len(r.recorded_steps) == 4 and im.size == (480, 360)


@pytest.mark.slow
def test_short_tour_report_with_cdn_is_small(short_tour, tmp_path):
    r, _ = short_tour
    tour = dataclasses.replace(r, settings=dataclasses.replace(r.settings, cdn=True, pack=None))
    html = tour_report(tour).to_html()
    assert html.count('src="https://cdn.plot.ly') == 1 and "* plotly.js v" not in html
    assert len(html) < 1_000_000 and "data:image/gif;base64," in html


@pytest.mark.slow
def test_short_tour_pack_holds_every_figure_in_every_format(short_tour):
    r, _ = short_tour
    folder = Path(r.pack).parent
    md, page = Path(r.pack).read_text(), (folder / "index.html").read_text()
    figs = {"loss", "norms", "spectrum_layers_0_q_proj", "delta_layers_0_q_proj",
            "abdelta_layers_0_q_proj", "rank_layers_0_q_proj"}
    animated = {"delta_layers_0_q_proj", "abdelta_layers_0_q_proj", "rank_layers_0_q_proj"}
    want = {f"{k}.{ext}" for k in figs for ext in ("png", "svg", "html")}
    want |= {f"{k}.{ext}" for k in animated for ext in ("gif", "mp4")}
    assert want <= {p.name for p in folder.iterdir()}
    assert set(re.findall(r"\]\(([^)]+)\)", md)) == want            # index.md links each
    assert set(re.findall(r'href="([^"]+)"', page)) == want
    assert "Q4_1 GGUF" in md and "| learning rate | 0.003 |" in md   # the run's settings


@pytest.mark.slow
def test_cli_prints_the_summary_and_exits_0(short_tour, monkeypatch, capsys):
    r, _ = short_tour
    monkeypatch.setattr(cli, "run_tour", lambda settings, log: r)   # the tour above, via main
    assert main(["tour", "--steps", "3", "--eval-n", "4", "--out", str(r.report)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lorakit tour: task=iso_dates")
    assert "wall time per phase: load model" in out
    assert (f"accuracy {r.correct_before}/4 → {r.correct_after}/4; report: {r.report}"
            in out)


@pytest.mark.slow
def test_recording_comes_back(short_tour):
    r, _ = short_tour
    assert r.recording is not None and r.recording.steps == r.recorded_steps
    assert r.recording.modules == [m.name for m in r.modules]


# --------------------------------------------------------------------------- acceptance


def _lorakit_command() -> list[str]:
    script = Path(sys.executable).with_name("lorakit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lorakit.app.cli"]


def test_tour_defaults_are_the_acceptance_settings():
    """The default tour is the iso_dates acceptance run: r=8, α=16 on q,v; 40 steps of 8 at 3e-3
    (the README quickstart's and notebook 03's settings)."""
    s = TourSettings()
    assert (s.task, s.lora.r, s.lora.alpha, tuple(s.lora.targets), s.train.steps,
            s.train.batch_size, s.train.lr, s.train.seed) == \
        ("iso_dates", 8, 16.0, ("q_proj", "v_proj"), 40, 8, 3e-3, 0)
    assert s.lora == LoraSettings() and s.train == TrainSettings(steps=40, lr=3e-3)
    assert cli.build_parser().parse_args(["tour"]).steps == 40


@pytest.mark.slow
def test_default_tour_learns_iso_dates(tmp_path):
    """The acceptance check: `lorakit tour` with default settings, as `make tour` runs it."""
    out = tmp_path / "lorakit-tour.html"
    proc = subprocess.run([*_lorakit_command(), "tour", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"accuracy (\d+)/(\d+) → (\d+)/(\d+); report: (.+)", proc.stdout)
    assert found, proc.stdout[-3000:]
    base, base_total, after, total = (int(found[i]) for i in range(1, 5))
    # The iso_dates acceptance: base ≤ 10% and, after r=8 q,v LoRA for 40 steps, ≥ 90% on 50
    # held-out items (the tour runs exactly lk.train; the 40 steps' wall time is measured by
    # benchmarks/train_accuracy.py, not asserted).
    assert base_total == total == 50 and base / total <= 0.10, proc.stdout[-3000:]
    assert after / total >= 0.9, proc.stdout[-3000:]
    assert Path(found[5].strip()) == out.resolve() and out.is_file()
    assert "wall time per phase" in proc.stdout


# --------------------------------------------------------------------------- lorakit train --out
def _tiny_model_folder(folder: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lorakit.core.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir(progress=False))
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=len(tok))
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@case("lorakit train --out FOLDER holding an earlier run (adapter/, result.json)", "exit 1: "
      "--out FOLDER already holds a run (adapter, result.json); lorakit train never replaces "
      "one", "checked before the model loads; the earlier run byte-identical")
def test_train_out_with_an_earlier_run_is_refused_first(tmp_path, capsys, monkeypatch):
    from faults import files

    from lorakit.app import train_cli

    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "result.json").write_text('{"accuracy": 0.9}')
    old = files(out)
    monkeypatch.setattr(train_cli, "_load", lambda *a: pytest.fail("the model was loaded"))
    assert main(["train", "--task", "iso_dates", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already holds a run (adapter, result.json)" in err and "Traceback" not in err
    assert files(out) == old


@case("lorakit train --out FOLDER holding the user's notes.txt", "none: the run is written "
      "beside it through lorakit's atomic saves", "notes.txt byte-identical")
def test_train_out_keeps_other_files(tmp_path, capsys):
    model = _tiny_model_folder(tmp_path / "model")
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--task", "iso_dates", "--model", str(model), "--steps", "1",
                 "--batch-size", "2", "--eval-n", "0", "--threads", "1", "--out", str(out)]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "notes.txt",
                                                     "recording.safetensors", "result.json"]
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]


@case("lorakit train --model FOLDER whose weights file is truncated", "exit 1: lorakit train: "
      "error: could not load the model folder PATH (…) … save it again", "no traceback; "
      "nothing written to --out")
def test_train_truncated_model_folder(tmp_path, capsys):
    model = _tiny_model_folder(tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert main(["train", "--task", "iso_dates", "--model", str(model), "--steps", "1",
                 "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "could not load the model folder" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
