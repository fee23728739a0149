"""Replica discovery, specified against kmock: a stateful in-memory Kubernetes API served over real HTTP.

kmock plays the API server; the tests play the EndpointSlice controller (they create, patch and delete slices
through the API, as the controller would). Where kmock differs from a real API server, a comment says so.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
import pytest_asyncio
import yaml

from tokenyard.gateway import discovery
from tokenyard.gateway.discovery import KubernetesAPI, KubernetesConfigError, watch_deployments

# kmock's bundled resource list is read with a deprecated importlib call.
pytestmark = pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")

SLICES = kmock.resource("discovery.k8s.io/v1/endpointslices")
LIST, WATCH = kmock.action.LIST, kmock.action.WATCH


def endpoint(address: str, **conditions: bool | None) -> dict[str, Any]:
    return {"addresses": [address], "conditions": conditions}


def endpoint_slice(
    name: str,
    endpoints: list[dict[str, Any]],
    *,
    deployment: str | None = "smol",
    namespace: str = "default",
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": name.rsplit("-", 1)[0]}
    if deployment is not None:
        labels[discovery.LABEL] = deployment
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "addressType": "IPv6" if ":" in str(endpoints) else "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}] if ports is None else ports,
    }


async def eventually(condition: Callable[[], bool], what: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll until the condition holds; fail after `timeout` showing `what` was seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out; last seen: {what()!r}"
        await asyncio.sleep(0.01)


class Cluster:
    """The test's side of the API: it acts as the EndpointSlice controller, through kmock's HTTP API."""

    def __init__(self, server: kmock.KubernetesEmulator) -> None:
        self.server = server

    def path(self, namespace: str, name: str = "") -> str:
        return f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}".rstrip("/")

    async def create(self, obj: dict[str, Any]) -> None:
        async with self.server.post(self.path(obj["metadata"]["namespace"]), json=obj) as response:
            assert response.status == 200, await response.text()  # kmock answers creates with 200, not 201

    async def patch(self, name: str, patch: dict[str, Any], namespace: str = "default") -> None:
        async with self.server.patch(self.path(namespace, name), json=patch) as response:
            assert response.status == 200, await response.text()

    async def delete(self, name: str, namespace: str = "default") -> None:
        async with self.server.delete(self.path(namespace, name)) as response:
            assert response.status == 200, await response.text()

    def requests(self, action: kmock.action) -> int:
        return len(self.server[action, SLICES])


class Discovery:
    """One running watch_deployments task and every mapping it reported."""

    def __init__(self, api: KubernetesAPI, namespaces: list[str] | None, **options: Any) -> None:
        self.changes: list[dict[str, list[str]]] = []
        self.task = asyncio.create_task(watch_deployments(api, namespaces, self.changes.append, **options))

    @property
    def latest(self) -> dict[str, list[str]] | None:
        return self.changes[-1] if self.changes else None

    async def until(self, expected: dict[str, list[str]]) -> None:
        await eventually(lambda: self.task.done() or self.latest == expected, lambda: self.changes)
        assert not self.task.done(), self.task.exception()  # the watch must never end on its own


@pytest_asyncio.fixture
async def cluster(kmock: kmock.KubernetesEmulator) -> Cluster:
    # kmock knows only the resources it is told about: without the bundled built-ins, listing EndpointSlices
    # before one exists answers 404 where a real server answers an empty list.
    kmock.resources.load_bundled()
    return Cluster(kmock)


@pytest_asyncio.fixture
async def start(cluster: Cluster) -> AsyncIterator[Callable[..., Discovery]]:
    started: list[Discovery] = []

    def start(namespaces: list[str] | None = None, api: KubernetesAPI | None = None, **options: Any) -> Discovery:
        started.append(Discovery(api or KubernetesAPI(str(cluster.server.url)), namespaces, **options))
        return started[-1]

    yield start
    for running in started:
        running.task.cancel()
    await asyncio.gather(*(running.task for running in started), return_exceptions=True)


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "BACKOFF_FIRST", 0.01)
    monkeypatch.setattr(discovery, "BACKOFF_MAX", 0.04)


# --- what the mapping says ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_new_slices_ready_endpoints_become_a_deployments_replicas(cluster: Cluster, start) -> None:
    found = start()
    await found.until({})  # the initial (empty) list is reported too: the caller knows discovery is running
    await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.2", ready=True), endpoint("10.0.0.1")]))
    await found.until({"default/smol": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]})
    assert cluster.requests(LIST) == 1 and cluster.requests(WATCH) == 1  # watched, not polled


@pytest.mark.asyncio
async def test_a_deployments_cache_policy_labels_are_reported_with_it(cluster: Cluster, start) -> None:
    """The operator labels each Service with its LLMDeployment's cache policy; EndpointSlices carry the copy."""
    labels: list[dict[str, dict[str, str]]] = []
    found = start(on_labels=labels.append)
    smol = endpoint_slice("smol-abc", [endpoint("10.0.0.1")])
    smol["metadata"]["labels"] |= {"tokenyard.dev/semantic-cache": "true", "tokenyard.dev/semantic-threshold": "0.97"}
    await cluster.create(smol)
    await found.until({"default/smol": ["http://10.0.0.1:8000"]})
    await eventually(lambda: bool(labels) and "default/smol" in labels[-1], lambda: labels)
    assert labels[-1] == {
        "default/smol": {"tokenyard.dev/semantic-cache": "true", "tokenyard.dev/semantic-threshold": "0.97"}
    }
    await cluster.patch("smol-abc", {"metadata": {"labels": {"tokenyard.dev/semantic-cache": "false"}}})
    await eventually(lambda: labels[-1]["default/smol"]["tokenyard.dev/semantic-cache"] == "false", lambda: labels)


@pytest.mark.asyncio
async def test_an_endpoint_that_turns_not_ready_or_terminating_leaves(cluster: Cluster, start) -> None:
    endpoints = [endpoint("10.0.0.1", ready=True), endpoint("10.0.0.2", ready=True)]
    await cluster.create(endpoint_slice("smol-abc", endpoints))
    found = start()
    await found.until({"default/smol": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]})
    endpoints[1] = endpoint("10.0.0.2", ready=False)
    await cluster.patch("smol-abc", {"endpoints": endpoints})
    await found.until({"default/smol": ["http://10.0.0.1:8000"]})
    endpoints[0] = endpoint("10.0.0.1", ready=True, serving=True, terminating=True)
    await cluster.patch("smol-abc", {"endpoints": endpoints})
    await found.until({"default/smol": []})  # it still exists, with nothing to route to


@pytest.mark.asyncio
async def test_an_endpoint_without_a_ready_condition_counts_as_ready(cluster: Cluster, start) -> None:
    await cluster.create(
        endpoint_slice(
            "smol-abc",
            [{"addresses": ["10.0.0.1"]}, endpoint("10.0.0.2", ready=None), endpoint("10.0.0.3", serving=True)],
        )
    )
    found = start()
    await found.until({"default/smol": ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]})


@pytest.mark.asyncio
async def test_the_port_named_http_is_used_else_the_first_else_the_default(cluster: Cluster, start) -> None:
    named = [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}]
    await cluster.create(endpoint_slice("a-1", [endpoint("10.0.0.1")], deployment="a", ports=named))
    await cluster.create(endpoint_slice("b-1", [endpoint("10.0.0.2")], deployment="b", ports=[{"port": 9000}]))
    await cluster.create(endpoint_slice("c-1", [endpoint("10.0.0.3")], deployment="c", ports=[]))
    found = start(default_port=8123)
    await found.until(
        {
            "default/a": ["http://10.0.0.1:8080"],
            "default/b": ["http://10.0.0.2:9000"],
            "default/c": ["http://10.0.0.3:8123"],
        }
    )
    by_name = start(port_name="metrics")
    await by_name.until(
        {
            "default/a": ["http://10.0.0.1:9090"],
            "default/b": ["http://10.0.0.2:9000"],
            "default/c": ["http://10.0.0.3:8000"],
        }
    )


@pytest.mark.asyncio
async def test_ipv6_addresses_are_bracketed(cluster: Cluster, start) -> None:
    await cluster.create(endpoint_slice("smol-v6", [endpoint("fd00::1")]))
    found = start()
    await found.until({"default/smol": ["http://[fd00::1]:8000"]})


@pytest.mark.asyncio
async def test_two_slices_of_one_service_merge(cluster: Cluster, start) -> None:
    await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.3"), endpoint("10.0.0.1")]))
    # During a hand-over the same endpoint may sit in both slices: it is one replica.
    await cluster.create(endpoint_slice("smol-def", [endpoint("10.0.0.2"), endpoint("10.0.0.1")]))
    found = start()
    await found.until({"default/smol": ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]})


@pytest.mark.asyncio
async def test_deleting_the_last_slice_removes_the_deployment(cluster: Cluster, start) -> None:
    await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.1")]))
    await cluster.create(endpoint_slice("smol-def", [endpoint("10.0.0.2")]))
    await cluster.create(endpoint_slice("other-abc", [endpoint("10.0.1.1")], deployment="other"))
    found = start()
    await found.until(
        {"default/other": ["http://10.0.1.1:8000"], "default/smol": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]}
    )
    await cluster.delete("smol-abc")
    await found.until({"default/other": ["http://10.0.1.1:8000"], "default/smol": ["http://10.0.0.2:8000"]})
    await cluster.delete("smol-def")
    await found.until({"default/other": ["http://10.0.1.1:8000"]})


@pytest.mark.asyncio
async def test_slices_without_the_label_are_ignored(cluster: Cluster, start) -> None:
    # kmock ignores labelSelector and serves every slice: this checks the watcher's own filter.
    await cluster.create(endpoint_slice("kube-dns-abc", [endpoint("10.0.9.9")], deployment=None))
    await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.1")]))
    found = start()
    await found.until({"default/smol": ["http://10.0.0.1:8000"]})
    await cluster.patch("smol-abc", {"metadata": {"labels": {discovery.LABEL: None}}})  # None removes it
    await found.until({})
    assert all("10.0.9.9" not in str(change) for change in found.changes)


@pytest.mark.asyncio
async def test_only_the_given_namespaces_are_watched(cluster: Cluster, start) -> None:
    for namespace in ("team-a", "team-b", "team-c"):
        await cluster.create(endpoint_slice("smol-1", [endpoint("10.0.0.1")], namespace=namespace))
    found = start(["team-a", "team-b"])
    await found.until({"team-a/smol": ["http://10.0.0.1:8000"], "team-b/smol": ["http://10.0.0.1:8000"]})
    await cluster.create(endpoint_slice("smol-2", [endpoint("10.0.0.2")], namespace="team-c"))
    await cluster.create(endpoint_slice("smol-2", [endpoint("10.0.0.2")], namespace="team-b"))
    await found.until(
        {"team-a/smol": ["http://10.0.0.1:8000"], "team-b/smol": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]}
    )
    assert all("team-c/smol" not in change for change in found.changes)
    read = {request.url.path for action in (LIST, WATCH) for request in cluster.server[action, SLICES]}
    assert read == {cluster.path("team-a"), cluster.path("team-b")}  # per namespace, never cluster-wide


@pytest.mark.asyncio
async def test_a_change_that_leaves_the_mapping_as_it_was_is_not_reported(cluster: Cluster, start) -> None:
    await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.1")]))
    found = start()
    first = {"default/smol": ["http://10.0.0.1:8000"]}
    await found.until(first)
    await cluster.patch("smol-abc", {"metadata": {"annotations": {"touched": "yes"}}})
    await cluster.create(endpoint_slice("smol-def", [endpoint("10.0.0.1", ready=False)]))
    await cluster.create(endpoint_slice("smol-ghi", [endpoint("10.0.0.2")]))
    second = {"default/smol": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]}
    await found.until(second)
    assert found.changes == [first, second]


# --- staying alive -------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_watch_survives_the_server_closing_the_stream(cluster: Cluster, start, caplog) -> None:
    # The first watch ends at once, as a real server's does at its timeout; later watches get kmock's own stream.
    cluster.server[WATCH, SLICES] << iter([b""])
    found = start()
    await found.until({})
    await eventually(lambda: cluster.requests(WATCH) >= 2, lambda: cluster.requests(WATCH))
    await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.1")]))
    await found.until({"default/smol": ["http://10.0.0.1:8000"]})
    # It resumed from the list's resourceVersion (kmock's is always "...") instead of listing again.
    assert cluster.requests(LIST) == 1
    assert [request.params.get("resourceVersion") for request in cluster.server[WATCH, SLICES]][:2] == ["...", "..."]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a normal end: no error, no back-off


EXPIRED = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410}


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["HTTP 410", "ERROR event"])
async def test_an_expired_resource_version_relists(cluster: Cluster, start, how: str) -> None:
    await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.1")]))
    await cluster.create(endpoint_slice("smol-def", [endpoint("10.0.0.2")]))
    expire = asyncio.Event()

    async def expired() -> None:  # kmock streams an awaitable's result: Event.wait()'s True would go out as JSON
        await expire.wait()

    if how == "HTTP 410":  # the watch request itself is refused
        cluster.server[WATCH, SLICES] << 410 << iter([expired, EXPIRED])
    else:  # the watch is accepted, then expires mid-stream
        cluster.server[WATCH, SLICES] << iter([b"", expired, {"type": "ERROR", "object": EXPIRED}])
    found = start()
    await found.until({"default/smol": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]})
    # A deletion the watcher never heard of (its event lies before the expired resourceVersion): only a
    # re-list can reveal it. kmock keeps no event history, so the test removes the object without an event.
    del cluster.server.objects[SLICES, "default", "smol-def"]
    expire.set()
    await found.until({"default/smol": ["http://10.0.0.1:8000"]})
    assert cluster.requests(LIST) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("failing", ["list", "watch", "watch ERROR event"])
async def test_api_errors_are_logged_and_retried(cluster: Cluster, start, fast_backoff, caplog, failing) -> None:
    # Each failure happens once (a depletable kmock reaction); kmock's own handling answers the retry.
    forbidden = {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "no RBAC"}
    broken = {"kind": "Status", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd down"}
    if failing == "list":
        cluster.server[LIST, SLICES] << 403 << iter([forbidden])
    elif failing == "watch":
        cluster.server[WATCH, SLICES] << 500 << iter([broken])
    else:
        cluster.server[WATCH, SLICES] << iter([b"", {"type": "ERROR", "object": broken}])
    await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.1")]))
    found = start()
    await found.until({"default/smol": ["http://10.0.0.1:8000"]})
    await cluster.create(endpoint_slice("smol-def", [endpoint("10.0.0.2")]))
    await found.until({"default/smol": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]})
    warnings = [r for r in caplog.records if r.name == discovery.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying" in warnings[0].getMessage()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.asyncio
async def test_connection_errors_back_off_exponentially_up_to_a_cap(start, fast_backoff, caplog) -> None:
    nobody = start(api=KubernetesAPI(f"http://127.0.0.1:{free_port()}"))

    def delays() -> list[str]:
        return [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records if r.name == discovery.__name__]

    await eventually(lambda: len(delays()) >= 5, delays)
    assert delays()[:5] == ["0.01s", "0.02s", "0.04s", "0.04s", "0.04s"]
    assert not nobody.task.done()


def test_the_default_backoff_starts_at_half_a_second_and_stops_doubling_at_30_seconds() -> None:
    assert (discovery.BACKOFF_FIRST, discovery.BACKOFF_MAX) == (0.5, 30.0)


@pytest.mark.asyncio
async def test_a_failing_callback_does_not_stop_discovery(cluster: Cluster, start, caplog) -> None:
    seen: list[dict[str, list[str]]] = []

    def on_change(mapping: dict[str, list[str]]) -> None:
        seen.append(mapping)
        if len(seen) == 1:
            raise RuntimeError("the caller's bug")

    task = asyncio.create_task(watch_deployments(KubernetesAPI(str(cluster.server.url)), None, on_change))
    try:
        await eventually(lambda: len(seen) == 1, lambda: seen)
        await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.1")]))
        await eventually(lambda: len(seen) == 2, lambda: seen)
        assert seen == [{}, {"default/smol": ["http://10.0.0.1:8000"]}]
        assert "on_change failed" in caplog.text
    finally:
        task.cancel()


# --- how to reach the API server ------------------------------------------------------------------------------------


def write_kubeconfig(path: Path, clusters: dict[str, dict], users: dict[str, dict], current: str | None) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster} for name, cluster in clusters.items()],
        "users": [{"name": name, "user": user} for name, user in users.items()],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}} for name in clusters],
        "current-context": current,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def outside_a_cluster(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return monkeypatch


@pytest.mark.asyncio
async def test_from_environment_reads_a_kubeconfig_with_a_token(cluster, start, tmp_path, outside_a_cluster) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        clusters={"prod": {"server": "https://prod.example:6443"}, "kmock": {"server": str(cluster.server.url)}},
        users={"prod": {"token": "wrong"}, "kmock": {"token": "s3cret"}},
        current="kmock",
    )
    outside_a_cluster.setenv("KUBECONFIG", f"{tmp_path / 'absent'}{os.pathsep}{path}")  # the first that exists
    api = KubernetesAPI.from_environment()
    assert api.base_url == str(cluster.server.url).rstrip("/") and api.ssl_context is None
    assert "s3cret" not in repr(api)  # a logged API object must not leak the token
    await cluster.create(endpoint_slice("smol-abc", [endpoint("10.0.0.1")]))
    found = start(api=api)
    await found.until({"default/smol": ["http://10.0.0.1:8000"]})
    assert {request.headers.get("Authorization") for request in cluster.server[SLICES]} - {None} == {"Bearer s3cret"}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made by the openssl command (Python alone cannot make one)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is missing")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=tokenyard-test"]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def ca_subjects(api: KubernetesAPI) -> list[str]:
    assert api.ssl_context is not None
    return [value for cert in api.ssl_context.get_ca_certs() for rdn in cert["subject"] for _, value in rdn]


def test_a_kubeconfig_with_inline_client_certificate_and_ca(tmp_path, certificate, outside_a_cluster) -> None:
    cert, key = certificate
    cluster = {"server": "https://10.0.0.1:6443", "certificate-authority-data": b64(cert)}
    user = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    path = write_kubeconfig(tmp_path / "config", {"c": cluster}, {"c": user}, "c")
    outside_a_cluster.setenv("KUBECONFIG", str(path))
    api = KubernetesAPI.from_environment()
    assert api.base_url == "https://10.0.0.1:6443" and api.headers() == {}
    assert api.ssl_context.verify_mode == ssl.CERT_REQUIRED and api.ssl_context.check_hostname
    assert ca_subjects(api) == ["tokenyard-test"]  # only the cluster's CA, not the system's
    # kmock serves plain HTTP only, so no TLS handshake checks that the client certificate is presented.


def test_a_kubeconfig_with_certificate_files_relative_to_it(tmp_path, certificate, outside_a_cluster) -> None:
    cert, key = certificate
    (tmp_path / "pki").mkdir()
    for source, name in ((cert, "ca.crt"), (cert, "client.crt"), (key, "client.key")):
        (tmp_path / "pki" / name).write_bytes(source.read_bytes())
    cluster = {"server": "https://k8s:6443", "certificate-authority": "pki/ca.crt"}
    user = {"client-certificate": "pki/client.crt", "client-key": "pki/client.key", "token": "t"}
    outside_a_cluster.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", {"c": cluster}, {"c": user}, "c")))
    api = KubernetesAPI.from_environment()
    assert ca_subjects(api) == ["tokenyard-test"] and api.headers() == {"Authorization": "Bearer t"}


def test_insecure_skip_tls_verify_turns_verification_off(tmp_path, outside_a_cluster) -> None:
    cluster = {"server": "https://k8s:6443", "insecure-skip-tls-verify": True}
    outside_a_cluster.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", {"c": cluster}, {"c": {}}, "c")))
    api = KubernetesAPI.from_environment()
    assert api.ssl_context.verify_mode == ssl.CERT_NONE and not api.ssl_context.check_hostname


def test_in_a_pod_the_service_account_is_used_and_a_rotated_token_is_reread(tmp_path, certificate, monkeypatch) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "ca.crt").write_bytes(certificate[0].read_bytes())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    api = KubernetesAPI.in_cluster(tmp_path)
    assert api.base_url == "https://[fd00::1]:443" and ca_subjects(api) == ["tokenyard-test"]
    assert api.headers() == {"Authorization": "Bearer first"}
    (tmp_path / "token").write_text("second\n")
    os.utime(tmp_path / "token", (1, os.stat(tmp_path / "token").st_mtime + 60))  # the kubelet swaps the file
    assert api.headers() == {"Authorization": "Bearer second"}


def test_without_any_configuration_the_error_says_what_is_missing(tmp_path, outside_a_cluster) -> None:
    outside_a_cluster.setenv("KUBECONFIG", str(tmp_path / "nope"))
    with pytest.raises(KubernetesConfigError, match=r"KUBERNETES_SERVICE_HOST is not set.*nope"):
        KubernetesAPI.from_environment()
    outside_a_cluster.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    with pytest.raises(KubernetesConfigError, match=r"token is missing"):
        KubernetesAPI.in_cluster(tmp_path)  # a pod without a mounted service-account token


def test_a_kubeconfig_without_a_current_context_or_server_is_refused(tmp_path, outside_a_cluster) -> None:
    outside_a_cluster.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "a", {"c": {}}, {"c": {}}, None)))
    with pytest.raises(KubernetesConfigError, match="no current-context"):
        KubernetesAPI.from_environment()
    outside_a_cluster.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "b", {"c": {}}, {"c": {}}, "c")))
    with pytest.raises(KubernetesConfigError, match="'c' has no server"):
        KubernetesAPI.from_environment()
    outside_a_cluster.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "c", {"c": {}}, {"c": {}}, "x")))
    with pytest.raises(KubernetesConfigError, match="no context named 'x'"):
        KubernetesAPI.from_environment()
