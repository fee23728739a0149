"""Quantization speed on the packaged SmolLM2-135M: batch-1 decode and 32-sequence throughput for bf16
(the baseline), int8, int4 (groups of 32 and 128) and the GGUF file kept packed (Q4_1 layers, Q8_0
tied embedding/LM head), all measured in one run, reported as ratios to bf16; llama.cpp
(llama-cpp-python, 2 threads) on the same file when it is installed.

    python -m tokenyard.benchmarks.quantization --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from tokenyard.benchmarks.engine import DECODE_PROMPT, decode_rate_engine
from tokenyard.benchmarks.report import write_section
from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.loaders import packaged_model_path

# name -> engine settings (the file is the packaged GGUF in every case)
FORMATS = {
    "bf16": dict(dtype="bfloat16"),
    "int8": dict(dtype="bfloat16", quantization="int8"),
    "int4, groups of 32": dict(dtype="bfloat16", quantization="int4", quantization_group_size=32),
    "int4, groups of 128": dict(dtype="bfloat16", quantization="int4", quantization_group_size=128),
    "GGUF Q4_1 kept packed": dict(dtype="bfloat16", quantization="gguf"),
}
LLAMA_CPP = "llama.cpp (llama-cpp-python), same Q4_1 file"
TARGETS = {"int8": 1.6, "int4, groups of 32": 2.0, "int4, groups of 128": 2.0}  # batch-1 decode vs bf16
CONCURRENCY = 32


@dataclass
class Row:
    name: str
    weights_mib: float
    decode: float  # batch-1 decode tok/s
    throughput: float | None  # output tok/s with CONCURRENCY sequences


def throughput(llm: LLM, tokens: int) -> float:
    prompts = [f"{DECODE_PROMPT} (story {i})" for i in range(CONCURRENCY)]
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=2))  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)


def load(settings: dict) -> LLM:
    return LLM(
        str(packaged_model_path()),
        max_model_len=1024,
        max_num_seqs=CONCURRENCY,
        kv_cache_memory_bytes=256 << 20,
        **settings,
    )


def llama_cpp_decoder(args: argparse.Namespace) -> Callable[[], float] | None:
    """A batch-1 decode measurement of llama.cpp on the same file, or None when it is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    model = Llama(str(packaged_model_path()), n_threads=args.threads, n_ctx=1024, verbose=False)
    prompt = model.tokenize(DECODE_PROMPT.encode())

    def decode_rate() -> float:
        tokens = model.generate(prompt, temp=0.0, reset=True)
        next(tokens)  # prefill and the first token
        start = time.perf_counter()
        for _ in range(args.decode_tokens - 1):
            next(tokens)
        return (args.decode_tokens - 1) / (time.perf_counter() - start)

    decode_rate()
    return decode_rate


def run(args: argparse.Namespace) -> list[Row]:
    """Every format is loaded first and the runs go round the formats in turn, so that a slow spell on this
    shared machine (memory bandwidth varies by tens of percent from minute to minute) hits all formats alike;
    each keeps its best run."""
    torch.set_num_threads(args.threads)
    engines = {name: load(settings) for name, settings in FORMATS.items()}
    decoders = {name: partial(decode_rate_engine, llm, args.decode_tokens) for name, llm in engines.items()}
    reference = llama_cpp_decoder(args)
    if reference is not None:
        decoders[LLAMA_CPP] = reference
    decode = {name: 0.0 for name in decoders}
    rate = {name: 0.0 for name in engines}
    for _ in range(args.runs):
        for name, measure in decoders.items():
            decode[name] = max(decode[name], measure())
        for name, llm in engines.items():
            rate[name] = max(rate[name], throughput(llm, args.throughput_tokens))
    rows = [
        Row(name, llm.engine.executor.runner.loaded.weights_bytes / 2**20, decode[name], rate[name])
        for name, llm in engines.items()
    ]
    if reference is not None:
        rows.append(Row(LLAMA_CPP, packaged_model_path().stat().st_size / 2**20, decode[LLAMA_CPP], None))
    return rows


def render(rows: list[Row], args: argparse.Namespace) -> str:
    base = rows[0]
    lines = [
        "## Quantization: SmolLM2-135M-Instruct, CPU (`python -m tokenyard.benchmarks.quantization`)",
        "",
        f"Machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}. Every row loads the "
        "packaged Q4_1 GGUF: bf16 dequantizes it, int8/int4 quantize the dequantized weights at load (LM head "
        "included), the GGUF row keeps Q4_1 layers and the Q8_0 embedding/LM head packed "
        f"(`--quantization gguf`). Batch-1 decode: {args.decode_tokens} tokens after a short prompt; throughput: "
        f"{CONCURRENCY} concurrent sequences of {args.throughput_tokens} tokens. Best of {args.runs} runs, taken "
        "in turn across the formats (all loaded at once) so that the machine's slow spells hit them alike.",
        "",
        "| format | weights (MiB) | batch-1 decode tok/s | vs bf16 | target | met | "
        f"{CONCURRENCY}-sequence tok/s | vs bf16 |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for row in rows:
        ratio = row.decode / base.decode
        target = TARGETS.get(row.name)
        met = "" if target is None else ("yes" if ratio >= target else "NO")
        target_text = f">= {target}x" if target else ("parity (goal)" if row.name.startswith("llama.cpp") else "")
        batch = "n/a" if row.throughput is None else f"{row.throughput:.1f}"
        batch_ratio = "" if row.throughput is None else f"{row.throughput / base.throughput:.2f}x"
        lines.append(
            f"| {row.name} | {row.weights_mib:.0f} | {row.decode:.1f} | {ratio:.2f}x | {target_text} | {met} | "
            f"{batch} | {batch_ratio} |"
        )
    if not rows[-1].name.startswith("llama.cpp"):
        lines.append("| llama.cpp | | not installed (`pip install llama-cpp-python`): row skipped | | | | | |")
    lines += [
        "",
        "Weights: what the engine reports (`tokenyard_model_weights_bytes`); llama.cpp's row is the file size. "
        "llama-cpp-python serves one sequence at a time, so it has no throughput row.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--throughput-tokens", type=int, default=64)
    args = parser.parse_args()
    report = render(run(args), args)
    write_section(Path(args.out), "quantization", report)
    print(report)


if __name__ == "__main__":
    main()
