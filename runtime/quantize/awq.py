"""AWQ (Lin et al., 2023): the few input channels with large activations matter most, so scale them up
before rounding (their weights then lose less) and fold the inverse scale into the operation that produces
that input (an RMSNorm weight, or the rows of the previous linear), which leaves the float model unchanged.
The scales are ``mean|x|^alpha`` per input channel, with alpha chosen on a grid in [0, 1) to minimise the
output error of the block the linear feeds."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tokenyard.runtime.layers.linear import Linear
from tokenyard.runtime.models.llama import DecoderLayer
from tokenyard.runtime.quantization.formats import GroupQuantized, dequantize
from tokenyard.runtime.quantize.calibration import CalibrationBatch
from tokenyard.runtime.quantize.layers import input_of, inputs_seen, layer_linears
from tokenyard.runtime.quantize.rtn import num_groups, rtn

GRID = 20  # alphas 0, 0.05, ..., 0.95, as AutoAWQ searches
CLIP_RATIOS = 1 - torch.arange(10) / 20  # fractions of each group's range tried: 1, 0.95, ..., 0.55
CLIP_TOKENS = 512  # input rows the clipping is judged on


def awq_layer(
    layer: DecoderLayer, x: torch.Tensor, batch: CalibrationBatch, bits: int, group_size: int
) -> dict[str, GroupQuantized]:
    fold_scales(layer, x, batch, bits, group_size)
    linears = layer_linears(layer)
    inputs: dict[str, torch.Tensor] = {}
    with inputs_seen(linears, inputs.__setitem__):
        batch.run_layer(layer, x)
    qkv = layer.self_attn.qkv_proj
    quantized = {}
    for name, linear in linears.items():
        weight = linear.weight.data
        # the query and key rows are left unclipped: their error passes through the softmax, which a
        # linear's own output error does not see (AutoAWQ skips them too)
        rows = qkv.part_slice(2) if linear is qkv else slice(None)
        weight[rows] = clip(weight[rows], inputs[name], bits, group_size)
        quantized[name] = rtn(weight, bits, group_size)
        linear.weight.data = dequantize(quantized[name])
    return quantized


def fold_scales(layer: DecoderLayer, x: torch.Tensor, batch: CalibrationBatch, bits: int, group_size: int) -> None:
    """Search and apply the input scales of each linear of the layer; the float layer computes what it did."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = attn.qkv_proj, mlp.gate_up_proj

    def attention(normed: torch.Tensor) -> torch.Tensor:
        return batch.run_attention(layer, normed)

    normed = layer.input_layernorm(x)
    scale_inputs(qkv, normed, attention, [layer.input_layernorm.weight.data], bits, group_size)
    if attn.num_heads == attn.num_kv_heads:  # with grouped KV heads one v row feeds several o_proj columns
        o_input = input_of(attn.o_proj, lambda: attention(layer.input_layernorm(x)))
        v_rows = qkv.weight.data[qkv.part_slice(2)]
        scale_inputs(attn.o_proj, o_input, attn.o_proj, [v_rows, *_bias_rows(qkv, 2)], bits, group_size)
    hidden = x + attention(layer.input_layernorm(x))
    normed = layer.post_attention_layernorm(hidden)
    scale_inputs(gate_up, normed, mlp, [layer.post_attention_layernorm.weight.data], bits, group_size)
    down_input = input_of(mlp.down_proj, lambda: mlp(layer.post_attention_layernorm(hidden)))
    up_rows = gate_up.weight.data[gate_up.part_slice(1)]
    scale_inputs(mlp.down_proj, down_input, mlp.down_proj, [up_rows], bits, group_size)


def scale_inputs(
    linear: Linear,
    inputs: torch.Tensor,
    block: Callable[[torch.Tensor], torch.Tensor],
    producers: list[torch.Tensor],
    bits: int,
    group_size: int,
) -> None:
    """Search the input-channel scales of ``linear`` and apply them: its columns times s, every tensor in
    ``producers`` (views whose first dimension is the channel) divided by s."""
    scales = search_scales(linear, inputs, block, bits, group_size)
    linear.weight.data *= scales
    for tensor in producers:
        tensor.div_(scales.view(-1, *[1] * (tensor.dim() - 1)))


@torch.no_grad()
def search_scales(
    linear: Linear,
    inputs: torch.Tensor,
    block: Callable[[torch.Tensor], torch.Tensor],
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """The per-input-channel scales (alpha on the grid) whose rounded weights change ``block(inputs)`` least."""
    activation = inputs.abs().reshape(-1, inputs.shape[-1]).mean(0)
    reference = block(inputs)
    original = linear.weight.data
    best_loss, best = float("inf"), torch.ones_like(activation)
    for alpha in torch.arange(GRID) / GRID:
        scales = activation.pow(alpha).clamp(min=1e-4)
        scales = scales / (scales.max() * scales.min()).sqrt()  # centred in log space around 1
        linear.weight.data = dequantize(rtn(original * scales, bits, group_size)) / scales
        loss = float((block(inputs) - reference).pow(2).mean())
        if loss < best_loss:
            best_loss, best = loss, scales
    linear.weight.data = original
    return best


def _bias_rows(linear: Linear, part: int) -> list[torch.Tensor]:
    return [] if linear.bias is None else [linear.bias.data[linear.part_slice(part)]]


@torch.no_grad()
def clip(weight: torch.Tensor, inputs: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """``weight`` with each (row, group) clamped to the fraction of its range (1 down to 0.55) whose rounded
    weights keep that group's share of the output closest on a sample of the inputs: outliers given up
    buy a finer grid for the rest."""
    rows, cols = weight.shape
    groups = num_groups(cols, group_size)
    pad = groups * group_size - cols  # a short last group, zero-padded: zeros change neither range nor output
    x = inputs.reshape(-1, cols)
    x = x[torch.linspace(0, x.shape[0] - 1, min(CLIP_TOKENS, x.shape[0])).long()]
    w = F.pad(weight, (0, pad)).view(rows, groups, group_size)
    x = F.pad(x, (0, pad)).view(-1, groups, group_size)
    reference = torch.einsum("ngk,tgk->ngt", w, x)
    high, low = w.amax(dim=-1, keepdim=True), w.amin(dim=-1, keepdim=True)
    best_error = torch.full((rows, groups, 1), float("inf"))
    best = torch.ones(rows, groups, 1)
    for ratio in CLIP_RATIOS:
        clipped = torch.clamp(w, low * ratio, high * ratio)
        rounded = dequantize(rtn(clipped.reshape(rows * groups, group_size), bits, group_size)).view_as(w)
        error = (torch.einsum("ngk,tgk->ngt", rounded, x) - reference).pow(2).mean(dim=-1, keepdim=True)
        better = error < best_error
        best_error, best = torch.where(better, error, best_error), torch.where(better, ratio, best)
    clipped = torch.clamp(w, low * best, high * best)
    return clipped.reshape(rows, -1)[:, :cols]
