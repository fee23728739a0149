"""No request can break the server: generated requests, valid and not, against the real engine on a tiny
model. Every one is answered 200 or a 4xx OpenAI error object, and the engine stays healthy after each."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..openapi_fuzz import check_every_operation, openapi_schema
from .in_process import MODEL, serving

pytestmark = pytest.mark.slow

# Values of every kind for every field, weighted towards the ones that reach the engine.
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
HUGE_INTS = st.sampled_from([-(2**63) - 1, -(2**63), 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30])
TOKEN_IDS = st.integers(-3, 49152 + 3) | HUGE_INTS


def field(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, valid, HUGE_INTS, ANY_JSON)


SAMPLING = {
    "model": field(st.sampled_from([MODEL, "gpt-4o"])),
    "max_tokens": field(st.integers(-1, 12)),
    "min_tokens": field(st.integers(0, 12)),
    "temperature": field(st.floats(0, 2) | st.sampled_from([1e-9, 1e-300, 5e-6])),
    "top_p": field(st.floats(0, 1)),
    "top_k": field(st.integers(-2, 60000)),
    "min_p": field(st.floats(0, 1)),
    "presence_penalty": field(st.floats(-2, 2)),
    "frequency_penalty": field(st.floats(-2, 2)),
    "repetition_penalty": field(st.floats(0, 3)),
    "seed": field(st.integers(-(2**64), 2**65)),
    "stop": field(st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=70)),
    "stop_token_ids": field(st.lists(TOKEN_IDS, max_size=4)),
    "logit_bias": field(st.dictionaries(TOKEN_IDS.map(str), st.floats(-150, 150), max_size=4)),
    "ignore_eos": field(st.booleans()),
    "n": field(st.integers(0, 2)),
    "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({}, optional={"include_usage": st.booleans()})),
    "logprobs": field(st.booleans() | st.integers(-1, 21)),
}
MESSAGE = st.fixed_dictionaries(
    {"role": field(st.sampled_from(["system", "user", "assistant", "tool", "robot"]))},
    optional={
        "content": field(
            st.text(max_size=40) | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}))
        )
    },
)
CHAT = st.fixed_dictionaries(
    {"messages": field(st.lists(MESSAGE, max_size=3))},
    optional={**SAMPLING, "top_logprobs": field(st.integers(-1, 21)), "add_generation_prompt": field(st.booleans())},
)
COMPLETION = st.fixed_dictionaries(
    {"prompt": field(st.text(max_size=40) | st.lists(TOKEN_IDS, max_size=6) | st.lists(st.text(), max_size=2))},
    optional={**SAMPLING, "echo": field(st.booleans())},
)


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    with serving(tiny_llama_dir) as (client, engine):
        yield client, engine


def check_answer(client, engine, path: str, body: dict) -> None:
    response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 404), (body, response.status_code, response.text)
    if response.status_code != 200:
        error = response.json()["error"]
        expected_type = "not_found_error" if response.status_code == 404 else "invalid_request_error"
        assert error["message"] and error["type"] == expected_type, error
    elif body.get("stream") is True:
        assert response.text.endswith("data: [DONE]\n\n") and '"error"' not in response.text, response.text
    else:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert engine.ready and engine.failure is None, f"the engine failed after {body}"
    assert settled(engine), "a request is still counted in flight after its answer"


def settled(engine) -> bool:
    """Nothing in flight: the client may hold the whole answer a moment before the server has closed it."""
    deadline = time.monotonic() + 2
    while engine.in_flight and time.monotonic() < deadline:
        time.sleep(0.005)
    return engine.in_flight == 0


def fuzz(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@fuzz(1200)
@given(body=CHAT)
def test_generated_chat_requests_never_break_the_engine(server, body):
    check_answer(*server, "/v1/chat/completions", body)


@fuzz(800)
@given(body=COMPLETION)
def test_generated_completion_requests_never_break_the_engine(server, body):
    check_answer(*server, "/v1/completions", body)


def test_the_requests_that_killed_the_engine_are_refused_and_it_serves_on(server):
    """The inputs that answered 503 forever, or a plain-text 500, before validation reached them."""
    client, _ = server
    base = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    cases = {
        "stop_token_ids": {"min_tokens": 2, "stop_token_ids": [1000000000]},
        "top_k": {"temperature": 0.7, "top_k": 9223372036854775808},
        "seed": {"seed": 2**64},
        "logit_bias": {"logit_bias": {"49152": 5}},
        "add_generation_prompt": {"add_generation_prompt": 0},
        "stream_options": {"stream": True, "stream_options": "x"},
    }
    for param, extra in cases.items():
        response = client.post("/v1/chat/completions", json=base | extra)
        assert response.status_code == 400, (param, response.text)
        assert response.json()["error"]["param"].startswith(param), response.json()
        assert "must be" in response.json()["error"]["message"] or "should" in response.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json=base | {"top_k": 60000, "temperature": 0.5}).status_code == 200
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
        (b'{"prompt": "\xff\xfe"}', 400, "JSON"),
        (b"[]", 400, "object"),
    ],
    ids=["truncated", "nested-100k-deep", "invalid-utf8", "not-an-object"],
)
def test_malformed_bodies_get_openai_errors(server, body, status, says):
    client, _ = server
    response = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"], response.json()


def test_a_body_over_the_limit_is_413_before_it_is_read(server):
    client, _ = server
    response = client.post("/v1/completions", content=b" " * (5 << 20), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit is 4194304 bytes" in response.json()["error"]["message"]


def test_unknown_routes_and_methods_are_openai_errors(server):
    client, _ = server
    assert client.get("/v1/nothing").json()["error"]["code"] == 404
    assert client.get("/v1/completions").json()["error"]["code"] == 405


def test_the_openapi_document_holds_with_every_check(server):
    client, engine = server

    def healthy() -> None:
        assert engine.ready and engine.failure is None and settled(engine)

    # A schema-valid request may still be one the model cannot serve (400): max_tokens beyond what fits beside
    # the prompt, token ids beyond the vocabulary, a chat the template refuses. Those limits depend on the
    # model, so the shared schema cannot state them.
    schema = openapi_schema(client.app, accepted_statuses=["200", "400", "404"])
    operations = check_every_operation(schema, max_examples=60, after_each=healthy)
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /health"} <= set(operations)
