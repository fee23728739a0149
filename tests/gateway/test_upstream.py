"""The gateway against a real `tokenyard serve` of the tiny model that requires an API key and runs one request
at a time with no queue: the gateway's key reaches it, a gateway without the key is told plainly, and the
runtime's own overload answer (429 with Retry-After) reaches the client intact."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ..runtime.server_process import ServerProcess
from .conftest import GatewayProcess, write_config

KEY = "runtime-secret-key"


@pytest.fixture(scope="module")
def guarded_runtime(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("guarded") / "serve.log"
    flags = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--kv-cache-memory-bytes", str(16 << 20)]
    process = ServerProcess(
        *flags, "--max-model-len", "1024", "--api-key", KEY, "--max-num-seqs", "1", "--max-queue-len", "0", log=log
    )
    yield process
    process.terminate()


def chat(gateway, max_tokens: int = 4) -> httpx.Response:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Count to ten."}],
        "max_tokens": max_tokens,
        "temperature": 0.7,  # sampled: never cached, so every request reaches the runtime
        "ignore_eos": True,
    }
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=120)


@pytest.fixture(scope="module")
def keyed_gateway(guarded_runtime, redis_server, tmp_path_factory):
    directory = tmp_path_factory.mktemp("keyed")
    gateway = GatewayProcess(
        [guarded_runtime.url],
        redis_server.url,
        write_config(directory, max_outstanding_per_replica=16),
        directory / "gateway.log",
        env={"TOKENYARD_UPSTREAM_API_KEY": KEY},  # as the chart passes it, from a Secret
    )
    yield gateway
    gateway.stop()


def test_the_gateways_key_reaches_a_runtime_that_requires_one(guarded_runtime, keyed_gateway):
    assert httpx.post(f"{guarded_runtime.url}/v1/chat/completions", json={}, timeout=10).status_code == 401
    response = chat(keyed_gateway)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4


def test_a_gateway_without_the_key_says_its_credentials_were_refused(guarded_runtime, redis_server, tmp_path):
    gateway = GatewayProcess([guarded_runtime.url], redis_server.url, write_config(tmp_path), tmp_path / "gw.log")
    try:
        response = chat(gateway)
        assert response.status_code == 502
        assert "refused the gateway's credentials" in response.json()["error"]["message"]
    finally:
        gateway.stop()


def test_the_runtimes_429_reaches_the_client_with_its_retry_after(keyed_gateway):
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: chat(keyed_gateway, max_tokens=64), range(6)))
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 429 in statuses, statuses
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.headers["retry-after"] == "1"  # the runtime's own value
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert "server overloaded" in refused.json()["error"]["message"]
