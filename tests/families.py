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
        config = getattr(transformers, self.config)(**kw)
        for key, value in list(vars(config).items()):  # same loss in train and eval mode
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
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
]

_TRAINS = {"causal_lm": "prompt → answer (answer tokens only)",
           "seq_cls": "text → label (classification task)",
           "seq2seq": "prompt in the encoder, answer in the decoder", "feature": "—"}


def readme_table() -> str:
    """The README's table of supported families (each row is a case of tests/test_families)."""
    from lorakit.core.modelkind import _TASK_TYPE

    rows = ["| family | model class | kind (PEFT task type) | `lk.train` | targets tested | "
            "notes |", "|---|---|---|---|---|---|"]
    for f in FAMILIES:
        task_type = _TASK_TYPE.get(f.kind, "FEATURE_EXTRACTION / none")
        targets = ", ".join(f"`{t}`" for t in f.targets + f.target_parameters)
        rows.append(f"| {f.name} | `{f.model}` | {f.kind} ({task_type}) | {_TRAINS[f.kind]} | "
                    f"{targets} | {f.note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(readme_table())
