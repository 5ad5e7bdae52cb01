"""lorakit/_compat.py: the version floors and what differs between supported versions.

Runs on whatever is installed: in `make test` today's releases, in `make test-lowest` the
declared floors (transformers 4.46.3, PEFT 0.13.2, ...), so both sides of each bridge run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit as lk
from lorakit.core import _compat
from lorakit.core.scratch import LoRALinear

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".ci"))
from lowest_pins import pins  # noqa: E402


def _tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=4))


def test_pyproject_floors_match_the_import_check():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, need in _compat.MIN_VERSIONS.items():
        assert f"{name}>={need}" in deps
    assert {f"{n}=={v}" for n, v in _compat.MIN_VERSIONS.items()} <= set(pins())


def test_lowest_pins_cover_every_product_dependency_but_torch():
    names = [p.split("==")[0] for p in pins()]
    assert "torch" not in names
    assert {"transformers", "peft", "gguf", "safetensors", "ipywidgets", "plotly", "anywidget",
            "bitsandbytes", "accelerate"} <= set(names)
    assert "ipywidgets==7.7.1" in pins() and "plotly==5.24.1" in pins()      # Colab's


@pytest.mark.parametrize("found, message", [
    ({"transformers": "4.45.2", "peft": "0.13.2"},
     "lorakit needs transformers>=4.46.3, found transformers 4.45.2"),
    ({"transformers": "5.0.0", "peft": "0.12.0"}, "lorakit needs peft>=0.13.2, found peft 0.12.0"),
    ({"transformers": "5.0.0", "peft": None}, "lorakit needs peft>=0.13.2, which is not installed"),
])
def test_too_old_versions_are_an_import_error_naming_found_and_needed(found, message):
    with pytest.raises(ImportError, match=message):
        _compat.check_versions(found)
    _compat.check_versions({"transformers": "4.46.3", "peft": "0.13.2"})     # the floors pass
    _compat.check_versions({"transformers": "4.57.0.dev0", "peft": "0.21.2"})


def test_import_lorakit_itself_refuses_an_old_transformers(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "4.40.0" if name == "transformers" else real(name))
    monkeypatch.setattr(_compat, "version", importlib.metadata.version)
    with pytest.raises(ImportError, match="found transformers 4.40.0"):
        importlib.reload(_compat)
    monkeypatch.undo()
    importlib.reload(_compat)


def test_dtype_keyword_follows_the_transformers_version(monkeypatch):
    monkeypatch.setattr(_compat, "transformers_version", lambda: (4, 46, 3))
    assert _compat.dtype_kwargs(torch.float16) == {"torch_dtype": torch.float16}
    monkeypatch.setattr(_compat, "transformers_version", lambda: (4, 56, 0))
    assert _compat.dtype_kwargs(torch.float16) == {"dtype": torch.float16}


def test_the_installed_transformers_accepts_the_dtype_keyword(tmp_path):
    _tiny().save_pretrained(tmp_path)
    model = type(_tiny()).from_pretrained(tmp_path, **_compat.dtype_kwargs(torch.float16))
    assert next(model.parameters()).dtype == torch.float16


@pytest.mark.parametrize("variant, rs", [("lora", False), ("rslora", True)])
def test_rslora_is_read_from_the_installed_peft(variant, rs):
    pm = lk.attach(_tiny(), r=8, alpha=16, targets=["q_proj"], variant=variant, seed=0)
    q = pm.base_model.model.model.layers[0].self_attn.q_proj
    assert _compat.uses_rslora(q, "default") is rs
    layer = LoRALinear.from_peft(q)                     # PEFT 0.13 has no use_rslora
    assert layer.use_rslora is rs and layer.scaling == pytest.approx(q.scaling["default"])


def test_rslora_without_peft_keeping_the_flag_is_read_from_the_scaling():
    """PEFT 0.13 has no ``layer.use_rslora``: the flag follows from scaling = alpha/sqrt(r)."""
    class Peft013Layer:
        r, lora_alpha = {"a": 8, "b": 8}, {"a": 16, "b": 16}
        scaling = {"a": 16 / 8 ** 0.5, "b": 16 / 8}

    assert _compat.uses_rslora(Peft013Layer(), "a") is True
    assert _compat.uses_rslora(Peft013Layer(), "b") is False


def _two_adapters():
    from peft import LoraConfig

    pm = lk.attach(_tiny(), r=4, alpha=4, targets=["q_proj"], seed=0)
    pm.add_adapter("other", LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj"]))
    for name, p in pm.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    return pm


def _other_grads(pm):
    return {n: p.requires_grad for n, p in pm.named_parameters() if ".other." in n}


@pytest.mark.parametrize("old_peft", [False, True])
def test_set_adapter_frozen_activates_and_freezes_on_either_peft(monkeypatch, old_peft):
    """PEFT 0.13's ``set_adapter`` has no ``inference_mode`` and leaves the adapter trainable;
    the bridge freezes it either way (the AdapterPanel's generate broke on PEFT 0.13)."""
    pm = _two_adapters()
    if old_peft:                             # the installed PEFT, seen through 0.13's signature
        original = pm.set_adapter
        monkeypatch.setattr(pm, "set_adapter", lambda adapter_name: original(adapter_name))
    _compat.set_adapter_frozen(pm, "other")
    grads = _other_grads(pm)
    assert pm.active_adapter == "other" and len(grads) == 4      # A and B of 2 layers
    assert not any(grads.values())


def test_embedded_tokenizer_ends_a_turn_with_im_end(smol):
    """transformers 4.46's GGUF conversion took <|im_start|> as eos: labels ended with it and
    generation never stopped (notebook 00 failed under make test-lowest)."""
    model, tok = smol
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == model.config.eos_token_id == 2


def test_align_eos_sets_the_config_token_and_leaves_an_agreeing_one():
    class Tok:
        eos_token, eos_token_id = "<|im_start|>", 1

        def convert_ids_to_tokens(self, i):
            return {1: "<|im_start|>", 2: "<|im_end|>"}[i]

    tok = Tok()
    _compat.align_eos(tok, [2])
    assert tok.eos_token == "<|im_end|>"
    tok = Tok()
    _compat.align_eos(tok, 1)
    assert tok.eos_token == "<|im_start|>"


def test_embedded_gguf_has_tied_embeddings():
    assert _compat.gguf_ties_embeddings(lk.core.models.embedded_gguf())


def test_gpu_check_without_cuda_fails_fast_and_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: make gpu-check would run for real")
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_text()
    t = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert time.perf_counter() - t < 120
    assert done.returncode == 2
    assert "gpu-check: no CUDA device" in done.stderr and "nothing was run" in done.stderr
    assert results.read_text() == before
    make = subprocess.run(["make", "-n", "gpu-check"], capture_output=True, text=True, cwd=ROOT)
    assert "benchmarks/gpu_check.py" in make.stdout


def test_cpu_quantization_on_an_old_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_compat, "transformers_version", lambda: (4, 46, 3))
    with pytest.raises(ImportError, match=r"quantize='nf4' on the CPU needs transformers>=4\.56\.2"):
        lk.load_model(quantize="nf4", device="cpu", progress=False)
    monkeypatch.setattr(_compat, "transformers_version", lambda: (4, 56, 2))
    _compat.check_cpu_quantization("nf4")                                  # no error
