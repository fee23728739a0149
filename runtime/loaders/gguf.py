"""GGUF files (llama.cpp's format): model settings, tokenizer and chat template from the metadata,
tensors dequantized to the serving dtype or, for quantized matrices, kept packed (read from the blocks'
bytes into the runtime's quantized form, never through float). Supported tensor types: F32, F16, BF16,
Q8_0, Q4_0, Q4_1."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from tokenyard.runtime.models import SUPPORTED_ARCHITECTURES, LlamaConfig
from tokenyard.runtime.quantization.groups import GGUF_PACKED_TYPES, AffineGroups, from_gguf_blocks, permute_rows

TENSOR_TYPES = {GGMLQuantizationType[name] for name in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")}

# GGUF tensor names -> Hugging Face names (the model loads Hugging Face names).
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def open_gguf(path: Path) -> GGUFReader:
    return GGUFReader(str(path))


def read_config(reader: GGUFReader) -> LlamaConfig:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES.values():
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported (supported: "
            f"{', '.join(sorted(set(SUPPORTED_ARCHITECTURES.values())))})"
        )
    heads = _field(reader, f"{arch}.attention.head_count")
    hidden = _field(reader, f"{arch}.embedding_length")
    names = {t.name for t in reader.tensors}
    eos = _field(reader, "tokenizer.ggml.eos_token_id", None)
    scaling = None
    if "rope_freqs.weight" in names:
        factors = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        scaling = {
            "rope_type": "freq_factors",
            "factors": np.asarray(factors.data, dtype=np.float32).tolist(),
        }
    return LlamaConfig(
        vocab_size=_field(reader, f"{arch}.vocab_size", None) or len(reader.fields["tokenizer.ggml.tokens"].data),
        hidden_size=hidden,
        intermediate_size=_field(reader, f"{arch}.feed_forward_length"),
        num_layers=_field(reader, f"{arch}.block_count"),
        num_heads=heads,
        num_kv_heads=_field(reader, f"{arch}.attention.head_count_kv", heads),
        head_dim=_field(reader, f"{arch}.attention.key_length", hidden // heads),
        max_position_embeddings=_field(reader, f"{arch}.context_length"),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        eos_token_ids=[eos] if eos is not None else [],
        architecture=arch,
    )


def iter_weights(
    reader: GGUFReader, config: LlamaConfig, packed: bool = False
) -> Iterator[tuple[str, torch.Tensor | AffineGroups]]:
    """Hugging Face names and tensors; with ``packed``, Q8_0/Q4_0/Q4_1 matrices come as ``AffineGroups``."""
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            continue
        if tensor.tensor_type not in TENSOR_TYPES:
            raise ValueError(
                f"GGUF tensor {tensor.name} has type {tensor.tensor_type.name}; supported types: "
                f"{', '.join(sorted(t.name for t in TENSOR_TYPES))}"
            )
        name = _hf_name(tensor.name)
        if packed and tensor.tensor_type in GGUF_PACKED_TYPES and len(tensor.shape) == 2:
            groups = from_gguf_blocks(tensor.data, tensor.tensor_type)
            heads = _rotary_heads(config, name)
            if heads:
                groups = permute_rows(groups, _unpermute_rotary(torch.arange(groups.out_features), heads))
            yield name, groups
            continue
        with warnings.catch_warnings():  # F32 tensors are read-only views of the mapped file: we only read them
            warnings.simplefilter("ignore", UserWarning)
            values = torch.from_numpy(np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), np.float32))
        heads = _rotary_heads(config, name)
        yield name, _unpermute_rotary(values, heads) if heads else values


def _rotary_heads(config: LlamaConfig, name: str) -> int:
    """Heads of a llama q/k projection whose rows llama.cpp's converter permuted; 0 for other tensors."""
    if config.architecture != "llama" or not name.endswith(("q_proj.weight", "k_proj.weight")):
        return 0
    return config.num_heads if name.endswith("q_proj.weight") else config.num_kv_heads


def _hf_name(gguf_name: str) -> str:
    match = _LAYER_PATTERN.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    base, _, kind = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{kind}"
    raise ValueError(f"GGUF tensor {gguf_name!r} is not part of a llama-family model")


def _unpermute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's converter interleaves each head's rotary halves; undo it for the rotate-half layout."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _field(reader: GGUFReader, key: str, default: object = ...) -> object:
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise ValueError(f"GGUF file lacks metadata key {key!r}")
        return default
    return field.contents()
