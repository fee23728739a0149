"""Engine benchmark on the packaged SmolLM2-135M: tokenyard's engine against Hugging Face transformers
(`generate`) measured in the same process, reported as ratios in docs/benchmarks.md, one section per CPU kind
(``engine-avx2``, ``engine-avx512_bf16``, ...). Batch-1 decode is compared in float32 and, where the CPU computes
bfloat16 natively, in bfloat16 too; the classifier rows run in the faster of the two.

    python -m tokenyard.benchmarks.engine --out docs/benchmarks.md
    python -m tokenyard.benchmarks.engine --isa avx2 --out docs/benchmarks.md   # the AVX2 path on an AVX-512 CPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from tokenyard.benchmarks.report import add_isa_argument, cpu_description, force_isa, section_for, write_section
from tokenyard.benchmarks.workloads import classifier_conversations
from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.cpu import cpu_isa
from tokenyard.runtime.loaders import packaged_model_path
from tokenyard.runtime.loaders.export import export_gguf_to_hf

OUTPUT_TOKENS = 50


@dataclass
class Row:
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    target: str | None  # e.g. ">= 10x"; None: measured, no target set

    @property
    def ratio(self) -> float:
        return self.value / self.baseline

    @property
    def met(self) -> str:
        if self.target is None:
            return "-"
        bound = float(self.target.split()[1].rstrip("x"))
        met = self.ratio >= bound if self.target.startswith(">=") else self.ratio <= bound
        return "yes" if met else "NO"


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| measure | tokenyard | baseline | baseline value | ratio | target | met |",
        "| --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.value:.1f} | {row.baseline_name} | {row.baseline:.1f} | "
            f"{row.ratio:.2f}x | {row.target or '-'} | {row.met} |"
        )
    return lines


def hf_model(directory: Path, dtype: torch.dtype):
    """transformers on the dense Hugging Face export of the same weights: what a transformers user runs
    (loading the GGUF itself would make transformers keep it packed with its own quantized kernels)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    tokenizer.padding_side = "left"
    return model, tokenizer


def hf_chat_ids(tokenizer, conversations) -> list[list[int]]:
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


@torch.inference_mode()
def hf_generate(model, tokenizer, batch: list[list[int]], new_tokens: int) -> float:
    """Seconds for one padded static batch, exactly ``new_tokens`` generated per row."""
    enc = tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(model.device)
    start = time.perf_counter()
    model.generate(
        **enc,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    return time.perf_counter() - start


def classifier_rows(llm: LLM, hf, requests: int, sequential: int, batch_size: int, dtype: str) -> list[Row]:
    model, tokenizer = hf
    conversations = classifier_conversations(requests, seed=1)
    ids = hf_chat_ids(tokenizer, conversations)
    hf_generate(model, tokenizer, ids[:1], 2)  # warm-up
    one_by_one = sum(hf_generate(model, tokenizer, [x], OUTPUT_TOKENS) for x in ids[:sequential])
    hf_sequential = sequential * OUTPUT_TOKENS / one_by_one
    batched_ids = ids[: (len(ids) // batch_size) * batch_size][: 2 * batch_size]
    padded = sum(
        hf_generate(model, tokenizer, batched_ids[i : i + batch_size], OUTPUT_TOKENS)
        for i in range(0, len(batched_ids), batch_size)
    )
    hf_batched = len(batched_ids) * OUTPUT_TOKENS / padded

    params = SamplingParams(temperature=0, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
    llm.chat(classifier_conversations(2, seed=99), params)  # warm-up: the system prompt is now cached, as in serving
    start = time.perf_counter()
    outs = llm.chat(conversations, params)
    engine = sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)
    return [
        Row(
            f"classifier workload, {requests} requests, {dtype}, output tok/s",
            engine,
            "tok/s",
            f"transformers generate, one request at a time, {dtype}",
            hf_sequential,
            ">= 10x",
        ),
        Row(
            f"classifier workload, {requests} requests, {dtype}, output tok/s",
            engine,
            "tok/s",
            f"transformers generate, padded static batches of {batch_size}, {dtype}",
            hf_batched,
            ">= 3x",
        ),
    ]


def prefix_cache_row(llm: LLM, repeats: int = 5) -> Row:
    [conversation] = classifier_conversations(1, seed=7)
    engine = llm.engine
    ids = engine.inputs.chat(conversation).token_ids

    def ttft(cold: bool) -> float:
        if cold:
            engine.kv_cache.reset_prefix_cache()
        else:  # cache the system prompt through a different user turn, then time this one
            llm.chat(classifier_conversations(1, seed=8), SamplingParams(temperature=0, max_tokens=1))
        start = time.perf_counter()
        engine.add_request("ttft", {"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=1))
        while not engine.step():
            pass
        return time.perf_counter() - start

    cold = statistics.median(ttft(True) for _ in range(repeats))
    warm = statistics.median(ttft(False) for _ in range(repeats))
    return Row(
        f"time to first token, {len(ids)}-token prompt, system prompt cached (ms)",
        warm * 1e3,
        "ms",
        "the same request with a cold cache",
        cold * 1e3,
        "<= 0.15x",
    )


DECODE_PROMPT = "Once upon a time, in a small village by the sea,"


def decode_rate_engine(llm: LLM, tokens: int) -> float:
    """Decode tokens/s of one request: (total - prefill) time over tokens - 1."""

    def seconds(n: int) -> float:
        start = time.perf_counter()
        llm.generate(DECODE_PROMPT, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
        return time.perf_counter() - start

    seconds(4)
    return (tokens - 1) / (seconds(tokens) - seconds(1))


def decode_rate_hf(hf, tokens: int) -> float:
    model, tokenizer = hf
    ids = [tokenizer.encode(DECODE_PROMPT)]
    hf_generate(model, tokenizer, ids, 4)
    return (tokens - 1) / (hf_generate(model, tokenizer, ids, tokens) - hf_generate(model, tokenizer, ids, 1))


def best_of(runs: int, measure: Callable[[], float]) -> float:
    """The best of a few runs: this 2-core machine is shared, and noise only ever slows a run down."""
    return max(measure() for _ in range(runs))


def compared_dtypes(native_bfloat16: bool) -> list[torch.dtype]:
    """The float dtypes both sides are compared in, the fastest first (the classifier rows run in it): bfloat16
    only where the CPU computes it natively; without that, PyTorch's bfloat16 kernels are emulated (several times
    slower than float32, on both sides), so float32 is the CPU's float and bfloat16 rows would say nothing."""
    return [torch.bfloat16, torch.float32] if native_bfloat16 else [torch.float32]


def run(args: argparse.Namespace) -> list[Row]:
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    dense = export_gguf_to_hf(packaged_model_path(), Path(tempfile.mkdtemp()) / "smollm2", torch.float32)
    dtypes = compared_dtypes(cpu_isa().native_bfloat16)
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        llm = LLM(
            dtype=name, max_model_len=2048, max_num_seqs=64, kv_cache_memory_bytes=1 << 30, num_threads=args.threads
        )
        hf = hf_model(dense, dtype)
        if dtype is dtypes[0]:  # the fastest dtype of both sides on this CPU
            rows += classifier_rows(llm, hf, args.requests, args.sequential, args.batch_size, name)
            rows.append(prefix_cache_row(llm))
        engine_rate = best_of(3, partial(decode_rate_engine, llm, args.decode_tokens))
        hf_rate = best_of(3, partial(decode_rate_hf, hf, args.decode_tokens))
        rows.append(
            Row(
                f"batch-1 decode, {name}, tok/s",
                engine_rate,
                "tok/s",
                f"transformers generate, batch 1, {name}",
                hf_rate,
                ">= 1.5x",
            )
        )
        del llm, hf
    return rows


def render(rows: list[Row], args: argparse.Namespace) -> str:
    isa = cpu_isa()
    lines = [
        f"## Engine: SmolLM2-135M-Instruct, CPU, {isa.name} (`python -m tokenyard.benchmarks.engine`)",
        "",
        "Both sides run the same weights: the packaged Q4_1 GGUF dequantized; transformers reads them from a",
        "dense Hugging Face export (`tokenyard.runtime.loaders.export`), as a transformers user would.",
        "",
        f"Machine: {cpu_description()}; {args.threads} torch threads, torch {torch.__version__}. "
        f"Classifier workload: a {OUTPUT_TOKENS}-token answer (EOS ignored on both sides so the work is equal) "
        "to a ~460-token chat prompt (a ~450-token system prompt shared by all requests + a 30-60-token user turn).",
        "",
        *table(rows),
    ]
    lines += [
        "",
        f"Transformers one-at-a-time runs {args.sequential} requests (it is slow); the padded batches run "
        f"{2 * args.batch_size} requests; the engine runs all {args.requests} with max_num_seqs=64.",
        "The engine's run starts with the system prompt in its prefix cache (a warm server's steady state).",
    ]
    if not isa.native_bfloat16:
        lines.append(
            "No bfloat16 rows: this CPU has no native bfloat16 (PyTorch's bfloat16 kernels are emulated here, several "
            "times slower than float32 on both sides), so float32 is its float and the only one compared."
        )
    lines += [
        "tokenyard against llama.cpp on the same CPU kind: the `llama_cpp` section "
        f"(`python -m tokenyard.benchmarks.llama_cpp`, section `{section_for('llama_cpp')}`).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--sequential", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decode-tokens", type=int, default=128)
    add_isa_argument(parser)
    args = parser.parse_args()
    force_isa(args)
    report = render(run(args), args)
    write_section(args.out, section_for("engine"), report)
    print(report)


if __name__ == "__main__":
    main()
