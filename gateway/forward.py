"""Sending a request that missed the cache to a replica, and bringing its answer back.

- Admission: the router hands out a replica with room, or queues the request (bounded), or sheds it with a 429.
  ``async with replica.lease()`` holds the replica's count for as long as the exchange lasts, a relayed stream
  included.
- Failures: a replica that cannot be connected to is ejected and the request tried elsewhere (nothing has
  reached the client yet). A replica that is merely slow is never ejected: the client gets a 504 and the replica
  keeps its place; only failed connections and the health checker take replicas out.
- Timeouts: a non-streamed answer arrives all at once, after its last token, so its limit grows with the
  tokens asked for: first_byte_timeout_seconds + max_tokens x seconds_per_output_token. A stream's first event
  may take as long (it waits in the runtime's queue as a whole answer does); after it, no gap may exceed
  first_byte_timeout_seconds.
- Refusals: a replica's 429/502/503/504 sends the request to another replica; when none is left the last
  refusal goes to the client as it came, Retry-After included."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
from fastapi.responses import Response
from starlette.types import Receive

from tokenyard.gateway.config import GatewayConfig
from tokenyard.gateway.fleet import Fleet
from tokenyard.gateway.inputs import ParsedRequest
from tokenyard.gateway.metrics import GatewayMetrics
from tokenyard.gateway.relay import Relay, RelayResponse
from tokenyard.gateway.router import Overloaded, Replica, Router, affinity_key
from tokenyard.gateway.upstream import UpstreamClient
from tokenyard.wire.asgi import error_response

log = logging.getLogger(__name__)
RETRYABLE = {429, 502, 503, 504}
RETRY_AFTER_SECONDS = "1"  # what the runtime itself says when it is overloaded
# A failed connection, or one that broke before an answer: the replica (or its process) is gone.
CONNECTION_FAILURES = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
)


@dataclass
class Job:
    """One request on its way upstream."""

    endpoint: str
    request: ParsedRequest
    tenant: str
    model: str
    outcome: str  # the cache's verdict, for the header and the metrics: miss | bypass
    accept: str
    on_complete: Callable[[dict[str, Any]], Awaitable[None]]  # a completed answer: to the cache and the token count

    @property
    def headers(self) -> dict[str, str]:
        return {"x-tokenyard-cache": self.outcome}


@dataclass
class Attempt:
    response: Response | None = None  # None: the replica could not be reached
    retry: bool = False  # another replica may do better
    result: dict[str, Any] | None = None  # a completed non-streamed answer


class Forwarder:
    def __init__(self, config: GatewayConfig, fleet: Fleet, upstream: UpstreamClient, metrics: GatewayMetrics) -> None:
        self.config, self.fleet, self.upstream, self.metrics = config, fleet, upstream, metrics

    async def forward(self, job: Job) -> Response:
        router = self.fleet.router_for(job.model)
        response: Response
        if router is None:
            available = ", ".join(self.fleet.models()) or "none yet"
            response = error_response(
                404, f"the model {job.model!r} is not served here; available: {available}", "model"
            )
        else:
            response = await self._route(router, job)
        self.metrics.requests.labels(job.tenant, job.model, job.outcome, str(response.status_code)).inc()
        return response

    async def _route(self, router: Router, job: Job) -> Response:
        key = affinity_key(job.request.body)
        refused: set[Replica] = set()
        refusal: Response | None = None
        for _ in range(len(router.replicas) + 1):  # each pass ejects a replica or excludes it
            try:
                replica = await router.acquire(key, refused)
            except Overloaded as reason:
                return _shed(job.model, str(reason))
            if replica is None:
                break
            attempt = await self._attempt(replica, job)
            if attempt.result is not None:
                await job.on_complete(attempt.result)
            if attempt.response is not None and not attempt.retry:
                return attempt.response
            if attempt.response is not None:  # refused: try another, keep the refusal in case none is left
                refused.add(replica)
                refusal = attempt.response
            self.metrics.upstream_retries.labels(replica.url).inc()
        return refusal or error_response(503, "no healthy upstream replica", headers=_retry_after(None))

    async def _attempt(self, replica: Replica, job: Job) -> Attempt:
        try:
            async with AsyncExitStack() as resources:
                await resources.enter_async_context(replica.lease())
                resources.callback(self._observe, replica.url, time.perf_counter())
                upstream = await resources.enter_async_context(self._post(replica, job))
                return await self._answer(upstream, job, resources)
        except CONNECTION_FAILURES as failure:  # nothing has reached the client: another replica may take it
            log.warning("upstream %s failed (%s: %s); trying another", replica.url, type(failure).__name__, failure)
            replica.eject()
            self.metrics.upstream_healthy.labels(replica.url).set(0)
            return Attempt()
        except TimeoutError:  # slow, not broken: the replica stays in rotation
            limit = self.read_timeout(job)
            return Attempt(error_response(504, f"the upstream did not answer within {limit:g} s", headers=job.headers))
        except aiohttp.ClientError as error:
            message = f"the upstream's answer was unreadable ({type(error).__name__})"
            return Attempt(error_response(502, message, headers=job.headers))

    def _post(self, replica: Replica, job: Job) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.config.connect_timeout_seconds, sock_read=self.read_timeout(job)
        )
        headers = {**self.upstream.headers, "accept": job.accept}
        return self.upstream.session.post(
            f"{replica.url}{job.endpoint}", data=_upstream_body(job.request), headers=headers, timeout=timeout
        )

    def read_timeout(self, job: Job) -> float:
        max_tokens = job.request.fields.max_tokens or self.config.assumed_max_tokens
        return self.config.first_byte_timeout_seconds + max_tokens * self.config.seconds_per_output_token

    async def _answer(self, upstream: aiohttp.ClientResponse, job: Job, resources: AsyncExitStack) -> Attempt:
        status = upstream.status
        if status == 200 and job.request.stream:  # the relay takes over the lease and the connection
            relay = Relay(
                upstream,
                resources.pop_all(),
                job.endpoint,
                job.request.include_usage,
                job.on_complete,
                self.config.first_byte_timeout_seconds,
            )
            return Attempt(RelayResponse(relay, job.headers))
        content = await upstream.read()
        if status in (401, 403):  # our key, not the client's: the gateway is misconfigured
            log.error("upstream %s refused the gateway's key (%d): check --upstream-api-key", upstream.url, status)
            return Attempt(error_response(502, "the upstream refused the gateway's credentials", headers=job.headers))
        headers = {**job.headers, **_passed_retry_after(status, upstream.headers.get("retry-after"))}
        response = Response(content, status, media_type=upstream.content_type, headers=headers)
        if status != 200:
            return Attempt(response, retry=status in RETRYABLE)
        try:
            return Attempt(response, result=json.loads(content))
        except ValueError:
            return Attempt(
                error_response(502, "the upstream answered 200 with a body that is not JSON", headers=job.headers)
            )

    def _observe(self, url: str, started: float) -> None:
        self.metrics.upstream_latency.labels(url).observe(time.perf_counter() - started)

    async def models(self, router: Router) -> Response:
        """The replicas' own model list (static upstreams serve whatever they serve). Any healthy replica will
        do, busy or not: listing models takes no room."""
        replica = next((r for r in router.replicas if r.healthy), None)
        if replica is None:
            return error_response(503, "no healthy upstream replica", headers=_retry_after(None))
        try:
            async with self.upstream.session.get(f"{replica.url}/v1/models", headers=self.upstream.headers) as r:
                return Response(await r.read(), r.status, media_type="application/json")
        except (aiohttp.ClientError, TimeoutError) as error:
            return error_response(502, f"the upstream did not list its models ({type(error).__name__})")


def _upstream_body(request: ParsedRequest) -> bytes:
    """The client's bytes as they came, except that a stream always asks for usage: a completed stream is
    then counted (tenant token limits) and stored like a whole answer."""
    if not request.stream or request.include_usage:
        return request.raw
    options = {**(request.body.get("stream_options") or {}), "include_usage": True}
    return json.dumps({**request.body, "stream_options": options}, ensure_ascii=False).encode()


def _retry_after(value: str | None) -> dict[str, str]:
    return {"retry-after": value or RETRY_AFTER_SECONDS}


def _passed_retry_after(status: int, value: str | None) -> dict[str, str]:
    """The upstream's Retry-After, as it said it; an overload answer without one gets ours."""
    if value is None and status not in (429, 503):
        return {}
    return _retry_after(value)


def _shed(model: str, reason: str) -> Response:
    message = f"the gateway is at capacity for {model!r} ({reason}); retry after {RETRY_AFTER_SECONDS} s"
    return error_response(429, message, headers=_retry_after(None))


def _cancelling() -> bool:
    """Whether someone is cancelling the task this runs in (not the client leaving: that cancels ``work``)."""
    current = asyncio.current_task()
    if current is None:
        raise RuntimeError("unless_client_leaves must run inside an asyncio task")
    return current.cancelling() > 0


async def unless_client_leaves(receive: Receive, work: Awaitable[Response]) -> Response:
    """``work``'s response, unless the client disconnects first: then the work is cancelled, which closes the
    upstream request (the runtime aborts it) and frees its place in the queue or its replica's room. A client
    that has gone does not keep a replica busy for up to the whole timeout."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done() and (watcher.done() or _cancelling()):
            task.cancel()
    try:
        response = await task
    except asyncio.CancelledError:
        if _cancelling():
            raise
        return Response(status_code=499)  # nobody reads it
    if watcher.done() and not watcher.cancelled() and isinstance(response, RelayResponse):
        await response.relay.close()
        return Response(status_code=499)
    return response


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
