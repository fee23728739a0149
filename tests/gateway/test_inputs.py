"""Bad input at the gateway: every malformed, wrongly typed, too deep or too large body is answered by the
gateway itself with an OpenAI error object (never a plain-text 500) and never reaches a replica. The gateway
is the real process; the upstream is the stand-in replica (stand_in.py), which counts what reaches it."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from tokenyard.gateway.inputs import MAX_JSON_DEPTH

from .conftest import GatewayProcess, write_config
from .stand_in import MODEL

MAX_BODY = 65536
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def gateway(stand_in, redis_server, tmp_path_factory):
    directory = tmp_path_factory.mktemp("inputs")
    process = GatewayProcess(
        [stand_in.url],
        redis_server.url,
        write_config(directory),
        directory / "gateway.log",
        "--max-request-body-bytes",
        str(MAX_BODY),
    )
    yield process
    process.stop()


def post(gateway, content: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", content=content, headers={"content-type": "application/json"}, timeout=30)


def nested(depth: int) -> bytes:
    return b'{"model": "stand-in", "messages": [{"role": "user", "content": "hi"}], "x": ' + (
        b"[" * depth + b"]" * depth + b"}"
    )


@pytest.mark.parametrize(
    ("content", "path", "param", "message"),
    [
        (b'{"model": "stand-in", "messages": [', "/v1/chat/completions", None, "the body is not valid JSON"),
        (b"\xff\xfe\xfa", "/v1/chat/completions", None, "the body is not valid JSON"),
        (b"[1, 2]", "/v1/chat/completions", None, "the body must be a JSON object"),
        (nested(MAX_JSON_DEPTH + 1), "/v1/chat/completions", None, "nested too deeply"),
        (nested(20_000), "/v1/chat/completions", None, "nested too deeply"),
        (
            b'{"model": "stand-in", "messages": [{"role": "user", "content": "hi"}], "stream_options": "x"}',
            "/v1/chat/completions",
            "stream_options",
            "stream_options",
        ),
        (
            b'{"model": "stand-in", "messages": [{"role": "user", "content": "hi"}], "stream": 1}',
            "/v1/chat/completions",
            "stream",
            "stream",
        ),
        (
            b'{"model": "stand-in", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            "/v1/chat/completions",
            "temperature",
            "temperature",
        ),
        (
            b'{"model": "stand-in", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
            "/v1/chat/completions",
            "max_tokens",
            "max_tokens",
        ),
        (b'{"model": "stand-in"}', "/v1/chat/completions", "messages", "messages: this field is required"),
        (
            b'{"model": "stand-in", "messages": [{"role": "robot", "content": "hi"}]}',
            "/v1/chat/completions",
            "messages.0.role",
            "messages.0.role",
        ),
        (b'{"model": "stand-in", "max_tokens": 4}', "/v1/completions", "prompt", "prompt: this field is required"),
        (b'{"model": "stand-in", "prompt": {"text": "hi"}}', "/v1/completions", "prompt", "prompt"),
    ],
    ids=[
        "truncated",
        "not-utf8",
        "not-an-object",
        "just-too-deep",
        "far-too-deep",
        "stream_options-string",
        "stream-int",
        "temperature-string",
        "max_tokens-0",
        "no-messages",
        "bad-role",
        "no-prompt",
        "prompt-object",
    ],
)
def test_a_bad_body_is_a_400_openai_error_that_names_the_field(gateway, stand_in, content, path, param, message):
    before = len(stand_in.posts())
    response = post(gateway, content, path)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    # a union's errors name the member tried too (prompt.str): the field comes first either way
    assert error["param"] == param or error["param"].startswith(f"{param}.")
    assert message in error["message"]
    assert len(stand_in.posts()) == before  # never forwarded


def test_a_body_nested_within_the_limit_is_forwarded_as_sent(gateway, stand_in):
    response = post(gateway, nested(MAX_JSON_DEPTH - 2))
    assert response.status_code == 200, response.text
    sent = stand_in.posts()[-1].body
    depth = MAX_JSON_DEPTH - 2
    assert sent["x"] == json.loads("[" * depth + "]" * depth)  # the vendor field, untouched


def test_a_body_over_the_limit_is_a_413(gateway):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * MAX_BODY}]}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=big, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert str(MAX_BODY) in response.json()["error"]["message"]


def test_unknown_paths_and_methods_are_openai_errors(gateway):
    missing = httpx.get(f"{gateway.url}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(f"{gateway.url}/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_the_openapi_document_describes_both_bodies_and_their_errors(gateway):
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert {"200", "400", "401", "404", "413", "429", "502", "503", "504"} <= operation["responses"].keys()
        assert "422" not in operation["responses"]  # bad bodies are 400s here, as OpenAI answers them
    schemas = document["components"]["schemas"]
    assert schemas["StreamOptions"]["properties"]["include_usage"]["type"] == "boolean"
    assert "HTTPValidationError" not in schemas


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_the_gateway_keeps_to_its_openapi_document(gateway, mode):
    """Schemathesis' generated requests, valid and not, against the gateway's own document, every check on: never
    a 5xx, every status and error body as documented, invalid bodies refused, valid ones served. A valid body may
    also get a 400: the wire models check more than their JSON Schema can say (min_tokens <= max_tokens)."""
    rejections = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]  # schemathesis' own, and 413
    acceptances = ["2xx", 400, 404]
    config = SchemathesisConfig.from_dict(
        {
            "checks": {
                "negative_data_rejection": {"expected-statuses": rejections},
                "positive_data_acceptance": {"expected-statuses": acceptances},
            }
        }
    )
    document = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", config=config)
    for result in document.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing in a GET without parameters can be made invalid

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def keeps_to_it(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=gateway.url, checks=list(schemathesis.checks.CHECKS.get_all()))

        keeps_to_it()
