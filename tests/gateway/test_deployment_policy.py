"""An LLMDeployment's own cache settings (spec.gateway), as the labels the operator puts on its Service, applied
over the gateway's policy for that model."""

from __future__ import annotations

from tokenyard.gateway.config import CachePolicy, deployment_policy
from tokenyard.gateway.fleet import Fleet


def test_the_deployments_labels_override_the_gateways_policy() -> None:
    policy = deployment_policy(
        CachePolicy(),
        {
            "tokenyard.dev/exact-cache": "false",
            "tokenyard.dev/semantic-cache": "true",
            "tokenyard.dev/semantic-threshold": "0.98",
            "tokenyard.dev/semantic-ttl-seconds": "600",
        },
    )
    assert not policy.exact and policy.semantic
    assert policy.semantic_threshold == 0.98 and policy.semantic_ttl_seconds == 600
    assert policy.semantic_reworded_threshold == 0.98  # never looser than the plain threshold


def test_labels_that_do_not_parse_leave_the_gateways_setting() -> None:
    gateway = CachePolicy(exact=True, semantic=False, semantic_threshold=0.95)
    labels = {
        "tokenyard.dev/exact-cache": "yes",
        "tokenyard.dev/semantic-threshold": "high",
        "tokenyard.dev/semantic-ttl-seconds": "-5",
    }
    assert deployment_policy(gateway, labels) == gateway
    assert deployment_policy(gateway, {}) is gateway


def test_a_model_takes_the_labels_of_the_deployment_that_serves_it() -> None:
    fleet = Fleet([])
    fleet.update({"ml/classifier": ["http://10.0.0.1:8000"], "ml/chat": ["http://10.0.0.2:8000"]})
    fleet.learn_models("ml/classifier", {"HuggingFaceTB/SmolLM2-135M-Instruct"})
    fleet.labels = {"ml/classifier": {"tokenyard.dev/semantic-cache": "true"}}
    assert fleet.labels_for("HuggingFaceTB/SmolLM2-135M-Instruct") == {"tokenyard.dev/semantic-cache": "true"}
    assert fleet.labels_for("chat") == {} and fleet.labels_for("gpt-4") == {}
