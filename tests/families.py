"""Tiny random-config models of many transformers families (hidden 64, 2 layers; no hub).

Shared by the family test matrix (tests/test_families.py) and the README's table of supported
model kinds and families (``python -m tests.families`` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Family:
    """One family: how to build its tiny model and what to adapt."""

    name: str                    # what the README shows
    config: str                  # transformers config class
    model: str                   # transformers model class
    kwargs: dict = field(hash=False)
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    note: str = ""               # what this config exercises
    target_parameters: tuple[str, ...] = ()
    kind: str = "causal_lm"      # lorakit.core.modelkind.model_kind of the model

    def build(self, vocab: int, pad: int = 0, seed: int = 0, logit_scale: float = 1.0):
        """The model with random weights (same for the same seed), dropout off, in eval mode.

        ``logit_scale`` multiplies the output head's weight: random init gives logits of about
        ±0.5, a trained model's are tens (Gemma-2 soft-caps them at 30), which is where a loss
        that skips the model's own logit transform goes wrong.
        """
        import transformers

        kw = dict(self.kwargs)
        if "image_size" not in kw:
            kw.setdefault("vocab_size", vocab)
            kw.setdefault("pad_token_id", pad)
        kw.setdefault("architectures", [self.model])   # as a hub config.json says
        config = getattr(transformers, self.config)(**kw)
        for key, value in list(vars(config).items()):  # same loss in train and eval mode
            if any(k in key for k in ("dropout", "pdrop", "drop_path")) and isinstance(
                    value, float):
                setattr(config, key, 0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = getattr(transformers, self.model)(config)
        head = model.get_output_embeddings()
        if head is not None and logit_scale != 1.0:
            with torch.no_grad():
                head.weight.mul_(logit_scale)
        return model.eval()


_LM = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
_GQA = dict(_LM, num_key_value_heads=2)

FAMILIES = [
    Family("GPT-2", "GPT2Config", "GPT2LMHeadModel",
           dict(n_embd=64, n_layer=2, n_head=4), ("c_attn", "c_proj"),
           "Conv1D; attn.c_proj and mlp.c_proj share a suffix"),
    Family("BERT", "BertConfig", "BertModel", dict(_LM), ("query", "value"), "encoder",
           kind="feature"),
    Family("BERT classifier", "BertConfig", "BertForSequenceClassification",
           dict(_LM, num_labels=2), ("query", "value"), "head trained (modules_to_save)",
           kind="seq_cls"),
    Family("RoBERTa", "RobertaConfig", "RobertaModel", dict(_LM), ("query", "value"), "encoder",
           kind="feature"),
    Family("Llama", "LlamaConfig", "LlamaForCausalLM",
           dict(_GQA, attention_bias=True, mlp_bias=True), note="GQA, biases"),
    Family("Mistral", "MistralConfig", "MistralForCausalLM", dict(_GQA)),
    Family("Qwen2", "Qwen2Config", "Qwen2ForCausalLM", dict(_GQA), note="q/k/v biases"),
    Family("Phi-3", "Phi3Config", "Phi3ForCausalLM", dict(_GQA), ("qkv_proj", "gate_up_proj"),
           "fused projections"),
    Family("Gemma-2", "Gemma2Config", "Gemma2ForCausalLM", dict(_GQA, head_dim=16),
           note="final logit soft-capping"),
    Family("Gemma-3", "Gemma3TextConfig", "Gemma3ForCausalLM", dict(_GQA, head_dim=16)),
    Family("Cohere", "CohereConfig", "CohereForCausalLM", dict(_GQA), note="logit_scale"),
    Family("Granite", "GraniteConfig", "GraniteForCausalLM",
           dict(_GQA, logits_scaling=8.0), note="logits_scaling"),
    Family("OPT", "OPTConfig", "OPTForCausalLM",
           dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                word_embed_proj_dim=64)),
    Family("GPT-NeoX", "GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_LM),
           ("query_key_value", "dense"), "fused qkv"),
    Family("Falcon", "FalconConfig", "FalconForCausalLM",
           dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
           ("query_key_value",), "fused qkv"),
    Family("T5", "T5Config", "T5ForConditionalGeneration",
           dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                decoder_start_token_id=0), ("q", "v"), "encoder + decoder stacks (block.N)",
           kind="seq2seq"),
    Family("Mixtral", "MixtralConfig", "MixtralForCausalLM",
           dict(_GQA, num_local_experts=4, num_experts_per_tok=2), note="MoE experts",
           target_parameters=("mlp.experts.down_proj",)),
    Family("ViT", "ViTConfig", "ViTModel",
           dict(_LM, image_size=32, patch_size=8), ("q_proj", "v_proj"), "image encoder",
           kind="feature"),
    Family("Qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(_GQA, head_dim=16),
           note="q/k norms"),
    Family("Qwen2-MoE", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
           dict(_GQA, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                shared_expert_intermediate_size=64), note="MoE + shared expert (64→1 gate)"),
    Family("BLOOM", "BloomConfig", "BloomForCausalLM", dict(hidden_size=64, n_layer=2, n_head=4),
           ("query_key_value",), "fused qkv, ALiBi"),
    Family("StableLM", "StableLmConfig", "StableLmForCausalLM", dict(_GQA)),
    Family("Starcoder2", "Starcoder2Config", "Starcoder2ForCausalLM", dict(_GQA),
           note="c_fc / c_proj MLP"),
    Family("OLMo2", "Olmo2Config", "Olmo2ForCausalLM", dict(_GQA)),
    Family("GPT-J", "GPTJConfig", "GPTJForCausalLM",
           dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8)),
    Family("GPT-BigCode", "GPTBigCodeConfig", "GPTBigCodeForCausalLM",
           dict(n_embd=64, n_layer=2, n_head=4), ("c_attn",), "multi-query attention"),
    Family("Phi", "PhiConfig", "PhiForCausalLM", dict(_LM), note="fc1 / fc2 MLP"),
    Family("DistilBERT classifier", "DistilBertConfig", "DistilBertForSequenceClassification",
           dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, num_labels=2), ("q_lin", "v_lin"),
           "pre_classifier trained in full too", kind="seq_cls"),
    Family("DeBERTa-v2 classifier", "DebertaV2Config", "DebertaV2ForSequenceClassification",
           dict(_LM, num_labels=2), ("query_proj", "value_proj"), kind="seq_cls"),
    Family("ALBERT classifier", "AlbertConfig", "AlbertForSequenceClassification",
           dict(_LM, embedding_size=32, num_labels=2), ("query", "value"), "shared layers",
           kind="seq_cls"),
    Family("ELECTRA classifier", "ElectraConfig", "ElectraForSequenceClassification",
           dict(_LM, embedding_size=64, num_labels=2), ("query", "value"),
           "head with its own Linear layers", kind="seq_cls"),
    Family("ModernBERT classifier", "ModernBertConfig", "ModernBertForSequenceClassification",
           dict(_LM, num_labels=2), ("Wqkv",), "fused Wqkv", kind="seq_cls"),
    Family("Qwen2 classifier", "Qwen2Config", "Qwen2ForSequenceClassification",
           dict(_GQA, num_labels=2), kind="seq_cls"),
    Family("BERT token classifier", "BertConfig", "BertForTokenClassification",
           dict(_LM, num_labels=5), ("query", "value"), "a label per token", kind="token_cls"),
    Family("CLIP text", "CLIPTextConfig", "CLIPTextModel", dict(_LM), ("q_proj", "v_proj"),
           "text encoder, own forward", kind="feature"),
    Family("BART", "BartConfig", "BartForConditionalGeneration",
           dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                decoder_start_token_id=0), kind="seq2seq"),
    Family("Marian", "MarianConfig", "MarianMTModel",
           dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                decoder_start_token_id=0), kind="seq2seq"),
    Family("Swin", "SwinConfig", "SwinModel",
           dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                window_size=4), ("q_proj", "v_proj"), "image encoder, windows", kind="feature"),
]

_TRAINS = {"causal_lm": "prompt → answer (answer tokens only)",
           "seq_cls": "text → label (classification task)",
           "token_cls": "words → a tag per word (token-tagging task)",
           "seq2seq": "prompt in the encoder, answer in the decoder", "feature": "—"}
README_R = 8   # the rank of the README's "all-linear" column (LoraSettings' default)


def _names(targets) -> str:
    return ", ".join(f"`{t}`" for t in targets)


def all_linear_summary(model, r: int = README_R) -> str:
    """What ``"all-linear"`` adapts on ``model`` at rank ``r``: the suffixes wrapped, the
    parameters PEFT adds (MoE experts), the head trained in full, the modules too small."""
    from lorakit.core.params import plan_targets

    plan = plan_targets(model, "all-linear", r)
    parts = [_names(dict.fromkeys(i.suffix for i in plan.modules))]
    if plan.target_parameters:
        parts.append(f"+ parameters {_names(plan.target_parameters)}")
    if plan.heads:
        parts.append(f"+ head {_names(plan.heads)} in full")
    if plan.skipped:
        parts.append(f"(not {_names(dict.fromkeys(i.suffix for i in plan.skipped))}: < r)")
    return " ".join(parts)


def readme_table() -> str:
    """The README's table of supported families (each row is a case of tests/test_families)."""
    from lorakit.core.modelkind import peft_task_type
    from lorakit.core.params import plan_targets

    rows = ["| family | model class | kind (PEFT task type) | `lk.train` | targets tested | "
            f"default targets | \"all-linear\" (r={README_R}) | notes |",
            "|---|---|---|---|---|---|---|---|"]
    for f in FAMILIES:
        model = f.build(vocab=1000)
        task_type = peft_task_type(model) or "none"
        targets = _names(f.targets + f.target_parameters)
        default = plan_targets(model).targets
        default = f"`{default}`" if isinstance(default, str) else _names(default)
        rows.append(f"| {f.name} | `{f.model}` | {f.kind} ({task_type}) | {_TRAINS[f.kind]} | "
                    f"{targets} | {default} | {all_linear_summary(model)} | {f.note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(readme_table())
