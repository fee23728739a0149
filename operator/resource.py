"""The LLMDeployment resource, defined once: these models are the CRD's schema (see ``crd.py``) and what the
operator reads a resource into. Field names are camelCase on the wire, as Kubernetes resources are; the cross-field
rules live here twice on purpose, as CEL for the API server (``x-kubernetes-validations``) and as Python for the
operator, and the tests hold both against the same invalid resources."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

API_VERSION: Final = "tokenyard.dev/v1alpha1"  # Final: its literal is the type of LLMDeployment.api_version
GROUP, VERSION = API_VERSION.split("/")
KIND: Final = "LLMDeployment"
PLURAL = "llmdeployments"
SHORT_NAME = "llmd"

# hf://org/name[@revision], pvc://claim[/path], or anything else as a path (or hub id) inside the image.
MODEL_URI_PATTERN = r"^(hf://[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|[^:]+)$"

Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]
FreeForm = Annotated[dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One CEL rule for the API server (x-kubernetes-validations)."""
    result: JsonDict = {"rule": rule, "message": message}
    if field_path:
        result["fieldPath"] = field_path
    return result


class Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SecretKeyRef(Spec):
    name: str = Field(min_length=1, description="the Secret's name, in the LLMDeployment's namespace")
    key: str = Field(default="HF_TOKEN", min_length=1, description="the key holding the token")


class ModelSpec(Spec):
    uri: str = Field(
        json_schema_extra={"pattern": MODEL_URI_PATTERN},  # the API server's check; `_uri_form` is ours, in words
        description="where the weights come from: hf://org/name[@revision] (downloaded into the pod before the "
        "server starts), pvc://claim/path (a PersistentVolumeClaim mounted read-only), or a path or hub id "
        "inside the runtime image",
    )
    served_model_name: str | None = Field(
        default=None,
        min_length=1,
        description="the name clients send as `model` (default: org/name of an hf:// uri, else the uri)",
    )
    token_secret: SecretKeyRef | None = Field(
        default=None, description="a Secret with a Hugging Face token, for gated or private hf:// models"
    )

    @field_validator("uri")
    @classmethod
    def _uri_form(cls, uri: str) -> str:
        if not re.match(MODEL_URI_PATTERN, uri):
            raise ValueError("must be hf://org/name[@revision], pvc://claim[/path], or a path inside the runtime image")
        return uri

    @property
    def source(self) -> Literal["hf", "pvc", "image"]:
        return "hf" if self.uri.startswith("hf://") else "pvc" if self.uri.startswith("pvc://") else "image"

    @property
    def hub_id(self) -> str:
        """org/name of an hf:// uri."""
        return self.uri.removeprefix("hf://").split("@", 1)[0]

    @property
    def served_name(self) -> str:
        return self.served_model_name or (self.hub_id if self.source == "hf" else self.uri)


class SpeculativeSpec(Spec):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.method != 'draft_model' || has(self.draftModel)",
                    "speculative.method draft_model needs speculative.draftModel",
                )
            ]
        }
    )

    method: Literal["ngram", "draft_model"] = Field(
        description="ngram: prompt lookup, no extra model; draft_model: a small model sharing the tokenizer"
    )
    num_speculative_tokens: int = Field(default=4, ge=1, le=16, description="tokens proposed per step")
    draft_model: str | None = Field(default=None, description="the draft model (a path or hub id in the image)")
    prompt_lookup_min: int | None = Field(default=None, ge=1, description="ngram: shortest n-gram to match")
    prompt_lookup_max: int | None = Field(default=None, ge=1, description="ngram: longest n-gram to match")

    @model_validator(mode="after")
    def _draft_model_named(self) -> SpeculativeSpec:
        if self.method == "draft_model" and not self.draft_model:
            raise ValueError("speculative.method draft_model needs speculative.draftModel")
        return self


class RuntimeSpec(Spec):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.quantizationGroupSize) || (has(self.quantization) && self.quantization == 'int4')",
                    "runtime.quantizationGroupSize applies to quantization int4 only",
                    ".quantizationGroupSize",
                )
            ]
        }
    )

    image: str | None = Field(default=None, description="runtime image (default: the operator's, CPU or CUDA)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description="weights dtype")
    quantization: Literal["int8", "int4", "gptq", "awq", "gguf"] | None = Field(
        default=None,
        description="weight quantization: int8/int4 from float weights at load, gptq/awq checkpoints, gguf kept packed",
    )
    quantization_group_size: Literal[32, 64, 128] | None = Field(
        default=None, description="int4: input columns sharing one scale (default 128)"
    )
    max_model_len: int | None = Field(default=None, ge=16, description="longest sequence, prompt + output")
    max_num_seqs: int | None = Field(default=None, ge=1, description="sequences decoded together")
    max_num_batched_tokens: int | None = Field(default=None, ge=1, description="tokens per engine step")
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="fraction of GPU memory for weights and KV cache"
    )
    enable_prefix_caching: bool = Field(default=True, description="reuse the KV cache of shared prompt prefixes")
    enable_chunked_prefill: bool = Field(default=True, description="split long prompts across engine steps")
    kv_cache_dtype: Literal["auto", "int8", "fp8"] = Field(default="auto", description="KV cache element type")
    enforce_eager: bool = Field(default=False, description="every step through the model's modules (--enforce-eager)")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="GPUs (or processes) one replica spans")
    speculative: SpeculativeSpec | None = Field(default=None, description="speculative decoding")
    startup_timeout_seconds: int = Field(
        default=1800, ge=30, description="how long loading the model may take before the pod is restarted"
    )
    extra_args: list[str] = Field(default_factory=list, description="more `tokenyard serve` flags, appended as-is")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables of the server")

    @model_validator(mode="after")
    def _group_size_for_int4(self) -> RuntimeSpec:
        if self.quantization_group_size is not None and self.quantization != "int4":
            raise ValueError("runtime.quantizationGroupSize applies to quantization int4 only")
        return self


class ResourcesSpec(Spec):
    gpus: int = Field(default=1, ge=0, le=64, description="nvidia.com/gpu per replica; 0 runs on CPU")
    gpu_type: str | None = Field(
        default=None,
        description="the GPU product to schedule on: the nvidia.com/gpu.product node label (NVIDIA-H100-80GB-HBM3)",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request per replica")
    memory: Quantity | None = Field(default=None, description="memory request and limit per replica")
    shared_memory_size: Quantity | None = Field(
        default=None, description="size of /dev/shm (default: 8Gi with tensor parallelism, none without)"
    )


class AutoscalingSpec(Spec):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.minReplicas <= self.maxReplicas", "autoscaling.minReplicas must not exceed maxReplicas"),
                cel(
                    "!(has(self.targetQueueDepth) && has(self.targetKvCacheUsage))",
                    "set one autoscaling target: targetQueueDepth or targetKvCacheUsage, not both",
                ),
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, description="fewest replicas")
    max_replicas: int = Field(ge=1, description="most replicas")
    target_queue_depth: int | None = Field(
        default=None,
        ge=1,
        description="waiting requests per replica to scale at (vllm:num_requests_waiting; default 5)",
    )
    target_kv_cache_usage: float | None = Field(
        default=None, gt=0, le=1, description="KV cache usage per replica to scale at (vllm:kv_cache_usage_perc)"
    )
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, description="wait before removing replicas")

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed maxReplicas")
        if self.target_queue_depth is not None and self.target_kv_cache_usage is not None:
            raise ValueError("set one autoscaling target: targetQueueDepth or targetKvCacheUsage, not both")
        return self


class SemanticCacheSpec(Spec):
    enabled: bool = Field(default=False, description="answer paraphrases of cached prompts")
    threshold: float = Field(default=0.95, gt=0, le=1, description="cosine similarity needed for a hit")
    ttl_seconds: int = Field(default=86400, ge=1, description="how long an entry may be served")


class GatewaySpec(Spec):
    exact_cache: bool = Field(default=True, description="answer repeated deterministic requests from Redis")
    semantic_cache: SemanticCacheSpec = Field(
        default_factory=SemanticCacheSpec, description="answer reworded prompts from pgvector"
    )


class RolloutSpec(Spec):
    strategy: Literal["RollingUpdate", "Recreate"] = Field(
        default="RollingUpdate", description="Recreate frees the GPUs first, for clusters without a spare one"
    )
    max_surge: Quantity = Field(default=1, description="extra replicas during a rolling update")
    max_unavailable: Quantity = Field(default=0, description="replicas that may be down during a rolling update")
    progress_deadline_seconds: int = Field(
        default=3600, ge=60, description="a rollout not done by then is reported Degraded"
    )


class PodTemplateSpec(Spec):
    node_selector: dict[str, str] = Field(default_factory=dict, description="added to the GPU type's selector")
    tolerations: list[FreeForm] = Field(default_factory=list, description="added to the nvidia.com/gpu toleration")
    affinity: FreeForm | None = Field(default=None, description="the pods' affinity, as in a PodSpec")
    priority_class_name: str | None = None
    service_account_name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="extra pod labels")
    annotations: dict[str, str] = Field(default_factory=dict, description="extra pod annotations")


class LLMDeploymentSpec(Spec):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.resources.gpus == 0 || self.runtime.tensorParallelSize <= self.resources.gpus",
                    "runtime.tensorParallelSize must not exceed resources.gpus",
                    ".runtime.tensorParallelSize",
                ),
                cel(
                    "self.resources.gpus > 0 || !has(self.resources.gpuType)",
                    "resources.gpuType needs resources.gpus > 0",
                    ".resources.gpuType",
                ),
            ]
        }
    )

    model: ModelSpec = Field(description="the weights and the name they are served under")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="`tokenyard serve` settings (vLLM's names)")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="what one replica gets")
    replicas: int = Field(default=1, ge=0, description="replicas when autoscaling is not set (kubectl scale sets it)")
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="scale between min and max on queue depth or KV cache usage"
    )
    gateway: GatewaySpec = Field(default_factory=GatewaySpec, description="how the gateway caches this model's answers")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="how a spec change replaces the pods")
    pod_template: PodTemplateSpec = Field(
        default_factory=PodTemplateSpec, description="scheduling and metadata for the runtime pods"
    )

    @model_validator(mode="after")
    def _consistent(self) -> LLMDeploymentSpec:
        if self.resources.gpus and self.runtime.tensor_parallel_size > self.resources.gpus:
            raise ValueError("runtime.tensorParallelSize must not exceed resources.gpus")
        if not self.resources.gpus and self.resources.gpu_type:
            raise ValueError("resources.gpuType needs resources.gpus > 0")
        return self


class Condition(Spec):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class LLMDeploymentStatus(Spec):
    model_config = ConfigDict(extra="ignore")  # kopf and older operators may leave their own fields

    phase: Literal["Pending", "Progressing", "Ready", "Degraded", "ScaledToZero"] = Field(
        default="Pending", description="one word for the conditions below"
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(default=None, description="the generation this status describes")
    replicas: int = Field(default=0, description="pods of any revision")
    ready_replicas: int = Field(default=0, description="pods passing their readiness probe")
    updated_replicas: int = Field(default=0, description="pods of the desired revision")
    selector: str | None = Field(default=None, description="the pods' label selector (for the scale subresource)")
    endpoint: str | None = Field(default=None, description="the in-cluster OpenAI base URL of this deployment")
    served_model_name: str | None = Field(default=None, description="what clients send as `model`")
    current_revision: str | None = Field(default=None, description="the revision every replica runs and is ready on")
    update_revision: str | None = Field(default=None, description="the revision the spec asks for")


class LLMDeployment(Spec):
    """A model served by tokenyard's runtime: pods, a Service the gateway routes to, autoscaling, monitoring."""

    api_version: Literal["tokenyard.dev/v1alpha1"] = API_VERSION
    kind: Literal["LLMDeployment"] = KIND
    metadata: FreeForm = Field(default_factory=dict)
    spec: LLMDeploymentSpec
    status: LLMDeploymentStatus = Field(default_factory=LLMDeploymentStatus)


def readable_errors(error: Exception) -> str:
    """A pydantic ValidationError as one line per problem, with camelCase field paths (as the user wrote them)."""
    if not hasattr(error, "errors"):
        return str(error)
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = re.sub(r"^Value error, ", "", item["msg"])
        if isinstance(item.get("input"), (str, int, float, bool)):
            message += f" (got {item['input']!r})"
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)
