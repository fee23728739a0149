"""Quantized linear weights and the matmul kernels that use them (weight-only: activations stay in
the serving dtype, products accumulate in float32/bfloat16, never float16).

* per-channel int8: ``aten._weight_int8pack_mm`` on CPU; on CUDA a matmul on the weight cast to the
  activation dtype, then the scales (correct, not fast: tests/runtime/test_cuda.py).
* groupwise 4-bit (int4, GPTQ, AWQ, GGUF Q4_0/Q4_1): ``aten._weight_int4pack_mm_for_cpu`` on CPU,
  ``aten._weight_int4pack_mm`` on CUDA (bfloat16 only; checked on an H100 by tests/runtime/test_cuda.py).
  The kernels compute ``(code - 8) * scale + zero`` per group and refuse K that is not a multiple of the
  group size and N that is not a multiple of 16. K is served by an equivalent smaller group size where one
  divides it, else padded (zero input columns contribute nothing); N is padded and the extra outputs cut off.
* groupwise 8-bit (GGUF Q8_0, 8-bit GPTQ): no torch kernel exists, so each code is split into its two
  nibbles, ``c = 16 hi + lo``, making two exact 4-bit weights side by side on K that the 4-bit kernel
  runs in one call on ``[x | x]`` (the same 8 bits per weight stream from memory).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from tokenyard.runtime.kernels import cpu_kernels
from tokenyard.runtime.quantization.groups import AffineGroups

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the 4-bit kernels take
_CUDA_INNER_K_TILES = 8  # CUDA's int4 layout wants K a multiple of 16 * inner_k_tiles


class QuantizedWeight(nn.Module):
    """``forward(x) = x @ W.T`` for a weight held quantized; tensors are buffers so ``.to`` moves them."""

    in_features: int
    out_features: int

    def shared_rows(self) -> AffineGroups | None:
        """The same table for embedding lookups with the codes shared, not copied, where the layout allows."""
        return None


class Int8ChannelWeight(QuantizedWeight):
    def __init__(self, groups: AffineGroups, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        if groups.bits != 8 or groups.scales.shape[1] != 1 or groups.perm is not None:
            raise ValueError("per-channel int8 needs 8-bit codes with one group per row")
        self.out_features, self.in_features = groups.codes.shape
        self.register_buffer("weight", (groups.codes.to(torch.int16) - 128).to(torch.int8))
        # the CPU kernel takes scales in the activations' dtype; on CUDA they stay float32, since one scale
        # rounded to bfloat16 would shift a whole row by up to 0.4%, against a random rounding per weight
        self.register_buffer("scales", groups.scales[:, 0].to(dtype if device.type == "cpu" else torch.float32))
        if not torch.equal(groups.mins, -128 * groups.scales):
            raise ValueError("per-channel int8 is symmetric: mins must be -128 * scales")
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:  # no int8 weight-only GEMM in torch for CUDA: scale after a plain matmul
            return (F.linear(x, self.weight.to(x.dtype)) * self.scales).to(x.dtype)
        return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)

    def shared_rows(self) -> AffineGroups:
        scales = self.scales.float()[:, None]
        return AffineGroups(self.weight, scales, torch.zeros_like(scales), 8, self.in_features)


class Int4GroupWeight(QuantizedWeight):
    def __init__(self, groups: AffineGroups, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        if groups.bits > 4:
            raise ValueError(f"4-bit kernels take up to 4 bits, not {groups.bits}")
        kernel_group_size = _kernel_group_size(groups)
        if kernel_group_size != groups.group_size:
            groups = groups.regrouped(kernel_group_size)
        if device.type == "cuda" and dtype != torch.bfloat16:
            raise ValueError("the CUDA int4 kernel takes bfloat16 activations only: serve with dtype=bfloat16")
        self.out_features, self.in_features = groups.codes.shape
        self.group_size = groups.group_size
        self.register_buffer("perm", groups.perm)
        groups = groups.padded_to_whole_groups()
        tile = 16 * _CUDA_INNER_K_TILES if device.type == "cuda" else 1
        codes = F.pad(groups.codes, (0, -groups.in_features % tile, 0, -self.out_features % 16))
        rows = codes.shape[0]
        self.padded_in_features = codes.shape[1]
        scales, mins = (
            F.pad(t, (0, -t.shape[1] % (codes.shape[1] // self.group_size), 0, rows - t.shape[0]))
            for t in (groups.scales, groups.mins)
        )
        # the kernel's zero is the weight at code 8: code * s + m = (code - 8) * s + (m + 8 s)
        self.register_buffer(
            "scales_and_zeros", torch.stack([scales, mins + 8 * scales], -1).transpose(0, 1).to(dtype).contiguous()
        )
        self.register_buffer("packed", _pack_int4(codes.to(device), device))
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _gathered_and_padded(x, self.perm, self.padded_in_features)
        if x.is_cuda:
            out = torch.ops.aten._weight_int4pack_mm(x, self.packed, self.group_size, self.scales_and_zeros)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group_size, self.scales_and_zeros)
        return out[..., : self.out_features] if out.shape[-1] != self.out_features else out


class Int8GroupWeight(QuantizedWeight):
    """Groupwise 8-bit as two 4-bit halves: ``c * s + m = hi * (16 s) + m + lo * s``."""

    def __init__(self, groups: AffineGroups, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.out_features, self.in_features = groups.codes.shape
        self.register_buffer("perm", groups.perm)
        groups = replace(groups.padded_to_whole_groups(), perm=None)
        self.half_width = groups.in_features
        split = replace(
            groups,
            codes=torch.cat([groups.codes >> 4, groups.codes & 0xF], dim=1),
            scales=torch.cat([16 * groups.scales, groups.scales], dim=1),
            mins=torch.cat([groups.mins, torch.zeros_like(groups.mins)], dim=1),
            bits=4,
        )
        self.nibbles = Int4GroupWeight(split, dtype, device)
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _gathered_and_padded(x, self.perm, self.half_width)
        return self.nibbles.forward(torch.cat([x, x], dim=-1))


class CpuGroupWeight(QuantizedWeight):
    """Any weight of up to 8 bits for tokenyard's own CPU kernel (``runtime/kernels``), which streams codes
    near memory bandwidth at batch 1: 8-bit codes as int8 (``code - 128``, the 128 folded into the mins),
    row by row; narrower ones as 4-bit in tiles of 16 rows (``_tiled_nibbles``), their scales and mins
    tiled alike."""

    def __init__(self, groups: AffineGroups, group_size: int, dtype: torch.dtype) -> None:
        """Scales and mins are kept in the serving dtype, as PyTorch's kernels keep them: bfloat16 halves the
        bytes they add to every group."""
        super().__init__()
        if group_size != groups.group_size:
            groups = groups.regrouped(group_size)
        self.out_features, self.in_features = groups.codes.shape
        self.register_buffer("perm", groups.perm)
        groups = groups.padded_to_whole_groups()
        self.padded_in_features, self.group_size = groups.in_features, group_size
        self.bits = 8 if groups.bits > 4 else 4
        scales, mins = groups.scales.float(), groups.mins.float()
        if self.bits == 8:
            codes, mins = (groups.codes.to(torch.int16) - 128).to(torch.int8), mins + 128 * scales
        else:
            codes, scales, mins = _tiled_nibbles(groups.codes), _tiled_rows(scales), _tiled_rows(mins)
        scales, mins = scales.to(dtype), mins.to(dtype)
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scales", scales.contiguous())
        if not mins.any():  # symmetric (per-channel int8): no mins to store or apply
            mins = mins.new_empty(0)
        self.register_buffer("mins", mins.contiguous())
        # the per-call path is a few microseconds of Python around the kernel, and 121 calls make a token:
        # plain attributes (an nn.Module buffer lookup costs ~1 us each; this class never changes device)
        self.kernel = cpu_kernels().quantized_linear
        self.kernel_args = (self.codes, self.scales, self.mins, self.bits, self.group_size, self.out_features)
        self.act_order = self.perm is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_order:  # the input columns sorted by group, as the codes are
            x = x.index_select(-1, self.perm)
        return self.kernel(x, *self.kernel_args)  # it zero-pads x to whole groups itself

    def shared_rows(self) -> AffineGroups | None:
        if self.bits != 8 or self.perm is not None or self.padded_in_features != self.in_features:
            return None
        mins = self.mins if self.mins.numel() else torch.zeros_like(self.scales)
        return AffineGroups(self.codes, self.scales, mins, 8, self.group_size)

    @staticmethod
    def group_size_for(groups: AffineGroups) -> int | None:
        """The kernel's group size for a weight (a multiple of 32), or None when it cannot serve it. One group
        spanning K stays one group (per-channel int8); otherwise the sizes the 4-bit kernels take, by the same
        least-padding rule."""
        k = groups.in_features
        if groups.group_size >= k and k % 32 == 0:
            return k
        size = _kernel_group_size(groups)
        return size if size % 32 == 0 and (groups.group_size % size == 0 or groups.group_size >= k) else None


def _tiled_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (N, K) as the CPU kernel reads them: rows in tiles of 16 (the last one padded with zero
    rows), each tile in blocks of 8 columns, 64 bytes a block, where 16-bit word ``2r + p`` holds in nibble
    ``q`` the code of the tile's row ``r`` at column ``8b + 2q + p``. Returns (tiles * 16, K / 2) uint8."""
    n, k = codes.shape
    tiles = F.pad(codes, (0, 0, 0, -n % 16)).view(-1, 16, k // 8, 4, 2)  # tile, row, block, q, p
    nibbles = tiles.permute(0, 2, 1, 4, 3)  # tile, block, row, p, q
    low_byte, high_byte = nibbles[..., 0] | nibbles[..., 1] << 4, nibbles[..., 2] | nibbles[..., 3] << 4
    return torch.stack([low_byte, high_byte], dim=-1).reshape(-1, k // 2).contiguous()


def _tiled_rows(values: torch.Tensor) -> torch.Tensor:
    """Per-row, per-group values (N, groups) in the tiles' order: (tiles, groups, 16), padded with zeros."""
    n, groups = values.shape
    return F.pad(values, (0, 0, 0, -n % 16)).view(-1, 16, groups).transpose(1, 2).contiguous()


def make_quantized_weight(groups: AffineGroups, dtype: torch.dtype, device: torch.device) -> QuantizedWeight:
    """The fastest kernel for a weight's bits and grouping."""
    group_size = CpuGroupWeight.group_size_for(groups)
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and group_size and cpu_kernels():
        return CpuGroupWeight(groups, group_size, dtype)
    if groups.bits == 8 and groups.scales.shape[1] == 1 and groups.perm is None:
        return Int8ChannelWeight(groups, dtype, device)
    if groups.bits <= 4:
        return Int4GroupWeight(groups, dtype, device)
    if groups.bits == 8:
        return Int8GroupWeight(groups, dtype, device)
    raise ValueError(f"no kernel serves {groups.bits}-bit weights (served: 2, 4 and 8 bits)")


def _kernel_group_size(groups: AffineGroups) -> int:
    """A group size the kernel takes that describes the same weight (a divisor of the checkpoint's, or any
    size when one group spans K) with the least padding of K, then the largest: SmolLM2's K=576 with
    groups of 128 runs as groups of 64 (the same numbers, no padded columns)."""
    k, size = groups.in_features, groups.group_size
    usable = [g for g in INT4_GROUP_SIZES if size % g == 0 or size >= k] or [INT4_GROUP_SIZES[0]]
    return min(usable, key=lambda g: (-(-k // g) * g, -g))  # the least padding, then the largest groups


def _gathered_and_padded(x: torch.Tensor, perm: torch.Tensor | None, width: int) -> torch.Tensor:
    """Act-order weights store their input columns sorted by group: gather x the same way; then zero
    columns up to the kernel's padded K."""
    if perm is not None:
        x = x.index_select(-1, perm)
    return F.pad(x, (0, width - x.shape[-1])) if width != x.shape[-1] else x


def _pack_int4(codes: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        as_bytes = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # two codes per byte, first one high
        return torch.ops.aten._convert_weight_to_int4pack(as_bytes, _CUDA_INNER_K_TILES)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)


class QuantizedRows(nn.Module):
    """An embedding table kept quantized (it doubles as a tied LM head): a lookup dequantizes only the
    rows it reads."""

    def __init__(self, groups: AffineGroups, dtype: torch.dtype) -> None:
        super().__init__()
        self.group_size, self.dtype = groups.group_size, dtype
        self.register_buffer("codes", groups.codes)
        self.register_buffer("scales", groups.scales)
        self.register_buffer("mins", groups.mins)

    def groups(self) -> AffineGroups:
        return AffineGroups(self.codes, self.scales, self.mins, 8, self.group_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.groups().rows(ids, self.dtype)
