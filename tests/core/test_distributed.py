"""lorakit on 2 CPU processes (gloo, loopback): the Recorder under FSDP2 and DDP records what one
process records, only rank 0 keeps frames, ``lk.train`` under torchrun follows the one-process
loss curve, ``accelerate launch -m lorakit train`` works, and bad input fails on every rank
instead of hanging. One torchrun launch runs all 2-process scenarios
(tests/distributed_worker.py); the references are computed here, in one process."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lorakit as lk
from lorakit.core.distributed import factor_kind
from lorakit.core.record import Recording

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300   # a hang fails the test instead of blocking CI

_spec = importlib.util.spec_from_file_location("distributed_worker",
                                               ROOT / "tests" / "distributed_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch built without torch.distributed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MASTER_ADDR": "127.0.0.1"}


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=launch_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The worker's outputs: (folder, {rank: report})."""
    out = tmp_path_factory.mktemp("two_ranks")
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                str(ROOT / "tests" / "distributed_worker.py"), str(out)])
    reports = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    assert sorted(reports) == [0, 1], proc.stderr[-3000:]
    return out, reports


@pytest.fixture(scope="module")
def one_process_recording():
    """The hand-written loop of the worker in this one process: same data, seed, global batch."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pm = worker.tiny_peft()
        rec = lk.Recorder(pm, every=1)
        worker.run_loop(pm, rec)
    finally:
        torch.set_num_threads(n)
    return rec.recording


def assert_recordings_equal(got: Recording, want: Recording, atol: float = 1e-5):
    assert got.steps == want.steps and got.modules == want.modules
    assert [v is None for v in got.losses] == [v is None for v in want.losses]
    assert [v for v in got.losses if v is not None] == pytest.approx(
        [v for v in want.losses if v is not None], abs=atol, rel=atol)
    for name in want.modules:
        g, w = got.frames(name), want.frames(name)
        assert g.meta() == w.meta()
        for key, t in w.tensors().items():
            torch.testing.assert_close(g.tensors()[key].float(), t.float(), atol=atol, rtol=0,
                                       msg=f"{name}.{key}")


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["fsdp2", "fsdp1", "ddp"])
def test_rank0_recording_equals_one_process(two_ranks, one_process_recording, scheme):
    out, reports = two_ranks
    got = Recording.load(out / f"{scheme}.safetensors")
    assert len(got) == worker.STEPS + 1
    assert_recordings_equal(got, one_process_recording)
    # the factors really moved (a frozen adapter would also "match")
    assert float(got.get("q_proj", layer=0).norm_delta[-1]) > 0
    assert reports[0][f"{scheme}_frames"] == worker.STEPS + 1
    assert reports[1][f"{scheme}_frames"] == 0          # other ranks hold no frames
    if scheme == "fsdp2":   # the factors were really sharded DTensors
        assert reports[0]["fsdp2_dtensor"] == "DTensor"
    if scheme == "fsdp1":   # ... or really flat pieces: A (4 × 64) split over the two ranks
        assert sum(reports[r]["fsdp1_piece"][0] for r in (0, 1)) == 4 * 64
        assert all(len(reports[r]["fsdp1_piece"]) == 1 for r in (0, 1))


@pytest.mark.slow
def test_recorder_made_after_sharding_reads_the_same(two_ranks):
    out, _ = two_ranks
    late = Recording.load(out / "fsdp2_late.safetensors")
    full = Recording.load(out / "fsdp2.safetensors")
    assert late.steps == [worker.STEPS]
    for name in full.modules:
        for key, t in full.frames(name).tensors().items():
            assert torch.equal(late.frames(name).tensors()[key][0], t[-1]), f"{name}.{key}"


@pytest.mark.slow
def test_recorder_made_after_fsdp1_wrapping_says_make_it_before(two_ranks):
    _, reports = two_ranks
    for rank in (0, 1):
        err = reports[rank]["fsdp1_late_error"]
        assert err is not None and "already wrapped by FSDP1" in err and "BEFORE" in err


@pytest.mark.slow
def test_modules_differing_between_ranks_raise_on_every_rank(two_ranks):
    _, reports = two_ranks
    for rank in (0, 1):
        err = reports[rank]["names_error"]
        assert err is not None and "different modules on different ranks" in err
        assert "layers.1.q_proj" in err


@pytest.mark.slow
def test_lk_train_two_processes_follows_one_process(two_ranks, tok, one_thread):
    """Same global batch of 4 (2 rows per rank): loss curve within 1e-5 relative, same tokens."""
    out, reports = two_ranks
    pm = worker.tiny_peft(len(tok), tok.pad_token_id)
    rec = lk.Recorder(pm, every=2)
    with one_thread():
        res = lk.train(pm, tok, lk.tasks.get("iso_dates"), steps=worker.TRAIN_STEPS, lr=3e-3,
                       batch_size=4, recorder=rec, precision="fp32", progress=False)
    r0, r1 = reports[0]["train"], reports[1]["train"]
    assert r0["losses"] == pytest.approx(res.losses, rel=1e-5)
    assert r0["tokens"] == res.tokens and r0["lrs"] == pytest.approx(res.lrs)
    assert r0 == {**r1, "frames": r0["frames"]}   # the same TrainResult on every rank
    assert r0["frames"] == len(rec) and r1["frames"] == 0
    assert_recordings_equal(Recording.load(out / "train.safetensors"), rec.recording)


@pytest.mark.slow
def test_batch_not_divisible_by_world_refused_before_training(two_ranks):
    _, reports = two_ranks
    for rank in (0, 1):
        rep = reports[rank]
        assert "batch_size=3" in rep["batch_error"] and "divisible" in rep["batch_error"]
        assert rep["batch_error_unchanged"] is True          # no step was taken
        assert rep["batch_error_recorder_steps"] is None     # nothing recorded


# --------------------------------------------------------------------------- unreadable layouts


def test_factor_kind_refuses_layouts_it_cannot_read():
    w = torch.zeros(4, 64)
    assert factor_kind(w, (4, 64), "x") == "local"
    assert factor_kind(torch.zeros(128), (4, 64), "x") == "fsdp1"
    zero3 = torch.nn.Parameter(torch.empty(0))
    zero3.ds_id = 7    # what DeepSpeed ZeRO-3 leaves on a partitioned parameter
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3.*Supported: one process, DDP"):
        factor_kind(zero3, (4, 64), "layers.0.q_proj.lora_A")
    with pytest.raises(ValueError, match=r"shape \(2, 64\).*\(4, 64\).*cannot read"):
        factor_kind(torch.zeros(2, 64), (4, 64), "x")


def test_unreadable_layout_raises_before_recording(monkeypatch):
    pm = worker.tiny_peft()
    rec = lk.Recorder(pm)
    layer = pm.base_model.model.model.layers[0].self_attn.q_proj
    monkeypatch.setattr(layer.lora_B["default"].weight, "ds_id", 3, raising=False)
    with pytest.raises(ValueError, match="ZeRO-3"):
        rec.on_step(0, None)
    assert len(rec) == 0 and rec.last_step is None


# --------------------------------------------------------------------------- lorakit train


@pytest.mark.slow
def test_accelerate_launch_lorakit_train(tmp_path, tok, one_thread):
    """``accelerate launch -m lorakit train`` on 2 CPU processes (a tiny random model saved
    here, the embedded SmolLM2's tokenizer) follows the same command in one process."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorakit.app.train_cli import TrainCommand, run_train
    from lorakit.core.settings import TrainSettings

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=len(tok),
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    flags = ["--task", "iso_dates", "--model", str(tmp_path / "model"), "--steps", "3",
             "--batch-size", "4", "--lr", "3e-3", "--eval-n", "4", "--record-every", "1",
             "--precision", "fp32"]   # compared at 1e-5 with one process
    # accelerate 1.x: --multi_gpu selects its torchrun launcher; ACCELERATE_USE_CPU keeps it on
    # the CPU (gloo), as in tests/core/test_record.py
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(free_port()), "-m", "lorakit", "train", *flags,
           "--threads", "1", "--out", str(tmp_path / "out")]
    env = {**launch_env(), "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "2 process(es), global batch 4 (2 per process)" in proc.stdout
    got = json.loads((tmp_path / "out" / "result.json").read_text())
    assert got["world_size"] == 2 and got["steps_done"] == 3 and got["frames"] == 4
    assert 0 <= got["accuracy"] <= 1
    assert len(Recording.load(tmp_path / "out" / "recording.safetensors")) == 4
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()

    with one_thread():   # the same command in this one process
        ref = run_train(TrainCommand(task="iso_dates", model=str(tmp_path / "model"), eval_n=0,
                                     train=TrainSettings(steps=3, batch_size=4, lr=3e-3,
                                                         precision="fp32")),
                        log=lambda _: None)
    assert ref["world_size"] == 1
    assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    assert got["tokens"] == ref["tokens"]


def test_train_command_refuses_bad_input(tmp_path, capsys):
    from lorakit.app.cli import main

    assert main(["train", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "no data file" in capsys.readouterr().err
    assert main(["train", "--batch-size", "0"]) == 2
    assert "must be a positive integer" in capsys.readouterr().err
    good = tmp_path / "pairs.jsonl"
    good.write_text('{"prompt": "a", "answer": "b"}\n')
    assert main(["train", "--task", "iso_dates", "--data", str(good)]) == 2
    assert "--task or --data, not both" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"}\n')
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "bad.jsonl: line 2 has no column(s) ['answer']" in capsys.readouterr().err
    bad.write_text('{"prompt": "a", "answer": "b"}\nnot json\n')
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "line 2 is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()      # refused before loading or writing anything


@pytest.mark.gpu
def test_example_qlora_fsdp_on_cuda(tmp_path):
    """examples/trl_sft_fsdp.py: TRL SFTTrainer + Recorder callback, QLoRA (NF4) base under
    accelerate FSDP2 on every visible GPU (make gpu-check)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--num_processes", str(torch.cuda.device_count()), "--num_machines", "1",
           "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy",
           "TRANSFORMER_BASED_WRAP", "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer",
           "--mixed_precision", "bf16", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(ROOT / "examples" / "trl_sft_fsdp.py"),
           "--quantize", "nf4", "--steps", "3", "--out", str(tmp_path)]
    env = {k: v for k, v in launch_env().items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fsdp"] and summary["frames"] == 4 and summary["steps"] == [0, 1, 2, 3]
    assert len(Recording.load(tmp_path / "recording.safetensors")) == 4


def test_train_command_flags_come_from_the_settings(capsys):
    from dataclasses import fields

    from lorakit.app.cli import main
    from lorakit.core.settings import TrainSettings

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for f in fields(TrainSettings):      # every TrainSettings field is a flag
        assert "--" + f.name.replace("_", "-") in out
    for flag in ("--task", "--data", "--model", "--tokenizer", "--r", "--targets",
                 "--record-every", "--record-max-frames", "--eval-n", "--out"):
        assert flag in out
