"""A decode step on the CPU kernels with the Python taken out: the CPU's counterpart of CUDA graphs.

Decoding a small model eagerly on a CPU spends about as long in the interpreter as in the matmuls: a decoder
layer is ~100 Python-level calls (module calls, attribute lookups, the choice between a kernel and its
fallback), ~50 us, 1.5 ms of a 4.6 ms int4 token of SmolLM2-135M. For the steps of a few rows whose attention
reads the cache in place (decodes, and decodes verifying their drafts), this runs the layers of ``LlamaForCausalLM`` as
one flat loop over the kernels and each linear's own forward: about a dozen calls a layer. The model's modules
serve every other step (prefill, many rows, shared prefixes, int8 KV cache, tensor parallelism, GPUs) and
``enforce_eager`` turns this path off. Both give the same tokens (tests/runtime/test_cpu_kernels.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from tokenyard.runtime.kernels import kernels_for
from tokenyard.runtime.layers.attention import AttentionMetadata, TorchAttentionBackend
from tokenyard.runtime.layers.linear import Linear
from tokenyard.runtime.models.llama import LlamaForCausalLM

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: Forward
    o: Forward
    post_norm: torch.Tensor
    gate_up: Forward
    down: Forward


class CpuDecodePath:
    def __init__(self, model: LlamaForCausalLM, ops: ModuleType) -> None:
        self.model, self.ops = model, ops
        attention = model.layers[0].self_attn
        self.heads, self.kv_heads, self.head_dim = attention.num_heads, attention.num_kv_heads, attention.head_dim
        self.scale, self.eps = attention.scale, model.layers[0].input_layernorm.eps
        # Linear.forward itself: the parallel subclasses only add collectives, which one rank does without
        self.layers = [
            _Layer(
                layer.input_layernorm.weight,
                Linear.forward.__get__(layer.self_attn.qkv_proj),
                Linear.forward.__get__(layer.self_attn.o_proj),
                layer.post_attention_layernorm.weight,
                Linear.forward.__get__(layer.mlp.gate_up_proj),
                Linear.forward.__get__(layer.mlp.down_proj),
            )
            for layer in model.layers
        ]

    @classmethod
    def build(cls, model: torch.nn.Module, backend: TorchAttentionBackend) -> CpuDecodePath | None:
        """The path for a loaded model, or None where it cannot serve (then the modules serve every step)."""
        if not isinstance(model, LlamaForCausalLM) or backend.kv_cache_dtype != "auto":
            return None
        if model.layers[0].self_attn.o_proj.tp.size > 1:  # the group the model was built for
            return None
        weight = model.layers[0].input_layernorm.weight
        ops = kernels_for(weight)
        norms = [layer.input_layernorm.weight for layer in model.layers] + [
            layer.post_attention_layernorm.weight for layer in model.layers
        ]
        if ops is None or model.config.head_dim % 16 or any(n.dtype != weight.dtype for n in norms):
            return None
        return cls(model, ops)

    @staticmethod
    def serves(meta: AttentionMetadata) -> bool:
        """Whether the attention kernels read this step's context from the cache in place: a few rows that
        decode, or decode and verify their drafts (short chunks)."""
        state = meta.backend_state
        return state.get("decode_in_place") is not None or state.get("chunks") is not None

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        ops, heads, kv_heads, dim, eps = self.ops, self.heads, self.kv_heads, self.head_dim, self.eps
        state = meta.backend_state
        if state["decode_in_place"] is not None:
            attention, context = ops.decode_attention, state["decode_in_place"]
        else:
            attention, context = ops.chunk_attention, state["chunks"]
        q_end, k_end = heads * dim, (heads + kv_heads) * dim
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary.angles(positions)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            # the residual add of the layer before is fused into this layer's first norm
            if residual is None:
                hidden, residual = ops.rms_norm(x, layer.input_norm, eps), x
            else:
                hidden, residual = ops.add_rms_norm(x, residual, layer.input_norm, eps)
            qkv = layer.qkv(hidden)
            ops.rotary_(qkv, cos, sin, heads, kv_heads, dim)
            k, v = qkv[:, q_end:k_end].view(-1, kv_heads, dim), qkv[:, k_end:].view(-1, kv_heads, dim)
            ops.write_kv_cache(kv_cache, meta.slot_mapping, k, v)
            attended = attention(qkv[:, :q_end].view(-1, heads, dim), kv_cache, *context, self.scale)
            hidden, residual = ops.add_rms_norm(layer.o(attended.flatten(1)), residual, layer.post_norm, eps)
            x = layer.down(ops.silu_and_mul(layer.gate_up(hidden)))
        return self.model.norm(residual + x)
