"""Routing across three real runtime replicas, a replica that dies, and limits shared by two gateways."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx

from .conftest import TENANTS, GatewayProcess

T = TypeVar("T")


def served_by(replicas) -> list[float]:
    return [r.metric("vllm:request_success_total") if _has_requests(r) else 0.0 for r in replicas]


def _has_requests(replica) -> bool:
    return "vllm:request_success_total{" in httpx.get(f"{replica.url}/metrics").text


def chat(gateway, system: str, user: str, max_tokens: int = 4) -> httpx.Response:
    body = {
        "model": "tiny",
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "ignore_eos": True,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        timeout=120,
        headers={"Authorization": f"Bearer {TENANTS['acme']}"},
    )


def test_a_shared_system_prompt_lands_on_one_replica_and_a_dead_one_is_routed_around(
    tiny_replicas, redis_server, gateway_config, tmp_path
):
    gateway = GatewayProcess([r.url for r in tiny_replicas], redis_server.url, gateway_config, tmp_path / "gw.log")
    try:
        before = served_by(tiny_replicas)
        system = "You are the classifier. " * 20
        for i in range(12):  # one after another: each finds the prefix where the last one left it
            assert chat(gateway, system, f"turn {i}").status_code == 200
        delta = [a - b for a, b in zip(served_by(tiny_replicas), before, strict=True)]
        assert sorted(delta) == [0, 0, 12]

        with ThreadPoolExecutor(24) as pool:  # concurrent: the bound spreads the load
            responses = list(pool.map(lambda i: chat(gateway, system, f"burst {i}", max_tokens=64), range(24)))
        assert all(r.status_code == 200 for r in responses)
        spread = [a - b for a, b in zip(served_by(tiny_replicas), before, strict=True)]
        assert sum(1 for d in spread if d > 0) >= 2

        favourite = tiny_replicas[delta.index(12)]
        favourite.process.send_signal(signal.SIGKILL)
        favourite.process.wait()
        results = [chat(gateway, system, f"after the crash {i}") for i in range(10)]
        assert all(r.status_code == 200 for r in results)
        metrics = httpx.get(f"{gateway.url}/metrics").text
        assert f'tokenyard_gateway_upstream_healthy{{upstream="{favourite.url}"}} 0.0' in metrics
    finally:
        gateway.stop()


def in_one_minute(send: Callable[[], T]) -> T:
    """What ``send()`` returned, from a run that began and ended in one of the fixed one-minute windows the gateways
    count limits in. How long a run takes depends on the CPU (an AVX2 machine serves float32, several times slower
    than an AVX-512 one's bfloat16): a run that crossed into the next window was counted in two, so it is run
    again from the start of a window, whose counts are fresh."""
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)
    for _ in range(3):
        window = int(time.time()) // 60
        result = send()
        if int(time.time()) // 60 == window:
            return result
        time.sleep(60.5 - time.time() % 60)
    raise AssertionError("three runs in a row crossed a minute boundary: a run takes longer than a minute")


def test_tenant_limits_hold_across_two_gateway_processes(upstream, redis_server, gateway_config, tmp_path):
    gateways = [
        GatewayProcess([upstream.url], redis_server.url, gateway_config, tmp_path / f"gw{i}.log") for i in range(2)
    ]
    try:
        body = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt": "hi", "max_tokens": 1}

        def post(i: int, tenant: str, **fields: object) -> httpx.Response:
            headers = {"Authorization": f"Bearer {TENANTS[tenant]}"}
            url = f"{gateways[i % 2].url}/v1/completions"
            return httpx.post(url, json={**body, **fields}, headers=headers, timeout=60)

        statuses = in_one_minute(lambda: [post(i, "tiny").status_code for i in range(10)])
        assert statuses.count(200) <= 4 and statuses.count(429) >= 6  # rpm 4 for the tenant, whichever gateway

        # tokens/min: usage counted by either gateway stops the tenant on both once the budget (60) is spent
        responses = in_one_minute(lambda: [post(i, "metered", max_tokens=8) for i in range(12)])
        used, refused = 0, []
        for i, response in enumerate(responses):
            if response.status_code == 200:
                assert not refused, "a request was served after the budget ran out"
                used += response.json()["usage"]["total_tokens"]
            else:
                refused.append((i % 2, response.status_code))
        assert 60 <= used < 60 + 20  # the request that crossed the budget is the last one served
        assert {gateway for gateway, _ in refused} == {0, 1} and {status for _, status in refused} == {429}
    finally:
        for gateway in gateways:
            gateway.stop()
