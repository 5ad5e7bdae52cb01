"""Parameter accounting: counts equal PEFT's, analytic shapes equal meta-instantiated models,
LoRA sizes and memory budgets come out at the published figures."""

from __future__ import annotations

import math
import statistics
import time
import warnings

import pytest
import torch

import lorakit as lk
from lorakit.core.params import (
    BUILTIN_CONFIGS,
    LinearInfo,
    builtin_config,
    count_params,
    estimate,
    linear_modules,
    lora_param_count,
    matches_target,
    meta_model,
    quantized_bytes,
)

ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# SmolLM2-135M: (d_in, d_out) per projection, 30 blocks; written out by hand, not computed.
SMOL_DIMS = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192),
             "o_proj": (576, 576), "gate_proj": (576, 1536), "up_proj": (576, 1536),
             "down_proj": (1536, 576)}
SMOL_TOTAL = 134_515_008
# Published parameter counts (AutoModelForCausalLM; BertModel for bert-base).
PUBLISHED_TOTALS = {"bert-base": 109_482_240, "gpt2-xl": 1_557_611_200,
                    "llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320,
                    "llama-2-70b": 68_976_648_192, "llama-3-8b": 8_030_261_248,
                    "smollm2-135m": SMOL_TOTAL}
TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128)


def smol_expected(r, targets, variant):
    per_block = sum(r * (i + o) + (o if variant == "dora" else 0)
                    for t, (i, o) in SMOL_DIMS.items() if t in targets)
    return 30 * per_block


def meta_total(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() visits tied weights once


@pytest.fixture(scope="module")
def smol():
    """{"model": SmolLM2}; tests that attach put the detached base back."""
    model, _ = lk.load_model(progress=False)
    return {"model": model}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(path)
    return path


def load_quantized(path, **kwargs):
    pytest.importorskip("bitsandbytes")
    from lorakit.core import _compat

    if not _compat.cpu_quantization_supported():
        pytest.skip("bitsandbytes on the CPU needs transformers>=4.56.2 (make test-lowest)")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(
            path, quantization_config=BitsAndBytesConfig(**kwargs), device_map={"": "cpu"})


# ---- linear_modules ------------------------------------------------------------------------

def test_linear_modules_of_real_model(smol):
    infos = linear_modules(smol["model"])
    assert len(infos) == 30 * 7
    assert infos[0] == LinearInfo("model.layers.0.self_attn.q_proj", "q_proj", 0, 576, 576)
    assert infos[1] == LinearInfo("model.layers.0.self_attn.k_proj", "k_proj", 0, 576, 192)
    assert infos[-1] == LinearInfo("model.layers.29.mlp.down_proj", "down_proj", 29, 1536, 576)
    assert all(i.suffix != "lm_head" for i in infos)
    with_head = linear_modules(smol["model"], include_output=True)
    assert with_head[-1] == LinearInfo("lm_head", "lm_head", None, 576, 49152)
    # the analytic SmolLM2 config gives the real model's names, layers and shapes
    assert linear_modules(builtin_config("smollm2-135m"), include_output=True) == with_head


@pytest.mark.parametrize("name", list(BUILTIN_CONFIGS))
def test_builtin_analytic_equals_meta(name):
    cfg = builtin_config(name)
    model = meta_model(cfg)
    assert linear_modules(cfg, include_output=True) == linear_modules(model, include_output=True)
    assert linear_modules(cfg) == linear_modules(model)
    first = linear_modules(cfg)[0].suffix
    assert estimate(cfg, targets=[first]).total_params == meta_total(model) == \
        PUBLISHED_TOTALS[name]


def _family_configs():
    from transformers import BertConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    gpt2 = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16, bos_token_id=0,
                eos_token_id=0)
    return {
        "llama-biases": LlamaConfig(**TINY, attention_bias=True, mlp_bias=True),
        "llama-head_dim": LlamaConfig(**TINY, head_dim=24),
        "llama-tied": LlamaConfig(**TINY, tie_word_embeddings=True),
        "llama-base-model": LlamaConfig(**TINY, architectures=["LlamaModel"]),
        "mistral": MistralConfig(**TINY),
        "qwen2": Qwen2Config(**TINY),
        "gpt2-n_inner": GPT2Config(**gpt2, n_inner=40),
        "gpt2-untied": GPT2Config(**gpt2, tie_word_embeddings=False),
        "gpt2-base-model": GPT2Config(**gpt2, architectures=["GPT2Model"]),
        "bert": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=40, vocab_size=100),
    }


@pytest.mark.parametrize("key", list(_family_configs()))
def test_family_analytic_equals_meta(key):
    cfg = _family_configs()[key]
    model = meta_model(cfg)
    assert linear_modules(cfg, include_output=True) == linear_modules(model, include_output=True)
    assert estimate(cfg, targets=[linear_modules(cfg)[0].suffix]).total_params == meta_total(model)


def test_config_names_follow_the_model_class():
    cfgs = _family_configs()
    assert linear_modules(cfgs["llama-base-model"])[0].name == "layers.0.self_attn.q_proj"
    assert linear_modules(cfgs["gpt2-n_inner"])[2] == LinearInfo(
        "transformer.h.0.mlp.c_fc", "c_fc", 0, 32, 40)
    bert = linear_modules(builtin_config("bert-base"))
    assert bert[0].name == "encoder.layer.0.attention.self.query"
    assert bert[-1] == LinearInfo("pooler.dense", "dense", None, 768, 768)
    gpt2 = linear_modules(builtin_config("gpt2-xl"))
    assert gpt2[0] == LinearInfo("transformer.h.0.attn.c_attn", "c_attn", 0, 1600, 4800)
    assert gpt2[2] == LinearInfo("transformer.h.0.mlp.c_fc", "c_fc", 0, 1600, 6400)
    k = linear_modules(builtin_config("llama-2-70b"))[1]
    assert (k.name, k.in_features, k.out_features) == ("model.layers.0.self_attn.k_proj",
                                                       8192, 1024)  # GQA: 8 kv heads × 128


def test_other_configs_fall_back_to_meta():
    from transformers import OPTConfig

    cfg = OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=40, num_attention_heads=4,
                    vocab_size=100, word_embed_proj_dim=32)
    infos = linear_modules(cfg)
    assert [i.name for i in infos[:6]] == [
        "model.decoder.layers.0.self_attn.k_proj", "model.decoder.layers.0.self_attn.v_proj",
        "model.decoder.layers.0.self_attn.q_proj", "model.decoder.layers.0.self_attn.out_proj",
        "model.decoder.layers.0.fc1", "model.decoder.layers.0.fc2"]
    assert lora_param_count(cfg, r=2, targets=["fc1"]) == 2 * 2 * (32 + 40)
    assert estimate(cfg, targets=["fc1"]).total_params == meta_total(meta_model(cfg))


def test_matches_target_is_peft_rule():
    name = "model.layers.0.self_attn.q_proj"
    assert matches_target(name, "q_proj") and matches_target(name, "self_attn.q_proj")
    assert matches_target(name, name)
    assert not matches_target(name, "proj") and not matches_target(name, "_proj")
    cfg = builtin_config("smollm2-135m")
    assert lora_param_count(cfg, 8, ["layers.0.self_attn.q_proj"]) == 8 * (576 + 576)
    assert lora_param_count(cfg, 8, ["self_attn.q_proj"]) == lora_param_count(cfg, 8, ["q_proj"])


# ---- count_params == PEFT ------------------------------------------------------------------

SETTINGS = [  # r, targets, dropout, variant
    (8, ("q_proj", "v_proj"), 0.0, "lora"),
    (4, ("q_proj", "k_proj", "v_proj", "o_proj"), 0.0, "lora"),
    (16, ALL7, 0.0, "lora"),
    (8, ALL7, 0.0, "rslora"),
    (8, ("q_proj", "v_proj"), 0.0, "dora"),
    (2, ("gate_proj", "up_proj", "down_proj"), 0.1, "lora"),
    (32, ("o_proj", "down_proj"), 0.05, "rslora"),
]


@pytest.mark.parametrize("r,targets,dropout,variant", SETTINGS)
def test_count_params_equals_peft(smol, r, targets, dropout, variant):
    pm = lk.attach(smol["model"], r=r, alpha=2 * r, targets=targets, dropout=dropout,
                   variant=variant, seed=0)
    try:
        counts = count_params(pm)
        trainable, total = pm.get_nb_trainable_parameters()
        expected = smol_expected(r, targets, variant)
        assert (counts.trainable, counts.total) == (trainable, total)
        assert trainable == expected
        assert counts.frozen == total - trainable == SMOL_TOTAL
        assert lora_param_count(smol["model"], r, targets, variant) == expected
        assert lora_param_count(pm, r, targets, variant) == expected
        assert sum(c.total for c in counts.by_type.values()) == total
        assert sum(c.trainable for c in counts.by_layer.values()) == trainable
        assert {k for k, c in counts.by_type.items() if c.trainable} == set(targets)
    finally:
        smol["model"] = lk.detach(pm)


def test_count_breakdown_and_str(smol):
    pm = lk.attach(smol["model"], r=8, alpha=16, targets=["q_proj", "v_proj"])
    try:
        c = count_params(pm)
    finally:
        smol["model"] = lk.detach(pm)
    assert str(c) == "trainable 460,800 of 134,975,808 = 0.341%"
    assert c.trainable_pct == pytest.approx(100 * 460_800 / 134_975_808)
    assert c.by_type["q_proj"].trainable == 30 * 8 * (576 + 576)
    assert c.by_type["q_proj"].frozen == 30 * 576 * 576
    assert c.by_type["v_proj"].trainable == 30 * 8 * (576 + 192)
    assert c.by_type["input_layernorm"].frozen == 30 * 576
    assert list(c.by_layer) == [*range(30), None]
    assert c.by_layer[0].trainable == 460_800 // 30
    assert c.by_layer[None] == lk.core.params.TypeCount(0, 49152 * 576 + 576)  # embed + final norm
    assert len(c.rows("layer")) == 31
    assert c.rows("type")[0] == {"type": "embed_tokens", "trainable": 0, "frozen": 28_311_552,
                                 "total": 28_311_552}


def test_count_plain_model(smol):
    m = smol["model"]
    c = count_params(m)
    assert c.total == c.trainable == SMOL_TOTAL == m.num_parameters()
    assert c.frozen == 0
    assert "lm_head" not in c.by_type  # tied to embed_tokens: counted once
    m.model.embed_tokens.weight.requires_grad_(False)
    try:
        c = count_params(m)
    finally:
        m.model.embed_tokens.weight.requires_grad_(True)
    assert c.frozen == c.by_type["embed_tokens"].frozen == 49152 * 576


def test_count_4bit_equals_peft(tiny_dir):
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(tiny_dir)
    q4 = load_quantized(tiny_dir, load_in_4bit=True, bnb_4bit_quant_type="nf4",
                        bnb_4bit_use_double_quant=True)
    assert any(type(p).__name__ == "Params4bit" for p in q4.parameters())
    assert sum(p.numel() for p in q4.parameters()) < full.num_parameters()  # packed storage
    assert count_params(q4).total == full.num_parameters()  # true count
    pm = lk.attach(q4, r=4, alpha=8, targets=ALL7)
    c = count_params(pm)
    assert (c.trainable, c.total) == pm.get_nb_trainable_parameters()
    assert c.trainable == lora_param_count(q4, 4, ALL7) == lora_param_count(full, 4, ALL7)
    assert estimate(pm, r=4, targets=ALL7).total_params == full.num_parameters()

    # quantized_bytes == what bitsandbytes stores: packed data + 8-bit absmax + fp32 absmax2
    for info in linear_modules(pm):
        w = pm.get_submodule("base_model.model." + info.name).get_base_layer().weight
        qs = w.quant_state
        stored = (w.numel() * w.element_size() + qs.absmax.numel() * qs.absmax.element_size()
                  + qs.state2.absmax.numel() * qs.state2.absmax.element_size())
        assert stored == quantized_bytes(info.in_features, info.out_features, "nf4")


@pytest.mark.parametrize("shape,quant_type,dq", [((1000, 37), "nf4", True),
                                                 ((1000, 37), "fp4", False),
                                                 ((192, 576), "nf4", False)])
def test_quantized_bytes_matches_bitsandbytes(shape, quant_type, dq):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import quantize_4bit

    q, st = quantize_4bit(torch.randn(shape), blocksize=64, compress_statistics=dq,
                          quant_type=quant_type)
    stored = q.numel() * q.element_size() + st.absmax.numel() * st.absmax.element_size()
    if dq:
        stored += st.state2.absmax.numel() * st.state2.absmax.element_size()
    d_out, d_in = shape
    assert stored == quantized_bytes(d_in, d_out, quant_type, double_quant=dq)


def test_quantized_bytes_int8(tiny_dir):
    q8 = load_quantized(tiny_dir, load_in_8bit=True)
    for info in linear_modules(q8):
        w = q8.get_submodule(info.name).weight
        stored = w.numel() * w.element_size() + w.SCB.numel() * w.SCB.element_size()
        assert stored == quantized_bytes(info.in_features, info.out_features, "int8")


def test_lora_count_on_lm_head_equals_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**TINY)
    pm = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, target_modules=["q_proj",
                                                                              "lm_head"]))
    expected = 2 * 4 * (64 + 64) + 4 * (64 + 128)
    assert pm.get_nb_trainable_parameters()[0] == expected
    assert lora_param_count(cfg, 4, ["q_proj", "lm_head"]) == expected


def test_modules_to_save_counted_under_their_module():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**TINY))
    base_total = model.num_parameters()
    pm = get_peft_model(model, LoraConfig(r=2, target_modules=["v_proj"],
                                          modules_to_save=["lm_head"]))
    c = count_params(pm)
    assert (c.trainable, c.total) == pm.get_nb_trainable_parameters()
    assert c.by_type["lm_head"] == lk.core.params.TypeCount(128 * 64, 128 * 64)  # copy + original
    assert c.by_type["v_proj"].trainable == 2 * 2 * (64 + 32)
    assert estimate(pm, r=2, targets=["v_proj"]).total_params == base_total


# ---- published figures ---------------------------------------------------------------------

@pytest.mark.parametrize("name,r,targets,variant,expected", [
    ("llama-2-7b", 8, ("q_proj", "v_proj"), "lora", 4_194_304),
    ("llama-2-7b", 8, ALL7, "lora", 19_988_480),
    ("llama-2-7b", 8, ("q_proj", "v_proj"), "rslora", 4_194_304),
    ("llama-2-7b", 8, ("q_proj", "v_proj"), "dora", 4_194_304 + 32 * 2 * 4096),
    ("llama-2-70b", 8, ("q_proj", "v_proj"), "lora", 16_384_000),
    ("bert-base", 8, ("query", "value"), "lora", 294_912),
    ("smollm2-135m", 8, ("q_proj", "v_proj"), "lora", 460_800),
])
def test_lora_param_count_figures(name, r, targets, variant, expected):
    assert lora_param_count(builtin_config(name), r, targets, variant) == expected
    assert estimate(name, r, targets, variant=variant).lora_params == expected


def test_estimate_llama_2_7b_memory():
    b = estimate("llama-2-7b", r=8, targets=("q_proj", "v_proj"))
    n, lora = 6_738_415_616, 4_194_304
    assert (b.total_params, b.lora_params, b.quantize) == (n, lora, "nf4")
    assert b.total_bytes("full") == 16 * n  # 2 weights + 2 grads + 4 master + 8 AdamW
    assert (b.full_weights, b.full_gradients, b.full_master, b.full_optimizer) == (
        2 * n, 2 * n, 4 * n, 8 * n)
    assert (b.lora_weights, b.lora_gradients, b.lora_optimizer, b.lora_master) == (
        2 * n + 4 * lora, 4 * lora, 8 * lora, 0)
    n_q = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # block Linear weights only
    assert b.quantized_params == n_q == 6_476_005_376
    # every matrix is a multiple of 64·256: 0.5 B + 1 B per 64 + 4 B per 64·256 params
    q_bytes = n_q // 2 + n_q // 64 + 4 * n_q // (64 * 256)
    assert b.qlora_weights == q_bytes + 2 * (n - n_q) + 4 * lora
    assert 8 * q_bytes / n_q == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))  # QLoRA §3: 0.127
    assert (b.qlora_gradients, b.qlora_optimizer, b.qlora_master) == (4 * lora, 8 * lora, 0)
    assert b.adapter_mb_fp16 == pytest.approx(8.388608)
    assert b.adapter_mb_fp32 == pytest.approx(16.777216)
    assert b.trainable_pct == pytest.approx(100 * lora / (n + lora))
    assert b.includes_activations is False
    rows = b.rows()
    assert [r["key"] for r in rows] == ["full", "lora", "qlora"]
    assert all(r["total"] == r["weights"] + r["gradients"] + r["optimizer"] + r["master"]
               for r in rows)
    assert rows[2]["setup"] == "QLoRA (nf4 base)" and rows[1]["trainable"] == lora

    no_dq = estimate("llama-2-7b", double_quant=False)
    assert no_dq.qlora_weights - b.qlora_weights == 3 * n_q // 64 - 4 * n_q // (64 * 256)
    assert estimate("llama-2-7b", quantize="fp4").qlora_weights == b.qlora_weights
    int8 = estimate("llama-2-7b", quantize="int8")
    row_scales = 4 * 32 * (4 * 4096 + 2 * 11008 + 4096)  # one fp32 per output row
    assert int8.qlora_weights == n_q + row_scales + 2 * (n - n_q) + 4 * lora


def test_only_block_linears_are_quantized():
    bert = estimate("bert-base", targets=["query", "value"])
    assert bert.quantized_params == 12 * (4 * 768 * 768 + 2 * 768 * 3072)  # not the pooler
    smol = estimate("smollm2-135m")
    assert smol.quantized_params == 30 * sum(i * o for i, o in SMOL_DIMS.values())
    assert smol.total_params - smol.quantized_params == 49152 * 576 + 61 * 576  # 16-bit rest


def test_estimate_smollm2_model_equals_builtin(smol):
    by_name = estimate("smollm2-135m")
    by_model = estimate(smol["model"])
    assert by_name.total_params == by_model.total_params == SMOL_TOTAL  # tied: once
    assert by_name.lora_params == by_model.lora_params == 460_800
    assert by_name.rows() == by_model.rows()
    assert estimate(smol["model"], r=4, targets=ALL7, variant="dora").lora_params == \
        smol_expected(4, ALL7, "dora")


def test_analytic_path_is_fast():
    cfg = builtin_config("llama-2-70b")
    times = []
    for _ in range(15):
        t = time.perf_counter()
        lora_param_count(cfg, 16, ALL7)
        times.append(time.perf_counter() - t)
    assert statistics.median(times) < 0.020
    t = time.perf_counter()
    estimate("llama-2-70b", r=16, targets=ALL7)
    assert time.perf_counter() - t < 0.1


# ---- bad input -----------------------------------------------------------------------------

def test_unknown_builtin_lists_known():
    with pytest.raises(ValueError, match=r"unknown model 'llama-9b'.*llama-2-7b.*smollm2-135m"):
        builtin_config("llama-9b")
    with pytest.raises(ValueError, match=r"built-in configs: bert-base"):
        estimate("gpt-5")


@pytest.mark.parametrize("kwargs,match", [
    ({"quantize": "int4"}, r"unknown quantize 'int4'; allowed: None, 'nf4', 'fp4', 'int8'"),
    ({"r": 0}, r"r \(rank\) must be a positive integer"),
    ({"r": 2.5}, r"r \(rank\) must be a positive integer"),
    ({"targets": []}, r"targets must be a non-empty list"),
    ({"variant": "qlora"}, r"unknown variant 'qlora'"),
    ({"targets": ["qproj"]}, r"no Linear module matches targets \['qproj'\].*q_proj, k_proj"),
])
def test_estimate_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate("smollm2-135m", **kwargs)


def test_lora_param_count_bad_input():
    cfg = builtin_config("bert-base")
    with pytest.raises(ValueError, match=r"no Linear module matches.*query, key, value, dense"):
        lora_param_count(cfg, 8, ["q_proj"])
    with pytest.raises(ValueError, match=r"r \(rank\)"):
        lora_param_count(cfg, -1, ["query"])
    with pytest.raises(TypeError, match=r"model \(torch.nn.Module\) or a transformers config"):
        linear_modules(42)
    with pytest.raises(TypeError, match=r"count_params expects a model"):
        count_params(cfg)
    b = estimate(cfg, targets=["query"])
    with pytest.raises(ValueError, match=r"setup must be one of"):
        b.total_bytes("qlora4")
    with pytest.raises(ValueError, match=r"by must be 'type' or 'layer'"):
        count_params(meta_model(cfg)).rows("module")
    assert math.isclose(b.trainable_pct, 100 * 12 * 8 * 1536 / (109_482_240 + 12 * 8 * 1536))
