"""Copying an upstream SSE stream to the client. A stream that breaks (the upstream dies, the connection
resets, or nothing arrives for the read timeout) ends for the client with an SSE error event and
``data: [DONE]``, never with a bare cut that clients report as "incomplete chunked read". Only a stream that
finished cleanly is folded into a response and handed on (to the cache and the token count)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tokenyard.gateway.replay import aggregate_stream
from tokenyard.wire.openai import SSE_DONE, sse_error

log = logging.getLogger(__name__)
DONE_LINE = SSE_DONE.strip()


class Relay:
    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        resources: AsyncExitStack,
        endpoint: str,
        include_usage: bool,
        on_complete: Callable[[dict[str, Any]], Awaitable[None]],
        gap_seconds: float,
    ) -> None:
        self.upstream, self.resources = upstream, resources  # resources: the upstream response and the lease
        self.endpoint, self.include_usage, self.on_complete = endpoint, include_usage, on_complete
        self.gap_seconds = gap_seconds  # after the first event; before it, the request's whole read limit
        self.lines: list[str] = []
        self.done = False  # [DONE] arrived

    async def events(self) -> AsyncGenerator[bytes, None]:
        try:
            async for line in self._lines():
                yield line
        except TimeoutError:
            yield self._broken("the upstream sent nothing for too long", 504)
            return
        except (aiohttp.ClientError, ValueError) as error:  # reset, cut mid-chunk, undecodable bytes
            yield self._broken(f"the upstream connection broke ({type(error).__name__})", 502)
            return
        finally:
            await self.close()
        if not self.done:
            yield self._broken("the upstream ended the stream before it was complete", 502)
            return
        result = aggregate_stream(self.lines, self.endpoint)
        if result is not None:  # a stream that carried an error event is not a result
            await self.on_complete(result)

    async def _lines(self) -> AsyncIterator[bytes]:
        started = False
        while raw := await self._next_line(started):
            line = raw.decode().rstrip("\r\n")
            started = started or line.startswith("data:")
            self.lines.append(line)
            if not self.include_usage and _is_usage_chunk(line):
                continue  # asked for upstream so the stream can be counted and cached; not for this client
            yield f"{line}\n".encode() if line else b"\n"
            if line == DONE_LINE:
                self.done = True
                return

    async def _next_line(self, started: bool) -> bytes:
        read = self.upstream.content.readline()
        return await (asyncio.wait_for(read, self.gap_seconds) if started else read)

    def _broken(self, reason: str, status: int) -> bytes:
        log.warning("stream from %s broke: %s", self.upstream.url.origin(), reason)
        return (sse_error(f"{reason}; the answer is incomplete", status) + SSE_DONE).encode()

    async def close(self) -> None:
        await self.resources.aclose()  # idempotent: the second call finds nothing left to close


def _is_usage_chunk(line: str) -> bool:
    if not line.startswith("data: {"):
        return False
    event = json.loads(line[6:])
    return not event.get("choices") and "usage" in event


class RelayResponse(StreamingResponse):
    """Closes the relay (the upstream connection and the replica's lease) however the response ends: finished,
    the client gone, or cancelled before it started, when the generator's own `finally` would never run."""

    def __init__(self, relay: Relay, headers: dict[str, str]) -> None:
        events = relay.events()
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.relay, self.events = relay, events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.events.aclose()
            await self.relay.close()
