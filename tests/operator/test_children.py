"""The children one LLMDeployment becomes, as pure manifests: valid Kubernetes objects for each kind of model source
and hardware, and a revision that changes exactly when the pods must be replaced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tokenyard.operator import children
from tokenyard.operator.config import OperatorConfig
from tokenyard.operator.resource import LLMDeployment

ROOT = Path(__file__).resolve().parents[2]
CONFIG = OperatorConfig()


def body(example: str = "smollm2-classifier.yaml", **spec: Any) -> dict[str, Any]:
    resource = yaml.safe_load((ROOT / "examples" / example).read_text())
    resource["spec"].update(spec)
    resource["metadata"].update(namespace="serving", uid="0b7e3f7e-1c5e-4a56-9a43-3c7f0c6d3e11")
    return resource


def manifests(resource: dict[str, Any], installed: set[str] = frozenset()) -> list[dict[str, Any]]:
    return children.desired_children(resource, LLMDeployment.model_validate(resource), CONFIG, set(installed))


def runtime_container(resource: dict[str, Any]) -> dict[str, Any]:
    return children.deployment(resource, LLMDeployment.model_validate(resource), CONFIG)["spec"]["template"]["spec"][
        "containers"
    ][0]


VARIANTS = {
    "classifier": body(),
    "llama tp2": body("llama-8b-tp2.yaml"),
    "cpu from a pvc": body(model={"uri": "pvc://models/smollm2"}, resources={"gpus": 0, "cpu": "2", "memory": "2Gi"}),
    "model in the image": body(model={"uri": "/opt/models/smollm2.gguf"}, resources={"gpus": 0}),
}


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_built_in_child_is_a_valid_kubernetes_object(variant: str, version: str) -> None:
    for manifest in manifests(VARIANTS[variant]):
        kubernetes_validate.validate(manifest, version, strict=True)


def test_a_cpu_replica_gets_the_cpu_image_and_no_gpu() -> None:
    container = runtime_container(VARIANTS["cpu from a pvc"])
    assert container["image"] == CONFIG.runtime_cpu_image
    assert container["args"][container["args"].index("--device") + 1] == "cpu"
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}


def test_a_pvc_model_is_mounted_read_only_and_served_from_its_path() -> None:
    resource = VARIANTS["cpu from a pvc"]
    container = runtime_container(resource)
    assert container["args"][container["args"].index("--model") + 1] == "/models/smollm2"
    deployment = children.deployment(resource, LLMDeployment.model_validate(resource), CONFIG)
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert "initContainers" not in pod  # nothing to download


def test_the_server_runs_as_non_root_with_a_read_only_root_filesystem() -> None:
    for resource in VARIANTS.values():
        deployment = children.deployment(resource, LLMDeployment.model_validate(resource), CONFIG)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] and security["capabilities"] == {"drop": ["ALL"]}


def test_the_revision_changes_with_the_pod_template_and_not_with_the_replica_count() -> None:
    def revision(resource: dict[str, Any]) -> str:
        deployment = children.deployment(resource, LLMDeployment.model_validate(resource), CONFIG)
        return deployment["metadata"]["annotations"]["tokenyard.dev/revision"]

    base = revision(body())
    assert revision(body(replicas=7)) == base
    assert revision(body(runtime={"maxNumSeqs": 64})) != base
    assert revision(body(model={"uri": "hf://HuggingFaceTB/SmolLM2-360M-Instruct"})) != base


def test_autoscaling_on_kv_cache_usage_targets_that_metric() -> None:
    resource = body(autoscaling={"maxReplicas": 3, "targetKvCacheUsage": 0.8})
    (hpa,) = [m for m in manifests(resource) if m["kind"] == "HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "vllm_kv_cache_usage_perc"
    assert metric["pods"]["target"]["averageValue"] == "0.8"


def test_the_operator_does_not_import_torch() -> None:
    """The operator image has no torch (DESIGN.md): importing the whole operator must not pull it in."""
    code = "import sys, tokenyard.operator.handlers, tokenyard.operator.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_runtime_flags_are_ones_tokenyard_serve_accepts() -> None:
    import argparse

    from tokenyard.runtime import cli_serve
    from tokenyard.runtime.engine_args import engine_config_from_args

    quantized = body(
        runtime={
            "quantization": "int4",
            "quantizationGroupSize": 32,
            "kvCacheDtype": "int8",
            "speculative": {"method": "ngram", "numSpeculativeTokens": 3, "promptLookupMax": 4},
        }
    )
    parser = argparse.ArgumentParser()
    cli_serve.add_arguments(parser)
    for resource in [*VARIANTS.values(), quantized]:
        config = engine_config_from_args(parser.parse_args(runtime_container(resource)["args"]))
        assert config.model
    config = engine_config_from_args(parser.parse_args(runtime_container(quantized)["args"]))
    assert (config.quantization, config.quantization_group_size, config.kv_cache_dtype) == ("int4", 32, "int8")
    assert config.speculative_config == {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}
