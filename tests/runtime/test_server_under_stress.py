"""The server as an unlucky operator meets it: a huge body and a burst of long prompts while probes run,
clients that vanish mid-stream, SIGTERM with streams open, and a step that raises. Real `tokenyard serve`
processes of a tiny model, except where a fault must be injected (said where)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from .in_process import MODEL, serving
from .server_process import ServerProcess

pytestmark = pytest.mark.slow

PROBE = """
import json, sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
latencies, end = [], time.monotonic() + seconds
with httpx.Client() as client:
    while time.monotonic() < end:
        start = time.perf_counter()
        assert client.get(url + "/health", timeout=10).status_code == 200
        latencies.append(time.perf_counter() - start)
        time.sleep(0.01)
print(json.dumps(latencies))
"""


def tiny_server(model_dir, log, *flags: str) -> ServerProcess:
    return ServerProcess(
        "--model", str(model_dir), "--served-model-name", MODEL, "--max-model-len", "1024", *flags, log=log
    )


def lag_samples(server: ServerProcess) -> tuple[float, ...]:
    """How many times the event loop's 10 ms timer ran, and how many of them were under 50 and 100 ms late
    (one read of /metrics, so the three agree)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    bucket = "tokenyard_event_loop_lag_seconds_bucket"
    wanted = ["tokenyard_event_loop_lag_seconds_count ", f'{bucket}{{le="0.05"}} ', f'{bucket}{{le="0.1"}} ']
    samples = [line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("tokenyard_event_loop_lag")]
    values = {name + " ": float(value) for name, value in samples}
    return tuple(values[name] for name in wanted)


def stream_request(prompt: str, max_tokens: int) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}


LOAD = """
import asyncio, json, sys, httpx
url, model, CONNECTIONS = sys.argv[1], sys.argv[2], int(sys.argv[3])
huge = {"model": model, "messages": [{"role": "user", "content": "lorem ipsum dolor " * 290_000}]}
long_prompt = "the quick brown fox jumps over the lazy dog " * 90  # ~900 tokens
async def main():
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=CONNECTIONS)) as client:
        bodies = [{"model": model, "prompt": f"{i} {long_prompt}", "max_tokens": 4} for i in range(100)]
        answers = await asyncio.gather(
            client.post("/v1/chat/completions", json=huge), *(client.post("/v1/completions", json=b) for b in bodies)
        )
    print(json.dumps({"body_bytes": len(json.dumps(huge)), "huge": [answers[0].status_code, answers[0].json()],
                      "statuses": [a.status_code for a in answers[1:]]}))
asyncio.run(main())
"""


def test_the_event_loop_never_stalls_while_a_5mb_body_and_100_long_prompts_arrive(tiny_llama_dir, tmp_path):
    # The default body limit (4 MiB): the 5 MB body is refused from its Content-Length, unread. (Raised to 8 MiB,
    # it is read and parsed on the loop: json.loads holds the GIL, ~6 ms a MB, 60-100 ms under this load.)
    # One compute thread: the load generator and the probe share these two cores (see --num-threads).
    server = tiny_server(tiny_llama_dir, tmp_path / "serve.log", "--num-threads", "1")
    try:
        httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "warm up", "max_tokens": 2})
        lag_before = lag_samples(server)
        # The probe and the load run in processes of their own, so the probe's latencies are the server's; the
        # load runs at a lower CPU priority, as a client elsewhere would not take the server's cores. It sends
        # its 101 requests over 25 connections, as a gateway's pool would: 100 connections opened in the same
        # instant are accepted in one callback of the loop, a one-off ~60 ms (measured; see the closing note).
        probe = subprocess.Popen([sys.executable, "-c", PROBE, server.url, "12"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        load = subprocess.run(
            [sys.executable, "-c", LOAD, server.url, MODEL, "25"],
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=lambda: os.nice(10),
            check=True,
        )
        latencies = json.loads(probe.communicate(timeout=60)[0])
        result = json.loads(load.stdout)
        assert result["body_bytes"] > 5_000_000
        status, error = result["huge"]
        assert status == 413 and "the limit is 4194304 bytes" in error["error"]["message"]
        answered = result["statuses"]
        assert set(answered) <= {200, 429} and answered.count(200) >= 8, answered
        total, within_50ms, within_100ms = (a - b for a, b in zip(lag_samples(server), lag_before, strict=True))
        print(
            f"/health: {len(latencies)} probes, worst {max(latencies) * 1000:.1f} ms; loop timer: {total:.0f} "
            f"samples, {total - within_50ms:.0f} over 50 ms late, {total - within_100ms:.0f} over 100 ms"
        )
        assert len(latencies) > 200
        assert max(latencies) < 0.05, sorted(latencies)[-5:]
        # The timer also waits behind the loop's real work: a burst of 101 arrivals parsed back to back can put
        # it 50-100 ms late without any one callback blocking. Nothing may hold the loop longer.
        assert within_100ms == total, f"the event loop stalled for more than 100 ms {total - within_100ms} times"
    finally:
        assert server.terminate()


def test_gauges_are_idle_within_a_second_of_20_clients_leaving_mid_stream(tiny_llama_dir, tmp_path):
    server = tiny_server(tiny_llama_dir, tmp_path / "serve.log", "--max-num-seqs", "32")
    try:
        baseline = server.metric("vllm:kv_cache_usage_perc")

        def leave_mid_stream(i: int) -> None:
            with httpx.stream("POST", f"{server.url}/v1/completions", json=stream_request(f"story {i}", 900)) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n == 5:
                        return  # closes the connection mid-stream

        threads = [threading.Thread(target=leave_mid_stream, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        left_at = time.monotonic()
        while time.monotonic() - left_at < 1.0:
            running = server.metric("vllm:num_requests_running")
            usage = server.metric("vllm:kv_cache_usage_perc")
            if running == 0 and usage == baseline:
                break
            time.sleep(0.05)
        assert (running, usage) == (0, baseline), f"1 s after the last client left: running={running} kv={usage}"
        assert server.metric("tokenyard_requests_aborted_total", 'reason="client_disconnect"') == 20
    finally:
        assert server.terminate()


def test_sigterm_refuses_new_requests_with_503_and_lets_open_streams_finish(tiny_llama_dir, tmp_path):
    server = tiny_server(tiny_llama_dir, tmp_path / "serve.log", "--shutdown-grace-seconds", "60")
    streams: dict[int, list[str]] = {}

    def read_stream(i: int) -> None:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=stream_request("once", 200), timeout=60) as r:
            streams[i] = [line for line in r.iter_lines() if line]

    readers = [threading.Thread(target=read_stream, args=(i,)) for i in range(4)]
    for reader in readers:
        reader.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "new", "max_tokens": 2})
    assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
    assert refused.json()["error"]["type"] == "service_unavailable"
    assert httpx.get(f"{server.url}/health").status_code == 503, "readiness must fail at once"
    for reader in readers:
        reader.join()
    assert server.process.wait(timeout=60) == 0
    for lines in streams.values():
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert events[-1]["choices"][0]["finish_reason"] == "length" and lines[-1] == "data: [DONE]"


def test_streams_still_open_when_the_grace_period_ends_get_an_error_event(tiny_llama_dir, tmp_path):
    server = tiny_server(tiny_llama_dir, tmp_path / "serve.log", "--shutdown-grace-seconds", "1")
    lines: list[str] = []

    def read_stream() -> None:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=stream_request("once", 1000), timeout=60) as r:
            lines.extend(line for line in r.iter_lines() if line)

    reader = threading.Thread(target=read_stream)
    reader.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    reader.join(timeout=30)
    assert server.process.wait(timeout=30) == 0
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "shut down" in events[-1]["error"]["message"] and events[-1]["error"]["code"] == 503
    assert lines[-1] == "data: [DONE]"
    assert all("error" not in event for event in events[:-1])


@pytest.fixture
def failing_steps(tiny_llama_dir):
    """Fault injection (a stand-in: no input reaches a failing step any more, since validation refuses them
    all): the executor raises whenever a marked prompt is in the batch."""
    with serving(tiny_llama_dir) as (client, engine):
        executor = engine.engine.executor
        execute = executor.execute
        poison = {"armed": True}

        def execute_or_fail(batch, rows):
            if poison["armed"] and any(seq.prompt_token_ids[:1] == [666] for seq in batch.seqs):
                raise RuntimeError("injected kernel failure")
            return execute(batch, rows)

        executor.execute = execute_or_fail
        yield client, engine, poison
        executor.execute = execute


def test_a_failing_step_fails_its_requests_with_500_and_the_engine_serves_on(failing_steps):
    client, engine, _ = failing_steps
    good = {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 8, "temperature": 0}
    expected = client.post("/v1/completions", json=good).json()["choices"][0]["text"]
    failed = client.post("/v1/completions", json={"model": MODEL, "prompt": [666, 1], "max_tokens": 4})
    assert failed.status_code == 500 and "injected kernel failure" in failed.json()["error"]["message"]
    streamed = client.post("/v1/completions", json={**good, "prompt": [666, 2], "stream": True}).text
    assert '"code": 500' in streamed and streamed.endswith("data: [DONE]\n\n")
    assert client.get("/health").status_code == 200
    assert client.post("/v1/completions", json=good).json()["choices"][0]["text"] == expected
    assert engine.engine.kv_cache.usage == 0
    assert engine.engine.num_requests == 0


def test_an_engine_that_cannot_step_goes_unhealthy_and_asks_to_exit(failing_steps):
    client, engine, _ = failing_steps
    exits: list[str] = []
    engine.on_dead = exits.append
    for i in range(3):
        response = client.post("/v1/completions", json={"model": MODEL, "prompt": [666, i], "max_tokens": 4})
        assert response.status_code == 500
    assert client.get("/health").status_code == 503
    assert exits and "3 steps in a row failed" in exits[0]
    refused = client.post("/v1/completions", json={"model": MODEL, "prompt": [5], "max_tokens": 4})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
