"""Quantization speed on the packaged SmolLM2-135M: batch-1 decode and 32-sequence throughput for float
(the baseline, in the dtype this CPU computes fastest: bfloat16 where it is native, float32 elsewhere), int8,
int4 (groups of 32 and 128) and the GGUF file kept packed (Q4_1 layers, Q8_0 tied embedding/LM head), all in
that same dtype and measured in one run, reported as ratios to float; llama.cpp (llama-cpp-python, 2 threads)
on the same file when it is installed. One section per CPU kind (``quantization-avx2``, ...).

    python -m tokenyard.benchmarks.quantization --out docs/benchmarks.md
    python -m tokenyard.benchmarks.quantization --isa avx2 --out docs/benchmarks.md   # AVX2 path on AVX-512
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tokenyard.benchmarks.engine import DECODE_PROMPT, decode_rate_engine
from tokenyard.benchmarks.report import add_isa_argument, cpu_description, force_isa, section_for, write_section
from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.cpu import cpu_isa
from tokenyard.runtime.loaders import packaged_model_path

# name -> engine settings (the file is the packaged GGUF in every case). dtype "auto": the float the CPU computes
# fastest (bfloat16 where native, float32 elsewhere), the baseline's and the quantized formats' alike.
FLOAT = "float"
FORMATS: dict[str, dict[str, Any]] = {
    FLOAT: dict(dtype="auto"),
    "int8": dict(dtype="auto", quantization="int8"),
    "int4, groups of 32": dict(dtype="auto", quantization="int4", quantization_group_size=32),
    "int4, groups of 128": dict(dtype="auto", quantization="int4", quantization_group_size=128),
    "GGUF Q4_1 kept packed": dict(dtype="auto", quantization="gguf"),
}
LLAMA_CPP = "llama.cpp (llama-cpp-python), same Q4_1 file"
TARGETS = {"int8": 1.6, "int4, groups of 32": 2.0, "int4, groups of 128": 2.0}  # batch-1 decode vs float
CONCURRENCY = 32


@dataclass
class Row:
    name: str
    weights_mib: float
    decode: float  # batch-1 decode tok/s
    throughput: float | None  # output tok/s with CONCURRENCY sequences
    dtype: str = ""  # the float the engine computes in ("float32", "bfloat16"); "" for llama.cpp


def throughput(llm: LLM, tokens: int) -> float:
    prompts = [f"{DECODE_PROMPT} (story {i})" for i in range(CONCURRENCY)]
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=2))  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)


def load(settings: dict[str, Any], threads: int) -> LLM:
    return LLM(
        str(packaged_model_path()),
        max_model_len=1024,
        max_num_seqs=CONCURRENCY,
        kv_cache_memory_bytes=256 << 20,
        num_threads=threads,
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
    engines = {name: load(settings, args.threads) for name, settings in FORMATS.items()}
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
        Row(
            name,
            llm.engine.executor.runner.loaded.weights_bytes / 2**20,
            decode[name],
            rate[name],
            str(llm.engine.executor.runner.loaded.dtype).removeprefix("torch."),
        )
        for name, llm in engines.items()
    ]
    if reference is not None:
        rows.append(Row(LLAMA_CPP, packaged_model_path().stat().st_size / 2**20, decode[LLAMA_CPP], None))
    return rows


def render(rows: list[Row], args: argparse.Namespace) -> str:
    base = rows[0]
    dtype = base.dtype or "float"
    float_name = f"float ({dtype})"
    lines = [
        f"## Quantization: SmolLM2-135M-Instruct, CPU, {cpu_isa().name} "
        "(`python -m tokenyard.benchmarks.quantization`)",
        "",
        f"Machine: {cpu_description()}; {args.threads} threads, torch {torch.__version__}. Every row loads "
        f"the packaged Q4_1 GGUF and computes in {dtype} (`dtype=auto`: the float this CPU computes fastest, "
        "bfloat16 where it is native, float32 elsewhere): the float row dequantizes it, int8/int4 quantize the "
        "dequantized weights at load (LM head included), the GGUF row keeps Q4_1 layers and the Q8_0 embedding/LM "
        "head packed "
        f"(`--quantization gguf`). Batch-1 decode: {args.decode_tokens} tokens after a short prompt; throughput: "
        f"{CONCURRENCY} concurrent sequences of {args.throughput_tokens} tokens. Best of {args.runs} runs, taken "
        "in turn across the formats (all loaded at once) so that the machine's slow spells hit them alike.",
        "",
        f"| format | weights (MiB) | batch-1 decode tok/s | vs {float_name} | target | met | "
        f"{CONCURRENCY}-sequence tok/s | vs {float_name} |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for row in rows:
        ratio = row.decode / base.decode
        target = TARGETS.get(row.name)
        met = "" if target is None else ("yes" if ratio >= target else "NO")
        target_text = f">= {target}x" if target else ("parity (goal)" if row.name.startswith("llama.cpp") else "")
        batch = "n/a" if row.throughput is None else f"{row.throughput:.1f}"
        batch_ratio = (
            "" if row.throughput is None or not base.throughput else f"{row.throughput / base.throughput:.2f}x"
        )
        name = float_name if row.name == FLOAT else row.name
        lines.append(
            f"| {name} | {row.weights_mib:.0f} | {row.decode:.1f} | {ratio:.2f}x | {target_text} | {met} | "
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
    add_isa_argument(parser)
    args = parser.parse_args()
    force_isa(args)
    report = render(run(args), args)
    write_section(Path(args.out), section_for("quantization"), report)
    print(report)


if __name__ == "__main__":
    main()
