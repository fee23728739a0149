"""The few Kubernetes API calls the operator makes, on the official client, with plain dicts in and out.

Children are written with server-side apply (field manager `tokenyard-operator`), so fields the spec stops
setting are removed by the API server, and fields other controllers own (an HPA's replica count) are left alone."""

from __future__ import annotations

import json
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tokenyard.operator.children import Kind, kind_of

FIELD_MANAGER = "tokenyard-operator"
# Answers that say "try again later", not "this request is wrong".
TRANSIENT_STATUSES = {409, 429, 500, 502, 503, 504}


def is_transient(error: BaseException) -> bool:
    if isinstance(error, ApiException):
        return error.status in TRANSIENT_STATUSES or error.status == 0  # 0: no answer at all
    return isinstance(error, (ConnectionError, TimeoutError, OSError)) or type(error).__module__.startswith("urllib3")


def api_error_message(error: ApiException) -> str:
    if error.body is None:
        return f"{error.status} {error.reason}"
    try:
        message = json.loads(error.body).get("message")
        return str(message) if message else str(error.reason)
    except (TypeError, ValueError):
        return f"{error.status} {error.reason}"


class KubernetesClient:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubernetesClient:
        """The in-cluster service account inside a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return cls(client.ApiClient(configuration))
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        return cls(config.new_client_from_config(config_file=path))

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=30)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else None

    @staticmethod
    def path(kind: Kind, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        root = f"/api/{kind.api_version}" if "/" not in kind.api_version else f"/apis/{kind.api_version}"
        parts = [root, "namespaces", namespace, kind.plural, name, subresource]
        return "/".join(p for p in parts if p)

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] | None = self._call("GET", self.path(kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def list(self, kind: Kind, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items = self._call("GET", self.path(kind, namespace), query=[("labelSelector", selector)])["items"]
        # A real API server filters by the selector; checking again costs nothing and keeps us honest with any server.
        return [i for i in items if labels.items() <= (i.get("metadata", {}).get("labels") or {}).items()]

    def create(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        self._call("POST", self.path(kind_of(manifest), meta["namespace"]), body=manifest)

    def apply(self, manifest: dict[str, Any]) -> None:
        """Server-side apply: the manifest becomes exactly what this operator owns of the object."""
        meta = manifest["metadata"]
        self._call(
            "PATCH",
            self.path(kind_of(manifest), meta["namespace"], meta["name"]),
            body=manifest,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def patch_status(self, kind: Kind, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call(
            "PATCH",
            self.path(kind, namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Deletes it (its pods too: foreground propagation); False when it was already gone."""
        try:
            self._call("DELETE", self.path(kind, namespace, name), body={"propagationPolicy": "Foreground"})
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def serves(self, group_version: str) -> bool:
        """Whether the cluster serves this API group/version (e.g. keda.sh/v1alpha1 once KEDA is installed)."""
        try:
            self._call("GET", f"/apis/{group_version}")
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True
