"""Linear layers that know how to load their weights. Fused projections (q/k/v, gate/up) are one
matrix so each runs as a single matmul; checkpoints store their parts separately."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tokenyard.runtime.quantization.groups import AffineGroups, concat_rows
from tokenyard.runtime.quantization.kernels import QuantizedRows, QuantizedWeight, make_quantized_weight


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.packed_weight: torch.Tensor | None = None
        self.quantized: QuantizedWeight | None = None
        # the kernel's forward as a plain attribute: reaching a submodule goes through nn.Module.__getattr__,
        # and calling it through its hook machinery costs microseconds, 121 times a token
        self.quantized_forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized_forward is not None:
            out = self.quantized_forward(x)
            return out + self.bias if self.bias is not None else out
        if self.packed_weight is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def pack_for_cpu(self) -> None:
        """Reorder the weight into oneDNN's blocked layout and drop the plain copy. Measured here
        (2 cores, AVX512): 1.6x faster in bfloat16 and 2x in float32 for one token, faster still for
        batches, because the plain layout streams weights at ~12 GB/s and the blocked one at ~28 GB/s."""
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(self.weight.data, 1)
        self._drop_weight()

    def load_quantized(self, groups: AffineGroups) -> None:
        """Take a quantized weight (a pre-quantized checkpoint's, or one quantized after loading) in
        place of the float one; the kernel computes in the dtype the float weight had."""
        if (groups.out_features, groups.in_features) != tuple(self.weight.shape):
            raise ValueError(
                f"quantized weight of shape {(groups.out_features, groups.in_features)} does not fit a "
                f"linear layer of shape {tuple(self.weight.shape)}"
            )
        self.quantized = make_quantized_weight(groups, self.weight.dtype, self.weight.device)
        self.quantized_forward = self.quantized.forward
        self._drop_weight()

    def _drop_weight(self) -> None:
        del self.weight
        self.weight = None  # a tied weight lives on in the embedding


class MergedLinear(Linear):
    """Several projections of the same input stacked on the output dimension."""

    def __init__(self, in_features: int, part_sizes: list[int], bias: bool = False) -> None:
        super().__init__(in_features, sum(part_sizes), bias)
        self.part_sizes = part_sizes
        self._quantized_parts: dict[int, AffineGroups] = {}  # pre-quantized parts waiting for the others

    def load_part(self, index: int, weight: torch.Tensor) -> None:
        self.weight.data[self.part_slice(index)].copy_(weight)

    def load_quantized_part(self, index: int, groups: AffineGroups) -> None:
        """Quantized parts are stacked once all have arrived (a checkpoint stores them apart)."""
        if groups.out_features != self.part_sizes[index]:
            raise ValueError(
                f"quantized part {index} has {groups.out_features} rows, expected {self.part_sizes[index]}"
            )
        self._quantized_parts[index] = groups
        if len(self._quantized_parts) == len(self.part_sizes):
            self.load_quantized(concat_rows([self._quantized_parts.pop(i) for i in range(len(self.part_sizes))]))

    def load_part_bias(self, index: int, bias: torch.Tensor) -> None:
        self.bias.data[self.part_slice(index)].copy_(bias)

    def part_slice(self, index: int) -> slice:
        """The rows of part ``index`` in the fused weight (and bias)."""
        start = sum(self.part_sizes[:index])
        return slice(start, start + self.part_sizes[index])


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim), requires_grad=False)
        self.quantized: QuantizedRows | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            return self.quantized(ids)
        return F.embedding(ids, self.weight)

    def load_quantized(self, groups: AffineGroups) -> None:
        if (groups.out_features, groups.in_features) != tuple(self.weight.shape):
            raise ValueError(
                f"quantized embedding of shape {tuple(groups.codes.shape)} does not fit {tuple(self.weight.shape)}"
            )
        self.quantized = QuantizedRows(groups, self.weight.dtype).to(self.weight.device)
        del self.weight
        self.weight = None
