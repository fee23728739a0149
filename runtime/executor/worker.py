"""A tensor-parallel worker process (ranks 1..N-1): load this rank's shard, join the group, then run what
rank 0 sends until it closes the pipe."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from multiprocessing.connection import Connection
from typing import cast

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.distributed import transport
from tokenyard.runtime.distributed.group import TensorParallel, building
from tokenyard.runtime.engine.model_runner import ModelRunner, resolve_device

log = logging.getLogger(__name__)


def worker_main(rank: int, config: EngineConfig, init_method: str, commands: Connection, replies: Connection) -> None:
    # Ctrl-C reaches the whole process group; rank 0 decides when the workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tp = TensorParallel(rank, config.tensor_parallel_size)
    try:
        if resolve_device(config.device).type == "cuda":
            config = dataclasses.replace(config, device=f"cuda:{rank}")  # one GPU per rank
        with building(tp):
            runner = ModelRunner(config)
    except Exception as error:
        log.exception("tensor-parallel rank %d failed to load", rank)
        replies.send(f"{type(error).__name__}: {error}")
        sys.exit(1)
    replies.send(None)
    tp.join(init_method, runner.device)
    serve(runner, commands, replies)
    tp.leave()


def serve(runner: ModelRunner, commands: Connection, replies: Connection) -> None:
    """Run ``(method, args, reply)`` commands on the runner. An exception ends the process (rank 0 sees
    it die and stops the server); a closed pipe ends the loop (rank 0 shut down or died)."""
    while True:
        try:
            data = commands.recv_bytes()
        except EOFError:
            return
        method, args, reply = cast(tuple[str, tuple[object, ...], bool], transport.loads(data, runner.device))
        result = getattr(runner, method)(*args)
        if reply:
            replies.send(result)
