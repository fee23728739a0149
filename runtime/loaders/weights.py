"""Build the model for a resolved source and fill its parameters, each tensor read once and copied
once into place (fused projections take their parts at the right offsets)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenyard.runtime.layers.attention import AttentionBackend
from tokenyard.runtime.layers.linear import Linear, MergedLinear
from tokenyard.runtime.loaders import gguf, hf
from tokenyard.runtime.loaders.resolve import ModelSource
from tokenyard.runtime.models import LlamaConfig, LlamaForCausalLM
from transformers import AutoTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Checkpoint projection name -> (our fused module, part index)
_FUSED_PARTS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    config: LlamaConfig
    tokenizer: PreTrainedTokenizerBase
    dtype: torch.dtype
    source: ModelSource
    weights_bytes: int


def load_model(source: ModelSource, dtype: str, device: torch.device, backend: AttentionBackend) -> LoadedModel:
    if source.format == "gguf":
        reader = gguf.open_gguf(source.path)
        config, native_dtype = gguf.read_config(reader), None
        weights: Iterable[tuple[str, torch.Tensor]] = gguf.iter_weights(reader, config)
        tokenizer = AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)
    else:
        config, native_dtype = hf.read_config(source.path)
        weights = hf.iter_weights(source.path)
        tokenizer = AutoTokenizer.from_pretrained(str(source.path), trust_remote_code=False)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in config.eos_token_ids:
        config.eos_token_ids.append(tokenizer.eos_token_id)
    torch_dtype = resolve_dtype(dtype, native_dtype, device)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config, backend)
    finally:
        torch.set_default_dtype(previous)
    _fill(model, weights)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch_dtype != torch.float16:
        for module in model.modules():
            if isinstance(module, Linear):
                module.pack_for_cpu()
    log.info(
        "loaded %s (%s, %s, %.0f MiB of weights) on %s",
        source.name,
        source.format,
        torch_dtype,
        weights_bytes / 2**20,
        device,
    )
    return LoadedModel(model.eval(), config, tokenizer, torch_dtype, source, weights_bytes)


def resolve_dtype(name: str, native: torch.dtype | None, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return native if native in (torch.float16, torch.bfloat16) else torch.bfloat16
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    if name == "float16" and device.type == "cpu":
        raise ValueError(
            "dtype='float16' is not served on CPU (its matmuls are ~1000x slower there): use bfloat16 or float32"
        )
    return getattr(torch, name)


def _fill(model: LlamaForCausalLM, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())  # a tied lm_head is not listed: it is the embedding
    expected = {
        name: len(modules[name.rpartition(".")[0]].part_sizes)
        if isinstance(modules[name.rpartition(".")[0]], MergedLinear)
        else 1
        for name in params
    }
    loaded: Counter[str] = Counter()
    for name, tensor in weights:
        if name.endswith("rotary_emb.inv_freq"):
            continue
        module_path, _, kind = name.removeprefix("model.").rpartition(".")
        parent, _, leaf = module_path.rpartition(".")
        if leaf in _FUSED_PARTS:
            fused, part = _FUSED_PARTS[leaf]
            target = f"{parent}.{fused}"
            module = modules[target]
            module.load_part(part, tensor) if kind == "weight" else module.load_part_bias(part, tensor)
            loaded[f"{target}.{kind}"] += 1
        elif f"{module_path}.{kind}" in params:
            param = params[f"{module_path}.{kind}"]
            if param.shape != tensor.shape:
                raise ValueError(
                    f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}"
                )
            param.data.copy_(tensor)
            loaded[f"{module_path}.{kind}"] += 1
        elif name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # some tied checkpoints still store the copy
        else:
            raise ValueError(f"checkpoint tensor {name} has no place in a {model.config.architecture} model")
    missing = [name for name, parts in expected.items() if loaded[name] < parts]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {', '.join(missing[:5])}")
