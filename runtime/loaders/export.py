"""Write a Hugging Face directory (config.json, model.safetensors, tokenizer files) from a GGUF file,
so tools that only read the Hugging Face format (transformers itself, for one) see the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

import tokenyard.runtime.loaders.gguf as gguf
from tokenyard.runtime.models import SUPPORTED_ARCHITECTURES

_HF_ARCHITECTURE = {family: arch for arch, family in SUPPORTED_ARCHITECTURES.items()}


def export_gguf_to_hf(path: Path, out_dir: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    reader = gguf.open_gguf(path)
    config = gguf.read_config(reader)
    if config.rope_scaling is not None:
        raise ValueError(f"{path}: rope frequency factors have no Hugging Face config equivalent here")
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.to(dtype).contiguous() for name, t in gguf.iter_weights(reader, config)}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.save_pretrained(str(out_dir))
    hf_config = {
        "architectures": [_HF_ARCHITECTURE[config.architecture]],
        "model_type": config.architecture,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.attention_bias,
        "hidden_act": "silu",
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": config.eos_token_ids[0] if config.eos_token_ids else tokenizer.eos_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    return out_dir
