"""The engine loop in a background thread, and one asyncio queue per request in front of it.

The engine is single-threaded by design: only the loop thread touches it. Requests and aborts reach
it through a command queue; outputs come back through each request's asyncio queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.inputs import InputProcessor
from tokenyard.runtime.engine.llm_engine import LLMEngine, StepFailed
from tokenyard.runtime.outputs import RequestOutput
from tokenyard.runtime.sampling_params import SamplingParams
from tokenyard.runtime.server.metrics import ServerMetrics
from tokenyard.runtime.structured_output import StructuredOutputs

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """Every running slot and queue place is taken: the caller should retry later."""


class EngineDead(RuntimeError):
    """The engine loop failed; the request cannot be served."""


class RequestFailed(RuntimeError):
    """The step serving this request raised; the engine serves the others on."""


# Steps failing one after another (each failure aborts the requests it served) mean the engine itself is broken.
MAX_CONSECUTIVE_STEP_FAILURES = 3


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
    reason: str  # client_disconnect, shutdown


def _deliver(deliveries: list[tuple[asyncio.Queue, object]]) -> None:
    for stream, item in deliveries:
        stream.put_nowait(item)


# How much lower the engine thread's CPU priority is than the event loop's (Linux nice steps).
ENGINE_NICENESS = 5


def yield_to_the_event_loop() -> None:
    """Lower this thread's CPU priority, and so that of the compute threads torch starts from it: on a busy
    machine the event loop (probes, streams, new requests) then runs the moment it is ready instead of
    queueing behind a step's matmuls for a scheduler time slice. Throughput is unchanged: the loop is idle
    most of the time. Linux only; elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + ENGINE_NICENESS)


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
        self.on_dead: Callable[[str], None] | None = None  # the server exits, so Kubernetes restarts the pod
        self.draining = False  # set on SIGTERM: what is aborted from then on is aborted by the shutdown
        self._failed_steps = 0

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
        yield_to_the_event_loop()
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

    @property
    def inputs(self) -> InputProcessor:
        """Prompt and chat to validated token ids: thread-safe, and meant to run off the event loop."""
        return self.engine.inputs

    @property
    def structured_outputs(self) -> StructuredOutputs:
        """Compiles constraints: thread-safe, and meant to run off the event loop."""
        return self.engine.structured_outputs

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def stop(self) -> None:
        if self._thread is not None:
            self._commands.put(None)
            self._thread.join(timeout=30)
        if self.engine is not None:
            self.engine.executor.stop_workers()

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
                self._commands.put(_Abort(request_id, "shutdown" if self.draining else "client_disconnect"))

    # --- the loop (engine thread) -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            busy = self.engine.has_unfinished_requests()
            commands = ([] if busy else [self._commands.get()]) + self._drain_commands()  # idle: sleep for work
            for command in commands:
                if command is None:
                    self._fail_all(EngineDead("the server is shutting down"), "shutdown")
                    return
                self._apply(command)
            if any(isinstance(c, _Abort) for c in commands):
                self.metrics.record_load(self.engine)  # the gauges say at once what an abort freed
            if self.engine.has_unfinished_requests():
                self._step()
            if self.failure is not None:
                return

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
            if self.engine.abort_request(command.request_id):
                self.metrics.record_aborted(command.reason)
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
        except StepFailed as failure:
            self._failed_steps += 1
            self._fail(failure.request_ids, RequestFailed(f"the engine failed on this request's step: {failure}"))
            if self._failed_steps >= MAX_CONSECUTIVE_STEP_FAILURES:
                self._die(f"{self._failed_steps} steps in a row failed, the last with {failure}")
            return
        except Exception as error:  # the cleanup after a failed step failed too: nothing can be trusted
            log.exception("the engine is broken")
            self._die(f"the engine failed and could not recover: {type(error).__name__}: {error}")
            return
        self._failed_steps = 0
        now = time.monotonic()
        deliveries: list[tuple[asyncio.Queue, RequestOutput | RequestFailed]] = []
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            last = self._last_token_time.get(output.request_id)
            if last is not None:
                self.metrics.record_token_gap(now - last)
            self._last_token_time[output.request_id] = now
            item: RequestOutput | RequestFailed = output
            if output.finished:
                self._streams.pop(output.request_id)
                self._last_token_time.pop(output.request_id, None)
                self.metrics.record_finished(output, now)
                if output.outputs[0].finish_reason == "error":  # the engine ended this request, and says why
                    item = RequestFailed(str(output.outputs[0].stop_reason))
            deliveries.append((stream.stream, item))
        if deliveries:  # one wake-up of the event loop per step, not one per request
            stream.loop.call_soon_threadsafe(_deliver, deliveries)
        self.metrics.record_step(self.engine)

    def _fail(self, request_ids: list[str], error: BaseException) -> None:
        """End these requests' streams with ``error`` (the engine has already aborted them)."""
        for request_id in request_ids:
            stream = self._streams.pop(request_id, None)
            self._last_token_time.pop(request_id, None)
            if stream is not None:
                self.metrics.record_aborted("error")
                stream.loop.call_soon_threadsafe(stream.stream.put_nowait, error)
        self.metrics.record_step(self.engine)

    def _fail_all(self, error: BaseException, reason: str) -> None:
        """End every stream with ``error``. Aborting may fail on a broken engine: the streams end regardless."""
        for request_id, stream in self._streams.items():
            with contextlib.suppress(Exception):
                self.engine.abort_request(request_id)
            self.metrics.record_aborted(reason)
            stream.loop.call_soon_threadsafe(stream.stream.put_nowait, error)
        self._streams.clear()
        self._last_token_time.clear()
        with contextlib.suppress(Exception):
            self.metrics.record_step(self.engine)

    def _die(self, reason: str) -> None:
        """Fail everything, refuse what comes (EngineDead), and have the process exit."""
        self.failure = EngineDead(f"the engine failed: {reason}")
        self._fail_all(self.failure, "error")
        log.error("%s; the server exits so that it is restarted", self.failure)
        if self.on_dead is not None:
            self.on_dead(str(self.failure))
