"""A decode step on the CPU kernels with the Python taken out: the CPU's counterpart of CUDA graphs.

Decoding a small model eagerly on a CPU spends about as long in the interpreter as in the matmuls: a decoder
layer is ~100 Python-level calls (module calls, attribute lookups, the choice between a kernel and its
fallback), ~50 us, 1.5 ms of a 4.6 ms int4 token of SmolLM2-135M. For the steps of a few rows whose attention
reads the cache in place (decodes, and decodes verifying their drafts), this runs the layers of
``LlamaForCausalLM`` as one native call (``runtime/kernels/decode_step.cpp``) over the same kernels; linears
the groupwise kernel does not serve call back into their own forward. The model's modules serve every other
step (prefill, many rows, shared prefixes, int8 KV cache, tensor parallelism, GPUs) and ``enforce_eager``
turns this path off. Both give the same tokens (tests/runtime/test_cpu_kernels.py).
"""

from __future__ import annotations

from types import ModuleType

import torch

from tokenyard.runtime.kernels import kernels_for
from tokenyard.runtime.layers.attention import AttentionMetadata, TorchAttentionBackend
from tokenyard.runtime.layers.linear import Linear
from tokenyard.runtime.models.llama import LlamaForCausalLM
from tokenyard.runtime.quantization.kernels import CpuGroupWeight


def _projection(ops: ModuleType, linear: Linear) -> object:
    """The native step's form of a linear: its codes where the groupwise kernel serves it, else its forward
    (Linear.forward itself: the parallel subclasses only add collectives, which one rank does without)."""
    weight = linear.quantized
    if isinstance(weight, CpuGroupWeight) and not weight.act_order:
        return ops.Projection.quantized(*weight.kernel_args, linear.bias)
    return ops.Projection.python(Linear.forward.__get__(linear))


class CpuDecodePath:
    def __init__(self, model: LlamaForCausalLM, ops: ModuleType) -> None:
        self.model = model
        attention = model.decoder_layers[0].self_attn
        layers = [
            ops.Layer(
                input_norm=layer.input_layernorm.weight,
                post_norm=layer.post_attention_layernorm.weight,
                qkv=_projection(ops, layer.self_attn.qkv_proj),
                o=_projection(ops, layer.self_attn.o_proj),
                gate_up=_projection(ops, layer.mlp.gate_up_proj),
                down=_projection(ops, layer.mlp.down_proj),
            )
            for layer in model.decoder_layers
        ]
        self.layers = ops.DecodeLayers(
            layers,
            model.norm.weight,
            heads=attention.num_heads,
            kv_heads=attention.num_kv_heads,
            head_dim=attention.head_dim,
            scale=attention.scale,
            eps=model.decoder_layers[0].input_layernorm.eps,
        )

    @classmethod
    def build(cls, model: torch.nn.Module, backend: TorchAttentionBackend) -> CpuDecodePath | None:
        """The path for a loaded model, or None where it cannot serve (then the modules serve every step)."""
        if not isinstance(model, LlamaForCausalLM) or backend.kv_cache_dtype != "auto":
            return None
        first = model.decoder_layers[0]
        if first.self_attn.o_proj.tp.size > 1:  # the group the model was built for
            return None
        weight = first.input_layernorm.weight
        ops = kernels_for(weight)
        norms = [model.norm.weight] + [
            norm.weight
            for layer in model.decoder_layers
            for norm in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        if ops is None or model.config.head_dim % 16 or any(n.dtype != weight.dtype for n in norms):
            return None
        return cls(model, ops)

    @staticmethod
    def serves(meta: AttentionMetadata) -> bool:
        """Whether the attention kernels read this step's context from the cache in place: a few rows that
        decode, or decode and verify their drafts (short chunks)."""
        return meta.plan is not None and meta.plan.cache_context is not None

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        if meta.plan is None:
            raise ValueError("the attention backend has not prepared this step (see serves)")
        cos, sin = self.model.rotary.angles(positions)
        hidden: torch.Tensor = self.layers.forward(
            self.model.embed_tokens(input_ids), cos, sin, kv_caches, meta.slot_mapping, meta.plan.cache_context
        )
        return hidden
