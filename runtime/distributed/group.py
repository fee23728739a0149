"""One rank's place in the tensor-parallel group and the two collectives the model needs.

Layers take the group that is current while the model is built (``building``), so several engines in one
process never share settings by accident, and a single-rank model runs with no torch.distributed at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# A rank that stops answering (alive but stuck) fails the collective instead of hanging the server;
# a rank that dies is caught sooner, by the launcher's monitor.
COLLECTIVE_TIMEOUT = timedelta(seconds=120)


@dataclass
class TensorParallel:
    rank: int = 0
    size: int = 1
    joined: bool = False

    def join(self, init_method: str, device: torch.device) -> None:
        """Enter the process group (every rank calls this; it returns once all have)."""
        if device.type == "cuda":  # NCCL wants each rank's current device set first (not yet run: one-GPU machines)
            torch.cuda.set_device(self.rank)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=init_method,
            rank=self.rank,
            world_size=self.size,
            timeout=COLLECTIVE_TIMEOUT,
        )
        self.joined = True

    def leave(self) -> None:
        if self.joined:
            self.joined = False
            dist.destroy_process_group()

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place."""
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def gather(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's ``x`` (same shape on all), in rank order, on rank 0; None elsewhere."""
        if self.size == 1:
            return [x]
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(x, parts, dst=0)
        return parts


_current = TensorParallel()


def current() -> TensorParallel:
    return _current


@contextmanager
def building(group: TensorParallel) -> Iterator[TensorParallel]:
    """Make ``group`` the one that layers constructed inside the block shard themselves for."""
    global _current
    previous, _current = _current, group
    try:
        yield group
    finally:
        _current = previous
