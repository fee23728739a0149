"""Round to nearest, asymmetric and groupwise: the grid every method here ends on, and the baseline
GPTQ and AWQ are measured against."""

from __future__ import annotations

import torch

from tokenyard.runtime.quantization.formats import GroupQuantized


def num_groups(in_features: int, group_size: int) -> int:
    """A last group shorter than ``group_size`` gets scales of its own (as if padded with zeros)."""
    return -(-in_features // group_size)


def grid(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point of each row of ``w`` (rows, columns) from its range, which always
    includes 0 so that zero weights stay exact. Scales are rounded to float16, the precision checkpoints
    store them in, so a checkpoint holds exactly the weights the algorithm chose."""
    maxq = 2**bits - 1
    low, high = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
    scale = (high - low) / maxq
    zero = torch.round(-low / scale.clamp(min=1e-12))
    # GPTQ's v1 checkpoints store zero - 1, so a zero point of 0 (an all-positive row) is not representable:
    # such rows take zero 1 and stretch the scale so that their maximum stays on the grid.
    shift = zero < 1
    scale = torch.where(shift, high / (maxq - 1), scale)
    zero = torch.where(shift, torch.ones_like(zero), zero)
    scale = scale.clamp(min=1e-7).half().float()  # 1e-7: a float16 subnormal, never 0
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of ``w`` (rows, ...) on a grid given per row."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    return torch.clamp(torch.round(w / scale.view(shape)) + zero.view(shape), 0, 2**bits - 1)


def rtn(weight: torch.Tensor, bits: int, group_size: int) -> GroupQuantized:
    """Each group of ``group_size`` consecutive input columns of each output row on its own grid."""
    rows, cols = weight.shape
    groups = num_groups(cols, group_size)
    scales, zeros = torch.empty(rows, groups), torch.empty(rows, groups)
    codes = torch.empty(rows, cols, dtype=torch.uint8)
    for g in range(groups):
        columns = slice(g * group_size, (g + 1) * group_size)
        w = weight[:, columns].float()
        scales[:, g], zeros[:, g] = grid(w, bits)
        codes[:, columns] = quantize_codes(w, scales[:, g], zeros[:, g], bits).to(torch.uint8)
    return GroupQuantized(codes, scales, zeros, bits, group_size)
