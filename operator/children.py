"""What one LLMDeployment becomes: pure functions from the resource to the manifests of its children.

Nothing here talks to the API; ``reconcile.py`` applies what these return. Every child is named like its
LLMDeployment, carries its owner reference and the `tokenyard.dev/deployment` label, and is rebuilt whole from the
spec each time, so applying them is idempotent."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tokenyard.operator.config import OperatorConfig
from tokenyard.operator.resource import API_VERSION, KIND, LLMDeployment, LLMDeploymentSpec

LABEL_DEPLOYMENT = "tokenyard.dev/deployment"  # the gateway discovers replicas by it (DESIGN.md: Runtime pods)
LABEL_REVISION = "tokenyard.dev/revision"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tokenyard-operator"}
PORT = 8000
MODELS_DIR = "/models"
HF_HOME = f"{MODELS_DIR}/hf"
DEFAULT_TARGET_QUEUE_DEPTH = 5
DEFAULT_TP_SHM = "8Gi"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class Kind:
    """A child kind: where it lives in the API and whether the cluster must first have it installed."""

    api_version: str
    kind: str
    plural: str
    optional_group: str | None = None  # a CRD-provided kind: only made when discovery shows this group/version


DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
SERVICE = Kind("v1", "Service", "services")
PDB = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SCALED_OBJECT = Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects", optional_group="keda.sh/v1alpha1")
SERVICE_MONITOR = Kind(
    "monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors", optional_group="monitoring.coreos.com/v1"
)
CHILD_KINDS = (DEPLOYMENT, SERVICE, PDB, HPA, SCALED_OBJECT, SERVICE_MONITOR)


def labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tokenyard-runtime",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": "tokenyard",
        **MANAGED_BY,
        LABEL_DEPLOYMENT: name,
    }


def selector(name: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: name}


def owner_reference(llmd: dict[str, Any]) -> dict[str, Any]:
    meta = llmd["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _head(kind: Kind, llmd: dict[str, Any], extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """apiVersion, kind and metadata of a child: its owner's name and namespace, our labels, the owner reference."""
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": _metadata(llmd, extra_labels)}


def _metadata(llmd: dict[str, Any], extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = llmd["metadata"]
    return {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "labels": labels(meta["name"]) | (extra_labels or {}),
        "ownerReferences": [owner_reference(llmd)],
    }


def serve_args(spec: LLMDeploymentSpec) -> list[str]:
    """`tokenyard serve`'s flags for this spec (vLLM's names; the defaults of the server are not repeated)."""
    runtime, model = spec.runtime, spec.model
    model_arg = model.hub_id if model.source == "hf" else _pvc_path(model.uri) if model.source == "pvc" else model.uri
    args = ["--host", "0.0.0.0", "--port", str(PORT), "--model", model_arg, "--served-model-name", model.served_name]
    if spec.resources.gpus == 0:
        args += ["--device", "cpu"]
    if runtime.dtype != "auto":
        args += ["--dtype", runtime.dtype]
    for flag, value in (
        ("--quantization", runtime.quantization),
        ("--quantization-group-size", runtime.quantization_group_size),
        ("--max-model-len", runtime.max_model_len),
        ("--max-num-seqs", runtime.max_num_seqs),
        ("--max-num-batched-tokens", runtime.max_num_batched_tokens),
        ("--gpu-memory-utilization", runtime.gpu_memory_utilization),
    ):
        if value is not None:
            args += [flag, str(value)]
    args.append("--enable-prefix-caching" if runtime.enable_prefix_caching else "--no-enable-prefix-caching")
    args.append("--enable-chunked-prefill" if runtime.enable_chunked_prefill else "--no-enable-chunked-prefill")
    if runtime.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", runtime.kv_cache_dtype]
    if runtime.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(runtime.tensor_parallel_size)]
    if runtime.speculative is not None:
        args += ["--speculative-config", json.dumps(_speculative_config(spec), separators=(",", ":"))]
    if runtime.enforce_eager:
        args.append("--enforce-eager")
    return args + list(runtime.extra_args)


def _speculative_config(spec: LLMDeploymentSpec) -> dict[str, Any]:
    """vLLM's --speculative-config shape."""
    speculative = spec.runtime.speculative
    if speculative is None:
        raise ValueError("the spec has no runtime.speculative to configure")
    config: dict[str, Any] = {
        "method": speculative.method,
        "num_speculative_tokens": speculative.num_speculative_tokens,
    }
    for key, value in (
        ("model", speculative.draft_model),
        ("prompt_lookup_min", speculative.prompt_lookup_min),
        ("prompt_lookup_max", speculative.prompt_lookup_max),
    ):
        if value is not None:
            config[key] = value
    return config


def _pvc_claim(uri: str) -> str:
    return uri.removeprefix("pvc://").split("/", 1)[0]


def _pvc_path(uri: str) -> str:
    rest = uri.removeprefix("pvc://").split("/", 1)
    return f"{MODELS_DIR}/{rest[1]}" if len(rest) > 1 and rest[1] else MODELS_DIR


def pod_template(llmd: LLMDeployment, name: str, config: OperatorConfig) -> dict[str, Any]:
    spec = llmd.spec
    gpus, tp = spec.resources.gpus, spec.runtime.tensor_parallel_size
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    env = [{"name": "HOME", "value": "/tmp"}] + [{"name": k, "value": v} for k, v in sorted(spec.runtime.env.items())]
    init_containers: list[dict[str, Any]] = []
    if spec.model.source == "hf":
        volumes.append({"name": "models", "emptyDir": {}})
        mounts.append({"name": "models", "mountPath": MODELS_DIR})
        env += [{"name": "HF_HOME", "value": HF_HOME}, {"name": "HF_HUB_OFFLINE", "value": "1"}]
        init_containers.append(_download_container(spec, _image(spec, config), mounts))
    elif spec.model.source == "pvc":
        claim = {"claimName": _pvc_claim(spec.model.uri), "readOnly": True}
        volumes.append({"name": "models", "persistentVolumeClaim": claim})
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    shm = spec.resources.shared_memory_size or (DEFAULT_TP_SHM if tp > 1 else None)
    if shm is not None:  # NCCL and torch.distributed exchange tensors through /dev/shm
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(shm)}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    grace = 30
    container = {
        "name": "runtime",
        "image": _image(spec, config),
        "command": ["tokenyard", "serve"],
        "args": [*serve_args(spec), "--shutdown-grace-seconds", str(grace)],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": env,
        "resources": _container_resources(spec),
        "volumeMounts": mounts,
        "securityContext": _container_security(),
        # Loading a model can take minutes: the startup probe holds the others off until /health first answers.
        "startupProbe": _probe(period=10, failures=max(1, spec.runtime.startup_timeout_seconds // 10)),
        "readinessProbe": _probe(period=5, failures=3),
        "livenessProbe": _probe(period=10, failures=6),
    }
    node_selector = ({GPU_PRODUCT_LABEL: spec.resources.gpu_type} if spec.resources.gpu_type else {}) | dict(
        spec.pod_template.node_selector
    )
    tolerations = ([{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}] if gpus else []) + list(
        spec.pod_template.tolerations
    )
    pod_spec: dict[str, Any] = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": grace + 15,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
    }
    for key, value in (
        ("initContainers", init_containers),
        ("nodeSelector", node_selector),
        ("tolerations", tolerations),
        ("affinity", spec.pod_template.affinity),
        ("priorityClassName", spec.pod_template.priority_class_name),
        ("serviceAccountName", spec.pod_template.service_account_name),
    ):
        if value:
            pod_spec[key] = value
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORT),
        "prometheus.io/path": "/metrics",
    } | dict(spec.pod_template.annotations)
    return {
        "metadata": {"labels": dict(spec.pod_template.labels) | labels(name), "annotations": annotations},
        "spec": pod_spec,
    }


def _image(spec: LLMDeploymentSpec, config: OperatorConfig) -> str:
    return spec.runtime.image or (config.runtime_image if spec.resources.gpus else config.runtime_cpu_image)


def _download_container(spec: LLMDeploymentSpec, image: str, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """Fetches an hf:// model into the pod's models volume before the server starts (the server never downloads)."""
    # Weights in safetensors only: repos also carry ONNX exports, pickled copies and originals several times over.
    skipped = ["onnx/*", "*.onnx", "*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "original/*"]
    args = ["download", spec.model.hub_id, *[part for pattern in skipped for part in ("--exclude", pattern)]]
    if "@" in spec.model.uri:
        args += ["--revision", spec.model.uri.rsplit("@", 1)[1]]
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": HF_HOME}]
    if spec.model.token_secret is not None:
        ref = {"name": spec.model.token_secret.name, "key": spec.model.token_secret.key}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    return {
        "name": "download-model",
        "image": image,
        "command": ["hf"],
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        "securityContext": _container_security(),
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _probe(period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _container_resources(spec: LLMDeploymentSpec) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if spec.resources.cpu is not None:
        requests["cpu"] = str(spec.resources.cpu)
    if spec.resources.memory is not None:
        requests["memory"] = limits["memory"] = str(spec.resources.memory)
    if spec.resources.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(spec.resources.gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def revision(template: dict[str, Any]) -> str:
    """A short hash of the pod template: what changes exactly when the pods must be replaced."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def deployment(llmd: dict[str, Any], resource: LLMDeployment, config: OperatorConfig) -> dict[str, Any]:
    name = llmd["metadata"]["name"]
    spec = resource.spec
    template = pod_template(resource, name, config)
    rev = revision(template)
    template["metadata"]["labels"][LABEL_REVISION] = rev
    rollout: dict[str, Any] = {"type": spec.rollout.strategy}
    if spec.rollout.strategy == "RollingUpdate":
        rollout["rollingUpdate"] = {"maxSurge": spec.rollout.max_surge, "maxUnavailable": spec.rollout.max_unavailable}
    body: dict[str, Any] = {
        **_head(DEPLOYMENT, llmd),
        "spec": {
            "selector": {"matchLabels": selector(name)},
            "strategy": rollout,
            "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
            "revisionHistoryLimit": 5,
            "template": template,
        },
    }
    body["metadata"]["annotations"] = {"tokenyard.dev/revision": rev}
    if spec.autoscaling is None:  # with autoscaling, the HPA or KEDA owns the replica count
        body["spec"]["replicas"] = spec.replicas
    return body


def service(llmd: dict[str, Any], resource: LLMDeployment) -> dict[str, Any]:
    """The replicas' Service. Its labels are copied onto its EndpointSlices, which is where the gateway finds the
    replicas and this deployment's cache policy."""
    name = llmd["metadata"]["name"]
    policy = resource.spec.gateway
    cache_labels = {
        "tokenyard.dev/exact-cache": str(policy.exact_cache).lower(),
        "tokenyard.dev/semantic-cache": str(policy.semantic_cache.enabled).lower(),
    }
    if policy.semantic_cache.enabled:
        cache_labels["tokenyard.dev/semantic-threshold"] = str(policy.semantic_cache.threshold)
        cache_labels["tokenyard.dev/semantic-ttl-seconds"] = str(policy.semantic_cache.ttl_seconds)
    return {
        **_head(SERVICE, llmd, cache_labels),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(name),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(llmd: dict[str, Any]) -> dict[str, Any]:
    """Node drains take one replica at a time."""
    return {
        **_head(PDB, llmd),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(llmd["metadata"]["name"])}},
    }


def _autoscaling_target(resource: LLMDeployment) -> tuple[str, str]:
    """(metric, target per replica): queue depth unless KV cache usage is asked for."""
    autoscaling = resource.spec.autoscaling
    if autoscaling is None:
        raise ValueError("the spec has no autoscaling: there is nothing to scale on")
    if autoscaling.target_kv_cache_usage is not None:
        return "vllm:kv_cache_usage_perc", str(autoscaling.target_kv_cache_usage)
    return "vllm:num_requests_waiting", str(autoscaling.target_queue_depth or DEFAULT_TARGET_QUEUE_DEPTH)


def horizontal_pod_autoscaler(llmd: dict[str, Any], resource: LLMDeployment) -> dict[str, Any]:
    """An HPA on the runtime's own per-pod metrics, as a metrics adapter (prometheus-adapter) serves them: the
    custom-metrics API cannot carry ':' so the adapter exposes vllm:x as vllm_x."""
    autoscaling = resource.spec.autoscaling
    if autoscaling is None:
        raise ValueError("the spec has no autoscaling: there is nothing to scale on")
    metric, target = _autoscaling_target(resource)
    name = llmd["metadata"]["name"]
    return {
        **_head(HPA, llmd),
        "spec": {
            "scaleTargetRef": {"apiVersion": DEPLOYMENT.api_version, "kind": DEPLOYMENT.kind, "name": name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": metric.replace(":", "_")},
                        "target": {"type": "AverageValue", "averageValue": target},
                    },
                }
            ],
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": autoscaling.scale_down_stabilization_seconds},
            },
        },
    }


def scaled_object(llmd: dict[str, Any], resource: LLMDeployment, prometheus_url: str) -> dict[str, Any]:
    """KEDA's version of the same: a Prometheus query of the deployment's average, no adapter needed."""
    autoscaling = resource.spec.autoscaling
    if autoscaling is None:
        raise ValueError("the spec has no autoscaling: there is nothing to scale on")
    metric, target = _autoscaling_target(resource)
    meta = llmd["metadata"]
    selector_ = (
        f'namespace="{meta["namespace"]}",{LABEL_DEPLOYMENT.replace(".", "_").replace("/", "_")}="{meta["name"]}"'
    )
    return {
        **_head(SCALED_OBJECT, llmd),
        "spec": {
            "scaleTargetRef": {"apiVersion": DEPLOYMENT.api_version, "kind": DEPLOYMENT.kind, "name": meta["name"]},
            "minReplicaCount": autoscaling.min_replicas,
            "maxReplicaCount": autoscaling.max_replicas,
            "cooldownPeriod": autoscaling.scale_down_stabilization_seconds,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": prometheus_url,
                        "query": f"avg({metric}{{{selector_}}})",
                        "threshold": target,
                    },
                }
            ],
        },
    }


def service_monitor(llmd: dict[str, Any]) -> dict[str, Any]:
    name = llmd["metadata"]["name"]
    return {
        **_head(SERVICE_MONITOR, llmd),
        "spec": {
            "selector": {"matchLabels": selector(name)},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            # Keeps the label on the series, which is what the KEDA query and the dashboards select on.
            "targetLabels": [LABEL_DEPLOYMENT],
        },
    }


def desired_children(
    llmd: dict[str, Any], resource: LLMDeployment, config: OperatorConfig, installed: set[str]
) -> list[dict[str, Any]]:
    """Every child this resource should have, given which optional API groups the cluster serves."""
    children = [deployment(llmd, resource, config), service(llmd, resource), pod_disruption_budget(llmd)]
    if resource.spec.autoscaling is not None:
        keda = SCALED_OBJECT.optional_group in installed and config.prometheus_url
        children.append(
            scaled_object(llmd, resource, config.prometheus_url)  # type: ignore[arg-type]
            if keda
            else horizontal_pod_autoscaler(llmd, resource)
        )
    if SERVICE_MONITOR.optional_group in installed:
        children.append(service_monitor(llmd))
    return children


def kind_of(manifest: dict[str, Any]) -> Kind:
    return next(k for k in CHILD_KINDS if k.api_version == manifest["apiVersion"] and k.kind == manifest["kind"])
