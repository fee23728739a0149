"""The eval client speaks the wire format the runtime and the gateway share (tokenyard.wire.openai)."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from tokenyard.evals.client import SEED, chat_request, describe_http_error
from tokenyard.evals.testset import Item
from tokenyard.wire.openai import ChatCompletionRequest, error_body


def test_the_request_is_a_valid_chat_completion_request_with_only_what_the_client_sets():
    body = chat_request("m", Item(id="1", question="What is 2+2?"), 16)
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "temperature": 0.0,
        "seed": SEED,
        "max_tokens": 16,
    }
    assert ChatCompletionRequest.model_validate(body).max_tokens == 16


def test_a_request_the_servers_would_refuse_fails_before_it_is_sent():
    with pytest.raises(ValidationError, match="max_tokens"):
        chat_request("m", Item(id="1", question="q"), 0)


def test_an_error_envelope_is_read_as_the_wire_writes_it():
    response = httpx.Response(400, json=error_body("max_tokens is too large", "invalid_request_error", "max_tokens"))
    assert describe_http_error(response) == "HTTP 400: invalid_request_error: max_tokens is too large"
    not_an_envelope = httpx.Response(502, text="<html>bad gateway</html>")
    assert describe_http_error(not_an_envelope) == "HTTP 502: <html>bad gateway</html>"
