"""merge/unmerge, save/load (PEFT interop both ways), AdapterBank mixed batches, on SmolLM2.

Adapters get a random non-zero B (a zero B would make every equivalence test pass vacuously),
and each check also asserts the adapter really changes the output.
"""

import json
import shutil
import warnings

import pytest
import torch
from faults import assert_intact, case, edit_config, fail_after, raises, refused, snap
from peft import PeftModel
from safetensors.torch import load_file, save_file

import lorakit as lk
from lorakit.core import serve
from lorakit.core.attach import has_adapter

TARGETS = ["q_proj", "v_proj"]
Q0 = "model.layers.0.self_attn.q_proj"


def perturb(peft_model, seed: int, scale: float = 0.02, adapter: str = "default"):
    """Give every lora_B of ``adapter`` random values: a 'trained-looking' adapter, no training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if f"lora_B.{adapter}." in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return peft_model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def smol_adapter(tmp_path_factory):
    """One perturbed r=8 q,v adapter, saved by us and by PEFT, with its reference logits."""
    model, _ = lk.load_model(progress=False)
    pm = perturb(lk.attach(model, r=8, alpha=16, targets=TARGETS, seed=0), seed=1)
    ours, theirs = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("peft")
    info = lk.save_adapter(pm, ours)
    pm.save_pretrained(theirs)
    ids = serve.default_probe(model)
    with torch.no_grad():
        ref = logits(pm, ids)
        with pm.disable_adapter():
            base = logits(pm, ids)
    assert (ref - base).abs().max() > 0.1  # the adapter really changes the model
    return {"ours": ours, "peft": theirs, "info": info, "ids": ids, "ref": ref}


# -- save / load ---------------------------------------------------------------------------
def test_save_adapter_writes_peft_files_of_the_expected_size(smol_adapter):
    info = smol_adapter["info"]
    assert info.files == ("adapter_config.json", "adapter_model.safetensors")
    assert sorted(p.name for p in info.path.iterdir()) == sorted(info.files)
    tensors = 460_800 * 4                     # r=8 on q (576→576) and v (576→192), 30 layers, fp32
    assert tensors <= info.bytes <= tensors * 1.01   # + safetensors header and the JSON config
    assert 1.84 < info.megabytes < 1.87
    config = json.loads((info.path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (8, 16, "LORA")
    assert sorted(config["target_modules"]) == TARGETS


def test_peft_from_pretrained_loads_ours_with_identical_logits(smol_adapter, fresh):
    model, _ = fresh
    pm = PeftModel.from_pretrained(model, smol_adapter["ours"])
    assert torch.equal(logits(pm, smol_adapter["ids"]), smol_adapter["ref"])


def test_load_adapter_loads_peft_saved_and_adds_named_adapters(smol_adapter, fresh):
    model, _ = fresh
    pm = lk.load_adapter(model, smol_adapter["peft"])
    assert isinstance(pm, PeftModel)
    assert torch.equal(logits(pm, smol_adapter["ids"]), smol_adapter["ref"])
    assert not any(p.requires_grad for p in pm.parameters())  # loaded for inference
    lk.load_adapter(pm, smol_adapter["ours"], name="copy")  # a second adapter on the same base
    assert list(pm.peft_config) == ["default", "copy"] and pm.active_adapter == "default"
    pm.set_adapter("copy")
    assert torch.equal(logits(pm, smol_adapter["ids"]), smol_adapter["ref"])
    with pytest.raises(ValueError, match="already has an adapter named 'copy'"):
        lk.load_adapter(pm, smol_adapter["ours"], name="copy")


def _copy_with(src, dst, change):
    """Copy an adapter folder, rewriting its tensors with ``change(state) -> state``."""
    shutil.copytree(src, dst)
    state = load_file(dst / "adapter_model.safetensors")
    save_file(change(state), dst / "adapter_model.safetensors", metadata={"format": "pt"})
    return dst


def test_load_refuses_wrong_shapes_naming_module_and_shapes(smol_adapter, smol, tmp_path):
    key = f"base_model.model.{Q0}.lora_A.weight"

    def widen(state):
        state[key] = torch.zeros(8, 960)       # an adapter trained on a model with d = 960
        return state

    bad = _copy_with(smol_adapter["ours"], tmp_path / "wide", widen)
    model, _ = smol
    with pytest.raises(ValueError) as err:
        lk.load_adapter(model, bad)
    msg = str(err.value)
    assert Q0 in msg and "(576, 576)" in msg and "(8, 960)" in msg and "d_in" in msg
    assert not has_adapter(model)              # checked before loading: the model is untouched


def test_load_refuses_an_adapter_for_another_architecture(smol_adapter, smol, tmp_path):
    def gpt2_names(state):
        return {k.replace("model.layers.", "transformer.h.").replace("self_attn.q_proj", "attn.c_attn")
                .replace("self_attn.v_proj", "attn.c_proj"): v for k, v in state.items()}

    bad = _copy_with(smol_adapter["ours"], tmp_path / "gpt2", gpt2_names)
    config = json.loads((bad / "adapter_config.json").read_text())
    config["target_modules"] = ["c_attn", "c_proj"]
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not have, e\.g\. 'transformer\.h\.0\.attn\.c_attn'"
                       r".*another architecture.*q_proj"):
        lk.load_adapter(smol[0], bad)


def test_load_refuses_truncated_safetensors(smol_adapter, smol, tmp_path):
    bad = tmp_path / "cut"
    shutil.copytree(smol_adapter["ours"], bad)
    f = bad / "adapter_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])      # an interrupted copy
    with pytest.raises(ValueError, match="truncated or corrupt"):
        lk.load_adapter(smol[0], bad)
    f.write_bytes(data[:5])                    # not even a header
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        lk.load_adapter(smol[0], bad)


def test_load_refuses_missing_config_and_missing_folder(smol_adapter, smol, tmp_path):
    bad = tmp_path / "noconfig"
    shutil.copytree(smol_adapter["ours"], bad)
    (bad / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no adapter_config\.json in .*"
                       r"adapter_model\.safetensors"):
        lk.load_adapter(smol[0], bad)
    with pytest.raises(FileNotFoundError, match="no adapter folder"):
        lk.load_adapter(smol[0], tmp_path / "nowhere")


# -- merge / unmerge -------------------------------------------------------------------------
def test_merge_returns_plain_model_with_unmerged_logits(fresh):
    model, _ = fresh
    w0 = model.get_submodule(Q0).weight.detach().clone()
    pm = perturb(lk.attach(model, r=8, alpha=16, targets=TARGETS, seed=0), seed=1)
    delta = pm.base_model.model.get_submodule(Q0).get_delta_weight("default")
    ids = serve.default_probe(model)[:1, :12]
    ref = logits(pm, ids)
    merged = serve.merge(pm, probe=ids)
    check = merged.merge_check
    assert not isinstance(merged, PeftModel) and not has_adapter(merged)
    assert check.dtype == torch.float32 and check.ok
    # fp32: W + ΔW is rounded once per element; relative to the logit scale that is ≤ 1e-5
    assert check.max_abs_diff <= 1e-5 * check.logit_scale
    assert check.max_abs_diff < 2e-4
    assert check.adapter_effect > 0.1          # ... while the adapter moves logits far more
    assert (logits(merged, ids) - ref).abs().max().item() == pytest.approx(check.max_abs_diff)
    torch.testing.assert_close(merged.get_submodule(Q0).weight, w0 + delta, rtol=0, atol=1e-7)
    assert all(p.requires_grad for p in merged.parameters())  # flags from before lk.attach
    assert "merged vs unmerged logits" in str(check)


def test_merge_in_place_and_unmerge_are_guarded(fresh):
    model, _ = fresh
    pm = perturb(lk.attach(model, r=8, alpha=16, targets=TARGETS, seed=0), seed=1)
    ids = serve.default_probe(model)[:1, :8]
    ref = logits(pm, ids)
    with pytest.raises(serve.MergeStateError, match="nothing to unmerge"):
        serve.unmerge(pm)
    assert serve.merge_in_place(pm) == 60 and serve.is_merged(pm)
    assert (logits(pm, ids) - ref).abs().max() < 2e-4
    with pytest.raises(serve.MergeStateError, match=r"already merged.*lk\.unmerge"):
        serve.merge_in_place(pm)
    with pytest.raises(serve.MergeStateError, match="already merged"):
        serve.merge(pm)
    assert serve.unmerge(pm) == 60 and not serve.is_merged(pm)
    assert (logits(pm, ids) - ref).abs().max() < 2e-4
    with pytest.raises(serve.MergeStateError, match="nothing to unmerge"):
        serve.unmerge(pm)


def test_merge_raises_above_tolerance_and_leaves_model_unmerged(fresh):
    model, _ = fresh
    pm = perturb(lk.attach(model, r=8, alpha=16, targets=TARGETS, seed=0), seed=1)
    ids = serve.default_probe(model)[:1, :8]
    with pytest.raises(serve.MergeCheckError, match="merge check failed") as err:
        serve.merge(pm, probe=ids, atol=1e-9)  # below fp32 rounding of W + ΔW
    assert err.value.check.max_abs_diff > 1e-9 and not err.value.check.ok
    assert isinstance(pm, PeftModel) and not serve.is_merged(pm)
    with pytest.raises(TypeError, match="expects a PeftModel"):
        serve.merge(model.model)


def test_merge_bf16_uses_the_bf16_tolerance():
    model, _ = lk.load_model(progress=False, dtype=torch.bfloat16)
    pm = perturb(lk.attach(model, r=8, alpha=16, targets=TARGETS, seed=0), seed=1)
    merged = serve.merge(pm, probe=serve.default_probe(model)[:1, :8])
    check = merged.merge_check
    assert check.dtype == torch.bfloat16
    assert check.atol == pytest.approx(serve.RTOL[torch.bfloat16] * check.logit_scale)
    assert 1e-5 * check.logit_scale < check.max_abs_diff <= check.atol  # bf16 rounding is coarse


def test_merge_into_4bit_base_reports_the_requantization_error():
    model, _ = lk.load_model(quantize="nf4", progress=False)
    pm = perturb(lk.attach(model, r=8, alpha=16, targets=TARGETS, seed=0), seed=1, scale=0.01)
    ids = serve.default_probe(model)[:1, :8]
    logits(pm, ids)  # a first forward repacks 4-bit weights on AVX512-BF16 CPUs (see serve.py)
    with pytest.warns(UserWarning, match=r"re-quantizes W \+ ΔW.*differ.*by up to"):
        merged = serve.merge(pm, probe=ids)
    check = merged.merge_check
    assert check.quantized and check.max_abs_diff > 0
    # the re-quantization error is of the order of the adapter's effect; a garbage dequantize
    # (the packed CPU layout read as the standard one) moves the logits by ~40
    assert check.max_abs_diff < 3 * check.adapter_effect + 1
    assert type(merged.get_submodule(Q0)).__name__ == "Linear4bit"


# -- AdapterBank -------------------------------------------------------------------------------
@pytest.fixture
def bank(fresh, tmp_path):
    model, tok = fresh
    other, _ = lk.load_model(progress=False)
    a = perturb(lk.attach(other, r=8, alpha=16, targets=TARGETS, seed=0), seed=1, scale=0.1)
    lk.save_adapter(a, tmp_path / "a")
    b = perturb(lk.attach(lk.detach(a), r=4, alpha=8, targets=TARGETS, seed=5), seed=3, scale=0.1)
    b.save_pretrained(tmp_path / "b")           # one of each format
    bank = serve.AdapterBank(model, tok)
    bank.add("a", tmp_path / "a")
    bank.add("b", tmp_path / "b")
    return bank


PROMPT = "My favourite colour is"   # raw text (prompt_format="raw"): short prompts keep this fast


def test_bank_mixed_batch_equals_single_adapter_outputs(bank):
    assert bank.names == ["a", "b"] and bank.active == "a"
    result = bank.compare([PROMPT] * 3, ["a", "b", "__base__"], max_new_tokens=5, prompt_format="raw")
    assert result.all_equal, str(result)
    replies = [r.mixed for r in result.rows[:3]]
    assert len(set(replies)) == 3, replies     # the same prompt, three different models
    assert bank.active == "a"                   # compare puts the active adapter back
    bank.use("b")                               # hot-swap: plain generation now uses b
    assert lk.generate(bank.model, bank.tok, PROMPT, max_new_tokens=5, prompt_format="raw") == replies[1]
    bank.use("__base__")
    assert lk.generate(bank.model, bank.tok, PROMPT, max_new_tokens=5, prompt_format="raw") == replies[2]
    assert bank.generate([PROMPT], ["a"], max_new_tokens=5, prompt_format="raw") == replies[:1]
    assert lk.generate(bank.model, bank.tok, PROMPT, max_new_tokens=5, prompt_format="raw") == replies[2]


def test_bank_refuses_unknown_names_and_dora_in_mixed_batches(bank):
    with pytest.raises(ValueError, match=r"unknown adapter 'c'; the bank has \['a', 'b'\]"):
        bank.generate([PROMPT], ["c"])
    with pytest.raises(ValueError, match="unknown adapter 'c'"):
        bank.use("c")
    with pytest.raises(ValueError, match="one adapter name per prompt"):
        bank.generate([PROMPT, PROMPT], ["a"])
    bank.add("d", lk.LoraSettings(r=4, targets=("q_proj",), variant="dora"))
    with pytest.raises(ValueError, match="'d' is a DoRA adapter.*PEFT does not support DoRA"):
        bank.generate([PROMPT, PROMPT], ["a", "d"])
    with pytest.raises(ValueError, match="already has an adapter named 'a'"):
        bank.add("a", lk.LoraSettings())


def test_latency_forces_the_token_count(smol):
    model, tok = smol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = serve.latency(model, tok, "Hi", max_new_tokens=4, repeat=2, warmup=0)
    assert result.new_tokens == 4 and len(result.times) == 2
    assert result.seconds == pytest.approx(sorted(result.times)[0] / 2 + sorted(result.times)[1] / 2)
    assert result.tokens_per_s == pytest.approx(4 / result.seconds)


def test_merge_is_exact_in_float64_and_at_the_float32_floor(fresh):
    """The merge maths is exact: in float64 merged == unmerged to 1e-10 on the logits.

    In float32 the same comparison gives ~1e-4 on SmolLM2's logits (max |logit| ~ 30), which is
    float32's own rounding level there: the unmodified base model in float32 vs float64
    differs by as much. So the fp32 check is relative (RTOL), and this test pins both facts.
    """
    model, _ = fresh
    ids = serve.default_probe(model)
    base32 = logits(model, ids).double()
    model.double()
    floor = (base32 - logits(model, ids)).abs().max().item()  # fp32 rounding on these logits
    pm = perturb(lk.attach(model, r=8, alpha=16, targets=TARGETS, seed=0), seed=1)
    assert next(p for n, p in pm.named_parameters() if "lora_B" in n).dtype == torch.float64
    merged = serve.merge(pm, probe=ids)
    check = merged.merge_check
    assert check.dtype == torch.float64 and check.adapter_effect > 0.1
    assert check.max_abs_diff <= 1e-10
    assert 1e-5 < floor < 1e-3  # why an absolute 1e-5 cannot be asked of float32 logits


# -- bad input and faults: a clear error, nothing changed (docs/reliability.md) --------------------
@case("AdapterBank.add of a folder whose config and weights disagree", "ValueError: says r=8, "
      "but the weights …", "bank: names, active adapter; model untouched")
def test_bank_add_bad_folder(pm, saved):
    edit_config(saved, r=8)
    bank = lk.AdapterBank(pm)
    before = snap(pm)
    raises(ValueError, "says r=8", bank.add, "x", saved)
    assert bank.names == ["default"] and bank.active == "default"
    assert_intact(pm, before)


@case("AdapterBank.add with a name it already has", "ValueError: the bank already has an "
      "adapter named", "bank and model untouched")
def test_bank_add_duplicate(pm):
    bank = lk.AdapterBank(pm)
    refused(pm, ValueError, "already has an adapter named", bank.add, "default", {"r": 2})


@case("AdapterBank.add(name, {'alpha': inf})", "ValueError: alpha must be a finite number > 0",
      "bank and model untouched")
def test_bank_add_infinite_alpha(pm):
    bank = lk.AdapterBank(pm)
    before = snap(pm)
    raises(ValueError, "finite", bank.add, "x", {"alpha": float("inf")})
    assert bank.names == ["default"]
    assert_intact(pm, before)


@case("AdapterBank.add(name, LoraConfig(r=10**6))", "ValueError: exceeds min(d_in, d_out) … "
      "would need about N GB", "bank and model untouched, nothing allocated")
def test_bank_add_huge_rank(pm):
    from peft import LoraConfig

    bank = lk.AdapterBank(pm)
    refused(pm, ValueError, "would need about", bank.add, "x",
            LoraConfig(r=10**6, target_modules=["q_proj"]))


@case("out of memory half-way through AdapterBank.add (fresh adapter)", "MemoryError "
      "(re-raised)", "bank names and model as before: no dead adapter name")
def test_bank_add_memory_error_rolls_back(pm, monkeypatch):
    from peft.tuners.lora.layer import LoraLayer

    bank = lk.AdapterBank(pm)
    before = snap(pm)
    fail_after(monkeypatch, LoraLayer, "update_layer", 2)
    raises(MemoryError, "out of memory", bank.add, "x", {"r": 2})
    assert bank.names == ["default"] and bank.active == "default"
    assert_intact(pm, before)


@case("out of memory on the first AdapterBank.add (plain base)", "MemoryError (re-raised)",
      "bank has no model yet, base unwrapped")
def test_bank_first_add_memory_error(tiny, monkeypatch):
    from peft.tuners.lora.layer import LoraLayer

    bank = lk.AdapterBank(tiny)
    before = snap(tiny)
    fail_after(monkeypatch, LoraLayer, "update_layer", 2)
    raises(MemoryError, "out of memory", bank.add, "x", {"r": 2})
    assert bank.model is None and bank.names == []
    assert_intact(tiny, before)


@case("AdapterBank.add(name, 42)", "TypeError: source must be an adapter folder, "
      "LoraSettings, …", "bank and model untouched")
def test_bank_add_bad_source(pm):
    bank = lk.AdapterBank(pm)
    refused(pm, TypeError, "source must be an adapter folder", bank.add, "x", 42)


# -- interruptions and consumed models ---------------------------------------------------------


@case("Ctrl-C (KeyboardInterrupt) during lk.merge's check (the merged model's forward)",
      "KeyboardInterrupt (re-raised)", "model exactly as before the call: not merged, every "
      "base weight bit-identical (it used to stay merged in place)")
def test_merge_interrupted_during_its_check(pm, monkeypatch):
    pm.train()
    before = snap(pm)
    fail_after(monkeypatch, serve, "_logits", 3, KeyboardInterrupt())  # before, base, merged
    raises(KeyboardInterrupt, None, serve.merge, pm)
    assert_intact(pm, before)
    assert not serve.is_merged(pm) and pm.training


@case("lk.merge(pm) a second time, on the PeftModel the first merge consumed",
      "ValueError: merge: this PeftModel has no LoRA layers left. lk.merge consumes … use that "
      "model", "the merged model and the consumed PeftModel unchanged")
def test_merge_a_consumed_peft_model(pm):
    merged = serve.merge(pm)
    before = snap(merged)
    refused(pm, ValueError, "no LoRA layers left.*merged = lk.merge", serve.merge, pm)
    refused(pm, ValueError, "no LoRA layers left", serve.merge_in_place, pm)
    assert_intact(merged, before)


def _nf4_tiny(tiny, tok, tmp_path):
    """``tiny`` saved and loaded back with a 4-bit NF4 base, with a LoRA adapter whose B is
    non-zero."""
    from lorakit.core import _compat

    if not _compat.cpu_quantization_supported():
        pytest.skip("this transformers cannot load 4-bit weights on the CPU")
    tiny.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    model, _ = lk.load_model(tmp_path / "tiny", quantize="nf4", progress=False)
    return perturb(lk.attach(model, r=4, alpha=8, targets=TARGETS, seed=0), seed=1, scale=0.05)


@case("merge_in_place + unmerge on a 4-bit NF4 base", "UserWarning: re-quantizes W + ΔW … "
      "differ … by up to X (the measured effect); PEFT's own warning is not shown twice",
      "after unmerge every base weight (Params4bit data) and the base logits are bit-identical "
      "(PEFT's unmerge used to re-quantize 53 of 60 layers)")
def test_merge_in_place_on_4bit_warns_and_unmerge_restores_the_base(tiny, tok, tmp_path):
    pm = _nf4_tiny(tiny, tok, tmp_path)
    for m in pm.modules():   # the standard 4-bit layout only: forwards that do not repack
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    ids = serve.default_probe(pm)[:1, :8]
    with pm.disable_adapter():
        logits(pm, ids)                     # the first forward sets the compute dtype
        base_logits = logits(pm, ids)
    before = snap(pm)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert serve.merge_in_place(pm) == 4
    ours = [str(w.message) for w in seen if "re-quantizes" in str(w.message)]
    assert len(ours) == 1 and "by up to" in ours[0] and "unmerge puts the original" in ours[0]
    assert not [w for w in seen if "4-bit linear may get different" in str(w.message)]
    assert any(not torch.equal(p, before["params"][n][0])     # merged: the base moved
               for n, p in pm.named_parameters() if "base_layer.weight" in n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # nothing to warn about: the base comes back exactly
        assert serve.unmerge(pm) == 4
    assert_intact(pm, before)
    with pm.disable_adapter():
        assert torch.equal(logits(pm, ids), base_logits)


@case("Ctrl-C (KeyboardInterrupt) half-way through lk.detach (2 of 4 LoRA layers unwrapped)",
      "KeyboardInterrupt (re-raised)", "model exactly as before the call: every layer still "
      "wrapped, adapter, flags and weights bit-identical (it used to stay half-detached)")
def test_detach_interrupted_half_way(pm, monkeypatch):
    base = pm.base_model.model
    before = snap(pm)
    fail_after(monkeypatch, type(base), "get_submodule", 3, KeyboardInterrupt())
    raises(KeyboardInterrupt, None, lk.detach, pm)
    monkeypatch.undo()
    assert_intact(pm, before)
    assert has_adapter(base) and hasattr(base, "peft_config")
    assert lk.detach(pm) is base and not has_adapter(base)   # and it detaches afterwards
