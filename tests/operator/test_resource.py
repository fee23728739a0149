"""The LLMDeployment resource: the CRD generated from the Python models, what it accepts, what it rejects and how it
says so. The API server's side is checked with Kubernetes' own tools: kubernetes-validate for the CRD manifest,
the CRD's openAPIV3Schema through jsonschema (with unknown fields rejected, as kubectl's strict field validation
does), and the CEL rules evaluated by cel-python with the schema's defaults applied first, as the API server does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from tokenyard.operator import crd
from tokenyard.operator.resource import LLMDeployment, readable_errors

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def load_crd() -> dict[str, Any]:
    return yaml.safe_load((ROOT / crd.OUTPUTS[0]).read_text())


def openapi_schema() -> dict[str, Any]:
    return load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields forbidden where fields are listed (kubectl's --validate=strict)."""
    schema = copy.deepcopy(schema)

    def walk(node: dict[str, Any]) -> None:
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for child in [*node.get("properties", {}).values(), node.get("items"), node.get("additionalProperties")]:
            if isinstance(child, dict):
                walk(child)

    walk(schema)
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The API server's defaulting: absent fields with a default get it, recursively."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for name, child in schema["properties"].items():
        if name not in out and "default" in child:
            out[name] = copy.deepcopy(child["default"])
        if name in out:
            out[name] = with_defaults(child, out[name])
    return out


def cel_violations(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """The messages of every x-kubernetes-validations rule that the (defaulted) value breaks."""
    env = celpy.Environment()
    found = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            found.append(f"{path or '.'}: {rule['message']}")
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                found += cel_violations(child, value[name], f"{path}.{name}")
    return found


def api_server_errors(resource: dict[str, Any]) -> list[str]:
    """What an API server with this CRD would answer to `kubectl apply` of the resource."""
    schema = openapi_schema()
    validator = jsonschema.Draft4Validator(strict(schema))  # OpenAPI v3's boolean exclusiveMinimum is draft 4's
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(resource)]
    if errors:
        return errors
    return cel_violations(schema, with_defaults(schema, resource))


def example(name: str = "smollm2-classifier.yaml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / name).read_text())


def test_the_crd_files_are_what_the_models_generate() -> None:
    expected = crd.render()
    for path in crd.OUTPUTS:
        assert (ROOT / path).read_text() == expected, f"{path} is stale: run `tokenyard crd`"


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_the_crd_is_a_valid_kubernetes_manifest(version: str) -> None:
    kubernetes_validate.validate(load_crd(), version, strict=True)


def test_the_schema_is_structural() -> None:
    """What the API server requires of a CRD schema: a type on every node, nothing JSON Schema-only."""

    def walk(node: dict[str, Any], path: str) -> None:
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title"} & set(node), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, False), bool), f"{path}.{bound} must be a boolean in OpenAPI v3"
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}[{key}]")

    walk(openapi_schema(), "")


def test_the_crd_has_status_scale_short_name_and_printer_columns() -> None:
    spec = load_crd()["spec"]
    version = spec["versions"][0]
    assert spec["names"]["shortNames"] == ["llmd"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns[:3] == ["Model", "Ready", "Replicas"] and "Age" in columns
    runtime = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["runtime"]["properties"]
    assert runtime["kvCacheDtype"]["enum"] == ["auto", "int8", "fp8"] and runtime["kvCacheDtype"]["default"] == "auto"
    assert runtime["maxNumSeqs"]["description"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_are_accepted_by_the_api_server_and_the_operator(path: Path) -> None:
    resource = yaml.safe_load(path.read_text())
    assert api_server_errors(resource) == []
    LLMDeployment.model_validate(resource)


def invalid(spec_change: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    resource = example()
    spec = resource["spec"]
    for key, value in spec_change.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    for dotted in drop:
        *parents, leaf = dotted.split(".")
        node = spec
        for part in parents:
            node = node[part]
        del node[leaf]
    return resource


INVALID = {
    "min above max": (
        invalid({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
        "autoscaling.minReplicas must not exceed maxReplicas",
    ),
    "two autoscaling targets": (
        invalid({"autoscaling": {"maxReplicas": 3, "targetQueueDepth": 4, "targetKvCacheUsage": 0.8}}),
        "set one autoscaling target",
    ),
    "more tensor-parallel ranks than gpus": (
        invalid({"runtime": {"tensorParallelSize": 4}, "resources": {"gpus": 2}}),
        "tensorParallelSize must not exceed resources.gpus",
    ),
    "draft model not named": (
        invalid({"runtime": {"speculative": {"method": "draft_model"}}}),
        "draft_model needs speculative.draftModel",
    ),
    "a group size without int4": (
        invalid({"runtime": {"quantization": "int8", "quantizationGroupSize": 32}}),
        "quantizationGroupSize applies to quantization int4 only",
    ),
    "an int4 group size the kernels lack": (
        invalid({"runtime": {"quantization": "int4", "quantizationGroupSize": 48}}),
        "quantizationGroupSize",
    ),
    "a GPU type without GPUs": (
        invalid({"resources": {"gpus": 0, "gpuType": "NVIDIA-H100-80GB-HBM3"}}),
        "gpuType needs resources.gpus > 0",
    ),
    "unknown model scheme": (invalid({"model": {"uri": "s3://bucket/model"}}), "uri"),
    "unknown dtype": (invalid({"runtime": {"dtype": "float64"}}), "float64"),
    "negative replicas": (invalid({"replicas": -1}), "replicas"),
    "no GPU memory at all": (invalid({"runtime": {"gpuMemoryUtilization": 0}}), "gpuMemoryUtilization"),
    "a typo": (invalid({"runtime": {"maxModelLength": 2048}}), "maxModelLength"),
    "no model uri": (invalid({}, drop=("model.uri",)), "uri"),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_resources_are_rejected_by_the_api_server_saying_what_is_wrong(case: str) -> None:
    resource, says = INVALID[case]
    errors = api_server_errors(resource)
    assert errors, f"the API server would accept {case!r}"
    assert any(says in error for error in errors), errors


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_the_operator_rejects_the_same_resources_in_the_same_words(case: str) -> None:
    resource, says = INVALID[case]
    with pytest.raises(ValidationError) as raised:
        LLMDeployment.model_validate(resource)
    assert says in readable_errors(raised.value)
