"""Schemathesis over an app's own OpenAPI document: valid and invalid requests generated for every operation,
every response checked (no server errors, documented statuses, content types and schemas, invalid requests
refused, valid ones accepted)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode


def openapi_schema(app, accepted_statuses: list[str]):
    """``accepted_statuses``: what a schema-valid request may get besides 2xx (see the caller for why)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True)
    schema.config.update(request_timeout=60)
    schema.config.checks.positive_data_acceptance.expected_statuses = accepted_statuses
    return schema


def check_every_operation(schema, max_examples: int, after_each=lambda: None) -> list[str]:
    """Runs each operation's generated cases; returns the operations' labels. Raises on the first failure."""
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @settings(max_examples=max_examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case) -> None:
            case.call_and_validate(checks=list(schemathesis.checks.CHECKS.get_all()))
            after_each()

        run()
    return labels
