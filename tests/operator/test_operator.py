"""The operator end to end against kmock: what `kubectl apply -f examples/...` becomes, and the status it reports.

The operator (kopf, our handlers, the official client) runs for real in its own thread; the tests act as kubectl,
the Deployment controller and the kubelet, through the API (see conftest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import kmock
import pytest

from .conftest import NAMESPACE, TEST_CONFIG, Cluster, condition, declare_resources, eventually

pytestmark = [
    pytest.mark.asyncio,
    # kmock's bundled resource list is read with a deprecated importlib call.
    pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning"),
]

CLASSIFIER, LLAMA = "smollm2-classifier", "llama-8b"
CHILDREN = ("deployments", "services", "poddisruptionbudgets")


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


async def status_of(cluster: Cluster, name: str) -> dict:
    return ((await cluster.get("llmdeployments", name)) or {}).get("status") or {}


async def until_condition(cluster: Cluster, name: str, type_: str, status: str, timeout: float = 10.0) -> dict:
    async def check() -> dict | None:
        llmd = await cluster.get("llmdeployments", name)
        return llmd if condition(llmd, type_).get("status") == status else None

    return await eventually(check, timeout=timeout)


async def test_the_classifier_example_becomes_a_deployment_a_service_and_a_pdb(
    cluster: Cluster, start_operator
) -> None:
    await start_operator()
    llmd = await cluster.apply_example("smollm2-classifier.yaml")
    deployment = await eventually(lambda: cluster.get("deployments", CLASSIFIER))
    service = await eventually(lambda: cluster.get("services", CLASSIFIER))
    pdb = await eventually(lambda: cluster.get("poddisruptionbudgets", CLASSIFIER))

    for child in (deployment, service, pdb):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "tokenyard.dev/v1alpha1",
            "kind": "LLMDeployment",
            "name": CLASSIFIER,
            "uid": llmd["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["labels"]["tokenyard.dev/deployment"] == CLASSIFIER

    runtime = container(deployment)
    assert runtime["image"] == TEST_CONFIG.runtime_image  # gpus: 1 -> the CUDA image
    assert runtime["command"] == ["tokenyard", "serve"]
    args = runtime["args"]
    assert flag(args, "--model") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert flag(args, "--served-model-name") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert flag(args, "--max-model-len") == "1024" and flag(args, "--max-num-seqs") == "256"
    assert flag(args, "--port") == "8000" and "--enable-prefix-caching" in args and "--device" not in args
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert runtime[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert runtime["securityContext"]["runAsNonRoot"] and not runtime["securityContext"]["allowPrivilegeEscalation"]
    assert deployment["spec"]["replicas"] == 2
    # hf:// -> fetched by an init container into the pod's models volume; the server itself stays offline.
    (download,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert download["args"][:2] == ["download", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in runtime["env"]

    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == {"tokenyard.dev/deployment": CLASSIFIER}
    assert service["metadata"]["labels"]["tokenyard.dev/semantic-cache"] == "true"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert await cluster.get("horizontalpodautoscalers", CLASSIFIER) is None  # no autoscaling in this example


async def test_the_8b_example_asks_for_two_gpus_tensor_parallel_int4_ngram_and_an_hpa(
    cluster: Cluster, start_operator
) -> None:
    await start_operator()
    await cluster.apply_example("llama-8b-tp2.yaml")
    deployment = await eventually(lambda: cluster.get("deployments", LLAMA))
    hpa = await eventually(lambda: cluster.get("horizontalpodautoscalers", LLAMA))

    runtime = container(deployment)
    args = runtime["args"]
    assert flag(args, "--tensor-parallel-size") == "2" and flag(args, "--quantization") == "int4"
    assert json.loads(flag(args, "--speculative-config")) == {
        "method": "ngram",
        "num_speculative_tokens": 4,
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 5,
    }
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == "2"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["priorityClassName"] == "llm-serving"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in runtime["volumeMounts"]
    token = next(e for e in pod["initContainers"][0]["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # The HPA owns the replica count: the operator must not fight it.
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": LLAMA}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "8"}


async def test_with_keda_and_the_prometheus_operator_it_makes_a_scaled_object_and_a_service_monitor(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, start_operator
) -> None:
    declare_resources(kmock, keda=True, prometheus_operator=True)
    await start_operator(dataclasses.replace(TEST_CONFIG, prometheus_url="http://prometheus.monitoring:9090"))
    await cluster.apply_example("llama-8b-tp2.yaml")
    scaled = await eventually(lambda: cluster.get("scaledobjects", LLAMA))
    monitor = await eventually(lambda: cluster.get("servicemonitors", LLAMA))
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "8"
    assert (
        'vllm:num_requests_waiting{namespace="default",tokenyard_dev_deployment="llama-8b"}'
        in (trigger["metadata"]["query"])
    )
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 4)
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert await cluster.get("horizontalpodautoscalers", LLAMA) is None  # KEDA makes its own HPA


async def test_status_is_progressing_until_the_replicas_are_ready_then_ready(cluster: Cluster, start_operator) -> None:
    await start_operator()
    await cluster.apply_example("smollm2-classifier.yaml")
    llmd = await until_condition(cluster, CLASSIFIER, "Progressing", "True")
    status = llmd["status"]
    assert status["phase"] == "Progressing" and condition(llmd, "Ready")["status"] == "False"
    assert status["servedModelName"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert status["endpoint"] == f"http://{CLASSIFIER}.{NAMESPACE}.svc:8000/v1"
    assert status.get("currentRevision") is None and status["updateRevision"]  # nothing has rolled out yet

    await cluster.rollout(CLASSIFIER, ready=1)  # one of two replicas ready: still not Ready

    async def one_ready() -> dict | None:
        llmd = await cluster.get("llmdeployments", CLASSIFIER)
        return llmd if llmd["status"]["readyReplicas"] == 1 else None

    llmd = await eventually(one_ready)
    assert condition(llmd, "Ready")["status"] == "False" and llmd["status"]["phase"] == "Progressing"

    await cluster.rollout(CLASSIFIER)
    llmd = await until_condition(cluster, CLASSIFIER, "Ready", "True")
    status = llmd["status"]
    assert status["phase"] == "Ready" and status["readyReplicas"] == 2
    assert status["currentRevision"] == status["updateRevision"]
    assert condition(llmd, "Progressing")["status"] == "False" and condition(llmd, "Degraded")["status"] == "False"
    for type_ in ("Ready", "Progressing", "Degraded"):
        found = condition(llmd, type_)
        assert found["observedGeneration"] == llmd["metadata"]["generation"]
        assert found["reason"] and found["message"] and found["lastTransitionTime"]
    assert status["selector"] == f"tokenyard.dev/deployment={CLASSIFIER}"  # what the scale subresource reads


async def test_a_crash_looping_pod_makes_it_degraded_with_the_kubelets_reason(cluster: Cluster, start_operator) -> None:
    await start_operator()
    await cluster.apply_example("smollm2-classifier.yaml")
    await eventually(lambda: cluster.get("deployments", CLASSIFIER))
    await cluster.rollout(CLASSIFIER, ready=1)
    await cluster.pod(
        f"{CLASSIFIER}-abc12",
        CLASSIFIER,
        {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "runtime",
                    "ready": False,
                    "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s restarting"}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1}},
                }
            ],
        },
    )
    llmd = await until_condition(cluster, CLASSIFIER, "Degraded", "True")
    degraded = condition(llmd, "Degraded")
    assert degraded["reason"] == "CrashLoopBackOff"
    assert f"{CLASSIFIER}-abc12" in degraded["message"] and "exit" in degraded["message"]
    assert llmd["status"]["phase"] == "Degraded" and condition(llmd, "Ready")["status"] == "False"


async def test_a_pod_without_a_free_gpu_makes_it_degraded_unschedulable(cluster: Cluster, start_operator) -> None:
    await start_operator()
    await cluster.apply_example("llama-8b-tp2.yaml")
    await eventually(lambda: cluster.get("deployments", LLAMA))
    scheduler_says = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    await cluster.pod(
        f"{LLAMA}-xyz98",
        LLAMA,
        {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": scheduler_says}
            ],
        },
    )
    llmd = await until_condition(cluster, LLAMA, "Degraded", "True")
    degraded = condition(llmd, "Degraded")
    assert degraded["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in degraded["message"]


async def test_a_spec_change_rolls_a_new_revision_and_is_progressing_until_it_is_ready(
    cluster: Cluster, start_operator
) -> None:
    await start_operator()
    await cluster.apply_example("smollm2-classifier.yaml")
    await eventually(lambda: cluster.get("deployments", CLASSIFIER))
    await cluster.rollout(CLASSIFIER)
    first = (await until_condition(cluster, CLASSIFIER, "Ready", "True"))["status"]["currentRevision"]

    await cluster.patch("llmdeployments", CLASSIFIER, {"spec": {"runtime": {"maxNumSeqs": 128}}})

    async def rolled() -> dict | None:
        deployment = await cluster.get("deployments", CLASSIFIER)
        return deployment if "128" in container(deployment)["args"] else None

    deployment = await eventually(rolled)
    second = deployment["spec"]["template"]["metadata"]["labels"]["tokenyard.dev/revision"]
    assert second != first and deployment["metadata"]["generation"] == 2
    llmd = await until_condition(cluster, CLASSIFIER, "Progressing", "True")
    assert condition(llmd, "Ready")["status"] == "False"
    assert llmd["status"]["currentRevision"] == first and llmd["status"]["updateRevision"] == second
    assert condition(llmd, "Progressing")["observedGeneration"] == 2

    await cluster.rollout(CLASSIFIER)
    llmd = await until_condition(cluster, CLASSIFIER, "Ready", "True")
    assert llmd["status"]["currentRevision"] == second


async def test_a_deleted_or_edited_child_is_put_back(cluster: Cluster, start_operator) -> None:
    await start_operator()
    await cluster.apply_example("smollm2-classifier.yaml")
    original = await eventually(lambda: cluster.get("deployments", CLASSIFIER))

    await cluster.delete("deployments", CLASSIFIER)
    drift = 10 * TEST_CONFIG.drift_interval_seconds  # slack for a loaded machine; the operator's own interval is 1 s
    recreated = await eventually(lambda: cluster.get("deployments", CLASSIFIER), timeout=drift)
    assert recreated["metadata"]["uid"] != original["metadata"]["uid"]
    assert container(recreated)["args"] == container(original)["args"]

    # A value the operator owns is set back; fields someone else adds are theirs (server-side apply's rule).
    await cluster.patch("services", CLASSIFIER, {"spec": {"selector": {"tokenyard.dev/deployment": "hijacked"}}})

    async def repaired() -> bool:
        service = await cluster.get("services", CLASSIFIER)
        return service["spec"]["selector"] == {"tokenyard.dev/deployment": CLASSIFIER}

    await eventually(repaired, timeout=drift)


async def test_deleting_the_llmdeployment_removes_its_children_and_releases_the_finalizer(
    cluster: Cluster, start_operator
) -> None:
    await start_operator()
    await cluster.apply_example("llama-8b-tp2.yaml")
    await eventually(lambda: cluster.get("horizontalpodautoscalers", LLAMA))
    llmd = await cluster.get("llmdeployments", LLAMA)
    assert "tokenyard.dev/finalizer" in llmd["metadata"]["finalizers"]

    await cluster.delete("llmdeployments", LLAMA)

    async def all_gone() -> bool:
        plurals = ("llmdeployments", *CHILDREN, "horizontalpodautoscalers")
        return all([await cluster.get(plural, LLAMA) is None for plural in plurals])

    await eventually(all_gone)


async def test_api_errors_are_retried_with_backoff_until_they_stop(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, start_operator
) -> None:
    await start_operator()
    creates = kmock.fail("POST", "deployments", 500, times=3)
    conflicts = kmock.fail("POST", "services", 409, times=2)
    await cluster.apply_example("smollm2-classifier.yaml")
    await eventually(lambda: cluster.get("deployments", CLASSIFIER))
    await eventually(lambda: cluster.get("services", CLASSIFIER))
    await eventually(lambda: cluster.get("poddisruptionbudgets", CLASSIFIER))
    assert creates.remaining == 0 and conflicts.remaining == 0  # every injected failure was met, and outlived
    await cluster.rollout(CLASSIFIER)
    await until_condition(cluster, CLASSIFIER, "Ready", "True")


async def test_once_settled_reconciling_again_writes_nothing(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, start_operator
) -> None:
    await start_operator()
    await cluster.apply_example("llama-8b-tp2.yaml")
    await eventually(lambda: cluster.get("horizontalpodautoscalers", LLAMA))
    await cluster.rollout(LLAMA)
    await until_condition(cluster, LLAMA, "Ready", "True")
    versions = {p: (await cluster.get(p, LLAMA))["metadata"]["resourceVersion"] for p in CHILDREN}
    seen = len(list(kmock))

    def drift_checks() -> int:  # only a reconcile reads the PodDisruptionBudget
        since = list(kmock)[seen:]
        return sum(r.method.name == "GET" and r.resource and r.resource.plural == "poddisruptionbudgets" for r in since)

    await eventually(lambda: asyncio.sleep(0, drift_checks() >= 3), timeout=30)
    since = list(kmock)[seen:]
    writes = [f"{r.method.name} {r.url.path}" for r in since if r.method.name in ("POST", "PATCH", "PUT", "DELETE")]
    assert [w for w in writes if "/events" not in w] == []
    assert {p: (await cluster.get(p, LLAMA))["metadata"]["resourceVersion"] for p in CHILDREN} == versions


async def test_a_spec_the_api_server_did_not_check_is_reported_not_applied(cluster: Cluster, start_operator) -> None:
    await start_operator()
    # kmock does not run the CRD's validation, like a cluster with an older CRD installed.
    await cluster.apply_example("smollm2-classifier.yaml", runtime={"tensorParallelSize": 4})
    llmd = await until_condition(cluster, CLASSIFIER, "Degraded", "True")
    degraded = condition(llmd, "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "tensorParallelSize must not exceed resources.gpus" in degraded["message"]
    assert await cluster.get("deployments", CLASSIFIER) is None


async def test_what_the_operator_does_is_told_in_events(cluster: Cluster, start_operator) -> None:
    await start_operator()
    await cluster.apply_example("smollm2-classifier.yaml")
    await eventually(lambda: cluster.get("deployments", CLASSIFIER))
    await cluster.rollout(CLASSIFIER)
    await until_condition(cluster, CLASSIFIER, "Ready", "True")

    async def messages() -> list[str] | None:
        events = await cluster.list("events")
        found = [e["message"] for e in events if e.get("involvedObject", {}).get("name") == CLASSIFIER]
        return found if any("Ready" in m or "serving" in m for m in found) else None

    found = await eventually(messages)
    assert any(f"created Deployment/{CLASSIFIER}" in m for m in found)
    assert any(f"created Service/{CLASSIFIER}" in m for m in found)
