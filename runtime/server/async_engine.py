"""The engine loop in a background thread, and one asyncio queue per request in front of it.

The engine is single-threaded by design: only the loop thread touches it. Requests and aborts reach
it through a command queue; outputs come back through each request's asyncio queue."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.llm_engine import LLMEngine
from tokenyard.runtime.outputs import RequestOutput
from tokenyard.runtime.sampling_params import SamplingParams
from tokenyard.runtime.server.metrics import ServerMetrics

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """Every running slot and queue place is taken: the caller should retry later."""


class EngineDead(RuntimeError):
    """The engine loop failed; the request cannot be served."""


@dataclass
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    stream: asyncio.Queue
    loop: asyncio.AbstractEventLoop


@dataclass
class _Abort:
    request_id: str


def _deliver(deliveries: list[tuple[asyncio.Queue, object]]) -> None:
    for stream, item in deliveries:
        stream.put_nowait(item)


class AsyncEngine:
    def __init__(self, config: EngineConfig, max_queue_len: int, served_model_name: str) -> None:
        self.config = config
        self.max_queue_len = max_queue_len
        self.served_model_name = served_model_name
        self.engine: LLMEngine | None = None
        self.metrics: ServerMetrics | None = None
        self.in_flight = 0  # accepted and not yet ended; touched only on the event loop
        self._commands: queue.SimpleQueue[_Add | _Abort | None] = queue.SimpleQueue()
        self._streams: dict[str, _Add] = {}
        self._last_token_time: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    # --- lifecycle (event loop side) ----------------------------------------------------------------
    def load(self) -> None:
        """Start the engine thread and wait until it has loaded the model (raises what loading raised).

        The thread that loads the model is the one that runs it: torch's CPU thread pools belong to the
        thread that first used them, and a second thread driving torch ran at half the speed (measured)."""
        loaded = threading.Event()
        self._thread = threading.Thread(target=self._load_and_loop, args=(loaded,), name="engine-loop", daemon=True)
        self._thread.start()
        loaded.wait()
        if self.failure is not None:
            raise self.failure

    def _load_and_loop(self, loaded: threading.Event) -> None:
        try:
            self.engine = LLMEngine(self.config)
            self.metrics = ServerMetrics(self.served_model_name, self.engine.max_model_len)
            self.metrics.describe_engine(self.engine)
            self.metrics.record_step(self.engine)
        except BaseException as error:
            self.failure = error
            return
        finally:
            loaded.set()
        self._loop()

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.failure is None

    def stop(self) -> None:
        if self._thread is not None:
            self._commands.put(None)
            self._thread.join(timeout=30)
        if self.engine is not None and self.engine.runner.workers is not None:
            self.engine.runner.workers.shutdown()  # tensor parallelism: no worker outlives the server

    @property
    def capacity(self) -> int:
        return self.config.max_num_seqs + self.max_queue_len

    def reserve(self) -> None:
        """Claim a place for a request, or raise Overloaded. Call on the event loop before generate()."""
        if self.in_flight >= self.capacity:
            raise Overloaded(
                f"{self.in_flight} requests are running or queued (the limit is {self.capacity}: "
                f"max_num_seqs {self.config.max_num_seqs} + max_queue_len {self.max_queue_len})"
            )
        self.in_flight += 1

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, arrival_time: float
    ) -> AsyncIterator[RequestOutput]:
        """Stream a reserved request's outputs (cumulative). Leaving early aborts it and frees its blocks."""
        stream: asyncio.Queue = asyncio.Queue()
        finished = False
        self._commands.put(_Add(request_id, prompt_token_ids, params, arrival_time, stream, asyncio.get_running_loop()))
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self.in_flight -= 1
            if not finished:
                self._commands.put(_Abort(request_id))

    # --- the loop (engine thread) -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            busy = self.engine.has_unfinished_requests()
            commands = ([] if busy else [self._commands.get()]) + self._drain_commands()  # idle: sleep for work
            for command in commands:
                if command is None:
                    self._fail_all(EngineDead("the server is shutting down"))
                    return
                self._apply(command)
            if self.engine.has_unfinished_requests():
                self._step()

    def _drain_commands(self) -> list[_Add | _Abort | None]:
        commands = []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: _Add | _Abort) -> None:
        if isinstance(command, _Abort):
            self._streams.pop(command.request_id, None)
            self._last_token_time.pop(command.request_id, None)
            self.engine.abort_request(command.request_id)
            return
        try:
            self.engine.add_request(
                command.request_id,
                {"prompt_token_ids": command.prompt_token_ids},
                command.params,
                arrival_time=command.arrival_time,
            )
        except ValueError as error:  # validated before; reaching here means a bug, not a bad request
            command.loop.call_soon_threadsafe(command.stream.put_nowait, error)
            return
        self._streams[command.request_id] = command

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as error:
            log.exception("engine step failed; failing the requests in flight")
            self.failure = error
            self._fail_all(EngineDead(f"the engine failed: {error}"))
            return
        now = time.monotonic()
        deliveries: list[tuple[asyncio.Queue, RequestOutput]] = []
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            last = self._last_token_time.get(output.request_id)
            if last is not None:
                self.metrics.record_token_gap(now - last)
            self._last_token_time[output.request_id] = now
            if output.finished:
                self._streams.pop(output.request_id)
                self._last_token_time.pop(output.request_id, None)
                self.metrics.record_finished(output, now)
            deliveries.append((stream.stream, output))
        if deliveries:  # one wake-up of the event loop per step, not one per request
            stream.loop.call_soon_threadsafe(_deliver, deliveries)
        self.metrics.record_step(self.engine)

    def _fail_all(self, error: BaseException) -> None:
        for request_id, stream in list(self._streams.items()):
            self.engine.abort_request(request_id)
            stream.loop.call_soon_threadsafe(stream.stream.put_nowait, error)
        self._streams.clear()
        self.metrics.record_step(self.engine)
