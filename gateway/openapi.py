"""The gateway's OpenAPI document. The two POST routes are served as plain Starlette routes: FastAPI's body
machinery measured ~40 us more per request than parsing and validating the same body ourselves (inputs.py),
a tenth of the gateway's own work on a cache hit. So their description comes from FastAPI routes declared
here for the document only, with the same wire models and the error responses the handler really gives."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from tokenyard.gateway.inputs import CHAT, COMPLETIONS
from tokenyard.wire.openai import ERROR_RESPONSES, ChatCompletionRequest, CompletionRequest, ErrorResponse

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion; with `stream: true`, server-sent events ending in `data: [DONE]`",
        "content": {"text/event-stream": {}},
    },
    **ERROR_RESPONSES,
    502: {"model": ErrorResponse, "description": "the upstream replica failed or refused the gateway's key"},
    504: {"model": ErrorResponse, "description": "the upstream replica did not answer in time"},
}


def chat_completions(body: ChatCompletionRequest) -> None:
    """OpenAI chat completions: from the cache, or from a replica of the deployment serving `model`."""


def completions(body: CompletionRequest) -> None:
    """OpenAI completions: from the cache, or from a replica of the deployment serving `model`."""


DOCUMENTED = [
    APIRoute(CHAT, chat_completions, methods=["POST"], responses=RESPONSES, response_model=None),
    APIRoute(COMPLETIONS, completions, methods=["POST"], responses=RESPONSES, response_model=None),
]


def install_openapi(app: FastAPI) -> None:
    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=[*app.routes, *DOCUMENTED])
            app.openapi_schema = _without_validation_errors(schema)
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]  # FastAPI's documented way to replace the document


def _without_validation_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a 422 for every body; the gateway answers bad bodies with OpenAI's 400 instead."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema
