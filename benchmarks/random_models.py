"""Random weights with SmolLM2-135M's shapes: the same work per token as the model itself, for head counts it
does not have (tensor parallelism over 2) and for machines that have no copy of it (a GPU machine)."""

from __future__ import annotations

from pathlib import Path

import torch

SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)


def random_smollm2(out: Path, tokenizer, **overrides: object) -> Path:
    """A bfloat16 checkpoint of SmolLM2-135M's config (``overrides`` changed) with random weights, and
    ``tokenizer`` (its chat template included)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**SMOLLM2_135M, **overrides})).to(torch.bfloat16).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
