"""Tensor parallelism's processes and communication: rank 0 (the serving process) launches the other
ranks, ships them each step's inputs, and every rank runs the forward pass on its shard of the model."""

from tokenyard.runtime.distributed.group import TensorParallel, building, current
from tokenyard.runtime.distributed.workers import TensorParallelWorkers, launch_workers

__all__ = ["TensorParallel", "TensorParallelWorkers", "building", "current", "launch_workers"]
