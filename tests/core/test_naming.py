"""lorakit.core.naming: the one module that knows PEFT's names (prefix, blocks, adapter parts)."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit as lk
from lorakit.core import naming


@pytest.mark.parametrize("name, expected", [
    ("base_model.model.model.layers.3.self_attn.q_proj",
     ("model.layers", 3, "self_attn.q_proj")),
    ("model.layers.12.mlp.down_proj.lora_A.default.weight",
     ("model.layers", 12, "mlp.down_proj.lora_A.default.weight")),
    ("transformer.h.0.attn.c_attn", ("transformer.h", 0, "attn.c_attn")),
    ("encoder.layer.5.attention.self.query", ("encoder.layer", 5, "attention.self.query")),
    ("layers.2.q_proj", ("layers", 2, "q_proj")),
    ("model.layers.7", ("model.layers", 7, "")),
    ("lm_head", (None, None, "lm_head")),
    ("model.embed_tokens", (None, None, "model.embed_tokens")),
    ("model.mylayers.3.q_proj", (None, None, "model.mylayers.3.q_proj")),  # not a block list
    ("a.h.1.b.layers.2.c", ("a.h", 1, "b.layers.2.c")),                   # the first list wins
])
def test_split_path(name, expected):
    assert tuple(naming.split_path(name)) == expected
    assert naming.layer_index(name) == expected[1]


def test_short_names_prefix_and_adapter_parts():
    assert naming.short_name("base_model.model.model.layers.3.self_attn.q_proj") \
        == "layers.3.q_proj"
    assert naming.short_name("lm_head") == "lm_head"
    assert naming.strip_prefix("base_model.model.lm_head") == "lm_head"
    assert naming.adapter_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") \
        == ("model.layers.0.self_attn.q_proj", "A.weight")
    assert naming.is_adapter_param("model.layers.0.mlp.up_proj.lora_magnitude_vector.default")
    assert not naming.is_adapter_param("model.layers.0.mlp.up_proj.base_layer.weight")
    assert naming.is_lora_B_param("x.q_proj.lora_B.default.weight")
    assert not naming.is_lora_B_param("x.lora_B_extra.weight")
    assert naming.param_type("model.layers.0.self_attn.q_proj.lora_A.default.weight") == "q_proj"
    # PEFT's own list of adapter sub-modules is ours (a PEFT rename would show here)
    from peft.tuners.lora import LoraLayer

    assert set(LoraLayer.adapter_layer_names) <= set(naming.ADAPTER_LAYER_NAMES)


def test_find_and_select_layers_on_a_tiny_model():
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    pm = lk.attach(LlamaForCausalLM(cfg), r=2, targets=["q_proj", "v_proj"], seed=0)
    found = naming.lora_linears(pm)
    assert list(found)[:2] == ["layers.0.q_proj", "layers.0.v_proj"] and len(found) == 6
    assert found["layers.1.v_proj"][0] == "model.layers.1.self_attn.v_proj"
    names = {n: full for n, (full, _) in found.items()}
    assert naming.select_layers(names, None) == [
        "layers.0.q_proj", "layers.0.v_proj", "layers.2.q_proj", "layers.2.v_proj"]
    assert naming.select_layers(names, ["base_model.model.model.layers.1.self_attn.q_proj"]) \
        == ["layers.1.q_proj"]
    assert naming.select_layers(names, ["v_proj"]) == [
        "layers.0.v_proj", "layers.1.v_proj", "layers.2.v_proj"]
    with pytest.raises(ValueError, match="no LoRA layer matches"):
        naming.select_layers(names, ["k_proj"])
    assert naming.find_layer(pm, "layers.2.q_proj") is found["layers.2.q_proj"][1]
    assert naming.find_layer(pm, "1.self_attn.v_proj") is found["layers.1.v_proj"][1]
    with pytest.raises(ValueError, match="matches 3 LoRA modules"):
        naming.find_layer(pm, "q_proj")
    assert len(naming.tuner_layers(pm)) == len(naming.tuner_layers(pm, lora_only=True)) == 6
