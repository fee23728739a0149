"""The gateway under slow, refusing, overloaded and dying upstreams, and its own shutdown. The gateway is the real
`tokenyard gateway` process with a real Redis; the upstream is the stand-in replica (stand_in.py), because these
tests need an upstream that is slow, refuses or dies on cue, which a real runtime cannot be made to do."""

from __future__ import annotations

import json
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .client import metric
from .conftest import GatewayProcess, write_config
from .stand_in import MODEL, StandIn

FIRST_BYTE = 1.0
PER_TOKEN = 0.05


def chat(gateway, stream: bool = False, content: str | None = None, **fields: object) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content or f"question {uuid.uuid4().hex}"}],
        "temperature": 0,
        **fields,
    }
    if stream:
        body["stream"] = True
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60)


def sse_events(response: httpx.Response) -> list[dict | str]:
    return [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]


def healthy(gateway, upstream: StandIn) -> float:
    return metric(gateway, "tokenyard_gateway_upstream_healthy", upstream=upstream.url)


@pytest.fixture(scope="module")
def gateway(stand_in, redis_server, tmp_path_factory):
    directory = tmp_path_factory.mktemp("reliability")
    config = write_config(directory, first_byte_timeout_seconds=FIRST_BYTE, seconds_per_output_token=PER_TOKEN)
    process = GatewayProcess([stand_in.url], redis_server.url, config, directory / "gateway.log")
    yield process
    process.stop()


# --- timeouts ---------------------------------------------------------------------------------------------------


def test_a_slow_answer_within_its_token_scaled_limit_arrives_and_the_replica_stays_in(gateway, stand_in):
    started = time.monotonic()
    slow = chat(gateway, max_tokens=40, stand_in={"sleep": 2.0})  # limit: 1 s + 40 x 0.05 s = 3 s
    assert slow.status_code == 200, slow.text
    assert time.monotonic() - started >= 2.0 > FIRST_BYTE
    assert healthy(gateway, stand_in) == 1
    started = time.monotonic()
    assert chat(gateway, max_tokens=4).status_code == 200  # served at once, not a 503 from an ejected replica
    assert time.monotonic() - started < 1


def test_an_answer_past_its_limit_is_a_504_and_does_not_eject_the_replica(gateway, stand_in):
    started = time.monotonic()
    late = chat(gateway, max_tokens=4, stand_in={"sleep": 3.0})  # limit: 1 s + 4 x 0.05 s = 1.2 s
    elapsed = time.monotonic() - started
    assert late.status_code == 504, late.text
    assert late.json()["error"]["type"] == "timeout" and "1.2 s" in late.json()["error"]["message"]
    assert 1.2 <= elapsed < 2.5
    assert healthy(gateway, stand_in) == 1
    assert chat(gateway, max_tokens=4).status_code == 200


# --- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_an_upstream_refusal_passes_through_with_its_retry_after(gateway, status):
    refused = chat(gateway, stand_in={"status": status, "retry_after": "7"})
    assert refused.status_code == status
    assert refused.headers["retry-after"] == "7"
    assert refused.json()["error"]["message"] == "stand-in refusal"


def test_a_refusal_is_retried_on_another_replica_and_the_last_one_answers_when_all_refuse(redis_server, tmp_path):
    replicas = [StandIn(), StandIn()]
    gateway = GatewayProcess([r.url for r in replicas], redis_server.url, write_config(tmp_path), tmp_path / "gw.log")
    try:
        refused = chat(gateway, stand_in={"status": 429, "retry_after": "3"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
        assert [len(r.posts()) for r in replicas] == [1, 1]  # each replica was asked once
    finally:
        gateway.stop()
        for replica in replicas:
            replica.stop()


# --- broken streams ---------------------------------------------------------------------------------------------


def test_a_complete_stream_is_relayed_and_cached(gateway):
    content = f"stream {uuid.uuid4().hex}"
    first = chat(gateway, stream=True, content=content)
    again = chat(gateway, stream=True, content=content)
    assert [first.headers["x-tokenyard-cache"], again.headers["x-tokenyard-cache"]] == ["miss", "hit-exact"]
    assert sse_events(first)[-1] == "[DONE]" and not any("error" in e for e in sse_events(first) if e != "[DONE]")


def test_a_stream_whose_upstream_dies_ends_with_an_error_event_and_is_not_cached(gateway, stand_in):
    content = f"dying stream {uuid.uuid4().hex}"
    before = len(stand_in.posts())
    for _ in range(2):
        response = chat(gateway, stream=True, content=content, stand_in={"chunks": 3, "die_after": 1})
        assert response.status_code == 200 and response.headers["x-tokenyard-cache"] == "miss"
        events = sse_events(response)
        assert events[0]["choices"][0]["delta"]["content"] == "part0 "
        assert events[-2]["error"]["type"] == "bad_gateway" and events[-2]["error"]["code"] == 502
        assert events[-1] == "[DONE]"
    assert len(stand_in.posts()) == before + 2  # the broken stream was not cached


def test_a_stream_queued_upstream_may_wait_for_its_first_event_as_long_as_a_whole_answer(gateway, stand_in):
    response = chat(gateway, stream=True, max_tokens=40, stand_in={"chunks": 3, "queued": 2 * FIRST_BYTE})
    events = sse_events(response)  # limit: 1 s + 40 x 0.05 s = 3 s for the first event, then 1 s between events
    assert [e["choices"][0]["delta"]["content"] for e in events[:3]] == ["part0 ", "part1 ", "part2 "]
    assert events[-1] == "[DONE]" and not any("error" in e for e in events if isinstance(e, dict))


def test_a_stream_that_goes_silent_past_the_timeout_ends_with_an_error_event(gateway, stand_in):
    response = chat(gateway, stream=True, stand_in={"chunks": 3, "stall": 3 * FIRST_BYTE})
    events = sse_events(response)
    assert events[0]["choices"][0]["delta"]["content"] == "part0 "
    assert events[-2]["error"]["type"] == "timeout" and events[-1] == "[DONE]"
    assert healthy(gateway, stand_in) == 1


# --- admission --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bounded(redis_server, tmp_path_factory):
    """A gateway that sends its replica at most 2 requests at once and lets 2 more wait, for up to 1 s."""
    upstream = StandIn()
    directory = tmp_path_factory.mktemp("bounded")
    config = write_config(directory, max_outstanding_per_replica=2, max_queued_requests=2, max_queue_wait_seconds=1.0)
    gateway = GatewayProcess([upstream.url], redis_server.url, config, directory / "gateway.log")
    yield gateway, upstream
    gateway.stop()
    upstream.stop()


def burst(gateway, count: int, sleep: float) -> list[httpx.Response]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: chat(gateway, stand_in={"sleep": sleep}), range(count)))


def test_requests_beyond_the_replica_bound_wait_in_line_instead_of_piling_onto_it(bounded):
    gateway, upstream = bounded
    upstream.most_in_flight = 0
    responses = burst(gateway, 4, sleep=0.4)
    assert [r.status_code for r in responses] == [200] * 4
    assert upstream.most_in_flight == 2


def test_past_the_line_and_its_wait_requests_are_shed_with_429_and_retry_after(bounded):
    gateway, upstream = bounded
    upstream.most_in_flight = 0
    responses = burst(gateway, 6, sleep=2.5)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429, 429]
    for shed in (r for r in responses if r.status_code == 429):
        assert shed.json()["error"]["type"] == "rate_limit_error"
        assert int(shed.headers["retry-after"]) >= 1
    assert upstream.most_in_flight == 2


# --- shutdown ---------------------------------------------------------------------------------------------------


def test_shutdown_drains_in_flight_work_refuses_new_work_and_exits_0(stand_in, redis_server, tmp_path):
    config = write_config(tmp_path)
    gateway = GatewayProcess(
        [stand_in.url], redis_server.url, config, tmp_path / "gw.log", "--shutdown-grace-seconds", "2"
    )
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(chat, gateway, max_tokens=4, stand_in={"sleep": 1.0})
        cut = pool.submit(chat, gateway, stream=True, stand_in={"chunks": 3, "stall": 30})
        time.sleep(0.5)
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert httpx.get(f"{gateway.url}/ready").status_code == 503  # out of the Service at once
        refused = chat(gateway)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert in_flight.result().status_code == 200  # finished within the grace period
        events = sse_events(cut.result())  # still open at the deadline: ended with an error event
        assert events[-2]["error"]["code"] == 503 and events[-1] == "[DONE]"
    assert gateway.process.wait(timeout=30) == 0
