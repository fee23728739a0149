"""The exact cache in front of a real `tokenyard serve`, with a real Redis: what hits, what misses, what is
never cached, tenant isolation, streaming replay, and a Redis that dies and comes back."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from .client import MODEL, ask, outcome, sse_text_and_usage
from .conftest import TENANTS


def fresh() -> str:
    return f"Say something about the number {uuid.uuid4().int % 10**6}."


def test_a_repeated_deterministic_request_hits(gateway):
    content = fresh()
    first = ask(gateway, content=content)
    second = ask(gateway, content=content)
    assert (outcome(first), outcome(second)) == ("miss", "hit-exact")
    assert second.json() == first.json()


@pytest.mark.parametrize(
    "change",
    [{"max_tokens": 9}, {"temperature": 0.0, "stop": ["."]}, {"top_p": 0.5}, {"seed": 7}, {"presence_penalty": 0.5}],
)
def test_changing_an_output_affecting_parameter_misses(gateway, change):
    content = fresh()
    assert outcome(ask(gateway, content=content)) == "miss"
    assert outcome(ask(gateway, content=content, **change)) == "miss"


def test_tenants_never_see_each_others_entries(gateway):
    content = fresh()
    assert outcome(ask(gateway, "acme", content=content)) == "miss"
    assert outcome(ask(gateway, "globex", content=content)) == "miss"
    assert outcome(ask(gateway, "globex", content=content)) == "hit-exact"


def test_sampled_requests_without_a_seed_are_not_cached(gateway):
    content = fresh()
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}  # temperature: 1.0
    headers = {"Authorization": f"Bearer {TENANTS['acme']}"}
    for _ in range(2):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert outcome(response) == "bypass"


def test_cache_control_no_store_and_no_cache_are_honoured(gateway):
    content = fresh()
    headers = {"Authorization": f"Bearer {TENANTS['acme']}", "Cache-Control": "no-store"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}
    assert (
        outcome(httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=120)) == "bypass"
    )
    assert outcome(ask(gateway, content=content, max_tokens=4)) == "miss"  # no-store stored nothing
    headers["Cache-Control"] = "no-cache"
    assert outcome(httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=120)) == "miss"


def test_a_cached_stream_replays_as_valid_sse_with_the_same_text_and_usage(gateway):
    content = fresh()
    original = ask(gateway, stream=True, content=content)
    replayed = ask(gateway, stream=True, content=content)
    assert (outcome(original), outcome(replayed)) == ("miss", "hit-exact")
    assert replayed.headers["content-type"].startswith("text/event-stream")
    text, usage, done = sse_text_and_usage(original)
    assert (text, usage, done) == sse_text_and_usage(replayed)
    assert usage["completion_tokens"] > 0
    whole = ask(gateway, content=content)  # the non-streamed form of the same request shares the entry
    assert outcome(whole) == "hit-exact" and whole.json()["choices"][0]["message"]["content"] == text


def test_redis_down_degrades_to_uncached_and_recovers(gateway, redis_server):
    content = fresh()
    redis_server.stop()
    try:
        for _ in range(3):
            response = ask(gateway, content=content)
            assert outcome(response) == "miss"
            assert response.elapsed.total_seconds() < 30
    finally:
        redis_server.start()
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert "tokenyard_gateway_store_errors_total" in metrics
    time.sleep(1.2)  # the back-off after an error
    assert outcome(ask(gateway, content=content)) == "miss"
    assert outcome(ask(gateway, content=content)) == "hit-exact"


def test_bad_keys_and_tenant_limits(gateway):
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json={}, timeout=10).status_code == 401
    statuses = [ask(gateway, "tiny", content=fresh(), max_tokens=1).status_code for _ in range(6)]
    assert statuses.count(200) <= 4 and 429 in statuses
    refused = ask(gateway, "tiny", content=fresh(), max_tokens=1)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"]["type"] == "rate_limit_error"
