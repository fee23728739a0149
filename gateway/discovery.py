"""Replica discovery: watch the EndpointSlices labelled `tokenyard.dev/deployment` and report each deployment's
ready replicas whenever they change. Only aiohttp and pyyaml: the gateway must not pull in the `kubernetes` client."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

log = logging.getLogger(__name__)

LABEL = "tokenyard.dev/deployment"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
WATCH_SECONDS = 290  # the server ends a watch by then, so a silently dead connection is noticed soon after
Replicas = dict[str, list[str]]  # "<namespace>/<deployment>" -> sorted replica base URLs
Labels = dict[str, dict[str, str]]  # "<namespace>/<deployment>" -> its tokenyard.dev/* labels (the cache policy)


class KubernetesConfigError(RuntimeError):
    """No usable way to reach the Kubernetes API; the message names what is missing."""


class KubernetesAPIError(RuntimeError):
    """The API server answered with an error."""


class _Expired(Exception):
    """Our resourceVersion is too old for the server (410 Gone): only a fresh list catches up."""


@dataclass
class KubernetesAPI:
    base_url: str
    token: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = None  # None: plain http
    token_file: Path | None = None  # re-read when it changes: projected service-account tokens rotate
    _token_mtime: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    def headers(self) -> dict[str, str]:
        if self.token_file is not None and (mtime := self.token_file.stat().st_mtime) != self._token_mtime:
            self.token, self._token_mtime = self.token_file.read_text().strip(), mtime
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @classmethod
    def from_environment(cls) -> KubernetesAPI:
        """In a pod, its service account; elsewhere the current context of $KUBECONFIG or ~/.kube/config."""
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster()
        candidates = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        for candidate in candidates.split(os.pathsep):
            if candidate and Path(candidate).expanduser().is_file():
                return cls.from_kubeconfig(Path(candidate).expanduser())
        raise KubernetesConfigError(
            f"no Kubernetes API configuration: KUBERNETES_SERVICE_HOST is not set (not in a pod) "
            f"and no kubeconfig at {candidates} (set KUBECONFIG)"
        )

    @classmethod
    def in_cluster(cls, directory: Path = SERVICE_ACCOUNT) -> KubernetesAPI:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise KubernetesConfigError("in-cluster config: KUBERNETES_SERVICE_HOST is not set")
        for needed in ("token", "ca.crt"):
            if not (directory / needed).is_file():
                raise KubernetesConfigError(f"in-cluster config: {directory / needed} is missing (no service account?)")
        host = f"[{host}]" if ":" in host else host
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        return cls(f"https://{host}:{port}", ssl_context=context, token_file=directory / "token")

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubernetesAPI:
        config = yaml.safe_load(path.read_text()) or {}
        if not config.get("current-context"):
            raise KubernetesConfigError(f"kubeconfig {path} has no current-context")
        context = _entry(config, "contexts", config["current-context"], path)
        cluster = _entry(config, "clusters", context.get("cluster"), path)
        user = _entry(config, "users", context["user"], path) if context.get("user") else {}
        if "exec" in user or "auth-provider" in user:
            raise KubernetesConfigError(f"kubeconfig {path}: exec/auth-provider credentials are not supported")
        if not cluster.get("server"):
            raise KubernetesConfigError(f"kubeconfig {path}: cluster {context.get('cluster')!r} has no server")
        tls = _tls_context(cluster, user, path.parent) if cluster["server"].startswith("https:") else None
        token_file = path.parent / user["tokenFile"] if user.get("tokenFile") else None
        return cls(cluster["server"], token=user.get("token"), ssl_context=tls, token_file=token_file)


def _entry(config: dict[str, Any], section: str, name: str | None, path: Path) -> dict[str, Any]:
    for item in config.get(section) or []:
        if item.get("name") == name:
            return item.get(section[:-1]) or {}
    raise KubernetesConfigError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")


def _pem(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    return (base / Path(entry[key]).expanduser()).read_bytes() if entry.get(key) else None


def _tls_context(cluster: dict[str, Any], user: dict[str, Any], base: Path) -> ssl.SSLContext:
    ca = _pem(cluster, "certificate-authority", base)
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    cert, key = _pem(user, "client-certificate", base), _pem(user, "client-key", base)
    if cert and key:
        with tempfile.TemporaryDirectory() as tmp:  # load_cert_chain reads only files
            (Path(tmp) / "cert").write_bytes(cert)
            (Path(tmp) / "key").write_bytes(key)
            context.load_cert_chain(Path(tmp) / "cert", Path(tmp) / "key")
    return context


def _replica_urls(endpoint_slice: dict[str, Any], port_name: str, default_port: int) -> list[str]:
    ports = endpoint_slice.get("ports") or []
    named = [p for p in ports if p.get("name") == port_name]
    port = (named or ports or [{}])[0].get("port") or default_port  # a port without a number means "all ports"
    urls = []
    for endpoint in endpoint_slice.get("endpoints") or []:
        conditions, addresses = endpoint.get("conditions") or {}, endpoint.get("addresses") or []
        # Kubernetes: an unknown `ready` counts as ready; the addresses are fungible, so the first one will do.
        if addresses and conditions.get("ready") is not False and not conditions.get("terminating"):
            host = f"[{addresses[0]}]" if ":" in addresses[0] else addresses[0]
            urls.append(f"http://{host}:{port}")
    return urls


class _Slices:
    """What every watched slice contributes, merged into the mappings that on_change and on_labels get."""

    def __init__(
        self,
        on_change: Callable[[Replicas], None],
        port_name: str,
        default_port: int,
        on_labels: Callable[[Labels], None] | None = None,
    ) -> None:
        self.on_change, self.on_labels = on_change, on_labels
        self.port_name, self.default_port = port_name, default_port
        self.slices: dict[tuple[str, str], tuple[str, list[str], dict[str, str]]] = {}
        self.published: Replicas | None = None
        self.published_labels: Labels | None = None

    def put(self, obj: dict[str, Any], deleted: bool = False) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        labels = meta.get("labels") or {}
        deployment = labels.get(LABEL)
        if deleted or deployment is None:  # a slice that lost the label leaves, as a label selector would see it
            self.slices.pop(key, None)
        else:
            # The EndpointSlice controller copies the Service's labels: the operator puts the cache policy there.
            ours = {k: v for k, v in labels.items() if k.startswith("tokenyard.dev/") and k != LABEL}
            urls = _replica_urls(obj, self.port_name, self.default_port)
            self.slices[key] = (f"{key[0]}/{deployment}", urls, ours)

    def replace(self, namespace: str | None, items: list[dict[str, Any]]) -> None:
        # A fresh list is the whole truth for its scope: slices deleted while we were not watching go too.
        kept = {key: value for key, value in self.slices.items() if namespace is not None and key[0] != namespace}
        self.slices = kept
        for item in items:
            self.put(item)

    def publish(self) -> None:
        merged: dict[str, set[str]] = {}
        labels: Labels = {}
        for deployment, urls, ours in self.slices.values():
            merged.setdefault(deployment, set()).update(urls)
            labels.setdefault(deployment, {}).update(ours)
        replicas = {deployment: sorted(urls) for deployment, urls in sorted(merged.items())}
        if self.on_labels is not None and labels != self.published_labels:
            self.published_labels = labels
            _call(self.on_labels, labels)
        if replicas != self.published:
            self.published = replicas
            _call(self.on_change, {deployment: list(urls) for deployment, urls in replicas.items()})


def _call(callback: Callable[[Any], None], value: Any) -> None:
    try:
        callback(value)
    except Exception:  # the caller's bug must not stop discovery
        log.exception("replica discovery: %s failed", getattr(callback, "__name__", "a callback"))


async def _check(response: aiohttp.ClientResponse) -> None:
    if response.status != 200:
        raise KubernetesAPIError(f"HTTP {response.status} from {response.url.path}: {(await response.text())[:300]}")


async def _list(session: aiohttp.ClientSession, api: KubernetesAPI, url: str) -> tuple[list[dict[str, Any]], str]:
    async with session.get(url, params={"labelSelector": LABEL}, headers=api.headers()) as response:
        await _check(response)
        body = await response.json()
    return body.get("items") or [], (body.get("metadata") or {}).get("resourceVersion") or ""


async def _watch(session: aiohttp.ClientSession, api: KubernetesAPI, url: str, version: str, slices: _Slices) -> str:
    params = {"labelSelector": LABEL, "watch": "true", "allowWatchBookmarks": "true"}
    params |= {"timeoutSeconds": str(WATCH_SECONDS)} | ({"resourceVersion": version} if version else {})
    async with session.get(url, params=params, headers=api.headers()) as response:
        if response.status == 410:
            raise _Expired
        await _check(response)
        async for line in response.content:
            if not line.strip():
                continue
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired
                raise KubernetesAPIError(f"watch error {obj.get('code')}: {obj.get('message')}")
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                slices.put(obj, deleted=kind == "DELETED")
            slices.publish()
    return version  # the server ended the watch (its timeout): resume from here


async def _follow(session: aiohttp.ClientSession, api: KubernetesAPI, scope: str | None, slices: _Slices) -> None:
    url = f"{api.base_url}/apis/discovery.k8s.io/v1{f'/namespaces/{scope}' if scope else ''}/endpointslices"
    version: str | None = None  # None: list before watching
    delay = BACKOFF_FIRST
    while True:
        try:
            if version is None:
                items, version = await _list(session, api, url)
                slices.replace(scope, items)
                slices.publish()
                delay = BACKOFF_FIRST
            version = await _watch(session, api, url, version, slices)
        except _Expired:
            log.info("replica discovery (%s): resourceVersion expired, re-listing", scope or "all namespaces")
            version = None
        except Exception as error:  # never give up: the last known replicas keep serving meanwhile
            where = scope or "all namespaces"
            log.warning("replica discovery (%s): %r; retrying in %.2gs", where, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


async def watch_deployments(
    api: KubernetesAPI,
    namespaces: list[str] | None,
    on_change: Callable[[Replicas], None],
    *,
    port_name: str = "http",
    default_port: int = 8000,
    on_labels: Callable[[Labels], None] | None = None,
) -> None:
    """Run until cancelled, calling on_change with the complete mapping after the first list and on every change
    (and on_labels with each deployment's tokenyard.dev/* labels when they change)."""
    scopes: list[str | None] = [None] if namespaces is None else list(dict.fromkeys(namespaces))
    if not scopes:
        raise ValueError("namespaces: None for all of them, or a non-empty list")
    slices = _Slices(on_change, port_name, default_port, on_labels)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_SECONDS + 30)
    connector = aiohttp.TCPConnector(ssl=api.ssl_context or True)  # True: default verification (unused for http)
    # Each watch event is one JSON line: allow 2 MiB lines (etcd caps an object at 1.5 MiB), not aiohttp's default.
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, read_bufsize=1 << 20) as session:
        await asyncio.gather(*(_follow(session, api, scope, slices) for scope in scopes))
