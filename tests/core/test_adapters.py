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
      "already holds an adapter … pass overwrite=True", "the existing files byte-identical")
def test_save_refuses_existing_folder(pm, saved):
    old = files(saved)
    with torch.no_grad():
        next(p for n, p in pm.named_parameters() if "lora_B" in n).add_(1)
    raises(FileExistsError, "already holds an adapter.*overwrite=True", lk.save_adapter, pm, saved)
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


# -- what save_adapter may replace ----------------------------------------------------------
@case("save_adapter(overwrite=True) into a folder holding the user's notes.txt and data/",
      "FileExistsError: PATH holds files that are not adapter files (data/, notes.txt) … "
      "never saves into one holding anything else (no advice to pass overwrite=True)",
      "every file of the folder byte-identical")
def test_save_overwrite_never_deletes_other_files(pm, tmp_path):
    folder = tmp_path / "work"
    (folder / "data").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "data" / "rows.csv").write_text("a,b\n")
    old = files(folder)
    for overwrite in (False, True):
        err = raises(FileExistsError, r"not adapter files \(data/, notes.txt\)", lk.save_adapter,
                     pm, folder, overwrite=overwrite)
        assert "pass overwrite=True" not in str(err)
        assert files(folder) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


@case("save_adapter(overwrite=True) into an adapter folder that also holds a user's file",
      "FileExistsError: … not adapter files (notes.txt)", "the adapter and the file unchanged")
def test_save_overwrite_refuses_adapter_plus_other_file(pm, saved):
    (saved / "notes.txt").write_text("mine")
    old = files(saved)
    raises(FileExistsError, r"not adapter files \(notes.txt\)", lk.save_adapter, pm, saved,
           overwrite=True)
    assert files(saved) == old


def test_save_overwrite_replaces_a_peft_saved_folder(pm, tmp_path, tok):
    """A folder PEFT's save_pretrained wrote (its README.md model card included) holds only
    adapter files: overwrite=True replaces it."""
    folder = tmp_path / "peft"
    pm.save_pretrained(folder)
    assert (folder / "README.md").is_file()
    lk.save_adapter(pm, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json",
                                                        "adapter_model.safetensors"]


@case("save_adapter(pm, '.') (the folder you are in)", "ValueError: … is the folder you are in "
      "… give a new sub-folder, e.g. './adapter'", "the folder and its files unchanged")
def test_save_into_current_folder(pm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    old = files(tmp_path)
    for where in (".", "", "x/.."):
        raises(ValueError, "the folder you are in", lk.save_adapter, pm, where, overwrite=True)
    assert files(tmp_path) == old


# -- failures while writing -----------------------------------------------------------------
@case("disk full while safetensors writes the weights (its own SafetensorError, not OSError)",
      "OSError: could not save the adapter to PATH: … No space left on device (the adapter "
      "that was there is unchanged)", "the old adapter byte-identical, no temporary folder left")
def test_save_safetensors_error_names_the_path(pm, saved, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(state, filename, metadata=None):
        open(filename, "wb").write(b"partial")   # noqa: SIM115 - half a file, as on a full disk
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                              "StorageFull, message: \"No space left on device\" })")

    old = files(saved)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    err = raises(OSError, "could not save the adapter to .*No space left on device",
                 lk.save_adapter, pm, saved, overwrite=True)
    assert str(saved) in str(err) and ".tmp" not in str(err) and "unchanged" in str(err)
    assert files(saved) == old
    assert sorted(p.name for p in saved.parent.iterdir()) == ["adapter"]


def _kill_between_renames(pm, folder):
    """A forked child runs save_adapter(overwrite=True) by two renames (as where the system
    cannot swap two folders in one step) and is killed (os._exit) right after the first
    moved the old adapter away: what SIGKILL there leaves."""
    import os

    pid = os.fork()
    if pid == 0:  # the child: no exception handler may run, as with SIGKILL
        try:
            import lorakit.core.adapters as adapters

            real = os.replace
            calls = []

            def replace(src, dst):
                real(src, dst)
                calls.append(dst)
                if len(calls) == 1:
                    os._exit(9)

            adapters.os.replace = replace
            adapters.exchange = lambda a, b: False
            lk.save_adapter(pm, folder, overwrite=True)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9


@case("save_adapter killed between its two renames (where folders cannot be swapped in one "
      "step: the old adapter moved away, the new one "
      "not yet in place)", "none: the next load_adapter puts the previous adapter back",
      "the previous adapter byte-identical at its path; no .tmp folder left")
def test_killed_save_is_restored_by_the_next_load(pm, saved, tok):
    old = files(saved)
    with torch.no_grad():
        next(p for n, p in pm.named_parameters() if "lora_B" in n).add_(1)
    _kill_between_renames(pm, saved)
    assert not saved.exists()
    hidden = [p.name for p in saved.parent.iterdir()]
    assert any(n.endswith(".tmp.old") for n in hidden), hidden
    lk.load_adapter(make_tiny(tok), saved)
    assert files(saved) == old
    assert sorted(p.name for p in saved.parent.iterdir()) == ["adapter"]


@case("save_adapter killed between its two renames, then saved again", "none: the next "
      "save_adapter restores, then replaces it", "no .tmp / .tmp.old folder left")
def test_killed_save_is_cleaned_by_the_next_save(pm, saved):
    _kill_between_renames(pm, saved)
    lk.save_adapter(pm, saved, overwrite=True)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["adapter"]


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    from lorakit.core.adapters import exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("from a")
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this system or file system cannot swap two folders in one step")
    assert (tmp_path / "b" / "x").read_text() == "from a"
    assert list((tmp_path / "a").iterdir()) == []


def test_a_running_save_in_another_process_is_left_alone(saved):
    """A temporary folder whose process is alive (here: this test's parent) is not removed."""
    import os

    from lorakit.core.adapters import recover_folder

    busy = saved.parent / f".adapter.{os.getppid()}.abcd.tmp"
    busy.mkdir()
    assert recover_folder(saved) == []
    assert busy.is_dir()


# -- what loading checks --------------------------------------------------------------------
@case("load_adapter(name='../x')", "ValueError: adapter name must be … without '.' or '/'",
      "model untouched, no raw KeyError")
def test_load_path_like_name(pm, saved):
    refused(pm, ValueError, "without '.' or '/'", lk.load_adapter, pm, saved, "../x")


@case("a FIFO in place of adapter_model.safetensors", "ValueError: the adapter weights file "
      "PATH is a FIFO (named pipe), not a regular file", "model untouched; returns at once "
      "(no read from the pipe)")
def test_load_fifo_weights(plain, saved):
    import os

    (saved / "adapter_model.safetensors").unlink()
    os.mkfifo(saved / "adapter_model.safetensors")
    refused(plain, ValueError, "is a FIFO", lk.load_adapter, plain, saved)


@case("a FIFO in place of adapter_config.json", "ValueError: the adapter config PATH is a FIFO",
      "model untouched; returns at once")
def test_load_fifo_config(plain, saved):
    import os

    (saved / "adapter_config.json").unlink()
    os.mkfifo(saved / "adapter_config.json")
    refused(plain, ValueError, "is a FIFO", lk.load_adapter, plain, saved)


@case("LoRA tensors for a module outside target_modules (v_proj weights, target_modules "
      "['q_proj'])", "ValueError: target_modules=['q_proj'] does not name 2 module(s) … e.g. "
      "'model.layers.0.self_attn.v_proj'; PEFT would drop them", "model untouched")
def test_load_tensors_outside_targets(plain, saved):
    edit_config(saved, target_modules=["q_proj"])
    refused(plain, ValueError, r"does not name 2 module\(s\).*v_proj.*drop them",
            lk.load_adapter, plain, saved)


@case("use_dora: true without magnitude vectors", "ValueError: use_dora=True but the weights "
      "has no DoRA magnitude vectors", "model untouched")
def test_load_dora_without_magnitudes(plain, saved):
    edit_config(saved, use_dora=True)
    refused(plain, ValueError, "use_dora=True but the weights has no DoRA magnitude",
            lk.load_adapter, plain, saved)


@case("DoRA magnitude vectors with use_dora: false", "ValueError: use_dora=False but the "
      "weights has DoRA magnitude vectors", "model untouched")
def test_load_magnitudes_without_dora(tiny, plain, tmp_path):
    dora = lk.attach(tiny, r=4, alpha=8, variant="dora", seed=0)
    lk.save_adapter(dora, tmp_path / "dora")
    edit_config(tmp_path / "dora", use_dora=False)
    refused(plain, ValueError, "use_dora=False but the weights has DoRA",
            lk.load_adapter, plain, tmp_path / "dora")


@case("modules_to_save: ['lm_head'] without its tensors", "ValueError: modules_to_save names "
      "'lm_head' … holds no tensors for it", "model untouched, no raw KeyError")
def test_load_modules_to_save_without_tensors(plain, saved):
    edit_config(saved, modules_to_save=["lm_head"])
    refused(plain, ValueError, "modules_to_save names 'lm_head'", lk.load_adapter, plain, saved)


@case("an adapter saved by PEFT with init_lora_weights 'pissa' (its init rewrites the base)",
      "ValueError: init_lora_weights='pissa'. Loading it, PEFT would run that init again, "
      "rewriting the base model's weights … Convert it", "model untouched: base weights "
      "bit-identical")
def test_load_pissa_config_refused(plain, saved):
    edit_config(saved, init_lora_weights="pissa")
    refused(plain, ValueError, "init_lora_weights='pissa'.*rewriting the base",
            lk.load_adapter, plain, saved)


# -- pissa / olora: saved as plain LoRA against the original weights ------------------------
@pytest.mark.parametrize("init", ["pissa", "olora"])
@case("pissa/olora adapter: attach, train, save, load on a fresh base, detach",
      "none: saved converted to a plain LoRA of rank 2r against the original weights",
      "fresh base untouched by the load: detach gives bit-identical base logits; the reloaded "
      "adapter answers as the trained one")
def test_pissa_olora_round_trip(tok, task, init):
    from faults import train_quiet

    ids = tok(["2024-01-02 is", "March 3"], return_tensors="pt", padding=True)
    pm = lk.attach(make_tiny(tok), r=4, alpha=8, init=init, seed=0)
    train_quiet(pm, tok, task, steps=2, batch_size=4, lr=1e-2)
    with torch.no_grad():
        trained = pm(**ids).logits
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        lk.save_adapter(pm, f"{d}/a")
        fresh = make_tiny(tok)
        before = snap(fresh)
        with torch.no_grad():
            base_logits = fresh(**ids).logits
        loaded = lk.load_adapter(fresh, f"{d}/a")
    assert loaded.peft_config["default"].init_lora_weights is True
    assert loaded.peft_config["default"].r == 8
    with torch.no_grad():
        assert torch.allclose(loaded(**ids).logits, trained, atol=1e-5)
    base = lk.detach(loaded)
    with torch.no_grad():
        assert torch.equal(base(**ids).logits, base_logits)
    assert_intact(base, before)


@case("a pissa adapter loaded into an AdapterBank beside another adapter", "none: it loads "
      "as a plain LoRA", "the other adapter's outputs and the base's bit-identical")
def test_pissa_adapter_in_a_bank_leaves_the_others_alone(tok, saved, tmp_path):
    pissa = lk.attach(make_tiny(tok), r=4, alpha=8, init="pissa", seed=0)
    with torch.no_grad():
        next(p for n, p in pissa.named_parameters() if "lora_B" in n).add_(0.01)
    lk.save_adapter(pissa, tmp_path / "pissa")
    ids = tok(["2024-01-02 is"], return_tensors="pt")
    bank = lk.AdapterBank(make_tiny(tok))
    bank.add("other", saved)

    def outputs():
        with torch.no_grad():
            bank.use("other")
            other = bank.model(**ids).logits.clone()
            bank.use("__base__")
            return other, bank.model(**ids).logits.clone()

    before = outputs()
    bank.add("pissa", tmp_path / "pissa")
    after = outputs()
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


@case("attach(alpha=np.float32(16), r=np.int64(4)), then save_adapter", "none: settings hold "
      "Python numbers", "the adapter saves and loads back")
def test_numpy_settings_save(tiny, tmp_path, tok):
    import numpy as np

    pm = lk.attach(tiny, r=np.int64(4), alpha=np.float32(16), dropout=np.float64(0.0), seed=0)
    lk.save_adapter(pm, tmp_path / "a")
    assert lk.load_adapter(make_tiny(tok), tmp_path / "a").peft_config["default"].r == 4


@case("lk.train on an adapter loaded frozen (load_adapter's default)", "ValueError: the "
      "model's adapter is frozen … load it with lk.load_adapter(model, folder, trainable=True)",
      "model untouched")
def test_train_frozen_loaded_adapter(plain, saved, tok, task):
    from faults import train_quiet

    frozen = lk.load_adapter(plain, saved)
    refused(frozen, ValueError, r"adapter is frozen.*trainable=True", train_quiet, frozen, tok,
            task, steps=1)
