"""SwiGLU's activation on a fused gate|up projection output."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenyard.runtime.kernels import kernels_for


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for (tokens, 2 * size) -> (tokens, size)."""
    ops = kernels_for(gate_up)
    if ops is not None and gate_up.is_contiguous() and gate_up.shape[-1] % 32 == 0:
        return ops.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
