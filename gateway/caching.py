"""The response cache in front of the replicas: which caches a request may use (its plan), the lookup (exact
first, then semantic) and the store of a completed response. Every store runs behind a guard, so a cache that
is down or slow turns into a miss within the store budget and never into a failed request."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenyard.gateway.canonical import cache_key, canonical_request, is_deterministic
from tokenyard.gateway.config import CachePolicy
from tokenyard.gateway.embeddings import Embedder
from tokenyard.gateway.metrics import GatewayMetrics
from tokenyard.gateway.semantic import SemanticQuery, bypassed, semantic_query, serves
from tokenyard.gateway.stores import ExactCache, MemoryExactCache, StoreGuard
from tokenyard.gateway.vector_index import Candidate, VectorIndex

CANDIDATES = 5  # nearest entries checked for a hit: the closest may differ in meaning, the next may not


@dataclass
class CachePlan:
    policy: CachePolicy
    lookup: bool  # False for `Cache-Control: no-cache`: go upstream, then store the fresh answer
    exact_key: str | None = None
    semantic: SemanticQuery | None = None
    embedding: np.ndarray | None = None

    @property
    def bypass(self) -> bool:
        return self.exact_key is None and self.semantic is None


@dataclass(frozen=True)
class Hit:
    body: bytes
    outcome: str  # hit-exact | hit-semantic
    similarity: float | None = None


class SemanticCache:
    def __init__(self, embedder: Embedder, index: VectorIndex, index_guard: StoreGuard, embed_guard: StoreGuard):
        self.embedder, self.index = embedder, index
        self.index_guard, self.embed_guard = index_guard, embed_guard

    async def embed(self, text: str) -> np.ndarray | None:
        vectors = await self.embed_guard.call(lambda: self.embedder.embed([text]), None)
        return None if vectors is None else vectors[0]

    async def lookup(self, tenant: str, query: SemanticQuery, embedding: np.ndarray, policy: CachePolicy) -> Hit | None:
        candidates: list[Candidate] = await self.index_guard.call(
            lambda: self.index.search(tenant, query.scope, embedding, CANDIDATES), []
        )
        for candidate in candidates:
            if serves(candidate.prompt, query.text, candidate.similarity, policy):
                return Hit(candidate.response, "hit-semantic", candidate.similarity)
        return None

    async def add(self, tenant: str, query: SemanticQuery, embedding: np.ndarray, body: bytes, ttl: int) -> None:
        await self.index_guard.call(lambda: self.index.add(tenant, query.scope, query.text, embedding, body, ttl), None)


class ResponseCache:
    def __init__(
        self, exact: ExactCache | MemoryExactCache | None, semantic: SemanticCache | None, metrics: GatewayMetrics
    ) -> None:
        self.exact, self.semantic, self.metrics = exact, semantic, metrics

    def plan(
        self, cache_control: str, body: dict[str, Any], endpoint: str, tenant: str, model: str, policy: CachePolicy
    ) -> CachePlan:
        control = cache_control.lower()
        plan = CachePlan(policy, lookup="no-cache" not in control)
        if (
            "no-store" in control
            or not (is_deterministic(body) or policy.cache_sampled)
            or (body.get("stream") and (body.get("logprobs") or body.get("echo")))
        ):
            return plan
        if self.exact is not None and policy.exact:
            plan.exact_key = cache_key(tenant, model, canonical_request(body, endpoint))
        if self.semantic is not None and policy.semantic:
            query = semantic_query(body, endpoint, tenant, model, self.semantic.embedder.name)
            if query is not None and not bypassed(query.text, policy):
                plan.semantic = query
        return plan

    async def lookup(self, plan: CachePlan, tenant: str) -> Hit | None:
        if plan.exact_key is not None and plan.lookup and self.exact is not None:
            started = time.perf_counter()
            body = await self.exact.get(plan.exact_key)
            self.metrics.cache_lookup.labels("exact").observe(time.perf_counter() - started)
            if body is not None:
                return Hit(body, "hit-exact")
        if plan.semantic is not None and self.semantic is not None:
            started = time.perf_counter()
            plan.embedding = await self.semantic.embed(plan.semantic.text)
            self.metrics.embedding.observe(time.perf_counter() - started)
            if plan.embedding is not None and plan.lookup:
                started = time.perf_counter()
                hit = await self.semantic.lookup(tenant, plan.semantic, plan.embedding, plan.policy)
                self.metrics.cache_lookup.labels("semantic").observe(time.perf_counter() - started)
                return hit
        return None

    async def store(self, plan: CachePlan, tenant: str, response: dict[str, Any]) -> None:
        body = json.dumps(response, ensure_ascii=False).encode()
        if plan.exact_key is not None and self.exact is not None:
            await self.exact.put(plan.exact_key, body, plan.policy.exact_ttl_seconds)
        if plan.semantic is not None and plan.embedding is not None and self.semantic is not None:
            await self.semantic.add(tenant, plan.semantic, plan.embedding, body, plan.policy.semantic_ttl_seconds)

    async def write_back(self, plan: CachePlan, body: bytes) -> None:
        """A semantic hit's answer under the request's own exact key: the same request again is an exact hit."""
        if plan.exact_key is not None and self.exact is not None:
            await self.exact.put(plan.exact_key, body, plan.policy.exact_ttl_seconds)
