"""The llama-family decoder on our layers: flat token batches in, paged KV cache, no padding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from tokenyard.runtime.distributed.group import current
from tokenyard.runtime.layers.activation import silu_and_mul
from tokenyard.runtime.layers.attention import AttentionBackend, AttentionMetadata
from tokenyard.runtime.layers.norm import RMSNorm
from tokenyard.runtime.layers.parallel import (
    MergedColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    attention_heads_per_rank,
    qkv_parallel_linear,
)
from tokenyard.runtime.layers.rotary import Angles, RotaryEmbedding, rotate_queries_and_keys


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 has q/k/v biases
    eos_token_ids: list[int] = field(default_factory=list)
    architecture: str = "llama"


class Attention(nn.Module):
    """Under tensor parallelism each rank runs its share of the heads (and the KV heads they read)."""

    def __init__(self, config: LlamaConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.num_heads, self.num_kv_heads = attention_heads_per_rank(config.num_heads, config.num_kv_heads, current())
        self.qkv_proj = qkv_parallel_linear(
            config.hidden_size, config.head_dim, config.num_heads, config.num_kv_heads, config.attention_bias
        )
        self.o_proj = RowParallelLinear(config.num_heads * config.head_dim, config.hidden_size, what="attention heads")
        self.backend = backend
        self.scale = self.head_dim**-0.5

    def forward(self, angles: Angles, x: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = rotate_queries_and_keys(self.qkv_proj(x), angles, self.num_heads, self.num_kv_heads, self.head_dim)
        out = self.backend.forward(q, k, v, kv_cache, meta, self.scale)
        return self.o_proj(out.flatten(1))


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear.evenly(config.hidden_size, [size] * 2, "intermediate size")
        self.down_proj = RowParallelLinear(size, config.hidden_size, what="intermediate size")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, angles: Angles, x: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        attended = self.self_attn(angles, self.input_layernorm(x), kv_cache, meta)
        normed, x = self.post_attention_layernorm.add_and_norm(attended, x)
        return x + self.mlp(normed)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: LlamaConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.layers = nn.ModuleList(DecoderLayer(config, backend) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.kv_heads_per_rank: int = self.decoder_layers[0].self_attn.num_kv_heads

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        """``layers`` as what they are (a ModuleList types its items as plain modules)."""
        return cast(list[DecoderLayer], list(self.layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        angles = self.rotary.angles(positions)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x = layer(angles, x, kv_cache, meta)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Float32 logits; under tensor parallelism on rank 0 only (None on the others)."""
        return self.lm_head.logits(hidden)
