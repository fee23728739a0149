"""`tokenyard up`: a runtime and the gateway in front of it, with the in-process cache (no Redis needed)."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from ..runtime.server_process import free_port, wait_healthy


def test_tokenyard_up_serves_through_the_gateway_with_in_process_caches(tiny_model_dir, tmp_path):
    port, runtime_port = free_port(), free_port()
    log = tmp_path / "up.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenyard.cli",
            "up",
            "--port",
            str(port),
            "--runtime-port",
            str(runtime_port),
            "--",
            "--model",
            str(tiny_model_dir),
            "--served-model-name",
            "tiny",
            "--max-model-len",
            "1024",
            "--kv-cache-memory-bytes",
            str(16 << 20),
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log)
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0,
            "max_tokens": 4,
        }
        first = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        second = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert first.status_code == second.status_code == 200
        assert [first.headers["x-tokenyard-cache"], second.headers["x-tokenyard-cache"]] == ["miss", "hit-exact"]
        assert second.json() == first.json()
        body["messages"][0]["content"] = "what is the capital of france??"  # the in-process vector index
        third = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert third.headers["x-tokenyard-cache"] == "hit-semantic" and third.json() == first.json()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert "gateway on" in log.read_text()
    try:  # the runtime child is gone too
        httpx.get(f"http://127.0.0.1:{runtime_port}/health", timeout=1)
        raise AssertionError("tokenyard serve outlived tokenyard up")
    except httpx.HTTPError:
        pass
