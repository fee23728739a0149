"""Gateway benchmark: proxy overhead against calling the runtime directly, and exact-cache hit throughput
with a real Redis, in one run.

    python -m tokenyard.benchmarks.gateway --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tokenyard.benchmarks.report import write_section


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], ready_url: str, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(1200):
        if process.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(ready_url)


def latency_ms(client: httpx.Client, url: str, body: dict) -> float:
    started = time.perf_counter()
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    return (time.perf_counter() - started) * 1e3


def hit_throughput(url: str, body: dict, seconds: int, connections: int) -> float:
    """Requests/s that wrk (a C load generator: Python clients saturate first) gets from the gateway."""
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = {json.dumps(json.dumps(body))}\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
    )
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Non-2xx" not in done.stdout, done.stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    redis_port, runtime_port, gateway_port = free_port(), free_port(), free_port()
    processes = []
    try:
        processes.append(
            subprocess.Popen(
                [
                    shutil.which("redis-server"),
                    "--port",
                    str(redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--bind",
                    "127.0.0.1",
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        runtime = f"http://127.0.0.1:{runtime_port}"
        processes.append(
            start(
                [
                    sys.executable,
                    "-m",
                    "tokenyard.cli",
                    "serve",
                    "--port",
                    str(runtime_port),
                    "--host",
                    "127.0.0.1",
                    "--max-model-len",
                    "2048",
                    "--kv-cache-memory-bytes",
                    str(256 << 20),
                ],
                f"{runtime}/health",
                work / "serve.log",
            )
        )
        gateway = f"http://127.0.0.1:{gateway_port}"
        processes.append(
            start(
                [
                    sys.executable,
                    "-m",
                    "tokenyard.cli",
                    "gateway",
                    "--port",
                    str(gateway_port),
                    "--host",
                    "127.0.0.1",
                    "--upstream",
                    runtime,
                    "--redis-url",
                    f"redis://127.0.0.1:{redis_port}/0",
                ],
                f"{gateway}/health",
                work / "gateway.log",
            )
        )
        uncached = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt": "The sky is", "max_tokens": 1}
        direct, proxied = [], []
        with httpx.Client(timeout=60) as client:
            for _ in range(10):
                latency_ms(client, f"{runtime}/v1/completions", uncached)
                latency_ms(client, f"{gateway}/v1/completions", uncached)
            for _ in range(args.requests):  # interleaved, so drift hits both sides alike
                direct.append(latency_ms(client, f"{runtime}/v1/completions", uncached))
                proxied.append(latency_ms(client, f"{gateway}/v1/completions", uncached))
            cached = {**uncached, "temperature": 0}
            client.post(f"{gateway}/v1/completions", json=cached)
            assert client.post(f"{gateway}/v1/completions", json=cached).headers["x-tokenyard-cache"] == "hit-exact"
        rate = hit_throughput(f"{gateway}/v1/completions", cached, 5, 32)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)
    overhead = statistics.median(proxied) - statistics.median(direct)
    direct_p50, proxied_p50 = statistics.median(direct), statistics.median(proxied)
    lines = [
        "## Gateway before the runtime, real Redis, CPU (`python -m tokenyard.benchmarks.gateway`)",
        "",
        f"Proxy overhead: {args.requests} uncached one-token completions, alternating direct and through the "
        "gateway. Cache hits: `wrk` sending one cached request over 32 connections for 5 s, on the same 2 cores.",
        "",
        "| measure | gateway | baseline | difference | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| p50 latency, ms | {proxied_p50:.2f} | direct to the runtime: {direct_p50:.2f} | +{overhead:.2f} ms "
        f"| <= +2 ms | {'yes' if overhead <= 2 else 'NO'} |",
        f"| exact-cache hits, requests/s | {rate:.0f} | | | >= 1000 | {'yes' if rate >= 1000 else 'NO'} |",
    ]
    report = "\n".join(lines)
    write_section(args.out, "gateway", report)
    print(report)


if __name__ == "__main__":
    main()
