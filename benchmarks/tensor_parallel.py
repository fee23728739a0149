"""Tensor parallelism on this CPU: TP=N against TP=1 in the same run, on the same cores (TP=1 gets every core
as torch threads, each of the N ranks an equal share), plus what shipping each step's inputs to the workers
costs rank 0.

SmolLM2 itself splits only in 3 or 9 (9 heads, 3 KV heads), so TP=2 runs on a random model of SmolLM2's
shape with 8 heads and 2 KV heads (head_dim 72): the same matmul sizes.

    python -m tokenyard.benchmarks.tensor_parallel --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenyard.benchmarks.random_models import random_smollm2
from tokenyard.benchmarks.report import write_section
from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.distributed import transport
from tokenyard.runtime.loaders import packaged_model_path

DECODE_TOKENS = 32
PREFILL_TOKENS = 512


@dataclass
class Engine:
    llm: LLM
    threads: int  # torch's thread count is per process: set before each of this engine's runs


def timed(engine: Engine, prompts: list[list[int]], max_tokens: int) -> float:
    torch.set_num_threads(engine.threads)
    start = time.perf_counter()
    engine.llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    return time.perf_counter() - start


def median_seconds(engines: list[Engine], prompts: list[list[int]], max_tokens: int) -> list[float]:
    """Each engine's median over 3 runs, the engines taking turns so that load from elsewhere hits both alike."""
    runs = [[timed(engine, prompts, max_tokens) for engine in engines] for _ in range(3)]
    return [statistics.median(times) for times in zip(*runs, strict=True)]


def compare(model: str, tp: int, cores: int) -> tuple[list[dict[str, float]], float]:
    """TP=1 and TP=``tp`` side by side: decode tok/s at batch 1 and 16 (the prefill step subtracted) and
    prefill tok/s; and the median milliseconds rank 0 spent shipping a step's inputs (pickle + pipe writes)."""
    engines = [
        Engine(
            LLM(
                model,
                tensor_parallel_size=size,
                num_threads=max(cores // size, 1),
                kv_cache_memory_bytes=512 << 20,
                enable_prefix_caching=False,  # the same prompts run several times
            ),
            max(cores // size, 1),
        )
        for size in (1, tp)
    ]
    workers = engines[1].llm.engine.executor.workers
    shipping: list[float] = []
    send = workers.run_model

    def timed_send(inputs: object) -> None:
        start = time.perf_counter()
        send(inputs)
        shipping.append(time.perf_counter() - start)

    workers.run_model = timed_send
    try:
        prompt = list(range(1000, 1000 + 16))
        median_seconds(engines, [prompt], 4)  # warm-up
        results: list[dict[str, float]] = [{}, {}]
        for batch in (1, 16):
            prompts = [[t + row for t in prompt] for row in range(batch)]
            ones = median_seconds(engines, prompts, 1)
            fulls = median_seconds(engines, prompts, DECODE_TOKENS + 1)
            for result, one, full in zip(results, ones, fulls, strict=True):
                result[f"decode_b{batch}"] = batch * DECODE_TOKENS / (full - one)
        long_prompt = [list(range(2000, 2000 + PREFILL_TOKENS))]
        for result, seconds in zip(results, median_seconds(engines, long_prompt, 1), strict=True):
            result["prefill"] = PREFILL_TOKENS / seconds
        return results, statistics.median(shipping) * 1e3
    finally:
        workers.shutdown()


def unpickle_ms(model: str) -> float:
    """What a worker spends turning a batch-16 decode step's bytes back into inputs."""
    llm = LLM(model, num_threads=1, kv_cache_memory_bytes=64 << 20)
    captured = []
    run = llm.engine.executor.runner.run_model
    llm.engine.executor.runner.run_model = lambda inputs: captured.append(inputs) or run(inputs)
    llm.generate([list(range(1000 + row, 1016 + row)) for row in range(16)], SamplingParams(max_tokens=3))
    data = transport.dumps(("run_model", (captured[-1],), False))
    start = time.perf_counter()
    for _ in range(1000):
        transport.loads(data, torch.device("cpu"))
    return time.perf_counter() - start  # over 1000 runs: seconds are milliseconds per run


def table(name: str, tp: int, base: dict[str, float], sharded: dict[str, float]) -> str:
    rows = [
        ("decode, batch 1", "decode_b1"),
        ("decode, batch 16", "decode_b16"),
        (f"prefill, one {PREFILL_TOKENS}-token prompt", "prefill"),
    ]
    lines = [
        f"**{name}**\n",
        f"| tok/s | TP=1 | TP={tp} | TP={tp} / TP=1 |",
        "|---|---:|---:|---:|",
    ]
    for label, key in rows:
        lines.append(f"| {label} | {base[key]:.1f} | {sharded[key]:.1f} | {sharded[key] / base[key]:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the section into this markdown file")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    gguf = packaged_model_path()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # 8 heads and 2 KV heads, so that TP=2 divides them
        shaped = str(
            random_smollm2(
                Path(tmp) / "shaped",
                tokenizer,
                num_attention_heads=8,
                num_key_value_heads=2,
                max_position_embeddings=2048,
            )
        )
        runs = [("SmolLM2-shaped llama (8 heads, 2 KV heads), bfloat16", shaped, 2), ("SmolLM2-135M", str(gguf), 3)]
        ship = []
        for name, model, tp in runs:
            (base, sharded), ship_ms = compare(model, tp, cores)
            print(name, base, sharded, ship_ms, flush=True)
            sections.append(table(name, tp, base, sharded))
            ship.append(f"TP={tp}: {ship_ms:.3f} ms")
        unpickle = unpickle_ms(shaped)
    markdown = "\n\n".join(
        [
            "## Tensor parallelism (CPU, gloo)",
            f"{cores} cores; TP=1 runs {cores} torch threads, each of the N ranks {cores} // N (at least 1). "
            f"Decode: {DECODE_TOKENS} tokens per sequence after the prefill step; median of 3 runs, TP=1 and TP=N "
            f"taking turns. Load average during the run: {os.getloadavg()[0]:.1f}.",
            *sections,
            "Shipping one step's inputs to the workers (rank 0: pickle once, one pipe write per worker; median "
            f"over every step of the run): {', '.join(ship)}. A worker unpickles a batch-16 decode step in "
            f"{unpickle:.3f} ms.",
            "Compare on an idle machine: when other processes compete for the cores, TP=1's team of torch "
            "threads stalls at its barriers while single-threaded ranks do not, which inflates the ratios.",
        ]
    )
    print(markdown)
    if args.out:
        write_section(args.out, "tensor_parallel", markdown)


if __name__ == "__main__":
    main()
