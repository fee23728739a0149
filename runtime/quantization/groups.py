"""The one form every quantized weight takes inside the runtime before a kernel packs it:
``W[n, k] = codes[n, k] * scales[n, g] + mins[n, g]`` with ``g = k // group_size`` (an affine map per
output row and group of input columns). Checkpoint formats (GPTQ, AWQ, GGUF blocks) and round-to-
nearest quantization from float weights all arrive here; act-order checkpoints arrive with their
input columns sorted by group and the permutation kept (``perm``) so the kernel can gather ``x``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType

from tokenyard.runtime.quantization.formats import GroupQuantized

GGUF_PACKED_TYPES = {GGMLQuantizationType[name] for name in ("Q8_0", "Q4_0", "Q4_1")}
_GGUF_BLOCK = 32  # weights per block in every type above


@dataclass
class AffineGroups:
    codes: torch.Tensor  # (N, K) uint8 in [0, 2**bits) (int8 for a table shared with the int8 kernel)
    scales: torch.Tensor  # (N, groups) float32
    mins: torch.Tensor  # (N, groups) float32: the weight a code of 0 stands for
    bits: int
    group_size: int
    perm: torch.Tensor | None = None  # (K,) int64: column j of codes multiplies input column perm[j]

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    def dequantize(self) -> torch.Tensor:
        """(N, K) float32 in the codes' column order (``perm`` not undone)."""
        k = self.in_features
        return self.codes.float() * _per_column(self.scales, self.group_size, k) + _per_column(
            self.mins, self.group_size, k
        )

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dequantized rows ``ids`` only: the embedding lookup of a tied, quantized LM head."""
        k = self.in_features
        scales = _per_column(self.scales[ids], self.group_size, k)
        return (self.codes[ids].float() * scales + _per_column(self.mins[ids], self.group_size, k)).to(dtype)

    def regrouped(self, group_size: int) -> AffineGroups:
        """The same weight described with smaller groups (each repeats its parent group's scale and
        min): exact when the old groups are whole multiples of the new size, or one group spans K."""
        if self.group_size % group_size and self.group_size < self.in_features:
            raise ValueError(f"groups of {self.group_size} cannot be split into groups of {group_size}")
        parent = torch.arange(0, self.in_features, group_size) // self.group_size
        return replace(self, scales=self.scales[:, parent], mins=self.mins[:, parent], group_size=group_size)

    def padded_to_whole_groups(self) -> AffineGroups:
        """Zero codes appended so K is a multiple of the group size (the padded inputs are zeros)."""
        pad = -self.in_features % self.group_size
        return replace(self, codes=F.pad(self.codes, (0, pad))) if pad else self


def concat_rows(parts: list[AffineGroups]) -> AffineGroups:
    """Stack fused projections (q/k/v, gate/up) on the output dimension. Parts of different widths
    (a GGUF may mix Q4 and Q8_0) meet at the wider one: 4-bit codes are valid 8-bit codes. Act-order
    parts share their permutation (GPTQ orders columns by the Hessian of the input they share)."""
    first = parts[0]
    if any(p.group_size != first.group_size for p in parts):
        raise ValueError("fused projections need one group size to be stacked")
    if any(not _same_perm(p.perm, first.perm) for p in parts):
        raise ValueError("fused projections with different act-order permutations (g_idx) cannot be stacked")
    return AffineGroups(
        codes=torch.cat([p.codes for p in parts]),
        scales=torch.cat([p.scales for p in parts]),
        mins=torch.cat([p.mins for p in parts]),
        bits=max(p.bits for p in parts),
        group_size=first.group_size,
        perm=first.perm,
    )


def _same_perm(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def from_group_quantized(q: GroupQuantized) -> AffineGroups:
    """GPTQ/AWQ's (codes - zeros) * scales; act-order columns sorted into contiguous groups."""
    codes, perm, group_size = q.codes, None, q.group_size
    if q.g_idx is not None:
        perm = torch.argsort(q.g_idx, stable=True)
        sorted_groups = q.g_idx[perm]
        if not torch.equal(sorted_groups, torch.arange(len(perm)) // group_size):
            raise ValueError(f"g_idx does not put {group_size} input columns in each group; cannot serve it")
        codes = codes[:, perm]
    return AffineGroups(codes.contiguous(), q.scales, -q.zeros * q.scales, q.bits, group_size, perm)


def quantize_int8_per_channel(weight: torch.Tensor) -> AffineGroups:
    """Symmetric int8, one scale per output row: codes are q + 128 for q in [-127, 127]."""
    w = weight.float()
    scales = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    codes = (w / scales).round().clamp(-127, 127) + 128
    return AffineGroups(codes.to(torch.uint8), scales, -128 * scales, 8, w.shape[1])


def quantize_int4(weight: torch.Tensor, group_size: int) -> AffineGroups:
    """Asymmetric round-to-nearest 4-bit per group of ``group_size`` input columns (min/max range, a float
    min per group as the int4 kernel takes it). ``tokenyard quantize``'s RTN (offline/rtn.py) differs on
    purpose: it must land on what a GPTQ checkpoint can store (integer zero points, float16 scales)."""
    w = weight.float()
    n, k = w.shape
    pad = -k % group_size  # a partial last group: repeat its last column, which leaves min and max alone
    grouped = F.pad(w[None], (0, pad), mode="replicate")[0].view(n, -1, group_size)
    low, high = grouped.amin(-1), grouped.amax(-1)
    scales = ((high - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    codes = ((grouped - low[..., None]) / scales[..., None]).round().clamp(0, 15).view(n, -1)[:, :k]
    return AffineGroups(codes.to(torch.uint8).contiguous(), scales, low, 4, group_size)


def from_gguf_blocks(raw: np.ndarray, tensor_type: GGMLQuantizationType) -> AffineGroups:
    """A GGUF tensor's raw blocks ((rows, bytes per row) uint8) as codes, scales and mins, read
    straight from the bytes: Q8_0 = fp16 d + 32 int8; Q4_0 = fp16 d + 16 bytes of nibbles (code - 8);
    Q4_1 = fp16 d, fp16 m + nibbles. In a Q4 block byte j holds weight j (low nibble) and j + 16."""
    rows = raw.shape[0]
    header = 4 if tensor_type == GGMLQuantizationType.Q4_1 else 2
    payload = _GGUF_BLOCK if tensor_type == GGMLQuantizationType.Q8_0 else _GGUF_BLOCK // 2
    blocks = raw.reshape(rows, -1, header + payload)
    scales = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32))
    quants = torch.from_numpy(blocks[..., header:].copy())
    if tensor_type == GGMLQuantizationType.Q8_0:
        codes = (quants.view(torch.int8).to(torch.int16) + 128).to(torch.uint8)
        return AffineGroups(codes.view(rows, -1), scales, -128 * scales, 8, _GGUF_BLOCK)
    codes = torch.cat([quants & 0xF, quants >> 4], dim=-1).view(rows, -1)
    if tensor_type == GGMLQuantizationType.Q4_0:
        mins = -8 * scales
    else:
        mins = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
    return AffineGroups(codes.contiguous(), scales, mins, 4, _GGUF_BLOCK)


def permute_rows(groups: AffineGroups, order: torch.Tensor) -> AffineGroups:
    return replace(groups, codes=groups.codes[order], scales=groups.scales[order], mins=groups.mins[order])


def _per_column(values: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    return values.repeat_interleave(group_size, dim=-1)[..., :k]
