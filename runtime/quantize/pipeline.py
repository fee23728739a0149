"""Quantize a whole model layer by layer, as GPTQ does: each decoder layer is calibrated on the outputs of
the layers before it as already quantized, so later layers learn to live with earlier layers' errors."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from tokenyard.runtime.models.llama import DecoderLayer, LlamaForCausalLM
from tokenyard.runtime.quantization.formats import GroupQuantized, dequantize
from tokenyard.runtime.quantize.awq import awq_layer
from tokenyard.runtime.quantize.calibration import CalibrationBatch
from tokenyard.runtime.quantize.gptq import Hessian, gptq
from tokenyard.runtime.quantize.layers import inputs_seen, layer_linears
from tokenyard.runtime.quantize.rtn import rtn

log = logging.getLogger(__name__)
METHODS = ("rtn", "gptq", "awq")


@dataclass(frozen=True)
class QuantizeSettings:
    method: str
    bits: int
    group_size: int  # -1: one group per output row
    act_order: bool = False  # GPTQ only
    damp_percent: float = 0.01  # GPTQ only


@torch.no_grad()
def quantize_model(
    model: LlamaForCausalLM, sequences: torch.Tensor | None, settings: QuantizeSettings
) -> dict[str, GroupQuantized]:
    """Codes of every decoder linear, by module path (``layers.3.mlp.down_proj``); the model's linears are
    left holding the dequantized weights (and, for AWQ, its norms and producers the folded scales)."""
    quantized: dict[str, GroupQuantized] = {}
    if settings.method == "rtn":  # needs no activations
        for index, layer in enumerate(model.layers):
            quantized.update(_prefixed(index, _rtn_layer(layer, settings)))
        return quantized
    batch = CalibrationBatch(model, sequences)
    x = model.embed_tokens(batch.input_ids)
    for index, layer in enumerate(model.layers):
        start = time.perf_counter()
        if settings.method == "gptq":
            codes = _gptq_layer(layer, x, batch, settings)
        else:
            codes = awq_layer(layer, x, batch, settings.bits, settings.group_size)
        quantized.update(_prefixed(index, codes))
        x = batch.run_layer(layer, x)
        log.info(
            "%s: layer %d/%d in %.1f s", settings.method, index + 1, len(model.layers), time.perf_counter() - start
        )
    return quantized


def _rtn_layer(layer: DecoderLayer, settings: QuantizeSettings) -> dict[str, GroupQuantized]:
    codes = {}
    for name, linear in layer_linears(layer).items():
        codes[name] = rtn(linear.weight.data, settings.bits, _group_size(settings, linear.weight.shape[1]))
        linear.weight.data = dequantize(codes[name])
    return codes


def _gptq_layer(
    layer: DecoderLayer, x: torch.Tensor, batch: CalibrationBatch, settings: QuantizeSettings
) -> dict[str, GroupQuantized]:
    """Linears one at a time in the order they run ("true sequential"): each one's Hessian comes from inputs
    that already went through the quantized linears before it."""
    codes = {}
    for name, linear in layer_linears(layer).items():
        hessian = Hessian(linear.weight.shape[1])
        with inputs_seen({name: linear}, lambda _name, inputs, h=hessian: h.add(inputs)):
            batch.run_layer(layer, x)
        group_size = _group_size(settings, linear.weight.shape[1])
        codes[name] = gptq(
            linear.weight.data, hessian.matrix, settings.bits, group_size, settings.damp_percent, settings.act_order
        )
        linear.weight.data = dequantize(codes[name])
    return codes


def _group_size(settings: QuantizeSettings, in_features: int) -> int:
    return in_features if settings.group_size == -1 else settings.group_size


def _prefixed(index: int, codes: dict[str, GroupQuantized]) -> dict[str, GroupQuantized]:
    return {f"layers.{index}.{name}": q for name, q in codes.items()}
