"""Redis-backed exact cache and per-tenant limits, and the guard every store runs behind: a store that is down
or slow costs a request at most the store budget (~50 ms) and never fails it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
T = TypeVar("T")
BACKOFF_SECONDS = 1.0


class StoreGuard:
    """Runs a store's operations within the budget. On a failure or a timeout the operation returns its
    fallback, the error is counted, and the store is skipped for a short back-off, so that a dead store costs
    requests nothing while it is down and is used again, on its own, once it is back."""

    def __init__(
        self,
        name: str,
        budget_seconds: float,
        errors: tuple[type[BaseException], ...],
        on_error: Callable[[str, str], None],
    ) -> None:
        self.name = name
        self.budget = budget_seconds
        self.errors: tuple[type[BaseException], ...] = (*errors, OSError, TimeoutError)
        self.on_error = on_error
        self._skip_until = 0.0

    async def call(self, operation: Callable[[], Awaitable[T]], fallback: T) -> T:
        if time.monotonic() < self._skip_until:
            return fallback
        try:
            return await asyncio.wait_for(operation(), self.budget)
        except self.errors as error:
            self._skip_until = time.monotonic() + BACKOFF_SECONDS
            self.on_error(self.name, type(error).__name__)
            reason = str(error) or type(error).__name__
            log.warning("%s unavailable (%s): serving without it for %.0fs", self.name, reason, BACKOFF_SECONDS)
            return fallback


class RedisStore:
    def __init__(self, url: str, budget_seconds: float, on_error: Callable[[str, str], None]) -> None:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=200,
            timeout=budget_seconds,
            socket_timeout=budget_seconds,
            socket_connect_timeout=budget_seconds,
        )
        self.client = redis.Redis(connection_pool=pool)
        self.guard = StoreGuard("redis", budget_seconds, (RedisError,), on_error)

    async def call(self, operation: Callable[[], Awaitable[T]], fallback: T) -> T:
        return await self.guard.call(operation, fallback)

    async def close(self) -> None:
        await self.client.aclose()


class ExactCache:
    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def get(self, key: str) -> bytes | None:
        """The stored response body (JSON bytes, served as they are), or None."""

        async def read() -> bytes | None:
            # decode_responses is off, so Redis answers bytes; redis-py's types cannot tell from the client
            return cast("bytes | None", await self.store.client.get(key))

        return await self.store.call(read, None)

    async def put(self, key: str, body: bytes, ttl_seconds: int) -> None:
        await self.store.call(lambda: self.store.client.set(key, body, ex=ttl_seconds), None)


class MemoryExactCache:
    """The exact cache without Redis, for local mode: one process, bounded, least recently used out first."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self._entries.pop(key, None)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def put(self, key: str, body: bytes, ttl_seconds: int) -> None:
        self._entries[key] = (time.monotonic() + ttl_seconds, body)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class TenantLimits:
    """Fixed one-minute windows counted in Redis, so every gateway replica enforces the same limits."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def admit(self, tenant: str, requests_per_minute: int | None, tokens_per_minute: int | None) -> int:
        """Count one request. Returns 0 if it may proceed, else the seconds until the window resets."""
        window, elapsed = divmod(int(time.time()), 60)
        retry_after = 60 - elapsed
        if requests_per_minute:
            key = f"tokenyard:rpm:{tenant}:{window}"

            async def count() -> int:
                async with self.store.client.pipeline(transaction=True) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, 120)
                    counted: list[int] = await pipe.execute()
                    return counted[0]

            if await self.store.call(count, 0) > requests_per_minute:
                return retry_after
        if tokens_per_minute:
            used = await self.store.call(lambda: self.store.client.get(f"tokenyard:tpm:{tenant}:{window}"), None)
            if used is not None and int(used) >= tokens_per_minute:
                return retry_after
        return 0

    async def add_tokens(self, tenant: str, tokens: int) -> None:
        key = f"tokenyard:tpm:{tenant}:{int(time.time()) // 60}"

        async def add() -> None:
            async with self.store.client.pipeline(transaction=True) as pipe:
                pipe.incrby(key, tokens)
                pipe.expire(key, 120)
                await pipe.execute()

        await self.store.call(add, None)
