"""save_adapter / load_adapter (lorakit/core/adapters.py): every bad folder, config or weights
file is refused with an error naming what is wrong, before the model changes; a failure half-way
through a load rolls back; writes are atomic and never touch what is already there. The PEFT
interop of save and load on SmolLM2 (both ways) is in tests/core/test_serve.py."""

from __future__ import annotations

import pytest
import torch
from faults import assert_intact, case, edit_config, fail_after, files, raises, refused, snap
from tiny_models import make_tiny

import lorakit as lk
from lorakit.core.attach import has_adapter


@case("load_adapter from a folder that does not exist", "FileNotFoundError: no adapter folder "
      "at PATH", "model untouched")
def test_load_missing_folder(tiny, tmp_path):
    refused(tiny, FileNotFoundError, "no adapter folder", lk.load_adapter,
            tiny, tmp_path / "x")


@case("load_adapter from a folder without adapter_config.json", "FileNotFoundError: no "
      "adapter_config.json in PATH (found: …)", "model untouched")
def test_load_no_config(plain, saved):
    (saved / "adapter_config.json").unlink()
    refused(plain, FileNotFoundError, "no adapter_config.json in .*found", lk.load_adapter,
            plain, saved)


@case("adapter_config.json that is not JSON", "ValueError: … is not valid JSON",
      "model untouched")
def test_load_bad_json(plain, saved):
    (saved / "adapter_config.json").write_text("{r: 4")
    refused(plain, ValueError, "not valid JSON", lk.load_adapter, plain, saved)


@case('adapter_config.json with "r": "4" (a string)', "ValueError: PATH/adapter_config.json: "
      "r='4' must be a positive integer", "model untouched, no PEFT TypeError")
def test_load_string_rank(plain, saved):
    edit_config(saved, r="4")
    refused(plain, ValueError, "adapter_config.json: r='4' must be a positive integer",
            lk.load_adapter, plain, saved)


@case("adapter_config.json says r=8, weights have r=4", "ValueError: … says r=8, but the "
      "weights' … has 4 rows", "model unwrapped, no dead adapter name")
def test_load_rank_mismatch(plain, saved):
    edit_config(saved, r=8)
    refused(plain, ValueError, "says r=8, but the weights", lk.load_adapter, plain, saved)


@case("adapter_config.json with lora_alpha=Infinity", "ValueError: lora_alpha=inf must be a "
      "finite number", "model untouched")
def test_load_infinite_alpha(plain, saved):
    edit_config(saved, lora_alpha=float("inf"))
    refused(plain, ValueError, "lora_alpha=inf must be a finite", lk.load_adapter,
            plain, saved)


@case("adapter_config.json of another PEFT type (PREFIX_TUNING)", "ValueError: lorakit loads "
      "LoRA adapters", "model untouched")
def test_load_other_peft_type(plain, saved):
    edit_config(saved, peft_type="PREFIX_TUNING")
    refused(plain, ValueError, "lorakit loads LoRA adapters", lk.load_adapter, plain, saved)


@case("truncated adapter_model.safetensors", "ValueError: PATH/adapter_model.safetensors is "
      "not a readable safetensors file", "model untouched")
def test_load_truncated_weights(plain, saved):
    w = saved / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    refused(plain, ValueError, "adapter_model.safetensors is not a readable safetensors",
            lk.load_adapter, plain, saved)


@case("adapter trained for other layer sizes (hidden 32 vs 64)", "ValueError: this adapter "
      "does not fit the model: module … has weight shape …", "model untouched")
def test_load_wrong_architecture(tok, saved):
    other = make_tiny(tok, hidden=32)
    refused(other, ValueError, "does not fit the model", lk.load_adapter, other, saved)


@case("load_adapter(name='__base__')", "ValueError: adapter name must be … other than "
      "'__base__'", "model untouched")
def test_load_reserved_name(plain, saved):
    refused(plain, ValueError, "other than '__base__'", lk.load_adapter,
            plain, saved, "__base__")


@case("load_adapter with a name the PeftModel already has", "ValueError: already has an "
      "adapter named 'default'", "adapters and weights unchanged")
def test_load_duplicate_name(pm, saved):
    refused(pm, ValueError, "already has an adapter named 'default'", lk.load_adapter,
            pm, saved)


@case("PEFT fails half-way while loading onto a plain model", "RuntimeError (re-raised)",
      "base model unwrapped: no LoRA layer, no adapter name (rolled back)")
def test_load_failure_in_peft_rolls_back_plain(plain, saved, monkeypatch):
    import peft.peft_model

    before = snap(plain)
    fail_after(monkeypatch, peft.peft_model, "set_peft_model_state_dict", 1,
               RuntimeError("simulated load failure"))
    raises(RuntimeError, "simulated", lk.load_adapter, plain, saved)
    assert_intact(plain, before)
    assert not has_adapter(plain)


@case("PEFT fails half-way while adding a 2nd adapter to a PeftModel", "RuntimeError "
      "(re-raised)", "adapter names, layers and weights as before: no dead adapter")
def test_load_failure_in_peft_rolls_back_peft(pm, saved, monkeypatch):
    import peft.peft_model

    before = snap(pm)
    fail_after(monkeypatch, peft.peft_model, "set_peft_model_state_dict", 1,
               RuntimeError("simulated load failure"))
    raises(RuntimeError, "simulated", lk.load_adapter, pm, saved, "second")
    assert_intact(pm, before)
    assert list(pm.peft_config) == ["default"]


@case("save_adapter to a folder that already holds an adapter", "FileExistsError: PATH "
      "already exists … pass overwrite=True", "the existing files byte-identical")
def test_save_refuses_existing_folder(pm, saved):
    old = files(saved)
    with torch.no_grad():
        next(p for n, p in pm.named_parameters() if "lora_B" in n).add_(1)
    raises(FileExistsError, "already exists.*overwrite=True", lk.save_adapter, pm, saved)
    assert files(saved) == old


@case("save_adapter(overwrite=True) failing while writing the weights", "OSError: could not "
      "save the adapter to PATH (the user's folder, not a temp name)",
      "the old adapter files byte-identical, no temporary folder left")
def test_save_overwrite_failure_keeps_old_files(pm, saved, monkeypatch):
    import safetensors.torch

    old = files(saved)
    monkeypatch.setattr(safetensors.torch, "save_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    err = raises(OSError, "could not save the adapter to", lk.save_adapter, pm, saved,
                 overwrite=True)
    assert str(saved) in str(err) and ".tmp" not in str(err)
    assert files(saved) == old
    assert sorted(p.name for p in saved.parent.iterdir()) == ["adapter"]


@case("save_adapter(overwrite=True) succeeding", "none: replaced atomically",
      "no temporary folder left; loads back equal")
def test_save_overwrite_replaces_atomically(pm, saved, tok):
    with torch.no_grad():
        next(p for n, p in pm.named_parameters() if "lora_B" in n).add_(1)
    lk.save_adapter(pm, saved, overwrite=True)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["adapter"]
    loaded = lk.load_adapter(make_tiny(tok), saved)
    want = {n: p for n, p in pm.named_parameters() if "lora_" in n}
    got = dict(loaded.named_parameters())
    assert all(torch.equal(got[n], p) for n, p in want.items())


@case("save_adapter to a path that is a file", "ValueError: PATH is a file", "the file unchanged")
def test_save_to_file_path(pm, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    raises(ValueError, "is a file", lk.save_adapter, pm, f)
    assert f.read_text() == "mine"


@case("save_adapter into an unwritable place (/proc; root passes os.access)", "PermissionError: "
      "cannot write the adapter folder PATH", "nothing written")
def test_save_unwritable_as_root(pm):
    raises(PermissionError, "cannot write the adapter folder '/proc/lorakit-test",
           lk.save_adapter, pm, "/proc/lorakit-test/adapter")


@case("save_adapter of a model without an adapter", "TypeError/ValueError: needs a PeftModel",
      "nothing written")
def test_save_plain_model(tiny, tmp_path):
    with pytest.raises((TypeError, ValueError), match="PeftModel|lk.attach"):
        lk.save_adapter(tiny, tmp_path / "a")
    assert not (tmp_path / "a").exists()


@case("save_adapter(adapter='nope')", "ValueError: unknown adapter 'nope'", "nothing written")
def test_save_unknown_adapter(pm, tmp_path):
    raises(ValueError, "unknown adapter 'nope'", lk.save_adapter, pm, tmp_path / "a", "nope")
    assert not (tmp_path / "a").exists()
