"""What stands between uvicorn and an OpenAI app, in the runtime and the gateway alike: a body-size limit,
OpenAI error objects for every error Starlette or FastAPI would otherwise answer in its own shape, and a
drain on SIGTERM (new requests 503 with Retry-After and /health failing at once; in-flight requests
finish; streams still open at the deadline end with an SSE error event; the process exits 0)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenyard.wire.openai import SSE_DONE, error_body, error_type, sse_error

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 << 20
DRAIN_RETRY_AFTER_SECONDS = "5"


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, error_type(status), param, status), status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every 4xx/5xx the framework itself raises becomes an OpenAI error object."""

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code == 400 and error.__cause__ is not None:  # FastAPI could not parse the body
            message = f"the body is not valid JSON: {_describe(error.__cause__)}"
        return error_response(error.status_code, message, headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(400, *validation_message(error.errors()))

    @app.exception_handler(Exception)
    async def server_error(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error while serving a request")
        return error_response(500, f"internal error ({type(error).__name__}); the request was not served")


def validation_message(errors: list[dict[str, Any]] | Any) -> tuple[str, str | None]:
    """OpenAI's shape for a pydantic error: a sentence naming the field, and the field as `param`. A value that
    fits none of a field's forms (a union) gets each form's complaint, once."""
    errors = list(errors)
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    param = _param(first)
    complaints = list(dict.fromkeys(_complaint(e) for e in errors if _param(e) == param))
    message = "; or ".join(complaints)
    return (f"{param}: {message}" if param else message), param


# Where pydantic names the member of a union that a value failed, e.g. ("prompt", "list[int]", 0).
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|dict|list|.*\[.*\]|[a-z]+(-[a-z]+)+(\[.*\])?)$")


def _param(error: dict[str, Any]) -> str | None:
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    return ".".join(part for part in location if not _UNION_MEMBER.match(part)) or None


def _complaint(error: dict[str, Any]) -> str:
    return "this field is required" if error.get("type") == "missing" else str(error.get("msg", "invalid request"))


def _describe(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "it is nested too deeply"
    if isinstance(error, UnicodeDecodeError):
        return "it is not UTF-8"
    return str(error) or type(error).__name__


class Guard:
    """ASGI middleware: body limit, in-flight tracking and draining. ``serving`` routes (POST) are counted
    and refused while draining; GET /health answers 503 while draining, so readiness fails at once."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.draining = False
        self._in_flight: dict[asyncio.Task[Any], _Exchange] = {}

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.draining and (scope["method"] == "POST" or scope["path"] == "/health"):
            return await _send_error(send, 503, "the server is shutting down; retry on another replica")
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return await _send_error(send, 413, self._too_large(declared))
        body = await self._read_body(receive)
        if body is None:
            return await _send_error(send, 413, self._too_large(None))
        await self._serve(scope, _replay(body, receive), send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = _Exchange(send)
        task = asyncio.ensure_future(self.app(scope, receive, exchange.send))
        self._in_flight[task] = exchange
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not exchange.cut:  # our caller was cancelled (the server stops): take the request with us
                task.cancel()
                raise
        finally:
            self._in_flight.pop(task, None)
        if exchange.cut:
            await exchange.end_with_error("the server shut down before this request finished; retry it")

    async def cut(self) -> None:
        """At the drain's deadline: stop what is still running; streams end with an error event, responses
        not yet started get a 503."""
        for task, exchange in list(self._in_flight.items()):
            exchange.cut = True
            task.cancel()
        while self._in_flight:
            await asyncio.sleep(0.01)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self, declared: int | None) -> str:
        size = f"{declared} bytes" if declared is not None else "more"
        return f"the body is too large: {size}; the limit is {self.max_body_bytes} bytes"


class _Exchange:
    """One request's side of the response, so a cut can finish it in the right shape."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = self.finished = self.cut = False
        self.event_stream = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers", []))
            self.event_stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    async def end_with_error(self, message: str) -> None:
        if self.finished:
            return
        if not self.started:
            await _send_error(self._send, 503, message)
        elif self.event_stream:
            payload = (sse_error(message, 503) + SSE_DONE).encode()
            await self._send({"type": "http.response.body", "body": payload, "more_body": False})
        else:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, when it comes

    return replayed


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps(error_body(message, error_type(status), None, status)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (429, 503):
        headers.append((b"retry-after", DRAIN_RETRY_AFTER_SECONDS.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GracefulServer(uvicorn.Server):
    """uvicorn with a drain: the first SIGTERM or SIGINT starts it, a second one exits at once. Exits 0 after
    a drain; ``fail()`` stops the process with exit code 1 (a dead engine: Kubernetes restarts the pod)."""

    def __init__(
        self,
        config: uvicorn.Config,
        guard: Guard,
        grace_seconds: float,
        on_draining: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.guard, self.grace_seconds, self.on_draining = guard, grace_seconds, on_draining
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.guard.draining or self._loop is None:
            self.force_exit = self.should_exit = True
            return
        log.info("%s: draining for up to %.0f s", signal.Signals(sig).name, self.grace_seconds)
        self.guard.draining = True
        if self.on_draining is not None:
            self.on_draining()
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_seconds
        while self.guard.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.guard.in_flight:
            log.warning("grace period over: ending %d unfinished requests with an error", self.guard.in_flight)
            await self.guard.cut()
        self.should_exit = True

    def fail(self, reason: str) -> None:
        """Exit with code 1, from any thread."""
        log.error("exiting: %s", reason)
        self.exit_code = 1
        self.should_exit = True


def run_server(
    app: FastAPI,
    host: str,
    port: int,
    grace_seconds: float,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    access_log: bool = True,
    on_start: Callable[[GracefulServer], None] | None = None,
    on_draining: Callable[[], None] | None = None,
) -> int:
    """Serve ``app`` behind a Guard until SIGTERM's drain ends (0) or ``fail()`` is called (1)."""
    guard = Guard(app, max_body_bytes)
    config = uvicorn.Config(
        guard, host=host, port=port, log_level="info", access_log=access_log, timeout_graceful_shutdown=5
    )
    server = GracefulServer(config, guard, grace_seconds, on_draining)
    if on_start is not None:
        on_start(server)
    server.run()
    return server.exit_code
