"""The engine on a CUDA GPU against Hugging Face transformers (`generate`, eager, the same weights on the same
GPU) measured in the same process, and the quantized formats against bfloat16, reported as ratios in
docs/benchmarks.md (section gpu).

    python -m tokenyard.benchmarks.gpu --out docs/benchmarks.md                 # the packaged SmolLM2-135M
    python -m tokenyard.benchmarks.gpu --random-weights TOKENIZER_DIR --out ... # its shapes, random weights

Random weights with the model's shapes take the same time per token as the real ones (EOS is ignored, so
every request writes as many tokens either way); they serve machines that have no copy of the model.
Needs a GPU: `make bench` runs it only where torch sees one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from tokenyard.benchmarks.engine import (
    OUTPUT_TOKENS,
    Row,
    best_of,
    classifier_rows,
    decode_rate_engine,
    decode_rate_hf,
    hf_model,
    prefix_cache_row,
    table,
)
from tokenyard.benchmarks.random_models import random_smollm2
from tokenyard.benchmarks.report import write_section
from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.loaders import packaged_model_path
from tokenyard.runtime.loaders.export import export_gguf_to_hf


@dataclass
class StepProfile:
    wall_ms: float  # per generated token, batch 1
    gpu_ms: float  # kernel time per token
    kernels: float  # kernel launches per token


def profile_decode(llm: LLM, tokens: int = 64) -> StepProfile:
    """Where a batch-1 token's time goes, by torch's profiler (which slows the wall clock: timed apart)."""
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    prompt = [list(range(10, 60))]
    llm.generate(prompt, params)
    start = time.perf_counter()
    llm.generate(prompt, params)
    wall = (time.perf_counter() - start) / tokens
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        llm.generate(prompt, params)
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    gpu_us = sum(e.self_device_time_total for e in kernels)
    return StepProfile(wall * 1e3, gpu_us / tokens / 1e3, sum(e.count for e in kernels) / tokens)


def run(args: argparse.Namespace) -> tuple[list[Row], StepProfile]:
    work = Path(tempfile.mkdtemp())
    if args.random_weights:
        from transformers import AutoTokenizer

        model = random_smollm2(work / "smollm2-shaped", AutoTokenizer.from_pretrained(str(args.random_weights)))
    else:
        model = export_gguf_to_hf(packaged_model_path(), work / "smollm2", torch.float32)
    # 4 GiB of KV holds 64 sequences of 2048 tokens (SmolLM2's KV is 23 KiB a token): the rest of the GPU is not needed
    engine = partial(LLM, str(model), device="cuda", max_model_len=2048, max_num_seqs=64, kv_cache_memory_bytes=4 << 30)
    rows: list[Row] = []
    bf16 = engine(dtype="bfloat16")
    hf = hf_model(model, torch.bfloat16)
    hf[0].to("cuda")
    classifier = classifier_rows(bf16, hf, args.requests, args.sequential, args.batch_size)
    rows += [replace(row, target=None) for row in [*classifier, prefix_cache_row(bf16)]]  # the CPU's targets
    step = profile_decode(bf16)
    bf16_rate = best_of(3, partial(decode_rate_engine, bf16, args.decode_tokens))
    hf_rate = best_of(3, partial(decode_rate_hf, hf, args.decode_tokens))
    rows.append(Row("batch-1 decode, bfloat16, tok/s", bf16_rate, "tok/s", "transformers generate", hf_rate, None))
    bf16.shutdown()
    del hf
    for method in ("int8", "int4"):
        llm = engine(dtype="bfloat16", quantization=method, quantization_group_size=128)
        rate = best_of(3, partial(decode_rate_engine, llm, args.decode_tokens))
        name = f"batch-1 decode, {method}{' g128' if method == 'int4' else ''}, tok/s"
        rows.append(Row(name, rate, "tok/s", "tokenyard, bfloat16", bf16_rate, None))
        llm.shutdown()
    return rows, step


def render(rows: list[Row], step: StepProfile, args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name()
    weights = (
        "random weights with SmolLM2-135M-Instruct's shapes and tokenizer (the machine had no copy of the model)"
        if args.random_weights
        else "the packaged SmolLM2-135M-Instruct, dequantized"
    )
    return "\n".join(
        [
            "## Engine on a GPU (`python -m tokenyard.benchmarks.gpu`)",
            "",
            f"GPU: {device}, torch {torch.__version__}. Weights: {weights}; transformers runs the same checkpoint "
            "on the same GPU, eagerly (its default `generate`). Classifier workload: a "
            f"{OUTPUT_TOKENS}-token answer (EOS ignored) to a ~460-token chat prompt whose ~450-token system prompt "
            "all requests share. No targets are set for the GPU yet: the figures say where the engine stands.",
            "",
            *table(rows),
            "",
            "Where a batch-1 token's time goes (torch profiler, bfloat16): "
            f"{step.wall_ms:.1f} ms a token, of which the GPU computes {step.gpu_ms:.1f} ms, in "
            f"{step.kernels:.0f} kernel launches. The engine runs every step eagerly (no CUDA graphs yet), so at "
            "this model size the host's launching and Python, not the GPU, set the speed, as they do for "
            "transformers; the prefix cache saves GPU work that is not the bottleneck, so time to first token "
            "does not move either.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--random-weights", type=Path, metavar="TOKENIZER_DIR")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--sequential", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decode-tokens", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu needs a CUDA GPU; this machine has none")
    report = render(*run(args), args)
    write_section(args.out, "gpu", report)
    print(report)


if __name__ == "__main__":
    main()
