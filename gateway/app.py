"""The gateway's HTTP API: the runtime's OpenAI surface, in front of its replicas. This module composes the
parts (inputs, tenants and limits, the cache, the forwarder, the health checker, discovery) and serves them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Route

from tokenyard.gateway.caching import CachePlan, Hit, ResponseCache, SemanticCache
from tokenyard.gateway.config import GatewayConfig, deployment_policy
from tokenyard.gateway.discovery import KubernetesAPI, watch_deployments
from tokenyard.gateway.embeddings import LocalEmbedder, RemoteEmbedder
from tokenyard.gateway.fleet import STATIC, Fleet
from tokenyard.gateway.forward import Forwarder, Job, unless_client_leaves
from tokenyard.gateway.health import HealthChecker
from tokenyard.gateway.inputs import CHAT, COMPLETIONS, InvalidRequest, ParsedRequest, parse_request
from tokenyard.gateway.metrics import GatewayMetrics
from tokenyard.gateway.openapi import install_openapi
from tokenyard.gateway.replay import replay_stream
from tokenyard.gateway.router import Router
from tokenyard.gateway.stores import ExactCache, MemoryExactCache, RedisStore, StoreGuard, TenantLimits
from tokenyard.gateway.upstream import UpstreamClient
from tokenyard.gateway.vector_index import MemoryVectorIndex, PgVectorIndex
from tokenyard.wire.asgi import error_response, install_error_handlers

log = logging.getLogger(__name__)
ENDPOINTS = {CHAT: "chat", COMPLETIONS: "completions"}
EXPIRY_INTERVAL_SECONDS = 60.0
_EMPTY: dict[int | str, dict[str, Any]] = {200: {"description": "yes (no body)", "content": {}}}


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.fleet = Fleet(config.upstreams, self._router)
        self.upstream = UpstreamClient(config)
        self.forwarder = Forwarder(config, self.fleet, self.upstream, self.metrics)
        self.health = HealthChecker(self.fleet, self.upstream, self.metrics)
        self.redis = (
            RedisStore(config.redis_url, config.store_timeout_seconds, self._count_store_error)
            if config.redis_url
            else None
        )
        exact = ExactCache(self.redis) if self.redis else (MemoryExactCache() if config.local_cache else None)
        self.cache = ResponseCache(exact, self._semantic_cache(), self.metrics)
        self.limits = TenantLimits(self.redis) if self.redis else None
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshes: set[asyncio.Task[None]] = set()  # replica checks started by discovery, held until done
        for _, replica in self.fleet.replicas():
            self.metrics.upstream_healthy.labels(replica.url).set(1)

    def _router(self, urls: list[str]) -> Router:
        c = self.config
        return Router(urls, c.max_outstanding_per_replica, c.max_queued_requests, c.max_queue_wait_seconds)

    def _semantic_cache(self) -> SemanticCache | None:
        if not self.config.semantic_enabled:
            return None
        settings = self.config.embeddings
        embedder = RemoteEmbedder(settings.url, settings.model) if settings.url else LocalEmbedder()
        index = (
            PgVectorIndex(self.config.database_url, self.config.store_timeout_seconds)
            if self.config.database_url
            else MemoryVectorIndex()
        )
        index_guard = StoreGuard(index.name, self.config.store_timeout_seconds, index.errors, self._count_store_error)
        embed_guard = StoreGuard("embeddings", settings.timeout_seconds, embedder.errors, self._count_store_error)
        return SemanticCache(embedder, index, index_guard, embed_guard)

    def _count_store_error(self, store: str, kind: str) -> None:
        self.metrics.store_errors.labels(store, kind).inc()

    def tenant(self, request: Request) -> str | None:
        if self.config.open_access:
            return "anonymous"
        header = request.headers.get("authorization", "")
        tenant = (
            self.config.tenant_for_key(header.removeprefix("Bearer ").strip()) if header.startswith("Bearer ") else None
        )
        return tenant.name if tenant else None

    async def handle(self, request: Request, endpoint: str) -> Response:
        # The key first: who is asking decides whether the body is worth reading.
        tenant = self.tenant(request)
        if tenant is None:
            return error_response(401, "invalid or missing API key (send Authorization: Bearer <key>)")
        try:
            parsed = parse_request(await request.body(), endpoint)
        except InvalidRequest as invalid:
            self.metrics.requests.labels(tenant, "", "none", "400").inc()
            return error_response(400, invalid.message, invalid.param)
        model = parsed.fields.model or ""
        refused = await self._over_limit(tenant, model)
        if refused is not None:
            return refused
        policy = deployment_policy(self.config.policy(model, endpoint), self.fleet.labels_for(model))
        plan = self.cache.plan(request.headers.get("cache-control", ""), parsed.body, endpoint, tenant, model, policy)
        hit = await self.cache.lookup(plan, tenant)
        if hit is not None:
            return await self._serve_hit(hit, parsed, tenant, model, plan)
        job = Job(
            endpoint,
            parsed,
            tenant,
            model,
            "bypass" if plan.bypass else "miss",
            request.headers.get("accept", "*/*"),
            lambda result: self._after(tenant, plan, result),
        )
        return await unless_client_leaves(request.receive, self.forwarder.forward(job))

    async def _over_limit(self, tenant_name: str, model: str) -> Response | None:
        tenant = next((t for t in self.config.tenants if t.name == tenant_name), None)
        if tenant is None or self.limits is None:
            return None
        retry_after = await self.limits.admit(tenant.name, tenant.requests_per_minute, tenant.tokens_per_minute)
        if not retry_after:
            return None
        self.metrics.requests.labels(tenant_name, model, "none", "429").inc()
        message = f"tenant {tenant.name} is over its per-minute limit"
        return error_response(429, message, headers={"Retry-After": str(retry_after)})

    async def _serve_hit(self, hit: Hit, parsed: ParsedRequest, tenant: str, model: str, plan: CachePlan) -> Response:
        if hit.outcome == "hit-semantic":  # the next identical request is then an exact hit, without an embedding
            await self.cache.write_back(plan, hit.body)
        cached = json.loads(hit.body)
        tokens = (cached.get("usage") or {}).get("total_tokens", 0)
        self.metrics.requests.labels(tenant, model, hit.outcome, "200").inc()
        self.metrics.tokens_saved.labels(tenant, model).inc(tokens)
        self.metrics.cost_saved.labels(tenant, model).inc(tokens / 1000 * plan.policy.cost_per_1k_tokens)
        headers = {"x-tokenyard-cache": hit.outcome}
        if hit.similarity is not None:
            headers["x-tokenyard-similarity"] = f"{hit.similarity:.4f}"
        if parsed.stream:
            events = replay_stream(cached, parsed.include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return Response(hit.body, media_type="application/json", headers=headers)

    async def _after(self, tenant: str, plan: CachePlan, result: dict[str, Any]) -> None:
        if self.limits:
            await self.limits.add_tokens(tenant, int((result.get("usage") or {}).get("total_tokens", 0)))
        if not plan.bypass:
            await self.cache.store(plan, tenant, result)

    async def models(self) -> Response:
        if STATIC not in self.fleet.routers:
            data = [{"id": name, "object": "model", "owned_by": "tokenyard"} for name in self.fleet.models()]
            return JSONResponse({"object": "list", "data": data})
        return await self.forwarder.models(self.fleet.routers[STATIC])

    def drain(self) -> None:
        """SIGTERM: readiness fails from now on, so Kubernetes takes this pod out of the Service."""
        self.draining = True

    async def start(self) -> None:
        self.upstream.open()
        self._tasks = [asyncio.create_task(self.health.run())]
        if self.config.discovery == "kubernetes":
            api = KubernetesAPI.from_environment()
            watch = watch_deployments(api, self.config.namespaces, self.on_discovery, on_labels=self.on_labels)
            self._tasks.append(asyncio.create_task(watch))
        if self.cache.semantic:
            await self.cache.semantic.index.open()
            self._tasks.append(asyncio.create_task(self.expire_semantic_entries(EXPIRY_INTERVAL_SECONDS)))

    async def expire_semantic_entries(self, interval: float) -> None:
        semantic = self.cache.semantic
        if semantic is None:  # started only with a semantic cache (start())
            return
        while True:
            await asyncio.sleep(interval)
            await semantic.index_guard.call(semantic.index.delete_expired, 0)

    def on_labels(self, labels: dict[str, dict[str, str]]) -> None:
        self.fleet.labels = labels

    def on_discovery(self, replicas: dict[str, list[str]]) -> None:
        self.fleet.update(replicas)
        refresh = asyncio.create_task(self.health.check_all())  # learn new replicas' models now
        self._refreshes.add(refresh)
        refresh.add_done_callback(self._refreshes.discard)

    async def close(self) -> None:
        for task in (*self._tasks, *self._refreshes):
            task.cancel()
        await self.upstream.close()
        if self.redis:
            await self.redis.close()
        if self.cache.semantic:
            await self.cache.semantic.index.close()


def build_app(config: GatewayConfig) -> FastAPI:
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if config.open_access:
            log.warning("no tenants configured: the gateway is open to anyone who can reach it (local mode)")
        await gateway.start()
        yield
        await gateway.close()

    app = FastAPI(title="tokenyard gateway", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.gateway = gateway
    install_error_handlers(app)
    install_openapi(app)
    for path, name in ENDPOINTS.items():

        async def proxy(request: Request, _path: str = path) -> Response:
            return await gateway.handle(request, _path)

        # Plain Starlette routes: the body is parsed and checked in inputs.py (see openapi.py for why)
        app.router.routes.append(Route(path, proxy, methods=["POST"], name=name))
    _add_read_routes(app, gateway)
    return app


def _add_read_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.get("/v1/models")
    async def models() -> Response:
        return await gateway.models()

    # /health and /ready answer with a status and no body; /metrics in Prometheus' text format.
    @app.get("/health", response_class=Response, responses=_EMPTY | {503: {"description": "no healthy replica"}})
    async def health() -> Response:
        return Response(status_code=200 if any(r.healthy for _, r in gateway.fleet.replicas()) else 503)

    @app.get("/ready", response_class=Response, responses=_EMPTY | {503: {"description": "shutting down"}})
    async def ready() -> Response:
        """Readiness: whether this gateway takes new requests (it does until SIGTERM, models or not)."""
        return Response(status_code=503 if gateway.draining else 200)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
