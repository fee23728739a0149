"""Accuracy of quantized SmolLM2-135M: perplexity on held-out English text (CPython's documentation topics,
see benchmarks/perplexity.py) under every weight format and the int8 KV cache, as ratios to float32,
all measured in the same run and written to docs/benchmarks.md.

    python -m tokenyard.benchmarks.accuracy --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenyard.benchmarks.perplexity import Perplexity, load_runner, perplexity, pydoc_corpus
from tokenyard.benchmarks.report import write_section
from tokenyard.runtime.loaders import packaged_model_path
from tokenyard.runtime.loaders.export import export_gguf_to_hf
from tokenyard.runtime.quantize.checkpoint import dequantize_checkpoint
from tokenyard.runtime.quantize.pipeline import QuantizeSettings
from tokenyard.runtime.quantize.quantize import quantize

WINDOW = 512


@dataclass
class Row:
    name: str
    loaded_as: str
    result: Perplexity | None  # None: this runtime cannot run it (``loaded_as`` says why)
    seconds_to_quantize: float | None = None
    target: str = ""  # e.g. "<= 1.01x"; "< RTN g32": below the RTN row of that group size


def evaluate(model: str, ids: list[int], args: argparse.Namespace, **engine_args: object) -> Perplexity:
    runner = load_runner(model, WINDOW, **engine_args)
    return perplexity(runner, ids, WINDOW, args.stride, args.chunk)


def runtime_row(name: str, model: str, ids: list[int], args: argparse.Namespace, target: str, **engine_args) -> Row:
    """A feature of the runtime itself (int8 weights, int8 KV cache); reported as missing when refused."""
    try:
        return Row(
            name,
            ", ".join(f"{k}={v}" for k, v in engine_args.items()),
            evaluate(model, ids, args, **engine_args),
            target=target,
        )
    except ValueError as error:
        return Row(name, f"not available: {error}", None, target=target)


def checkpoint_row(
    name: str,
    settings: QuantizeSettings,
    dense: Path,
    calibration: Path,
    ids: list[int],
    args: argparse.Namespace,
    work: Path,
    target: str,
) -> Row:
    """Quantize with ``tokenyard quantize``'s code, then score the weights the checkpoint stands for, dequantized
    through ``formats.dequantize``: the runtime's GPTQ/AWQ/int8 kernels give the same weights but their float32
    prefill is far too slow on this CPU to score thousands of tokens (see the note under the table)."""
    out = work / f"{settings.method}-{settings.bits}-g{settings.group_size}"
    start = time.perf_counter()
    quantize(str(dense), settings, out, calibration, args.calibration_seqs, WINDOW)
    seconds = time.perf_counter() - start
    dense_copy = dequantize_checkpoint(out, work / f"{out.name}-dense")
    row = Row(name, "checkpoint, dequantized", evaluate(str(dense_copy), ids, args), seconds, target)
    for directory in (out, dense_copy):  # ~0.7 GB per row
        shutil.rmtree(directory)
    print(row, file=sys.stderr, flush=True)
    return row


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tokenyard-accuracy-") as work:
        return measure(args, Path(work))


def measure(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict]:
    dense = export_gguf_to_hf(packaged_model_path(), work / "float32", torch.float32)
    calibration_text, evaluation_text = pydoc_corpus()
    calibration = work / "calibration.txt"
    calibration.write_text(calibration_text)
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(dense)).encode(evaluation_text, add_special_tokens=False)[
        : args.eval_tokens
    ]
    rows = [Row("float32", "dense Hugging Face export", evaluate(str(dense), ids, args))]
    rows.append(runtime_row("int8 KV cache", str(dense), ids, args, "<= 1.01x", kv_cache_dtype="int8"))
    int8 = QuantizeSettings("rtn", 8, -1)
    rows.append(
        checkpoint_row("int8 weights (RTN, per channel)", int8, dense, calibration, ids, args, work, "<= 1.01x")
    )
    for group_size in (128, 32):
        for method in ("rtn", "gptq", "awq"):
            name = f"{method.upper()} 4-bit, group {group_size}"
            target = "" if method == "rtn" else f"< RTN g{group_size}"
            settings = QuantizeSettings(method, 4, group_size)
            rows.append(checkpoint_row(name, settings, dense, calibration, ids, args, work, target))
    setup = {"eval_tokens": len(ids) - 1, "calibration_tokens": args.calibration_seqs * WINDOW}
    return rows, setup


def met(row: Row, rows: list[Row]) -> str:
    if not row.target or row.result is None:
        return ""
    if row.target.startswith("<="):
        return "yes" if ratio(row, rows) <= float(row.target.split()[1].rstrip("x")) else "NO"
    rtn = next(r for r in rows if r.name == f"RTN 4-bit, group {row.target.split('g')[-1]}")
    return "yes" if rtn.result and row.result.perplexity < rtn.result.perplexity else "NO"


def ratio(row: Row, rows: list[Row]) -> float:
    return row.result.perplexity / rows[0].result.perplexity


def render(rows: list[Row], setup: dict, args: argparse.Namespace, seconds: float) -> str:
    lines = [
        "## Accuracy: quantized SmolLM2-135M-Instruct, perplexity (`python -m tokenyard.benchmarks.accuracy`)",
        "",
        "Held-out text: CPython's documentation topics (`pydoc_data.topics`, shipped with Python "
        f"{platform.python_version()}), odd topics in sorted order, {setup['eval_tokens']} tokens scored, "
        f"{args.stride} per window of {WINDOW}, each window prefilled in chunks of {args.chunk} so later chunks "
        "read the KV cache. Calibration (GPTQ, AWQ): the even topics, which share no paragraph with the evaluation "
        f"part, {args.calibration_seqs} sequences of {WINDOW} tokens ({setup['calibration_tokens']} tokens).",
        "The float32 baseline is the packaged Q4_1 GGUF dequantized (the only SmolLM2 weights here): its weights "
        "already sit on a 4-bit grid of group 32 (llama.cpp's, with float offsets), which flatters group-32 "
        "4-bit rows. All rows run float32 activations; a 135M model loses far more to 4 bits than a 7B one does.",
        "Checkpoints are written by `tokenyard quantize`'s code and scored as the float weights they stand for "
        "(`formats.dequantize`): the runtime's packed GPTQ/AWQ/int8 kernels load them (tests/runtime/"
        "test_quantize_offline.py checks their tokens and logprobs) but prefill thousands of tokens far too "
        "slowly in float32 on this CPU. int8 weights: RTN 8-bit per output channel of the decoder's linears "
        "(the runtime's `--quantization int8` is symmetric and quantizes the LM head too).",
        "",
        "| weights / cache | loaded as | perplexity | ratio to float32 | target | met | quantize time |",
        "| --- | --- | ---: | ---: | --- | --- | ---: |",
    ]
    for row in rows:
        if row.result is None:
            lines.append(f"| {row.name} | {row.loaded_as} | - | - | {row.target} | - | |")
            continue
        took = f"{row.seconds_to_quantize:.0f} s" if row.seconds_to_quantize is not None else ""
        lines.append(
            f"| {row.name} | {row.loaded_as} | {row.result.perplexity:.3f} | {ratio(row, rows):.4f}x | "
            f"{row.target} | {met(row, rows)} | {took} |"
        )
    lines += [
        "",
        f"Machine: {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}; the whole "
        f"benchmark took {seconds / 60:.1f} min.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    # one thread: perplexities do not depend on it, and on a shared 2-core machine two threads spin-wait
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--stride", type=int, default=WINDOW - 1, help="tokens scored per window")
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--calibration-seqs", type=int, default=4)
    args = parser.parse_args()
    start = time.perf_counter()
    rows, setup = run(args)
    report = render(rows, setup, args, time.perf_counter() - start)
    write_section(args.out, "accuracy", report)
    print(report)


if __name__ == "__main__":
    main()
