"""Checkpoint layouts of group-quantized weights, to and from one method-neutral form.

``GroupQuantized`` holds unpacked integer codes with per-(output row, group) scales and zero points:
``W[n, k] = (codes[n, k] - zeros[n, g(k)]) * scales[n, g(k)]`` where ``g(k) = g_idx[k]`` when the
checkpoint has an act-order permutation, else ``k // group_size``.

Two Hugging Face layouts are read and written:

* GPTQ (AutoGPTQ / optimum, ``checkpoint_format: gptq``, the "v1" format): ``qweight`` int32
  (K * bits / 32, N), codes packed along the input dimension, lowest bits first; ``qzeros`` int32
  (groups, N * bits / 32) packed along the output dimension and storing ``zero - 1`` (a historical
  off-by-one every GPTQ kernel undoes, so zero 0 cannot be stored: zeros lie in [1, 2**bits]);
  ``scales`` fp16 (groups, N); ``g_idx`` int32 (K,), the group of each input column.
* AWQ GEMM (AutoAWQ ``version: gemm``, 4 bits): ``qweight`` int32 (K, N / 8) packed along the output
  dimension with the eight nibbles of each int32 holding columns [0, 2, 4, 6, 1, 3, 5, 7] of its block
  of eight (nibble i at bits 4i..4i+3); ``qzeros`` int32 (groups, N / 8) packed the same way, storing
  the zero itself; ``scales`` fp16 (groups, N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GPTQ_BITS = (2, 4, 8)  # the widths that pack whole into an int32 (3-bit GPTQ straddles words)
AWQ_BITS = 4
_AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a word holds column _AWQ_ORDER[i] of its block
_AWQ_UNORDER = [_AWQ_ORDER.index(c) for c in range(8)]  # column c lives in nibble _AWQ_UNORDER[c]


@dataclass
class GroupQuantized:
    codes: torch.Tensor  # (N, K) uint8 in [0, 2**bits)
    scales: torch.Tensor  # (N, groups) float32
    zeros: torch.Tensor  # (N, groups) float32, in code units
    bits: int
    group_size: int
    g_idx: torch.Tensor | None = None  # (K,) int64: group of each input column; None: k // group_size

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def groups_of_columns(self) -> torch.Tensor:
        """(K,) int64: the group each input column's scale and zero come from."""
        if self.g_idx is not None:
            return self.g_idx
        return torch.arange(self.codes.shape[1]) // self.group_size


def dequantize(q: GroupQuantized) -> torch.Tensor:
    """The (N, K) float32 weight the codes stand for."""
    groups = q.groups_of_columns()
    return (q.codes.float() - q.zeros[:, groups]) * q.scales[:, groups]


def gptq_config(bits: int, group_size: int, desc_act: bool = False, sym: bool = True) -> dict:
    """``quantization_config`` of config.json as transformers/optimum write it for GPTQ."""
    return {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": desc_act,
        "sym": sym,
        "checkpoint_format": "gptq",
    }


def awq_config(group_size: int, zero_point: bool = True) -> dict:
    """``quantization_config`` of config.json as AutoAWQ writes it (GEMM kernels' layout)."""
    return {
        "quant_method": "awq",
        "bits": AWQ_BITS,
        "group_size": group_size,
        "zero_point": zero_point,
        "version": "gemm",
    }


def to_gptq(q: GroupQuantized) -> dict[str, torch.Tensor]:
    _check_bits(q.bits, GPTQ_BITS, "GPTQ")
    zeros = _integer_zeros(q)
    if zeros.min() < 1 or zeros.max() > 2**q.bits:
        raise ValueError(f"GPTQ stores zero - 1 in {q.bits} bits: zero points must lie in [1, {2**q.bits}]")
    tensors = {
        "qweight": _pack(q.codes.t().to(torch.int64), q.bits, dim=0),
        "qzeros": _pack((zeros - 1).t(), q.bits, dim=1),
        "scales": q.scales.t().to(torch.float16).contiguous(),
        "g_idx": q.groups_of_columns().to(torch.int32),
    }
    return tensors


def from_gptq(tensors: dict[str, torch.Tensor], bits: int, group_size: int) -> GroupQuantized:
    """``tensors``: one layer's qweight, qzeros, scales and (optional) g_idx. ``group_size`` -1 means
    one group over the whole input (per output channel), as GPTQ configs write it."""
    _check_bits(bits, GPTQ_BITS, "GPTQ")
    codes = _unpack(tensors["qweight"], bits, dim=0).t()  # (N, K)
    in_features = codes.shape[1]
    group_size = in_features if group_size == -1 else group_size
    zeros = _unpack(tensors["qzeros"], bits, dim=1) + 1  # (groups, N)
    g_idx = tensors.get("g_idx")
    if g_idx is not None:
        g_idx = g_idx.to(torch.int64)
        if torch.equal(g_idx, torch.arange(in_features) // group_size):
            g_idx = None  # no act-order: the plain layout serves faster kernels
    return GroupQuantized(
        codes=codes.to(torch.uint8).contiguous(),
        scales=tensors["scales"].float().t().contiguous(),
        zeros=zeros.float().t().contiguous(),
        bits=bits,
        group_size=group_size,
        g_idx=g_idx,
    )


def to_awq(q: GroupQuantized) -> dict[str, torch.Tensor]:
    _check_bits(q.bits, (AWQ_BITS,), "AWQ")
    if q.g_idx is not None:
        raise ValueError("AWQ has no act-order permutation: g_idx must be None")
    zeros = _integer_zeros(q)
    return {
        "qweight": _pack(_awq_interleave(q.codes.t().to(torch.int64)), AWQ_BITS, dim=1),
        "qzeros": _pack(_awq_interleave(zeros.t()), AWQ_BITS, dim=1),
        "scales": q.scales.t().to(torch.float16).contiguous(),
    }


def from_awq(tensors: dict[str, torch.Tensor], group_size: int) -> GroupQuantized:
    codes = _awq_deinterleave(_unpack(tensors["qweight"], AWQ_BITS, dim=1)).t()  # (N, K)
    zeros = _awq_deinterleave(_unpack(tensors["qzeros"], AWQ_BITS, dim=1)).t()
    return GroupQuantized(
        codes=codes.to(torch.uint8).contiguous(),
        scales=tensors["scales"].float().t().contiguous(),
        zeros=zeros.float().contiguous(),
        bits=AWQ_BITS,
        group_size=codes.shape[1] if group_size == -1 else group_size,
    )


def _check_bits(bits: int, allowed: tuple[int, ...], method: str) -> None:
    if bits not in allowed:
        raise ValueError(f"{method} bits={bits!r} is invalid: must be one of {', '.join(map(str, allowed))}")


def _integer_zeros(q: GroupQuantized) -> torch.Tensor:
    zeros = q.zeros.round()
    if not torch.equal(zeros, q.zeros):
        raise ValueError("checkpoint formats store integer zero points: round the zeros before packing")
    return zeros.to(torch.int64)


def _pack(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack 32 // bits non-negative ints along ``dim`` into each int32, the first in the lowest bits."""
    per_word = 32 // bits
    values = values.movedim(dim, -1)
    if values.shape[-1] % per_word:
        raise ValueError(f"a packed dimension of {values.shape[-1]} is not a multiple of {per_word}")
    words = values.reshape(*values.shape[:-1], -1, per_word) & (2**bits - 1)
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    packed = (words << shifts).sum(-1)  # < 2**32: disjoint bit fields add like OR
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # the same bits as a signed int32
    return packed.to(torch.int32).movedim(-1, dim).contiguous()


def _unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    words = packed.movedim(dim, -1).to(torch.int32)
    values = (words[..., None] >> shifts) & (2**bits - 1)
    return values.flatten(-2).movedim(-1, dim).to(torch.int64)


def _awq_interleave(columns: torch.Tensor) -> torch.Tensor:
    """(rows, N) in column order -> the order AWQ packs them in."""
    rows, n = columns.shape
    return columns.view(rows, n // 8, 8)[:, :, _AWQ_ORDER].reshape(rows, n)


def _awq_deinterleave(nibbles: torch.Tensor) -> torch.Tensor:
    rows, n = nibbles.shape
    return nibbles.view(rows, n // 8, 8)[:, :, _AWQ_UNORDER].reshape(rows, n)
