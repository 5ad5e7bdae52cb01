"""Tiny random-weight models for tests (no hub): built from a config, without touching the
global RNG."""

from __future__ import annotations

import torch


def tiny_llama(tok, *, layers: int = 2, hidden: int = 64, seed: int = 0,
               context: int | None = None):
    """A Llama of ``layers`` blocks, hidden size ``hidden`` (so q_proj's ΔW is hidden × hidden;
    grouped-query attention makes k/v hidden → hidden/2), with ``tok``'s vocabulary and pad
    token; ``context``: max_position_embeddings (LlamaConfig's default when None)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    extra = {} if context is None else {"max_position_embeddings": context}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=2 * hidden,
                             vocab_size=len(tok), pad_token_id=tok.pad_token_id, **extra)
        return LlamaForCausalLM(config)


def make_tiny(tok, hidden: int = 64, seed: int = 0, context: int = 256):
    """The tiny model of the fault cases (the ``tiny`` fixture, tests/conftest.py): a 2-layer
    ``tiny_llama`` with a 256-token context, in eval mode."""
    return tiny_llama(tok, hidden=hidden, seed=seed, context=context).eval()
