"""Rank 0's side of tensor parallelism: start the worker processes (spawned, one per other rank), ship
them each step's inputs, agree on the KV cache size, and take the server down when a worker dies.

Step inputs travel over one pipe per worker (pickled once, written N-1 times): cheaper than a collective
and, unlike one, it waits for work without a timeout while the server is idle. The forward pass's own
collectives run over torch.distributed (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch
import torch.distributed as dist

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.distributed import transport
from tokenyard.runtime.distributed.group import TensorParallel, building, current
from tokenyard.runtime.executor.worker import worker_main
from tokenyard.runtime.validation import require

log = logging.getLogger(__name__)


@contextmanager
def launch_workers(config: EngineConfig, device: torch.device) -> Iterator[TensorParallelWorkers | None]:
    """Around rank 0's model loading: start the other ranks (they load alongside), build this rank's shard,
    then wait until every rank has loaded and joined the group. Nothing to do with one rank, or inside a worker."""
    if config.tensor_parallel_size == 1 or current().size > 1:
        yield None
        return
    workers = TensorParallelWorkers(config, device)
    try:
        with building(workers.tp):
            yield workers
        workers.wait_ready()
    except BaseException:
        workers.shutdown(grace_seconds=0)  # a failed start: nothing to finish
        raise


class TensorParallelWorkers:
    def __init__(self, config: EngineConfig, device: torch.device) -> None:
        size = config.tensor_parallel_size
        if device.type == "cuda":
            gpus = torch.cuda.device_count()
            require(size <= gpus, "tensor_parallel_size", size, f"at most the number of visible GPUs ({gpus})")
        if dist.is_initialized():
            raise RuntimeError(
                "a tensor-parallel engine is already running in this process: shut it down first (LLM.shutdown())"
            )
        # On CPU the ranks share this machine's usable cores: each rank's ModelRunner takes its share
        # (runtime/threads.py), from the same cgroup quota and affinity mask, which spawned workers inherit.
        self.tp = TensorParallel(0, size)
        self.device = device
        self.init_method = f"tcp://127.0.0.1:{_free_port()}"
        self.processes: list[BaseProcess] = []
        self.commands: list[Connection] = []
        self.replies: list[Connection] = []
        self._closing = False
        spawn = multiprocessing.get_context("spawn")  # fork would copy torch's threads and this process's state
        for rank in range(1, size):
            commands_in, commands_out = spawn.Pipe(duplex=False)
            replies_in, replies_out = spawn.Pipe(duplex=False)
            process = spawn.Process(
                target=worker_main,
                args=(rank, config, self.init_method, commands_in, replies_out),
                name=f"tokenyard-tp-rank-{rank}",
                daemon=True,
            )
            process.start()
            commands_in.close()  # the worker's ends stay only in the worker: either side's death reads as EOF
            replies_out.close()
            self.processes.append(process)
            self.commands.append(commands_out)
            self.replies.append(replies_in)
        atexit.register(self.shutdown)

    def wait_ready(self) -> None:
        """Wait for every worker to load its shard (raising a worker's own error if one fails), then join the group."""
        for rank, (process, replies) in enumerate(zip(self.processes, self.replies, strict=True), start=1):
            wait([replies, process.sentinel])
            error = replies.recv() if replies.poll() else f"exited with code {process.exitcode} before loading"
            if error is not None:
                raise RuntimeError(f"tensor-parallel worker (rank {rank}) failed: {error}")
        self.tp.join(self.init_method, self.device)
        threading.Thread(target=self._watch, name="tp-worker-monitor", daemon=True).start()
        log.info("tensor parallelism: %d ranks ready", self.tp.size)

    def run_model(self, inputs: object) -> None:
        self._send("run_model", inputs)

    def agree_kv_blocks(self, fit_here: Callable[[], int]) -> int:
        """Every rank measures how many KV blocks it can hold (together: on GPU that runs a forward pass);
        all allocate the fewest, so one block table serves every rank."""
        self._send("kv_blocks_that_fit", reply=True)
        num_blocks: int = min(fit_here(), *self._replies())
        self._send("allocate_kv_cache", num_blocks, reply=True)
        self._replies()
        return num_blocks

    def _send(self, method: str, *args: object, reply: bool = False) -> None:
        data = transport.dumps((method, args, reply))
        for commands in self.commands:
            commands.send_bytes(data)

    def _replies(self) -> list[Any]:
        return [replies.recv() for replies in self.replies]

    def _watch(self) -> None:
        """A worker that dies leaves its collectives unanswered: end the server at once (non-zero, so that
        Kubernetes restarts the pod) rather than let it hang or serve wrong results."""
        wait([process.sentinel for process in self.processes])
        if self._closing:
            return
        dead = [(rank, p.exitcode) for rank, p in enumerate(self.processes, start=1) if p.exitcode is not None]
        log.critical("tensor-parallel worker(s) (rank, exit code) %s died: exiting", dead)
        sys.stderr.flush()
        os._exit(1)

    def shutdown(self, grace_seconds: float = 10) -> None:
        """Stop the workers (closing their pipes ends their loops; any still running after ``grace_seconds`` are
        killed) and leave the group. Idempotent."""
        if self._closing:
            return
        self._closing = True
        for commands in self.commands:
            commands.close()
        for process in self.processes:
            process.join(timeout=grace_seconds)
            if process.is_alive():
                process.kill()
                process.join()
        self.tp.leave()
        atexit.unregister(self.shutdown)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
