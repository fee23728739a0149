"""The operator under test runs for real (kopf, the official client, our handlers) against kmock, a stateful
in-memory Kubernetes API served over HTTP. kmock runs no controllers: the tests play the Deployment controller and
the kubelet by patching statuses and creating pods through the API, as those would.

`ApiServer` adds to kmock what a real API server does and the operator relies on: uid, creationTimestamp,
resourceVersion and generation on every object, and it can answer with errors for a while (fault injection)."""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import kopf
import pytest
import pytest_asyncio
import yaml
from kmock._internal.k8s import KubernetesError

from tokenyard.operator.config import OperatorConfig
from tokenyard.operator.handlers import build_registry, settings
from tokenyard.operator.kube import KubernetesClient

NAMESPACE = "default"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LLMD = "tokenyard.dev/v1alpha1/llmdeployments"
PATHS = {
    "llmdeployments": "/apis/tokenyard.dev/v1alpha1",
    "deployments": "/apis/apps/v1",
    "services": "/api/v1",
    "pods": "/api/v1",
    "events": "/api/v1",
    "poddisruptionbudgets": "/apis/policy/v1",
    "horizontalpodautoscalers": "/apis/autoscaling/v2",
    "scaledobjects": "/apis/keda.sh/v1alpha1",
    "servicemonitors": "/apis/monitoring.coreos.com/v1",
}


@dataclass
class Fault:
    method: str
    plural: str
    status: int
    remaining: int


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    faults: list[Fault] = attrs.field(factory=list)
    _versions: itertools.count = attrs.field(factory=lambda: itertools.count(1))

    def fail(self, method: str, plural: str, status: int, times: int) -> Fault:
        """The next `times` requests of this method on this resource fail with `status`, changing nothing."""
        fault = Fault(method.upper(), plural, status, times)
        self.faults.append(fault)
        return fault

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None:
            for fault in self.faults:
                if fault.remaining and request.method.name == fault.method and request.resource.plural == fault.plural:
                    fault.remaining -= 1
                    error = KubernetesError(status=fault.status, reason="Injected", message="injected by the test")
                    return await self._render_error(error)
            if self._stale(request):
                # A JSON-patch whose `test` of resourceVersion fails is a 422 on a real API server (kmock: 500);
                # kopf relies on it to retry its finalizer and annotation patches on the next event.
                error = KubernetesError(status=422, reason="Invalid", message="the test operation failed")
                return await self._render_error(error)
            self._stamp(request)
        return await super()._handle(request)

    def _stale(self, request: kmock.Request) -> bool:
        if request.action != kmock.action.UPDATE or not isinstance(request.data, list):
            return False
        key = (request.resource, request.namespace, request.name)
        current = self.objects[key].get("metadata", {}).get("resourceVersion") if key in self.objects else None
        return any(
            op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion" and op.get("value") != current
            for op in request.data
        )

    def _stamp(self, request: kmock.Request) -> None:
        """What the API server writes itself: identity on create; resourceVersion and generation on change."""
        if isinstance(request.data, list):  # a JSON-patch: strip the tests, which _stale has checked
            request.data[:] = [op for op in request.data if op.get("op") != "test"]
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": str(next(self._versions))})
            return
        data = request.data if isinstance(request.data, dict) else None
        if data is None:
            return
        if request.action == kmock.action.CREATE:
            meta = data.setdefault("metadata", {})
            meta.setdefault("namespace", request.namespace)
            if "name" not in meta and "generateName" in meta:  # kopf names its Events this way
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            meta["generation"] = 1
            meta["resourceVersion"] = str(next(self._versions))
        elif request.action == kmock.action.UPDATE and request.name:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects:
                return
            current = self.objects[key]
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(self._versions))
            generation = current.get("metadata", {}).get("generation", 1)
            if (
                request.subresource is None
                and "spec" in data
                and _merged(current.get("spec"), data["spec"]) != dict(current.get("spec") or {})
            ):
                generation += 1
            meta["generation"] = generation
            # Immutable identity: a patch may not change it (kmock would merge whatever it is sent).
            for field in ("uid", "creationTimestamp"):
                if field in current.get("metadata", {}):
                    meta[field] = current["metadata"][field]


def _merged(base: Any, patch: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = {k: copy.deepcopy(v) for k, v in base.items()}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out.get(key), value)
    return out


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": ApiServer}


class Cluster:
    """The test's hands on the API: it applies resources as kubectl would and plays the controllers."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server

    def path(self, plural: str, name: str = "", subresource: str = "") -> str:
        return "/".join(p for p in (PATHS[plural], "namespaces", NAMESPACE, plural, name, subresource) if p)

    async def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        body.setdefault("metadata", {})["namespace"] = NAMESPACE
        async with self.server.post(self.path(plural), json=body) as response:
            assert response.status == 200, await response.text()  # kmock answers creates with 200, not 201
            return await response.json()

    async def get(self, plural: str, name: str) -> dict[str, Any] | None:
        async with self.server.get(self.path(plural, name)) as response:
            if response.status == 404:
                return None
            assert response.status == 200, await response.text()
            return await response.json()

    async def list(self, plural: str) -> list[dict[str, Any]]:
        async with self.server.get(self.path(plural)) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["items"]

    async def patch(self, plural: str, name: str, patch: dict[str, Any], subresource: str = "") -> None:
        async with self.server.patch(self.path(plural, name, subresource), json=patch) as response:
            assert response.status == 200, await response.text()

    async def delete(self, plural: str, name: str) -> None:
        async with self.server.delete(self.path(plural, name)) as response:
            assert response.status == 200, await response.text()

    async def apply_example(self, filename: str, **spec_changes: Any) -> dict[str, Any]:
        body = yaml.safe_load((EXAMPLES / filename).read_text())
        body["spec"] = _merged(body["spec"], spec_changes)
        return await self.create("llmdeployments", body)

    # --- playing the controllers ------------------------------------------------------------------------------

    async def rollout(self, name: str, ready: int | None = None) -> dict[str, Any]:
        """The Deployment controller's report: every wanted replica updated to the current template, `ready` of
        them ready (default: all)."""
        # the operator may report Progressing a moment before its Deployment write lands (a loaded machine)
        deployment = await eventually(lambda: self.get("deployments", name))
        wanted = deployment["spec"].get("replicas", 1)
        ready = wanted if ready is None else ready
        status = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": wanted,
            "updatedReplicas": wanted,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        await self.patch("deployments", name, {"status": status}, "status")
        return deployment

    async def pod(self, name: str, deployment: str, status: dict[str, Any]) -> None:
        """A pod of the deployment's current revision, as the kubelet reports it."""
        template = (await self.get("deployments", deployment))["spec"]["template"]
        await self.create(
            "pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": template["metadata"]["labels"]},
                "spec": template["spec"],
                "status": status,
            },
        )


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Polls an async check until it returns something truthy; fails with the last value seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s; last seen: {value!r}")
        await asyncio.sleep(interval)


def condition(llmd: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    conditions = ((llmd or {}).get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), {})


def declare_resources(server: ApiServer, *, keda: bool = False, prometheus_operator: bool = False) -> None:
    server.resources.load_bundled()
    server.resources[LLMD] = {
        "kind": "LLMDeployment",
        "singular": "llmdeployment",
        "namespaced": True,
        "shortnames": {"llmd"},
        "subresources": {"status", "scale"},
        "verbs": {"get", "list", "watch", "create", "update", "patch", "delete"},
    }
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    if keda:
        server.resources["keda.sh/v1alpha1/scaledobjects"] = {
            "kind": "ScaledObject",
            "namespaced": True,
            "verbs": verbs,
        }
    if prometheus_operator:
        server.resources["monitoring.coreos.com/v1/servicemonitors"] = {
            "kind": "ServiceMonitor",
            "namespaced": True,
            "verbs": verbs,
        }


@pytest.fixture
def cluster(kmock: ApiServer) -> Cluster:
    declare_resources(kmock)
    return Cluster(kmock)


TEST_CONFIG = OperatorConfig(
    runtime_image="registry.test/runtime-cuda:1",
    runtime_cpu_image="registry.test/runtime:1",
    drift_interval_seconds=1.0,
    status_interval_seconds=0.5,
    api_retry_base_seconds=0.05,
    api_retry_max_seconds=0.4,
)


@pytest_asyncio.fixture
async def start_operator(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Any]]:
    """Starts the operator (kopf with our registry) in this event loop; stops it at the end of the test."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(cluster.server.url)}}],
                "users": [{"name": "kmock", "user": {"token": "test"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
                "current-context": "kmock",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    threads: list[tuple[threading.Event, threading.Thread]] = []

    async def start(config: OperatorConfig = TEST_CONFIG) -> None:
        registry = build_registry(config, KubernetesClient.from_environment(str(kubeconfig)))

        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            return kopf.login_with_kubeconfig(**kwargs)

        kopf_settings = settings(config)
        kopf_settings.watching.server_timeout = None  # kmock's watches never time out on their own
        stop, ready = threading.Event(), threading.Event()
        operator = kopf.operator(
            registry=registry,
            settings=kopf_settings,
            # Cluster-wide: with named namespaces kopf also lists /api/v1/namespaces, a path kmock 0.8 cannot parse.
            clusterwide=True,
            standalone=True,
            stop_flag=stop,
            ready_flag=ready,
        )
        # Its own thread and loop: on exit, kopf cancels every task started in its loop after it (pytest's too).
        thread = threading.Thread(target=asyncio.run, args=(operator,), name="operator", daemon=True)
        thread.start()
        threads.append((stop, thread))
        assert await asyncio.to_thread(ready.wait, 10), "the operator did not start"

    yield start
    for stop, thread in threads:
        stop.set()
        await asyncio.to_thread(thread.join, 15)
        assert not thread.is_alive(), "the operator did not stop"
