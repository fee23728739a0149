"""``tokenyard_gateway_*`` metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "tokenyard_gateway_requests",
            "Requests by tenant, model, cache outcome and status",
            ["tenant", "model", "cache", "status"],
            registry=r,
        )
        self.cache_lookup = Histogram(
            "tokenyard_gateway_cache_lookup_seconds", "Cache lookup time", ["cache"], buckets=_SECONDS, registry=r
        )
        self.embedding = Histogram(
            "tokenyard_gateway_embedding_seconds",
            "Time to embed a prompt for the semantic cache",
            buckets=_SECONDS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "tokenyard_gateway_upstream_seconds",
            "Upstream time to response end",
            ["upstream"],
            buckets=_SECONDS,
            registry=r,
        )
        self.store_errors = Counter(
            "tokenyard_gateway_store_errors", "Cache/limit store failures", ["store", "error"], registry=r
        )
        self.tokens_saved = Counter(
            "tokenyard_gateway_tokens_saved", "Tokens served from cache", ["tenant", "model"], registry=r
        )
        self.cost_saved = Counter(
            "tokenyard_gateway_cost_saved", "Estimated cost saved by the cache", ["tenant", "model"], registry=r
        )
        self.upstream_healthy = Gauge(
            "tokenyard_gateway_upstream_healthy", "1 if the replica takes traffic", ["upstream"], registry=r
        )
        self.upstream_retries = Counter(
            "tokenyard_gateway_upstream_retries", "Requests retried on another replica", ["upstream"], registry=r
        )
