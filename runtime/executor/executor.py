"""Between the engine and the model, as vLLM's engine -> executor -> worker -> runner: this process's model runner
and, under tensor parallelism, the worker processes that each run the same runner on their own shard."""

from __future__ import annotations

import torch

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.model_runner import ModelRunner, resolve_device
from tokenyard.runtime.engine.scheduler import ScheduledBatch
from tokenyard.runtime.executor.workers import launch_workers
from tokenyard.runtime.layers.sampler import Sampled, SamplingRow
from tokenyard.runtime.loaders import LoadedModel


class Executor:
    def __init__(self, config: EngineConfig) -> None:
        # Tensor parallelism: the other ranks start first and load their shards while this one loads its own.
        with launch_workers(config, resolve_device(config.device)) as self.workers:
            self.runner = ModelRunner(config)

    @property
    def loaded(self) -> LoadedModel:
        return self.runner.loaded

    @property
    def device(self) -> torch.device:
        return self.runner.device

    def allocate_kv_cache(self) -> int:
        """Allocate as many KV blocks as the memory budget holds: under tensor parallelism the fewest any rank
        holds, since all ranks share one block table. Returns the number of blocks."""
        fit = self.runner.kv_blocks_that_fit
        num_blocks = self.workers.agree_kv_blocks(fit) if self.workers is not None else fit()
        self.runner.allocate_kv_cache(num_blocks)
        return num_blocks

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, rows: list[SamplingRow]) -> list[list[Sampled]]:
        """One step: every rank runs the forward pass on its shard; this one samples (see ModelRunner.sample)."""
        inputs = self.runner.prepare(batch)
        if self.workers is not None:
            self.workers.run_model(inputs)
        return self.runner.sample(self.runner.run_model(inputs), rows)

    def stop_workers(self) -> None:
        """Stop the tensor-parallel worker processes (idempotent): none may outlive the serving process."""
        if self.workers is not None:
            self.workers.shutdown()

    def shutdown(self) -> None:
        self.stop_workers()
        self.runner.shutdown()
