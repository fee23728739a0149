"""Rotary position embedding (the rotate-half layout Hugging Face checkpoints use)."""

from __future__ import annotations

import math

import torch
from torch import nn

from tokenyard.runtime.kernels import kernels_for

Angles = tuple[torch.Tensor, torch.Tensor]
QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float, scaling: dict | None = None) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        inv_freq = _apply_scaling(inv_freq, scaling)
        angles = torch.outer(torch.arange(max_position, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def angles(self, positions: torch.Tensor) -> Angles:
        """cos and sin (float32, (tokens, head_dim / 2)) for a step's positions, looked up once and shared by
        every layer."""
        return self.cos[positions], self.sin[positions]


def rotate_queries_and_keys(qkv: torch.Tensor, angles: Angles, heads: int, kv_heads: int, dim: int) -> QKV:
    """Split a fused q|k|v projection output into (tokens, heads, dim) views, q and k rotated."""
    ops = kernels_for(qkv)
    if ops is not None and qkv.is_contiguous():
        ops.rotary_(qkv, *angles, heads, kv_heads, dim)  # in place, on the projection's fresh output
        return _split(qkv, heads, kv_heads, dim)
    q, k, v = _split(qkv, heads, kv_heads, dim)
    return _rotated(q, angles), _rotated(k, angles), v


def _split(qkv: torch.Tensor, heads: int, kv_heads: int, dim: int) -> QKV:
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    return q.view(-1, heads, dim), k.view(-1, kv_heads, dim), v.view(-1, kv_heads, dim)


def _rotated(x: torch.Tensor, angles: Angles) -> torch.Tensor:
    """x: (tokens, heads, dim), rotated in its two halves (in x's dtype, as Hugging Face's code does)."""
    cos, sin = (a.unsqueeze(1).to(x.dtype) for a in angles)
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


def _apply_scaling(inv_freq: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "freq_factors":  # GGUF files carry Llama 3.1 scaling as per-frequency divisors
        return inv_freq / torch.tensor(scaling["factors"], dtype=inv_freq.dtype)
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":  # Llama 3.1+: stretch low frequencies, keep high ones, blend in between
        factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        wavelen = 2 * math.pi / inv_freq
        smooth = ((original / wavelen) - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        out = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        middle = (wavelen <= original / low) & (wavelen >= original / high)
        return torch.where(middle, blended, out)
    raise ValueError(f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)")
