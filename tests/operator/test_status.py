"""The status rules, one case each, on the pure function the operator publishes from (the kmock tests show the
common paths end to end; these pin the rarer ones)."""

from __future__ import annotations

from typing import Any

from tokenyard.operator.status import observe

LLMD = {"metadata": {"name": "m", "namespace": "ns", "generation": 3}}


def deployment(revision: str = "r2", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": 5, "annotations": {"tokenyard.dev/revision": revision}},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 5, **status},
    }


def verdicts(llmd: dict[str, Any] = LLMD, **kwargs: Any) -> dict[str, Any]:
    arguments = {
        "desired_revision": "r2",
        "desired_replicas": 2,
        "served_model_name": "m",
        "deployment": None,
        "pods": [],
        "now": "2026-11-22T10:00:00Z",
    } | kwargs
    status = observe(llmd, **arguments)
    return status | {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_old_replicas_still_running_keep_it_progressing_and_not_ready() -> None:
    status = verdicts(deployment=deployment(replicas=3, updatedReplicas=2, readyReplicas=3, availableReplicas=3))
    assert status["Ready"][0] == "False" and status["Progressing"][:2] == ("True", "RollingOut")
    assert "1 old replicas still running" in status["Progressing"][2]


def test_a_deployment_the_controller_has_not_seen_yet_is_not_ready_whatever_its_old_status_says() -> None:
    stale = deployment(replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2)
    stale["status"]["observedGeneration"] = 4
    status = verdicts(deployment=stale)
    assert status["Ready"][0] == "False" and status["Progressing"][1] == "RolloutPending"


def test_a_rollout_past_its_deadline_is_degraded() -> None:
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
    status = verdicts(deployment=deployment(replicas=2, updatedReplicas=1, conditions=[deadline]))
    assert status["Degraded"][:2] == ("True", "ProgressDeadlineExceeded") and status["phase"] == "Degraded"


def test_an_unpullable_download_image_is_degraded() -> None:
    pod = {
        "metadata": {"name": "m-1", "labels": {"tokenyard.dev/revision": "r2"}},
        "status": {
            "initContainerStatuses": [{"name": "download-model", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]
        },
    }
    status = verdicts(deployment=deployment(replicas=2), pods=[pod])
    assert status["Degraded"][:2] == ("True", "ImagePullBackOff") and "download-model" in status["Degraded"][2]


def test_scaled_to_zero_is_its_own_phase_not_ready_and_not_degraded() -> None:
    zero = deployment(replicas=0, updatedReplicas=0)
    zero["spec"]["replicas"] = 0
    status = verdicts(deployment=zero, desired_replicas=0)
    assert status["phase"] == "ScaledToZero" and status["Ready"][:2] == ("False", "ScaledToZero")
    assert status["Degraded"][0] == "False"


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    ready = deployment(replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2)
    first = observe(LLMD, "r2", 2, "m", ready, [], now="2026-11-22T10:00:00Z")
    later = observe(LLMD | {"status": first}, "r2", 2, "m", ready, [], now="2026-11-22T11:00:00Z")
    assert [c["lastTransitionTime"] for c in later["conditions"]] == ["2026-11-22T10:00:00Z"] * 3
    broken = observe(LLMD | {"status": later}, "r3", 2, "m", ready, [], now="2026-11-22T12:00:00Z")
    ready_condition = next(c for c in broken["conditions"] if c["type"] == "Ready")
    assert ready_condition["status"] == "False" and ready_condition["lastTransitionTime"] == "2026-11-22T12:00:00Z"
    assert broken["currentRevision"] == "r2" and broken["updateRevision"] == "r3"  # r2 still serves
