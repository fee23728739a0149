"""Hugging Face directories: config.json, *.safetensors, tokenizer files. GPTQ and AWQ checkpoints
(a ``quantization_config`` in config.json) yield each quantized layer as one ``AffineGroups``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from tokenyard.runtime.models import SUPPORTED_ARCHITECTURES, LlamaConfig
from tokenyard.runtime.quantization.config import CheckpointQuantization, read_checkpoint_quantization
from tokenyard.runtime.quantization.formats import from_awq, from_gptq
from tokenyard.runtime.quantization.groups import AffineGroups, from_group_quantized

_QUANTIZED_PARTS = ("qweight", "qzeros", "scales", "g_idx")


def read_config(directory: Path) -> tuple[LlamaConfig, torch.dtype | None]:
    raw = json.loads((directory / "config.json").read_text())
    architecture = (raw.get("architectures") or ["?"])[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{directory}: architecture {architecture!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    family = SUPPORTED_ARCHITECTURES[architecture]
    heads = raw["num_attention_heads"]
    if raw.get("hidden_act", "silu") != "silu" or raw.get("mlp_bias"):
        raise ValueError(
            f"{directory}: hidden_act={raw.get('hidden_act')!r}, mlp_bias={raw.get('mlp_bias')!r} "
            "are not supported (llama-family models use silu without MLP biases)"
        )
    # transformers 5 writes rope settings as `rope_parameters`; older configs use rope_theta + rope_scaling
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    scaled = rope.get("rope_type", rope.get("type", "default")) != "default"
    context = raw.get("max_position_embeddings", 2048)
    if raw.get("sliding_window") and raw.get("use_sliding_window", family == "mistral"):
        context = min(context, raw["sliding_window"])  # within the window, sliding attention is full attention
    config = LlamaConfig(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        max_position_embeddings=context,
        rope_theta=raw.get("rope_theta") or rope.get("rope_theta", 10000.0),
        rope_scaling=rope if scaled else None,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        attention_bias=raw.get("attention_bias", family == "qwen2"),
        eos_token_ids=_eos_ids(directory, raw),
        architecture=family,
    )
    dtype_name = raw.get("torch_dtype") or raw.get("dtype")
    return config, getattr(torch, dtype_name) if isinstance(dtype_name, str) else None


def _eos_ids(directory: Path, raw: dict) -> list[int]:
    ids: list[int] = []
    sources = [raw]
    generation = directory / "generation_config.json"
    if generation.is_file():
        sources.append(json.loads(generation.read_text()))
    for source in sources:
        value = source.get("eos_token_id")
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return ids


def read_quantization(directory: Path) -> CheckpointQuantization | None:
    return read_checkpoint_quantization(json.loads((directory / "config.json").read_text()))


def iter_weights(
    directory: Path, quantization: CheckpointQuantization | None = None
) -> Iterator[tuple[str, torch.Tensor | AffineGroups]]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors files (other weight formats are not loaded)")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:  # memory-mapped: tensors are read on access
            names = list(handle.keys())
            quantized = {n.removesuffix(".qweight") for n in names if n.endswith(".qweight")}
            for name in names:
                module, _, part = name.rpartition(".")
                if module not in quantized:
                    yield name, handle.get_tensor(name)
                elif part == "qweight":
                    if quantization is None:
                        raise ValueError(f"{directory}: {name} is quantized but config.json has no quantization_config")
                    parts = {
                        p: handle.get_tensor(f"{module}.{p}") for p in _QUANTIZED_PARTS if f"{module}.{p}" in names
                    }
                    yield f"{module}.weight", _read_quantized(parts, quantization)
                elif part not in _QUANTIZED_PARTS:  # e.g. the bias of a quantized layer
                    yield name, handle.get_tensor(name)


def _read_quantized(tensors: dict[str, torch.Tensor], quantization: CheckpointQuantization) -> AffineGroups:
    if quantization.method == "gptq":
        return from_group_quantized(from_gptq(tensors, quantization.bits, quantization.group_size))
    return from_group_quantized(from_awq(tensors, quantization.group_size))
