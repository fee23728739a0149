"""A stand-in for a runtime replica, for the gateway's failure tests: a real HTTP server on a real socket, written
by hand on asyncio streams so that a test can make it do what a real `tokenyard serve` cannot be made to do on
cue: take exactly N seconds to answer, refuse with a chosen status and Retry-After, or die halfway through a
stream (the socket closed before the terminating chunk). Everything else about the gateway under test is real.

A request steers it with an extra body field (the wire models accept extra fields, so the gateway forwards it):
``"stand_in": {"sleep": 2.0, "status": 429, "retry_after": "7", "chunks": 3, "die_after": 1, "stall": 5.0,
"queued": 2.0}``."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

from ..runtime.server_process import free_port

MODEL = "stand-in"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class StandIn:
    port: int = field(default_factory=free_port)
    health_status: int = 200
    requests: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # answers still sleeping
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def posts(self) -> list[Seen]:
        return [seen for seen in self.requests if seen.path.startswith("/v1/")]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, headers, body = await _read_request(reader)
            if method == "GET":
                await self._get(writer, path)
            else:
                await self._post(writer, path, headers, body)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _get(self, writer: asyncio.StreamWriter, path: str) -> None:
        if path == "/health":
            _respond(writer, self.health_status, b"")
        else:
            _respond(writer, 200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode())
        await writer.drain()

    async def _post(self, writer: asyncio.StreamWriter, path: str, headers: dict[str, str], raw: bytes) -> None:
        body = json.loads(raw)
        self.requests.append(Seen(path, headers, body))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            steer = body.get("stand_in") if isinstance(body.get("stand_in"), dict) else {}
            await asyncio.sleep(steer.get("sleep", 0))
            if "status" in steer:
                error = {"error": {"message": "stand-in refusal", "type": "rate_limit_error", "param": None}}
                extra = {"Retry-After": steer["retry_after"]} if "retry_after" in steer else {}
                _respond(writer, steer["status"], json.dumps(error).encode(), extra)
            elif body.get("stream"):
                await _stream(writer, steer)
            else:
                _respond(writer, 200, json.dumps(_completion("the answer", body)).encode())
            await writer.drain()
        finally:
            self.in_flight -= 1


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    method, path, _ = head[0].split(" ", 2)
    headers = {name.strip().lower(): value.strip() for name, value in (h.split(":", 1) for h in head[1:] if h)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return method, path, headers, body


def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"}
    writer.write(_head(status, {**headers, **(extra or {})}) + body)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


async def _stream(writer: asyncio.StreamWriter, steer: dict) -> None:
    """SSE in chunked encoding. ``die_after``: close the socket after that many chunks, mid-stream; ``stall``:
    go silent that long after the first chunk."""
    headers = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked", "Connection": "close"}
    writer.write(_head(200, headers))
    await asyncio.sleep(steer.get("queued", 0))  # headers at once, tokens after a wait in line: as the runtime
    chunks = steer.get("chunks", 3)
    for i in range(chunks):
        if i == steer.get("die_after"):
            await asyncio.sleep(0.2)  # what was sent has been read by then
            writer.transport.close()  # as a process that dies: no terminating chunk, no [DONE]
            return
        if i == 1 and "stall" in steer:
            await asyncio.sleep(steer["stall"])
        delta = {"role": "assistant", "content": f"part{i} "} if i == 0 else {"content": f"part{i} "}
        _chunk(writer, {"id": "x", "object": "chat.completion.chunk", "model": MODEL, "choices": [_choice(delta)]})
        await writer.drain()
    last = {"id": "x", "object": "chat.completion.chunk", "model": MODEL, "choices": [_choice({}, "stop")]}
    _chunk(writer, last)
    usage = {"prompt_tokens": 3, "completion_tokens": chunks, "total_tokens": 3 + chunks}
    _chunk(writer, {"id": "x", "object": "chat.completion.chunk", "model": MODEL, "choices": [], "usage": usage})
    writer.write(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def _chunk(writer: asyncio.StreamWriter, event: dict) -> None:
    writer.write(_chunked(f"data: {json.dumps(event)}\n\n".encode()))


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _choice(delta: dict, finish_reason: str | None = None) -> dict:
    return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def _completion(text: str, body: dict) -> dict:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    return {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [choice], "usage": usage}
