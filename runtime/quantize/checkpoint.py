"""Write a quantized model as a Hugging Face directory: config.json with the ``quantization_config`` that
transformers/optimum (GPTQ) or AutoAWQ (AWQ) write, one safetensors file with the packed linears in their
layout and every other weight in float16, and the tokenizer files."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tokenyard.runtime.layers.linear import MergedLinear
from tokenyard.runtime.quantization import formats
from tokenyard.runtime.quantization.formats import GroupQuantized
from tokenyard.runtime.quantize.calibration import FloatModel
from tokenyard.runtime.quantize.pipeline import QuantizeSettings

# our fused modules -> the checkpoint's separate projections, in row order
_PARTS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
FLOAT_DTYPE = torch.float16  # what GPTQ/AWQ checkpoints keep their unquantized weights in
_PACKED = ("qweight", "qzeros", "scales", "g_idx")


def checkpoint_format(method: str) -> str:
    """RTN and GPTQ codes are written in the GPTQ layout (it holds 8 bits and act-order); AWQ in AWQ's."""
    return "awq" if method == "awq" else "gptq"


def write_checkpoint(
    source: FloatModel, quantized: dict[str, GroupQuantized], settings: QuantizeSettings, out_dir: Path
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = source.model
    fmt = checkpoint_format(settings.method)
    tensors: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for name, q in quantized.items():
        linear = modules[name]
        for part_name, rows in _parts(name, linear):
            part = dataclasses.replace(q, codes=q.codes[rows], scales=q.scales[rows], zeros=q.zeros[rows])
            packed = formats.to_awq(part) if fmt == "awq" else formats.to_gptq(part)
            tensors.update({f"model.{part_name}.{key}": value for key, value in packed.items()})
            if linear.bias is not None:
                tensors[f"model.{part_name}.bias"] = linear.bias.data[rows].to(FLOAT_DTYPE)
    quantized_params = {f"{name}.{kind}" for name in quantized for kind in ("weight", "bias")}
    for name, param in model.named_parameters():  # a tied lm_head is not listed: it is the embedding
        if name not in quantized_params:
            key = name if name.startswith("lm_head.") else f"model.{name}"
            tensors[key] = param.data.to(FLOAT_DTYPE).contiguous()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    config = json.loads((source.directory / "config.json").read_text())
    if fmt == "awq":
        config["quantization_config"] = formats.awq_config(settings.group_size)
    else:
        config["quantization_config"] = formats.gptq_config(
            settings.bits, settings.group_size, desc_act=settings.act_order, sym=False
        )
    _set_dtype(config, FLOAT_DTYPE)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    if (source.directory / "generation_config.json").is_file():
        shutil.copy(source.directory / "generation_config.json", out_dir)
    source.tokenizer.save_pretrained(str(out_dir))
    return out_dir


def _parts(name: str, linear: torch.nn.Module) -> list[tuple[str, slice]]:
    """(checkpoint module path, rows of the fused matrix) of each projection ``name`` (layers.3.mlp.gate_up_proj)
    holds."""
    if not isinstance(linear, MergedLinear):
        return [(name, slice(None))]
    layer, _, path = name.partition(".")[2].partition(".")
    return [(f"layers.{layer}.{part}", linear.part_slice(i)) for i, part in enumerate(_PARTS[path])]


def dequantize_checkpoint(directory: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A plain float Hugging Face directory with the weights a GPTQ/AWQ checkpoint stands for, for tools
    that cannot read the packed layouts (transformers without optimum/AutoAWQ, for one)."""
    config = json.loads((directory / "config.json").read_text())
    spec = config.pop("quantization_config")
    packed = load_file(str(directory / "model.safetensors"))
    modules = {name.removesuffix(".qweight") for name in packed if name.endswith(".qweight")}
    tensors = {name: t.to(dtype) for name, t in packed.items() if name.rpartition(".")[0] not in modules}
    for module in modules:
        parts = {key: packed[f"{module}.{key}"] for key in _PACKED if f"{module}.{key}" in packed}
        if spec["quant_method"] == "awq":
            q = formats.from_awq(parts, spec["group_size"])
        else:
            q = formats.from_gptq(parts, spec["bits"], spec["group_size"])
        tensors[f"{module}.weight"] = formats.dequantize(q).to(dtype)
        if f"{module}.bias" in packed:
            tensors[f"{module}.bias"] = packed[f"{module}.bias"].to(dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _set_dtype(config, dtype)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for extra in directory.iterdir():  # tokenizer and generation settings
        if extra.name not in ("config.json", "model.safetensors") and extra.is_file():
            shutil.copy(extra, out_dir)
    return out_dir


def _set_dtype(config: dict, dtype: torch.dtype) -> None:
    config.pop("dtype", None)  # transformers 5's name for it; older readers know only torch_dtype
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
