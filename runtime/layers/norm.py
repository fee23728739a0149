"""RMSNorm normalised in float32 and cast back before the weight, as the reference implementation does.
(torch's fused rms_norm on a bfloat16 input is too coarse on CPU: it changed SmolLM2's greedy answers.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenyard.runtime.kernels import kernels_for


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = kernels_for(x)
        if ops is not None and self.weight.dtype == x.dtype and x.is_contiguous():
            return ops.rms_norm(x, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x): a decoder's residual add and the norm after it, in one pass."""
        ops = kernels_for(x)
        if ops is not None and self.weight.dtype == x.dtype and x.is_contiguous() and residual.is_contiguous():
            return ops.add_rms_norm(x, residual, self.weight, self.eps)
        total = residual + x
        return self(total), total
