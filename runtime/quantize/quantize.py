"""Model in, checkpoint out: load in float32, check the shapes fit the format, calibrate, quantize, write."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from tokenyard.runtime.quantize.calibration import calibration_sequences, load_float_model
from tokenyard.runtime.quantize.checkpoint import checkpoint_format, write_checkpoint
from tokenyard.runtime.quantize.layers import layer_linears
from tokenyard.runtime.quantize.pipeline import QuantizeSettings, quantize_model

log = logging.getLogger(__name__)


def quantize(
    model: str,
    settings: QuantizeSettings,
    out_dir: Path,
    calibration: Path | None = None,
    num_sequences: int = 32,
    seq_len: int = 512,
) -> Path:
    with tempfile.TemporaryDirectory(prefix="tokenyard-quantize-") as workdir:
        source = load_float_model(model, Path(workdir))
        check_shapes(source.model, settings)
        sequences = None
        if settings.method != "rtn":
            text = calibration.read_text(encoding="utf-8")
            sequences = calibration_sequences(source.tokenizer, text, num_sequences, seq_len)
            log.info("calibration: %d sequences of %d tokens from %s", *sequences.shape, calibration)
        quantized = quantize_model(source.model, sequences, settings)
        return write_checkpoint(source, quantized, settings, out_dir)


def check_shapes(model: torch.nn.Module, settings: QuantizeSettings) -> None:
    """Refuse what the checkpoint layout cannot hold. A group size that does not divide a linear's input
    size is fine: its last group is shorter (as if zero-padded) and GPTQ's g_idx says so; AutoAWQ's own
    kernels, unlike tokenyard's loader, insist on whole groups, so AWQ warns."""
    fmt = checkpoint_format(settings.method)
    per_word = 32 // settings.bits
    shapes = {tuple(linear.weight.shape) for linear in _linears(model)}
    for out_features, in_features in shapes:
        if fmt == "gptq" and (in_features % per_word or out_features % per_word):
            raise ValueError(
                f"a {out_features}x{in_features} linear cannot be packed in GPTQ's layout at {settings.bits} bits: "
                f"both sizes must be multiples of {per_word}"
            )
        if fmt == "awq" and out_features % 8:
            raise ValueError(
                f"a {out_features}x{in_features} linear cannot be packed in AWQ's layout: "
                "its output size must be a multiple of 8"
            )
    smallest = min(k for _, k in shapes)
    if settings.group_size > smallest:
        raise ValueError(
            f"--group-size={settings.group_size} is invalid: must be at most the smallest input size, {smallest}, or -1"
        )
    uneven = sorted({k for _, k in shapes if settings.group_size > 0 and k % settings.group_size})
    if fmt == "awq" and uneven:
        log.warning(
            "group size %d does not divide input sizes %s: their last group is shorter; tokenyard loads this, "
            "AutoAWQ's kernels do not",
            settings.group_size,
            uneven,
        )


def _linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [linear for layer in model.layers for linear in layer_linears(layer).values()]
