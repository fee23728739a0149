"""The status of an LLMDeployment, computed from what the cluster reports: a pure function, so that every rule
of "status never lies" is one readable branch and one test.

Ready means the Deployment has observed its current generation, every replica runs the revision the spec asks
for, and all of them pass their readiness probe. Degraded means something will not get better on its own: a
crash-looping or unpullable container, a pod the scheduler cannot place, a rollout past its deadline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenyard.operator.children import LABEL_REVISION, PORT
from tokenyard.operator.resource import LLMDeploymentStatus

# Waiting reasons after which a container will not start without someone changing something.
STUCK_WAITING_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass(frozen=True)
class Verdict:
    status: bool
    reason: str
    message: str


def observe(
    llmd: dict[str, Any],
    desired_revision: str,
    desired_replicas: int | None,
    served_model_name: str,
    deployment: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    now: str,
) -> dict[str, Any]:
    """The status to publish. `desired_replicas` is None when an autoscaler owns the count."""
    meta = llmd["metadata"]
    previous = LLMDeploymentStatus.model_validate(llmd.get("status") or {})
    generation = meta.get("generation")
    dep_status = (deployment or {}).get("status") or {}
    replicas = dep_status.get("replicas", 0)
    wanted = desired_replicas if desired_replicas is not None else (deployment or {}).get("spec", {}).get("replicas", 1)

    degraded = _degraded(deployment, pods)
    progressing, rolled_out = _progressing(deployment, desired_revision, wanted)
    ready = _ready(deployment, rolled_out, wanted, degraded)

    if ready.status:
        phase = "Ready"
    elif degraded.status:
        phase = "Degraded"
    elif deployment is not None and wanted == 0 and rolled_out:
        phase = "ScaledToZero"
    else:
        phase = "Progressing"

    conditions = [
        _condition(previous, "Ready", ready, generation, now),
        _condition(previous, "Progressing", progressing, generation, now),
        _condition(previous, "Degraded", degraded, generation, now),
    ]
    return {
        "phase": phase,
        "conditions": conditions,
        "observedGeneration": generation,
        "replicas": replicas,
        "readyReplicas": dep_status.get("readyReplicas", 0),
        "updatedReplicas": dep_status.get("updatedReplicas", 0),
        "selector": f"tokenyard.dev/deployment={meta['name']}",
        "endpoint": f"http://{meta['name']}.{meta['namespace']}.svc:{PORT}/v1",
        "servedModelName": served_model_name,
        "currentRevision": desired_revision if rolled_out else previous.current_revision,
        "updateRevision": desired_revision,
    }


def failed(llmd: dict[str, Any], reason: str, message: str, now: str) -> dict[str, Any]:
    """The status of a resource that cannot be reconciled as it stands (an invalid spec, a child's name taken):
    the rest of the status stays as it was, since nothing was changed."""
    previous = LLMDeploymentStatus.model_validate(llmd.get("status") or {})
    generation = llmd["metadata"].get("generation")
    verdicts = {
        "Ready": Verdict(False, reason, message),
        "Progressing": Verdict(False, reason, "waiting for the spec to change"),
        "Degraded": Verdict(True, reason, message),
    }
    conditions = [_condition(previous, type_, verdict, generation, now) for type_, verdict in verdicts.items()]
    return {"phase": "Degraded", "observedGeneration": generation, "conditions": conditions}


def _progressing(deployment: dict[str, Any] | None, desired_revision: str, wanted: int) -> tuple[Verdict, bool]:
    """(the Progressing verdict, whether the desired revision is fully rolled out)."""
    if deployment is None:
        return Verdict(True, "Creating", "creating the runtime Deployment"), False
    meta, spec, status = deployment["metadata"], deployment.get("spec", {}), deployment.get("status") or {}
    if meta.get("annotations", {}).get("tokenyard.dev/revision") != desired_revision:
        return Verdict(True, "Updating", f"applying revision {desired_revision} to the Deployment"), False
    if status.get("observedGeneration", 0) < meta.get("generation", 1):
        return Verdict(True, "RolloutPending", "the Deployment controller has not seen the new spec yet"), False
    updated, ready = status.get("updatedReplicas", 0), status.get("readyReplicas", 0)
    total, available = status.get("replicas", 0), status.get("availableReplicas", 0)
    wanted = spec.get("replicas", wanted)
    if updated < wanted or total > updated or available < wanted:
        message = f"revision {desired_revision}: {updated}/{wanted} replicas updated, {ready} ready" + (
            f", {total - updated} old replicas still running" if total > updated else ""
        )
        return Verdict(True, "RollingOut", message), False
    return Verdict(False, "RolloutComplete", f"revision {desired_revision} runs on {updated} replicas"), True


def _ready(deployment: dict[str, Any] | None, rolled_out: bool, wanted: int, degraded: Verdict) -> Verdict:
    if deployment is None:
        return Verdict(False, "Creating", "no runtime Deployment yet")
    ready = (deployment.get("status") or {}).get("readyReplicas", 0)
    if rolled_out and wanted == 0:
        return Verdict(False, "ScaledToZero", "replicas is 0")
    if rolled_out and ready >= wanted:
        return Verdict(True, "ReplicasReady", f"{ready}/{wanted} replicas serving")
    if degraded.status:
        return Verdict(False, degraded.reason, degraded.message)
    return Verdict(False, "ReplicasNotReady", f"{ready}/{wanted} replicas ready")


def _degraded(deployment: dict[str, Any] | None, pods: list[dict[str, Any]]) -> Verdict:
    for pod in pods:
        verdict = _pod_problem(pod)
        if verdict is not None:
            return verdict
    for condition in ((deployment or {}).get("status") or {}).get("conditions", []):
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return Verdict(True, condition.get("reason") or "ReplicaFailure", condition.get("message", ""))
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return Verdict(True, "ProgressDeadlineExceeded", condition.get("message", "the rollout timed out"))
    return Verdict(False, "AsExpected", "no pod is crash-looping or unschedulable")


def _pod_problem(pod: dict[str, Any]) -> Verdict | None:
    name = pod["metadata"]["name"]
    revision = pod["metadata"].get("labels", {}).get(LABEL_REVISION, "?")
    status = pod.get("status") or {}
    for condition in status.get("conditions", []):
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            message = condition.get("message") or "the scheduler cannot place it"
            return Verdict(
                True, condition.get("reason") or "Unschedulable", f"pod {name} (revision {revision}): {message}"
            )
    for container in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING_REASONS:
            last = (container.get("lastState") or {}).get("terminated") or {}
            details = [waiting.get("message"), f"restarts {container.get('restartCount', 0)}"]
            if last:
                details.append(f"last exit: {last.get('reason', 'Error')} (code {last.get('exitCode')})")
            where = f"pod {name} (revision {revision}) container {container.get('name')}"
            return Verdict(True, waiting["reason"], f"{where}: " + "; ".join(d for d in details if d))
    return None


def _condition(
    previous: LLMDeploymentStatus, type_: str, verdict: Verdict, generation: int | None, now: str
) -> dict[str, Any]:
    """A condition; its lastTransitionTime moves only when its status does."""
    status = "True" if verdict.status else "False"
    before = next((c for c in previous.conditions if c.type == type_), None)
    since = before.last_transition_time if before is not None and before.status == status else now
    return {
        "type": type_,
        "status": status,
        "reason": verdict.reason,
        "message": verdict.message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }
