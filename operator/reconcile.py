"""Reconciling one LLMDeployment: make its children match the spec, then say truthfully how it is doing.

Both steps are idempotent: a child already as desired is not written, and a status equal to the one published is
not patched, so running them twice changes nothing."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tokenyard.operator import children
from tokenyard.operator.children import CHILD_KINDS, DEPLOYMENT, LABEL_DEPLOYMENT, Kind, kind_of
from tokenyard.operator.config import OperatorConfig
from tokenyard.operator.kube import KubernetesClient
from tokenyard.operator.resource import LLMDeployment, readable_errors
from tokenyard.operator.status import failed, observe

LLMD = Kind("tokenyard.dev/v1alpha1", "LLMDeployment", "llmdeployments")
PODS = Kind("v1", "Pod", "pods")

# (the LLMDeployment's body, reason, message, is_warning): posts a Kubernetes Event about it.
EventSink = Callable[[dict[str, Any], str, str, bool], None]


class InvalidSpec(ValueError):
    """The spec breaks a rule the API server did not check (a CRD applied without its validations, say)."""


class ForeignChild(RuntimeError):
    """An object with a child's name exists but belongs to someone else: it is never overwritten."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(body: dict[str, Any]) -> LLMDeployment:
    try:
        return LLMDeployment.model_validate({"spec": body.get("spec") or {}})
    except ValidationError as error:
        raise InvalidSpec(f"invalid spec: {readable_errors(error)}") from None


def is_subset(desired: Any, live: Any) -> bool:
    """Whether everything desired is in the live object (which may hold more: server defaults, others' fields)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and is_subset(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(map(is_subset, desired, live))
    return desired == live or (isinstance(live, (int, float)) and str(desired) == str(live))


def owned_by(obj: dict[str, Any], llmd: dict[str, Any]) -> bool:
    uid = llmd["metadata"].get("uid")
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


@dataclass
class Reconciler:
    api: KubernetesClient
    config: OperatorConfig
    events: EventSink

    def apply(self, llmd: dict[str, Any]) -> list[str]:
        """Creates, repairs or removes children until they match the spec; returns what it changed."""
        resource = parse(llmd)
        served = self._served_kinds()
        installed = {k.optional_group for k in served if k.optional_group}
        desired = children.desired_children(llmd, resource, self.config, installed)
        changes = [change for manifest in desired if (change := self._apply_child(llmd, manifest))]
        wanted = {kind_of(m) for m in desired}
        for kind in served - wanted:
            if self._delete_if_owned(kind, llmd):
                changes.append(f"deleted {kind.kind}/{llmd['metadata']['name']} (no longer in the spec)")
        for change in changes:
            self.events(llmd, "Reconciled", change, False)
        return changes

    def _served_kinds(self) -> set[Kind]:
        """The child kinds this cluster serves: the built-in ones, and those whose CRD is installed."""
        return {k for k in CHILD_KINDS if not k.optional_group or self.api.serves(k.optional_group)}

    def _delete_if_owned(self, kind: Kind, llmd: dict[str, Any]) -> bool:
        namespace, name = llmd["metadata"]["namespace"], llmd["metadata"]["name"]
        live = self.api.get(kind, namespace, name)
        return live is not None and owned_by(live, llmd) and self.api.delete(kind, namespace, name)

    def _apply_child(self, llmd: dict[str, Any], manifest: dict[str, Any]) -> str | None:
        kind, meta = kind_of(manifest), manifest["metadata"]
        live = self.api.get(kind, meta["namespace"], meta["name"])
        if live is None:
            self.api.create(manifest)
            return f"created {kind.kind}/{meta['name']}"
        if not owned_by(live, llmd):
            raise ForeignChild(
                f"{kind.kind}/{meta['name']} already exists and is not owned by this LLMDeployment; "
                "rename one of them or delete it"
            )
        if is_subset(manifest, live):
            return None
        self.api.apply(manifest)
        return f"updated {kind.kind}/{meta['name']} to match the spec"

    def publish_status(self, llmd: dict[str, Any]) -> dict[str, Any] | None:
        """Computes the status from the cluster and patches it when it differs; returns the new status if patched."""
        namespace, name = llmd["metadata"]["namespace"], llmd["metadata"]["name"]
        fresh = self.api.get(LLMD, namespace, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return None
        try:
            resource = parse(fresh)
        except InvalidSpec as error:
            return self._publish(fresh, failed(fresh, "InvalidSpec", str(error), now()))
        manifest = children.deployment(fresh, resource, self.config)
        deployment = self.api.get(DEPLOYMENT, namespace, name)
        if deployment is not None and not owned_by(deployment, fresh):
            deployment = None
        pods = self.api.list(PODS, namespace, {LABEL_DEPLOYMENT: name})
        status = observe(
            fresh,
            desired_revision=manifest["metadata"]["annotations"]["tokenyard.dev/revision"],
            desired_replicas=None if resource.spec.autoscaling else resource.spec.replicas,
            served_model_name=resource.spec.model.served_name,
            deployment=deployment,
            pods=pods,
            now=now(),
        )
        return self._publish(fresh, status)

    def publish_failure(self, llmd: dict[str, Any], reason: str, message: str) -> None:
        """Reports a reconcile that cannot succeed as it stands (an invalid spec, a name taken by someone else)."""
        fresh = self.api.get(LLMD, llmd["metadata"]["namespace"], llmd["metadata"]["name"])
        if fresh is not None:
            self._publish(fresh, failed(fresh, reason, message, now()))

    def _publish(self, llmd: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
        before = llmd.get("status") or {}
        if all(before.get(k) == v for k, v in status.items()):
            return None
        meta = llmd["metadata"]
        self.api.patch_status(LLMD, meta["namespace"], meta["name"], status)
        if before.get("phase") != status["phase"]:
            degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
            ready = next(c for c in status["conditions"] if c["type"] == "Ready")
            shown = degraded if status["phase"] == "Degraded" else ready
            self.events(llmd, status["phase"], f"{shown['reason']}: {shown['message']}", status["phase"] == "Degraded")
        return status

    def delete_children(self, llmd: dict[str, Any]) -> list[str]:
        """Removes every child now rather than leaving it to the garbage collector, so deletion is observable."""
        name = llmd["metadata"]["name"]
        return [f"{kind.kind}/{name}" for kind in self._served_kinds() if self._delete_if_owned(kind, llmd)]
