"""``tokenyard quantize``: quantize a model's linears offline (RTN, GPTQ or AWQ) and write a Hugging Face
GPTQ/AWQ checkpoint that tokenyard (``--quantization gptq|awq``, or detected) and other HF loaders read."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tokenyard.runtime.config import DEFAULT_MODEL
from tokenyard.runtime.quantization.formats import AWQ_BITS
from tokenyard.runtime.quantize.pipeline import METHODS, QuantizeSettings
from tokenyard.runtime.quantize.quantize import quantize
from tokenyard.runtime.validation import require

log = logging.getLogger(__name__)
BITS = (4, 8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="a .gguf file, a Hugging Face directory or a cached hub id"
    )
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--bits", type=int, choices=BITS, default=4)
    parser.add_argument("--group-size", type=int, default=128, help="input columns per scale; -1: one per row")
    parser.add_argument("--calibration", type=Path, default=None, help="a UTF-8 text file (needed by gptq and awq)")
    parser.add_argument("--num-calibration-seqs", type=int, default=32)
    parser.add_argument("--calibration-seq-len", type=int, default=512)
    parser.add_argument("--desc-act", action="store_true", help="GPTQ act-order: columns by decreasing activation")
    parser.add_argument("--damp-percent", type=float, default=0.01, help="GPTQ dampening, a fraction of mean(diag H)")
    parser.add_argument("--out", type=Path, required=True, help="the directory to write")


def settings_from_args(args: argparse.Namespace) -> QuantizeSettings:
    """The settings the flags ask for, or a ValueError naming the first flag that cannot be honoured."""
    require(args.method in METHODS, "--method", args.method, f"one of {', '.join(METHODS)}")
    require(args.bits in BITS, "--bits", args.bits, f"one of {', '.join(map(str, BITS))}")
    if args.method == "awq":
        require(args.bits == AWQ_BITS, "--bits", args.bits, f"{AWQ_BITS} with --method awq (AWQ's GEMM layout)")
        require(args.group_size != -1, "--group-size", args.group_size, "a multiple of 32 with --method awq")
    require(
        args.group_size == -1 or (args.group_size > 0 and args.group_size % 32 == 0),
        "--group-size",
        args.group_size,
        "-1 or a positive multiple of 32 (what GPTQ/AWQ loaders take)",
    )
    require(not args.desc_act or args.method == "gptq", "--desc-act", True, "used with --method gptq only")
    require(0 <= args.damp_percent < 1, "--damp-percent", args.damp_percent, "in [0, 1)")
    if args.method != "rtn":
        require(args.calibration is not None, "--calibration", None, f"a text file with --method {args.method}")
        require(args.calibration.is_file(), "--calibration", str(args.calibration), "an existing text file")
        require(args.num_calibration_seqs >= 1, "--num-calibration-seqs", args.num_calibration_seqs, ">= 1")
        require(args.calibration_seq_len >= 2, "--calibration-seq-len", args.calibration_seq_len, ">= 2")
    return QuantizeSettings(args.method, args.bits, args.group_size, args.desc_act, args.damp_percent)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    start = time.perf_counter()
    try:
        out = quantize(
            args.model, settings, args.out, args.calibration, args.num_calibration_seqs, args.calibration_seq_len
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    log.info(
        "wrote %s (%s, %d bits, group size %d) in %.0f s",
        out,
        settings.method,
        settings.bits,
        settings.group_size,
        time.perf_counter() - start,
    )
    return 0
