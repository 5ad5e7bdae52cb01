"""Tests for lorakit.record: ΔW = 0 at step 0 and growing after real steps, spectra and norms
vs the full matrices (non-zero B), block-averaged displays, bounded thinning, safetensors save /
load (damaged, newer, missing files; no pickle), module-name errors, the Trainer callback and a
2-process accelerate run where only rank 0 records."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults import case, raises, refused, train_quiet
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit
import lorakit as lk
from lorakit.core import record
from lorakit.core.record import FORMAT_VERSION, Recorder, Recording, block_average
from lorakit.core.settings import RecordSettings

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 256


def tiny_model(layers: int = 2, hidden: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=VOCAB)
    return LlamaForCausalLM(config)


@pytest.fixture
def peft_model():
    return lorakit.attach(tiny_model(), r=4, alpha=8, targets=["q_proj", "v_proj"], seed=0)


def train_steps(peft_model, rec, steps: int, lr: float = 1e-2, seed: int = 0):
    """A minimal loop with the hook protocol lk.train uses: on_step(0) first, then after each."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    with torch.no_grad():
        rec.on_step(0, None)
    for step in range(1, steps + 1):
        ids = torch.randint(0, VOCAB, (2, 16), generator=g)
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            rec.on_step(step, loss.item())
    with torch.no_grad():
        rec.on_end(steps, None)


def randomize_B(peft_model, seed: int = 1):
    """Non-zero B everywhere (with B = 0 every ΔW check would pass trivially)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def full_factors(peft_model, full_name: str):
    layer = peft_model.base_model.model.get_submodule(full_name)
    A = layer.lora_A["default"].weight.detach()        # (r, d_in)
    B = layer.lora_B["default"].weight.detach()        # (d_out, r)
    return A, B, float(layer.scaling["default"])


# --------------------------------------------------------------------------- ΔW content


def test_delta_zero_at_step0_then_grows(peft_model):
    rec = Recorder(peft_model)
    train_steps(peft_model, rec, steps=4)
    r = rec.recording
    assert r.steps == [0, 1, 2, 3, 4]
    assert r.losses[0] is None and all(isinstance(v, float) for v in r.losses[1:])
    for name in r.modules:
        f = r.frames(name)
        assert f.norm_delta[0] == 0 and torch.all(f.delta[0] == 0) and torch.all(f.sv[0] == 0)
        assert f.norm_A[0] > 0  # A starts random, only B starts at zero
        assert torch.all(f.norm_delta[1:] > 0)
        assert f.norm_delta[-1] > f.norm_delta[1]
        assert torch.any(f.delta[-1] != 0)


def test_default_modules_are_first_and_last_layer_of_each_type():
    model = lorakit.attach(tiny_model(layers=3), r=4, alpha=8, targets=["q_proj", "v_proj"])
    rec = Recorder(model)
    assert rec.modules == ["layers.0.q_proj", "layers.0.v_proj",
                           "layers.2.q_proj", "layers.2.v_proj"]


@pytest.mark.parametrize("variant", ["lora", "rslora"])
def test_singular_values_and_norms_match_full_matrices(variant):
    model = lorakit.attach(tiny_model(), r=4, alpha=8, targets=["q_proj", "v_proj"],
                           variant=variant, seed=0)
    randomize_B(model)
    rec = Recorder(model, display_size=16, top_k=3)
    rec.on_step(0, None)
    r = rec.recording
    for name in r.modules:
        f = r.frames(name)
        A, B, s = full_factors(model, f.full_name)
        assert s == pytest.approx(2.0 if variant == "lora" else 4.0)  # α/r vs α/√r
        assert f.scaling == pytest.approx(s)
        delta = s * B.float() @ A.float()                           # (d_out, d_in)
        want_sv = torch.linalg.svdvals(delta)[:3]
        assert f.sv.dtype == torch.float32 and f.sv.shape == (1, 3)
        torch.testing.assert_close(f.sv[0], want_sv, atol=1e-4, rtol=0)
        assert want_sv[0] > 0.1  # not a trivially-zero comparison
        torch.testing.assert_close(f.norm_delta[0], torch.linalg.matrix_norm(delta),
                                   atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(f.norm_A[0], torch.linalg.matrix_norm(A), atol=0, rtol=1e-6)
        torch.testing.assert_close(f.norm_B[0], torch.linalg.matrix_norm(B), atol=0, rtol=1e-6)
        assert (f.d_out, f.d_in) == tuple(delta.shape)


def test_block_average_matches_manual_block_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 64, generator=g)
    got = block_average(x, rows=4, cols=16)                          # (4, 16)
    want = x.reshape(4, 3, 16, 4).mean(dim=(1, 3))
    torch.testing.assert_close(got, want)
    assert block_average(x, rows=64, cols=64) is x                   # small enough: untouched


def test_recorded_display_is_block_mean_of_full_delta(peft_model):
    randomize_B(peft_model)
    rec = Recorder(peft_model, display_size=16)
    rec.on_step(0, None)
    r = rec.recording
    for name in r.modules:  # q_proj 64→64 and v_proj 64→32: both divisible by 16
        f = r.frames(name)
        A, B, s = full_factors(peft_model, f.full_name)
        delta = s * B @ A                                            # (d_out, d_in)
        want = delta.reshape(16, f.d_out // 16, 16, f.d_in // 16).mean(dim=(1, 3))
        assert f.delta.shape == (1, 16, 16) and f.delta.dtype == torch.float16
        torch.testing.assert_close(f.delta[0].float(), want, atol=2e-3, rtol=2e-3)
        want_A = A.reshape(A.shape[0], 16, f.d_in // 16).mean(-1)        # (r, 16)
        want_B = B.reshape(16, f.d_out // 16, B.shape[1]).mean(1)        # (16, r)
        torch.testing.assert_close(f.A[0].float(), want_A, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(f.B[0].float(), want_B, atol=1e-3, rtol=1e-3)


def test_display_matches_adaptive_pool_when_not_divisible(peft_model):
    randomize_B(peft_model)
    rec = Recorder(peft_model, modules=["layers.0.q_proj"], display_size=10)
    rec.on_step(0, None)
    f = rec.recording.frames("layers.0.q_proj")
    A, B, s = full_factors(peft_model, f.full_name)
    want = torch.nn.functional.adaptive_avg_pool2d((s * B @ A)[None], (10, 10))[0]
    torch.testing.assert_close(f.delta[0].float(), want, atol=2e-3, rtol=2e-3)


# --------------------------------------------------------------------------- bounded memory


def test_thinning_keeps_first_last_and_even_spacing(peft_model):
    rec = Recorder(peft_model, max_frames=10)
    for step in range(51):
        rec.on_step(step, float(step))
        assert len(rec) <= 10
    rec.on_end(50, None)
    r = rec.recording
    assert len(r) <= 10 and r.steps[0] == 0 and r.steps[-1] == 50
    gaps = {b - a for a, b in zip(r.steps[:-1], r.steps[1:], strict=False)}
    grid = r.steps[:-1] if r.steps[-1] % r.stride else r.steps
    assert {b - a for a, b in zip(grid[:-1], grid[1:], strict=False)} == {r.stride}
    assert max(gaps) == r.stride and r.stride > 1
    assert r.losses == [float(s) for s in r.steps]  # losses stay aligned with their steps
    for name in r.modules:
        assert r.frames(name).A.shape[0] == len(r) == r.frames(name).sv.shape[0]


def test_thinning_on_exact_grid_and_every():
    model = lorakit.attach(tiny_model(), r=4, alpha=8, targets=["q_proj"])
    rec = Recorder(model, max_frames=5, every=3)
    for step in range(0, 49):
        rec.on_step(step, None)
    rec.on_end(48, None)
    assert rec.recording.steps == [0, 12, 24, 36, 48]


def test_thinning_keeps_latest_off_grid_frame_until_superseded():
    model = lorakit.attach(tiny_model(), r=4, alpha=8, targets=["q_proj"])
    rec = Recorder(model, max_frames=5)
    for step in range(6):
        rec.on_step(step, None)
    assert rec.recording.steps == [0, 2, 4, 5]   # 6 > 5 frames: stride 2, latest (5) kept
    rec.on_step(6, None)
    assert rec.recording.steps == [0, 2, 4, 6]   # the off-grid 5 is superseded
    resumed = Recorder(model, max_frames=3)      # e.g. a Trainer resumed at step 3
    for step in range(3, 9):
        resumed.on_step(step, None)
    assert resumed.recording.steps == [3, 4, 8]  # first call kept; then the grid of stride 4


def test_memory_formula_matches_stored_bytes(peft_model):
    rec = Recorder(peft_model, max_frames=7)
    for step in range(7):
        rec.on_step(step, 1.0)
    assert rec.recording.nbytes == 7 * rec.frame_bytes()


def test_on_step_restores_thread_count(peft_model):
    before = torch.get_num_threads()
    rec = Recorder(peft_model)
    rec.on_step(0, None)  # computes on one thread (tiny matrices), then puts the count back
    assert torch.get_num_threads() == before and len(rec) == 1


def test_steps_must_increase(peft_model):
    rec = Recorder(peft_model)
    rec.on_step(0, None)
    rec.on_step(1, 2.0)
    rec.on_end(1, 3.0)  # same step: only the loss is updated
    assert rec.recording.steps == [0, 1] and rec.recording.losses == [None, 3.0]
    with pytest.raises(ValueError, match="new lk.Recorder"):
        rec.on_step(0, None)


# --------------------------------------------------------------------------- names & settings


def test_unknown_module_name_lists_valid_names(peft_model):
    with pytest.raises(ValueError) as e:
        Recorder(peft_model, modules=["layers.7.q_proj"])
    msg = str(e.value)
    assert "layers.7.q_proj" in msg and "layers.0.q_proj" in msg and "layers.1.v_proj" in msg
    with pytest.raises(ValueError, match="o_proj"):
        Recorder(peft_model, modules=["o_proj"])  # a Linear without an adapter


def test_module_name_forms(peft_model):
    assert Recorder(peft_model, modules=["q_proj"]).modules == ["layers.0.q_proj",
                                                                 "layers.1.q_proj"]
    assert Recorder(peft_model, modules=["model.layers.1.self_attn.v_proj"]).modules == [
        "layers.1.v_proj"]
    assert Recorder(peft_model, modules="layers.0.v_proj").modules == ["layers.0.v_proj"]


def test_recording_lookup_helpers(peft_model):
    rec = Recorder(peft_model)
    rec.on_step(0, None)
    r = rec.recording
    f = r.get("q_proj", layer=0)
    assert f is r.frames("layers.0.q_proj") is r.frames("model.layers.0.self_attn.q_proj")
    assert r.get("v_proj", layer=-1).layer == 1
    assert (f.module_type, f.layer, f.r, f.alpha, f.d_in, f.d_out) == ("q_proj", 0, 4, 8, 64, 64)
    with pytest.raises(KeyError, match="layer="):
        r.get("q_proj")
    with pytest.raises(KeyError, match="types"):
        r.get("k_proj", layer=0)


@pytest.mark.parametrize("kwargs", [{"every": 0}, {"max_frames": 1}, {"top_k": 0},
                                    {"display_size": -1}, {"modules": []}])
def test_bad_settings_are_refused(peft_model, kwargs):
    with pytest.raises(ValueError):
        Recorder(peft_model, **kwargs)
    with pytest.raises(ValueError):
        RecordSettings(**kwargs)


# --------------------------------------------------------------------------- save / load


@pytest.fixture
def recording(peft_model):
    rec = Recorder(peft_model)
    train_steps(peft_model, rec, steps=3)
    r = rec.recording
    r.losses[2] = float("nan")  # a diverged loss survives the JSON round trip too
    return r


def assert_same(a: Recording, b: Recording):
    assert a.steps == b.steps and a.modules == b.modules
    assert [str(x) for x in a.losses] == [str(x) for x in b.losses]
    for k in ("every", "stride", "max_frames", "display_size", "top_k", "adapter", "model_name"):
        assert getattr(a, k) == getattr(b, k), k
    for name in a.modules:
        fa, fb = a.frames(name), b.frames(name)
        assert fa.meta() == fb.meta()
        for k, t in fa.tensors().items():
            u = fb.tensors()[k]
            assert t.dtype == u.dtype and torch.equal(t, u), (name, k)


def test_save_load_round_trip(recording, tmp_path):
    path = recording.save(tmp_path / "run.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["run.safetensors"]  # one file
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lorakit"])
    assert meta["format_version"] == FORMAT_VERSION
    assert_same(recording, Recording.load(path))


def test_empty_recording_round_trip(peft_model, tmp_path):
    r = Recorder(peft_model).recording
    assert len(r) == 0 and r.frames("layers.0.q_proj").A.shape == (0, 4, 64)
    assert_same(r, Recording.load(r.save(tmp_path / "empty.safetensors")))


def test_load_truncated_or_garbage_file_is_a_clear_error(recording, tmp_path):
    path = recording.save(tmp_path / "run.safetensors")
    data = path.read_bytes()
    for cut in (len(data) // 2, 40, 5):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="damaged"):
            Recording.load(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="damaged"):
        Recording.load(junk)
    other = tmp_path / "other.safetensors"  # a valid safetensors file, not a recording
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a lorakit recording"):
        Recording.load(other)


def test_load_newer_format_is_refused(recording, tmp_path):
    path = recording.save(tmp_path / "run.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lorakit"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={"lorakit": json.dumps(meta)})
    with pytest.raises(ValueError) as e:
        Recording.load(newer)
    assert f"version {FORMAT_VERSION + 1}" in str(e.value)
    assert f"version {FORMAT_VERSION} and older" in str(e.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Recording.load(tmp_path / "nope.safetensors")


def test_no_pickle(recording, tmp_path, monkeypatch):
    source = inspect.getsource(record)
    assert "torch.load" not in source and "import pickle" not in source
    path = recording.save(tmp_path / "run.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle-based loading used")

    monkeypatch.setattr(torch, "load", refuse)
    import pickle
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert_same(recording, Recording.load(path))


# --------------------------------------------------------------------------- transformers / accelerate


def test_trainer_callback_records_expected_steps(peft_model, tmp_path):
    from transformers import Trainer, TrainingArguments

    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(0, VOCAB, (16, 16), generator=g)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=2,
                             learning_rate=1e-2, logging_steps=2, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, seed=0)
    rec = Recorder(peft_model, every=2)
    Trainer(model=peft_model, args=args, train_dataset=data,
            callbacks=[rec.trainer_callback()]).train()
    r = rec.recording
    assert r.steps == [0, 2, 4, 6]
    assert r.losses[0] is None and all(isinstance(v, float) and v > 0 for v in r.losses[1:])
    f = r.get("q_proj", layer=0)
    assert f.norm_delta[0] == 0 and torch.all(f.norm_delta[1:] > 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_two_processes_only_rank0_records(tmp_path):
    # accelerate 1.x: "--cpu" alone starts one process unless mpirun is set up; --multi_gpu
    # selects its torchrun launcher, and ACCELERATE_USE_CPU / use_cpu=True keep both on CPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(ROOT / "tests" / "accelerate_record_script.py"), str(tmp_path)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {int(p.stem[4:]): json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    assert sorted(results) == [0, 1], proc.stderr[-3000:]
    assert all(v["world_size"] == 2 for v in results.values())
    assert results[0]["frames"] > 0 and results[0]["steps"] == [0, 1, 2, 3, 4]
    assert results[1]["frames"] == 0
    assert results[0]["direct_frames"] == 2 and results[1]["direct_frames"] == 0


# -- bad input and faults: a clear error, nothing changed (docs/reliability.md) --------------------
@case("Recording.save into an unwritable folder (/proc)", "PermissionError: cannot write the "
      "file '/proc/…'", "the recording in memory intact")
def test_recording_save_unwritable(pm):
    rec = lk.Recorder(pm)
    rec.on_step(0, None)
    before = len(rec.recording)
    raises(PermissionError, "cannot write the file '/proc/r.safetensors'",
           rec.recording.save, "/proc/r.safetensors")
    assert len(rec.recording) == before


@case("Recording.load of a damaged file", "ValueError: PATH is damaged (truncated or corrupt)",
      "the file unchanged")
def test_recording_load_damaged(tmp_path):
    f = tmp_path / "r.safetensors"
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    raises(ValueError, "is damaged", lk.Recording.load, f)
    assert f.read_bytes().startswith(b"\x10")


@case("a Recorder made before a re-attach", "ValueError: this Recorder records … no longer the "
      "model's adapter layer … make a new one", "new adapter untouched; recording intact")
def test_stale_recorder_refused(pm, tok, task):
    rec = lk.Recorder(pm)
    rec.on_step(0, None)
    frames = len(rec.recording)
    pm2 = lk.attach(pm, r=2, seed=0)
    refused(pm2, ValueError, "no longer the model's adapter layer", train_quiet, pm2, tok, task,
            steps=1, recorder=rec)
    assert len(rec.recording) == frames


@case("Recorder on a model without an adapter", "ValueError: this model has no LoRA Linear "
      "layers", "model untouched")
def test_recorder_without_adapter(tiny):
    refused(tiny, ValueError, "no LoRA Linear layers", lk.Recorder, tiny)


@case("Recorder(modules=['nope'])", "ValueError: no LoRA layer matches ['nope']. Recordable "
      "names …", "model untouched")
def test_recorder_unknown_module(pm):
    refused(pm, ValueError, "no LoRA layer matches", lk.Recorder, pm, modules=["nope"])


@case("Recorder(every=0)", "ValueError: every must be a positive integer", "model untouched")
def test_recorder_every_zero(pm):
    raises(ValueError, "every must be a positive integer", lk.Recorder, pm, every=0)


@case("Recorder asked to snapshot NaN adapter weights", "ValueError: the adapter weights of … "
      "are not finite (not a LinAlgError from an SVD)", "the frames so far intact")
def test_recorder_nan_weights(pm):
    rec = lk.Recorder(pm)
    rec.on_step(0, None)
    with torch.no_grad():
        next(p for n, p in pm.named_parameters() if "lora_A" in n).fill_(float("nan"))
    raises(ValueError, "not finite", rec.on_step, 1, 1.0)
    assert rec.recording.steps == [0]


def _crafted(path: Path, meta: dict, tensors: dict[str, tuple[str, list[int]]]) -> Path:
    """A safetensors file with ``meta`` as its lorakit metadata and ``tensors`` (name ->
    (dtype, shape)) declared in its header; the data is a hole (a sparse file: only the
    header takes disk space)."""
    header, offset = {"__metadata__": {"lorakit": json.dumps(meta)}}, 0
    for name, (dtype, shape) in tensors.items():
        size = (2 if dtype == "F16" else 4) * int(torch.tensor(shape).prod())
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        f.truncate(8 + len(blob) + offset)
    return path


def _declared(path: Path) -> tuple[dict, dict]:
    """(lorakit metadata, name -> (dtype, shape)) of a saved recording."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lorakit"])
        return meta, {k: (str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape()))
                      for k in f.keys()}


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@case("a crafted 4 KB sparse recording declaring a 24 GB tensor its metadata does not list",
      "ValueError: PATH is damaged …: tensor m0.delta is F16 [4, 50000, 60000], but its "
      "metadata says F16 [4, 64, 64]", "nothing allocated (peak memory unchanged)")
def test_recording_load_huge_declared_shape(recording, tmp_path):
    meta, tensors = _declared(recording.save(tmp_path / "real.safetensors"))
    frames = len(meta["steps"])
    tensors["m0.delta"] = ("F16", [frames, 50000, 60000])
    f = _crafted(tmp_path / "big.safetensors", meta, tensors)
    assert f.stat().st_size > 6e9 and f.stat().st_blocks * 512 < 1 << 20
    peak = _peak_rss()
    raises(ValueError, r"tensor m0.delta is F16 \[\d+, 50000, 60000\], but its metadata says",
           lk.Recording.load, f)
    assert _peak_rss() - peak < 256 << 20


@case("a crafted sparse recording whose metadata agrees with its 512 MB of declared tensors",
      "ValueError: … declares 512,… bytes of tensors but only … bytes are on disk (a sparse file)",
      "nothing allocated (peak memory unchanged)")
def test_recording_load_huge_consistent_sparse(recording, tmp_path):
    meta, _ = _declared(recording.save(tmp_path / "real.safetensors"))
    mm = meta["modules"][0]
    mm.update(r=1, d_in=8000, d_out=8000)
    meta.update(modules=[mm], display_size=8000, top_k=1)
    frames = len(meta["steps"])
    shapes = record.expected_shapes(mm, frames, 8000, 1)
    tensors = {f"m0.{k}": ("F16" if k in ("A", "B", "delta") else "F32", list(s))
               for k, s in shapes.items()}
    f = _crafted(tmp_path / "big.safetensors", meta, tensors)
    peak = _peak_rss()
    raises(ValueError, "bytes are on disk", lk.Recording.load, f)
    assert _peak_rss() - peak < 256 << 20


@case("a recording whose module name contains '/' (e.g. 'a/b')", "ValueError: … module name "
      "'a/b' is not a plain module name", "the file unchanged; nothing loaded")
def test_recording_load_slash_module_name(recording, tmp_path):
    meta, tensors = _declared(recording.save(tmp_path / "real.safetensors"))
    meta["modules"][0]["name"] = "a/b"
    f = tmp_path / "slash.safetensors"
    with safe_open(str(tmp_path / "real.safetensors"), framework="pt") as src:
        save_file({k: src.get_tensor(k) for k in src.keys()}, f,
                  metadata={"lorakit": json.dumps(meta)})
    raises(ValueError, "module name 'a/b' is not a plain module name", lk.Recording.load, f)


@case("Recording.load of a FIFO", "ValueError: the recording PATH is a FIFO (named pipe), not "
      "a regular file", "returns at once (no read from the pipe)")
def test_recording_load_fifo(tmp_path):
    os.mkfifo(tmp_path / "r.safetensors")
    raises(ValueError, "is a FIFO", lk.Recording.load, tmp_path / "r.safetensors")


@case("Recording.save into a folder that does not exist", "FileNotFoundError: cannot write "
      "PATH: the folder … does not exist (create it first, e.g. os.makedirs(…))",
      "nothing created")
def test_recording_save_missing_folder(recording, tmp_path):
    raises(FileNotFoundError, "does not exist .create it first", recording.save,
           tmp_path / "nope" / "r.safetensors")
    assert list(tmp_path.iterdir()) == []


@case("Recording.save with extra={'lr': np.float32(1e-3), 'when': datetime}", "ValueError: "
      "cannot save the recording to PATH: extra['when'] is a datetime … JSON only",
      "nothing written")
def test_recording_save_extra_not_json(recording, tmp_path):
    import datetime

    recording.extra = {"lr": 1e-3, "runs": [1, {"when": datetime.date(2024, 1, 2)}]}
    raises(ValueError, r"extra\['runs'\]\[1\]\['when'\] is a date", recording.save,
           tmp_path / "r.safetensors")
    assert list(tmp_path.iterdir()) == []


@case("Recording.save over an existing 0600 file", "none: replaced atomically",
      "the file's mode stays 0600 (not widened to 0644)")
def test_recording_save_keeps_mode(recording, tmp_path):
    f = tmp_path / "r.safetensors"
    f.write_bytes(b"old")
    f.chmod(0o600)
    recording.save(f)
    assert (f.stat().st_mode & 0o777) == 0o600
    assert len(lk.Recording.load(f)) == len(recording)
