"""Changes to a loaded model's weights in place: int8/int4 from float weights (after each tensor-parallel
rank loaded its own shard, so the two compose), and a tied LM head that follows a quantized embedding."""

from __future__ import annotations

import torch
from torch import nn

from tokenyard.runtime.layers.linear import Embedding, Linear
from tokenyard.runtime.quantization.groups import quantize_int4, quantize_int8_per_channel


def quantize_linears(model: nn.Module, method: str, group_size: int) -> None:
    """Every float Linear (the LM head too) to int8 per output channel or int4 per group. A tied
    embedding shares the LM head's quantized table and dequantizes just the rows it looks up."""
    embedding = next(m for m in model.modules() if isinstance(m, Embedding))
    for module in model.modules():
        if not isinstance(module, Linear) or module.weight is None:
            continue
        weight = module.weight.data
        groups = quantize_int8_per_channel(weight) if method == "int8" else quantize_int4(weight, group_size)
        tied = embedding.weight is not None and weight.data_ptr() == embedding.weight.data_ptr()
        module.load_quantized(groups)
        if tied and getattr(getattr(embedding, "tp", None), "size", 1) == 1:  # sharded lookups stay float
            embedding.load_quantized(module.quantized.shared_rows() or groups)


def tie_lm_head_to_quantized_embedding(model: nn.Module) -> None:
    """A GGUF whose (tied) token embedding stays packed: the LM head runs on the same quantized table."""
    embedding = next(m for m in model.modules() if isinstance(m, Embedding))
    head = getattr(model, "lm_head", None)
    if embedding.quantized is not None and head is not None and head.quantized is None and head.weight is not None:
        head.load_quantized(embedding.quantized.groups())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and quantized tables, each tensor once (tied weights share one)."""
    seen: dict[int, int] = {}
    for tensor in model.state_dict(keep_vars=True).values():
        if isinstance(tensor, torch.Tensor):
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())
