"""Server benchmark: `tokenyard bench serve` against a `tokenyard serve` process on the classifier workload
at max concurrency 16, beside the offline engine on the same requests, in one run.

    python -m tokenyard.benchmarks.serve --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from tokenyard.benchmarks import serve_client as bench
from tokenyard.benchmarks.report import cpu_description, write_section
from tokenyard.benchmarks.workloads import CLASSIFIER_SYSTEM_PROMPT, classifier_user_turns
from tokenyard.runtime import LLM, SamplingParams

ENGINE_FLAGS = ["--max-model-len", "2048", "--max-num-seqs", "16", "--kv-cache-memory-bytes", str(512 << 20)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(log: Path, flags: list[str] = ENGINE_FLAGS) -> tuple[subprocess.Popen, str]:
    """`tokenyard serve` (the packaged model unless ``flags`` name another) on a free port, once it is ready."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenyard.cli", "serve", "--port", str(port), "--host", "127.0.0.1", *flags],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(process, f"{url}/health", log, "tokenyard serve")
    return process, url


def wait_until_ready(process: subprocess.Popen, url: str, log: Path, name: str, seconds: float = 300) -> None:
    """Until ``url`` answers 200; RuntimeError (with the log's tail) if the server exits first, TimeoutError (the
    server killed) if it takes longer than ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise TimeoutError(f"{name} did not become ready in {seconds:.0f} s")


def server_run(args: argparse.Namespace) -> dict:
    process, url = start_server(Path(tempfile.mkdtemp()) / "server.log")
    try:
        load = bench.classifier_load(url, args.requests, 16, seed=1, ignore_eos=True)
        requests = bench.build_requests(load)
        warm = argparse.Namespace(**{**vars(load), "num_prompts": 2, "seed": 99})
        asyncio.run(bench.run_load(warm, bench.build_requests(warm)))  # the system prompt is cached, as in serving
        results, duration = asyncio.run(bench.run_load(load, requests))
        return bench.summarize(results, duration)
    finally:
        process.terminate()
        process.wait(timeout=60)


def offline_run(args: argparse.Namespace) -> float:
    llm = LLM(max_model_len=2048, max_num_seqs=16, kv_cache_memory_bytes=512 << 20)
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    system = {"role": "system", "content": CLASSIFIER_SYSTEM_PROMPT}
    llm.chat([[system, {"role": "user", "content": t}] for t in classifier_user_turns(2, 99)], params)
    conversations = [[system, {"role": "user", "content": t}] for t in classifier_user_turns(args.requests, 1)]
    start = time.perf_counter()
    outputs = llm.chat(conversations, params)
    return sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - start)


def render(summary: dict, offline: float, args: argparse.Namespace) -> str:
    ratio = summary["output_throughput"] / offline
    lines = [
        "## Server: `tokenyard bench serve` against `tokenyard serve`, SmolLM2-135M, CPU",
        "",
        f"Classifier workload ({args.requests} requests, a ~450-token shared system prompt, 50 output tokens, "
        f"EOS ignored), max concurrency 16, default dtype (bfloat16). Machine: {cpu_description()}, shared by the "
        "server and the load generator. Baseline: the offline engine (`LLM.chat`, max_num_seqs=16) on the same "
        "requests in the same run.",
        "",
        "| measure | server | offline engine | ratio | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| output tokens/s | {summary['output_throughput']:.1f} | {offline:.1f} | {ratio:.2f}x | >= 0.8x | "
        f"{'yes' if ratio >= 0.8 else 'NO'} |",
        "",
        "| latency (ms) | mean | median | p99 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, title in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "end to end")):
        s = summary[key]
        lines.append(f"| {title} | {s['mean_ms']:.1f} | {s['median_ms']:.1f} | {s['p99_ms']:.1f} |")
    lines += [
        "",
        f"Requests completed: {summary['completed']}, failed: {summary['failed']}. "
        "llama.cpp's server is not built here (see the quantization issue).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--requests", type=int, default=96)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    summary = server_run(args)
    offline = offline_run(args)
    report = render(summary, offline, args)
    write_section(args.out, "serve", report)
    print(report)


if __name__ == "__main__":
    main()
