"""Choosing a replica: least outstanding requests, with prefix affinity (requests sharing a prompt prefix go
to the same replica, where its prefix cache already holds it) bounded so that no replica takes more than
1.25x the mean outstanding work (consistent hashing with bounded loads).

Admission: a replica takes at most ``max_outstanding`` requests from this gateway at once. Beyond that, requests
wait here, in a bounded first-come-first-served queue and for a bounded time, and are shed with a 429 past
either bound. Waiting here rather than in one runtime's queue means a request goes to whichever replica frees a
slot first, and a burst of cache misses (a cache outage turns every request into one) cannot pile onto the
runtimes past what they can run."""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Set
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

LOAD_BOUND = 1.25
EJECT_SECONDS = 10.0
VIRTUAL_NODES = 64
DEFAULT_MAX_OUTSTANDING = 128  # the runtime's default --max-num-seqs: its batch stays full, its queue short
DEFAULT_MAX_QUEUED = 256
DEFAULT_MAX_WAIT_SECONDS = 30.0


@dataclass(eq=False)
class Replica:
    url: str
    outstanding: int = 0
    ejected_until: float = 0.0
    slow_checks: int = 0  # health checks in a row that timed out (a busy replica may answer late)
    on_release: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.ejected_until

    def eject(self) -> None:
        self.ejected_until = time.monotonic() + EJECT_SECONDS

    def restore(self) -> None:
        self.ejected_until = 0.0
        self.slow_checks = 0

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Replica]:
        """One request's hold on this replica: counted while it runs, however it ends (answer, error, cancel)."""
        self.outstanding += 1
        try:
            yield self
        finally:
            self.outstanding -= 1
            if self.on_release is not None:
                self.on_release()


class Overloaded(Exception):
    """Every replica is at its bound and the wait queue is full, or the wait ran out."""


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Router:
    def __init__(
        self,
        urls: list[str],
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        self.max_outstanding, self.max_queued, self.max_wait_seconds = max_outstanding, max_queued, max_wait_seconds
        self.replicas: list[Replica] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.update(urls)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def update(self, urls: list[str]) -> None:
        """Take a new replica set; replicas that stay keep their state (outstanding work, ejection)."""
        known = {r.url: r for r in self.replicas}
        self.replicas = [known.get(url.rstrip("/")) or Replica(url.rstrip("/")) for url in urls]
        for replica in self.replicas:
            replica.on_release = self._wake_one
        self._ring = sorted((_hash(f"{r.url}#{i}"), r) for r in self.replicas for i in range(VIRTUAL_NODES))
        self._points = [point for point, _ in self._ring]
        self.wake_for_room()

    def pick(self, affinity_key: str | None, exclude: Set[Replica] = frozenset()) -> Replica | None:
        """A healthy replica below its bound, or None."""
        candidates = [
            r for r in self.replicas if r.healthy and r not in exclude and r.outstanding < self.max_outstanding
        ]
        if not candidates:
            return None
        if affinity_key is None:
            return min(candidates, key=lambda r: r.outstanding)
        total = sum(r.outstanding for r in candidates) + 1
        bound = math.ceil(LOAD_BOUND * total / len(candidates))
        start = bisect.bisect(self._points, _hash(affinity_key))
        for offset in range(len(self._ring)):
            replica = self._ring[(start + offset) % len(self._ring)][1]
            if replica in candidates and replica.outstanding + 1 <= bound:
                return replica
        return min(candidates, key=lambda r: r.outstanding)

    def available(self, exclude: Set[Replica] = frozenset()) -> bool:
        """Whether any healthy replica is left to try, busy or not."""
        return any(r.healthy and r not in exclude for r in self.replicas)

    async def acquire(self, affinity_key: str | None, exclude: Set[Replica] = frozenset()) -> Replica | None:
        """A replica with room for one more request, waiting in line for one if all are busy. None when no
        healthy replica is left to try; Overloaded when the line is full or the wait runs out. The caller takes
        the replica with ``async with replica.lease()`` before its next await, so the room is still there.

        A retry after a replica refused (``exclude``) does not wait: another replica now, or the refusal stands.
        That keeps the line strictly first come, first served: whoever is woken can use any replica with room."""
        if exclude:
            return self.pick(affinity_key, exclude)
        deadline = time.monotonic() + self.max_wait_seconds
        woken = False
        while self.available():
            if woken or not self._waiters:  # a newcomer does not overtake those already waiting
                replica = self.pick(affinity_key)
                if replica is not None:
                    return replica
            if not await self._wait(deadline, front=woken):
                if self.available():
                    raise Overloaded(f"no replica had room within {self.max_wait_seconds:g} s")
                return None
            woken = True
        return None

    async def _wait(self, deadline: float, front: bool) -> bool:
        """Until room is handed to us (True) or the deadline passes (False)."""
        if not front and len(self._waiters) >= self.max_queued:
            raise Overloaded(f"{self.max_queued} requests are already waiting for a replica")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if front:  # woken, then overtaken before it ran: it keeps its place at the head of the line
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await waiter
            return True
        except TimeoutError:
            return waiter.done() and not waiter.cancelled()  # room handed over just as time ran out counts
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # handed room, but leaving (the client went away): pass it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        """One slot freed: hand it to the longest waiting request."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_for_room(self) -> None:
        """Room appeared without a release (a replica came back or joined): wake as many as it fits."""
        free = sum(max(0, self.max_outstanding - r.outstanding) for r in self.replicas if r.healthy)
        for _ in range(min(free, len(self._waiters))):
            self._wake_one()


def affinity_key(body: dict[str, Any]) -> str | None:
    """The shared part of a prompt: the system message (or the first 256 characters of a completion prompt)."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        if messages[0].get("role") in ("system", "developer") and isinstance(messages[0].get("content"), str):
            system: str = messages[0]["content"]
            return system
        return None
    prompt = body.get("prompt")
    return prompt[:256] if isinstance(prompt, str) and len(prompt) >= 64 else None
