"""What kind of model this is, and what that means for PEFT, training and probing.

One place decides, from the model itself, the things that differ between a causal LM, an
encoder with a classification head, a seq2seq model and a bare encoder or vision backbone:

- the PEFT ``task_type`` (``LoraConfig.task_type``; peft/peft_model.py picks the PeftModel
  class from it: ``PeftModelForCausalLM``, ``...ForSequenceClassification``, ...). For
  SEQ_CLS / TOKEN_CLS PEFT makes the classification head (``classifier`` / ``score``)
  trainable through ``modules_to_save``;
- whether ``lk.train`` can train it and with which loss (``TRAINABLE_KINDS``);
- the inputs a probe batch needs (token ids, decoder ids, pixel values) and which output is the
  "main" one to compare (``logits``, else ``last_hidden_state``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

KINDS = ("causal_lm", "seq_cls", "token_cls", "seq2seq", "feature")
# PEFT task type per kind; "feature" depends on the inputs (see peft_task_type).
_TASK_TYPE = {"causal_lm": "CAUSAL_LM", "seq_cls": "SEQ_CLS", "token_cls": "TOKEN_CLS",
              "seq2seq": "SEQ_2_SEQ_LM"}
TRAINABLE_KINDS = ("causal_lm", "seq_cls", "token_cls", "seq2seq")
_HEADS = (("ForSequenceClassification", "seq_cls"), ("ForTokenClassification", "token_cls"),
          ("ForImageClassification", "seq_cls"))
_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model under a PeftModel (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_kind(model: nn.Module) -> str:
    """One of ``KINDS`` for a transformers model (plain or PEFT-wrapped).

    ``seq_cls`` / ``token_cls``: classification heads (``...ForSequenceClassification``,
    ``...ForTokenClassification``); ``seq2seq``: an encoder-decoder (the config's
    ``is_encoder_decoder``) with an LM head (T5, BART, Marian's ``MarianMTModel``, mBART);
    ``causal_lm``: ``...ForCausalLM`` / ``...LMHeadModel``, or a decoder-only multimodal LM;
    ``feature``: everything else (``BertModel``, ``BartModel``, ``CLIPTextModel``,
    ``ViTModel``: hidden states out, no head).
    """
    base = base_of(model)
    name = type(base).__name__
    config = getattr(base, "config", None)
    for suffix, kind in _HEADS:
        if name.endswith(suffix):
            return kind
    has_lm_head = hasattr(base, "get_output_embeddings") and \
        base.get_output_embeddings() is not None
    if getattr(config, "is_encoder_decoder", False) and has_lm_head:
        return "seq2seq"
    if name.endswith(_LM_SUFFIXES):
        return "causal_lm"
    if name.endswith("ForConditionalGeneration") and has_lm_head:
        return "causal_lm"        # decoder-only multimodal LMs (Gemma-3, LLaVA)
    return "feature"


def takes(model: nn.Module, argument: str) -> bool:
    """Whether the model's ``forward`` accepts ``argument`` by name."""
    return argument in inspect.signature(base_of(model).forward).parameters


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's task type for this model (None: the plain ``PeftModel``).

    A model without a head gets FEATURE_EXTRACTION only when its forward takes what PEFT's
    ``PeftModelForFeatureExtraction`` passes (``input_ids`` and ``inputs_embeds``); others
    (``CLIPTextModel``, vision backbones) the plain ``PeftModel``, which calls their own forward.
    """
    kind = model_kind(model)
    if kind == "feature":
        return ("FEATURE_EXTRACTION" if takes(model, "input_ids") and takes(model, "inputs_embeds")
                else None)
    return _TASK_TYPE[kind]


def _head_advice(model: nn.Module) -> str:
    """What to load instead of a model ``lk.train`` cannot train (its kind is "feature")."""
    base = base_of(model)
    config = getattr(base, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return ("it is an encoder-decoder without its LM head: load it with "
                "AutoModelForSeq2SeqLM (e.g. MarianMTModel, BartForConditionalGeneration) to "
                "train prompt → answer")
    if not takes(base, "input_ids"):
        return ("it is a vision model without a text task: attach, merge and detach work on it; "
                "train it with your own loop (e.g. transformers' Trainer) and its own loss")
    return ("it has no head (it returns hidden states): load it with a head, e.g. "
            "AutoModelForSequenceClassification (text → label) or "
            "AutoModelForTokenClassification (a label per token); a decoder-only LM with "
            "AutoModelForCausalLM")


def check_trainable_kind(model: nn.Module) -> str:
    """The model's kind, or a ValueError saying what to load instead (right for that model)."""
    kind = model_kind(model)
    if kind not in TRAINABLE_KINDS:
        raise ValueError(
            f"lk.train cannot train a {type(base_of(model)).__name__} (kind {kind!r}): "
            f"{_head_advice(model)}. lk.train trains causal LMs and seq2seq models on prompt → "
            "answer tasks, sequence classifiers on classification tasks and token classifiers "
            "on token-tagging tasks (lk.tasks.get('ner')).")
    return kind


def default_inputs(model: nn.Module, batch: int = 2, seq: int = 16) -> dict[str, torch.Tensor]:
    """A small fixed probe batch with the inputs this model's forward needs (same every call).

    Token ids for text models (plus ``decoder_input_ids`` for encoder-decoders), random
    ``pixel_values`` (batch, channels, size, size) for vision models. ``merge`` checks its
    logits on this batch; ``serve.default_probe`` is its token ids.
    """
    base = base_of(model)
    config: Any = getattr(base, "config", None)  # a transformers config
    if config is None or not (takes(base, "input_ids") or takes(base, "pixel_values")):
        raise TypeError(
            f"lorakit cannot make a probe batch for a {type(base).__name__}: it is not a "
            "transformers model taking input_ids or pixel_values. Attach, count and detach "
            "work on it; to merge, use PEFT's peft_model.merge_and_unload() and check its "
            "outputs on your own inputs")
    g = torch.Generator().manual_seed(0)
    if takes(base, "pixel_values") and not takes(base, "input_ids"):
        size = config.image_size
        size = size if isinstance(size, int) else size[0]
        return {"pixel_values": torch.randn(batch, getattr(config, "num_channels", 3), size, size,
                                            generator=g)}
    vocab = getattr(base.get_input_embeddings(), "num_embeddings", 32_000)
    inputs = {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = torch.randint(0, vocab, (batch, seq // 2), generator=g)
    return inputs


def main_output(output) -> torch.Tensor:
    """The output to compare between two runs: ``logits``, else ``last_hidden_state``."""
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if value is not None:
            return value
    if isinstance(output, torch.Tensor):
        return output
    raise TypeError(f"the model returned {type(output).__name__} without logits or "
                    "last_hidden_state; compare its outputs yourself")
