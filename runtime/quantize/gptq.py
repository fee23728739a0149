"""GPTQ (Frantar et al., 2022): quantize a linear's weight one input column at a time and spread each
column's rounding error over the columns not yet quantized, weighted by the inverse Hessian of the layer's
squared output error, H = 2 X X^T over the calibration inputs X of that linear."""

from __future__ import annotations

import torch

from tokenyard.runtime.quantization.formats import GroupQuantized
from tokenyard.runtime.quantize.rtn import grid, num_groups, quantize_codes

BLOCK_SIZE = 128  # columns whose updates are applied lazily together (the paper's batching)


class Hessian:
    """Running H = 2/n * sum x x^T over every calibration row x seen by one linear."""

    def __init__(self, in_features: int) -> None:
        self.matrix = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        total = self.rows + x.shape[0]
        self.matrix *= self.rows / total
        self.matrix += (2 / total) * x.t() @ x
        self.rows = total


def gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int,
    damp_percent: float = 0.01,
    act_order: bool = False,
) -> GroupQuantized:
    """``weight`` (N, K); ``hessian`` (K, K). With ``act_order`` columns are quantized in order of
    decreasing Hessian diagonal (the inputs with the most energy first) and groups follow that order, so
    the result carries a ``g_idx``."""
    rows, cols = weight.shape
    w = weight.float().clone()
    h = hessian.float().clone()
    dead = torch.diag(h) == 0  # inputs that were always 0: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(cols)
    w, h = w[:, order], h[order][:, order]
    h += damp_percent * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    # the rows of the upper Cholesky factor of H^-1 are the error-spreading weights of each column
    # (cholesky_solve: torch's cholesky_inverse is ~5x slower on CPU)
    h_inv = torch.cholesky_solve(torch.eye(cols), torch.linalg.cholesky(h))
    h_inv = torch.linalg.cholesky(h_inv, upper=True)

    groups = num_groups(cols, group_size)
    scales, zeros = torch.empty(rows, groups), torch.empty(rows, groups)
    codes = torch.empty(rows, cols, dtype=torch.uint8)
    for start in range(0, cols, BLOCK_SIZE):
        end = min(start + BLOCK_SIZE, cols)
        block = w[:, start:end]  # a view: updates land in w
        errors = torch.empty_like(block)
        for i in range(end - start):
            col = start + i
            g = col // group_size
            if col % group_size == 0:  # a group's grid comes from its error-compensated weights
                scales[:, g], zeros[:, g] = grid(w[:, col : col + group_size].float(), bits)
            column = block[:, i]
            code = quantize_codes(column, scales[:, g], zeros[:, g], bits)
            codes[:, col] = code.to(torch.uint8)
            chosen = (code - zeros[:, g]) * scales[:, g]
            errors[:, i] = (column - chosen) / h_inv[col, col]
            block[:, i:] -= errors[:, i : i + 1] * h_inv[col, col:end]
        w[:, end:] -= errors @ h_inv[start:end, end:]

    inverse = torch.argsort(order)
    g_idx = (torch.arange(cols) // group_size)[inverse] if act_order else None
    return GroupQuantized(codes[:, inverse].contiguous(), scales, zeros, bits, group_size, g_idx)
