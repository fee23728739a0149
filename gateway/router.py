"""Choosing a replica: least outstanding requests, with prefix affinity (requests sharing a prompt prefix go
to the same replica, where its prefix cache already holds it) bounded so that no replica takes more than
1.25x the mean outstanding work (consistent hashing with bounded loads)."""

from __future__ import annotations

import bisect
import hashlib
import math
import time
from dataclasses import dataclass

LOAD_BOUND = 1.25
EJECT_SECONDS = 10.0
VIRTUAL_NODES = 64


@dataclass(eq=False)
class Replica:
    url: str
    outstanding: int = 0
    ejected_until: float = 0.0

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.ejected_until

    def eject(self) -> None:
        self.ejected_until = time.monotonic() + EJECT_SECONDS

    def restore(self) -> None:
        self.ejected_until = 0.0


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Router:
    def __init__(self, urls: list[str]) -> None:
        self.replicas: list[Replica] = []
        self.update(urls)

    def update(self, urls: list[str]) -> None:
        """Take a new replica set; replicas that stay keep their state (outstanding work, ejection)."""
        known = {r.url: r for r in self.replicas}
        self.replicas = [known.get(url.rstrip("/")) or Replica(url.rstrip("/")) for url in urls]
        self._ring = sorted((_hash(f"{r.url}#{i}"), r) for r in self.replicas for i in range(VIRTUAL_NODES))
        self._points = [point for point, _ in self._ring]

    def pick(self, affinity_key: str | None, exclude: set[Replica] = frozenset()) -> Replica | None:
        candidates = [r for r in self.replicas if r.healthy and r not in exclude]
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


def affinity_key(body: dict) -> str | None:
    """The shared part of a prompt: the system message (or the first 256 characters of a completion prompt)."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        if messages[0].get("role") in ("system", "developer") and isinstance(messages[0].get("content"), str):
            return messages[0]["content"]
        return None
    prompt = body.get("prompt")
    return prompt[:256] if isinstance(prompt, str) and len(prompt) >= 64 else None
