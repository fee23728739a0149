"""Build the model for a resolved source and fill its parameters, each tensor read once and copied
once into place (fused projections take their parts at the right offsets)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

import tokenyard.runtime.loaders.gguf as gguf
import tokenyard.runtime.loaders.hf as hf
from tokenyard.runtime.cpu import cpu_isa
from tokenyard.runtime.distributed.group import current
from tokenyard.runtime.layers.attention import AttentionBackend
from tokenyard.runtime.layers.linear import Linear, MergedLinear
from tokenyard.runtime.layers.parallel import shard
from tokenyard.runtime.loaders.resolve import ModelSource
from tokenyard.runtime.loaders.transform import quantize_linears, tie_lm_head_to_quantized_embedding, weight_bytes
from tokenyard.runtime.models import LlamaConfig, LlamaForCausalLM
from tokenyard.runtime.quantization.config import FROM_FLOAT, resolve_quantization
from tokenyard.runtime.quantization.groups import AffineGroups

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
    quantization: str | None = None  # the method served (see runtime/quantization/config.py), None: float


def load_model(
    source: ModelSource,
    dtype: str,
    device: torch.device,
    backend: AttentionBackend,
    quantization: str | None = None,
    quantization_group_size: int = 128,
) -> LoadedModel:
    checkpoint = open_checkpoint(source, quantization, dtype)
    config, quantization = checkpoint.config, checkpoint.quantization
    torch_dtype = resolve_dtype(dtype, checkpoint.native_dtype, device)
    model = build_model(config, torch_dtype, device, backend)
    fill_weights(model, checkpoint.weights)
    if quantization in FROM_FLOAT:
        quantize_linears(model, quantization, quantization_group_size)
    tie_lm_head_to_quantized_embedding(model)
    weights_bytes = weight_bytes(model)
    if device.type == "cpu" and can_prepack(torch_dtype):
        for module in model.modules():
            if isinstance(module, Linear) and module.weight is not None:
                module.pack_for_cpu()
    log.info(
        "loaded %s (%s, %s, quantization %s, %.0f MiB of weights) on %s",
        *(source.name, source.format, torch_dtype, quantization, weights_bytes / 2**20, device),
    )
    return LoadedModel(model.eval(), config, checkpoint.tokenizer, torch_dtype, source, weights_bytes, quantization)


@dataclass
class Checkpoint:
    """What a model's files hold, read but not yet loaded: ``weights`` streams the tensors."""

    config: LlamaConfig
    native_dtype: torch.dtype | None  # the checkpoint's own float dtype (None: GGUF, whose tensors vary)
    quantization: str | None  # the method to serve with, the flag checked against the files
    weights: Iterable[tuple[str, torch.Tensor | AffineGroups]]
    tokenizer: PreTrainedTokenizerBase


def open_checkpoint(source: ModelSource, quantization: str | None, dtype: str) -> Checkpoint:
    if source.format == "gguf":
        reader = gguf.open_gguf(source.path)
        config = gguf.read_config(reader)
        quantization = resolve_quantization(quantization, "gguf", None, dtype, current().size)
        weights = gguf.iter_weights(reader, config, packed=quantization == "gguf")
        tokenizer = AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)
        checkpoint = Checkpoint(config, None, quantization, weights, tokenizer)
    else:
        config, native_dtype = hf.read_config(source.path)
        in_checkpoint = hf.read_quantization(source.path)
        quantization = resolve_quantization(quantization, "hf", in_checkpoint, dtype, current().size)
        weights = hf.iter_weights(source.path, in_checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(str(source.path), trust_remote_code=False)
        checkpoint = Checkpoint(config, native_dtype, quantization, weights, tokenizer)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in config.eos_token_ids:
        config.eos_token_ids.append(tokenizer.eos_token_id)
    return checkpoint


def build_model(
    config: LlamaConfig, dtype: torch.dtype, device: torch.device, backend: AttentionBackend
) -> LlamaForCausalLM:
    """The model's modules, their parameters allocated on ``device`` in ``dtype`` (filled later)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config, backend)
    finally:
        torch.set_default_dtype(previous)


def resolve_dtype(name: str, native: torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype to compute in. On CPU, ``auto`` is bfloat16 only where the CPU computes it natively (and
    oneDNN agrees), else float32, the fast float type there. An explicit bfloat16 is served on every CPU (half the
    memory of float32): without oneDNN's bf16 path the linears skip the prepack (see ``can_prepack``) and run
    PyTorch's plain bf16 matmul, ~4x slower than float32 for prefill and batches (measured under an AVX2 cap)."""
    if name == "auto":
        if device.type == "cuda":
            return native if native in (torch.float16, torch.bfloat16) else torch.bfloat16
        return torch.bfloat16 if cpu_isa().native_bfloat16 and _onednn_bfloat16() else torch.float32
    if name == "float16" and device.type == "cpu":
        raise ValueError(
            "dtype='float16' is not served on CPU (its matmuls are ~1000x slower there): use bfloat16 or float32"
        )
    if name == "bfloat16" and device.type == "cpu" and not can_prepack(torch.bfloat16):
        log.warning(
            "dtype='bfloat16' on a CPU without oneDNN's bfloat16 path (%s): served through PyTorch's plain "
            "kernels, several times slower than float32 here (dtype='auto' picks float32)",
            cpu_isa().describe(),
        )
    return getattr(torch, name)


def can_prepack(dtype: torch.dtype) -> bool:
    """Whether oneDNN can reorder CPU linear weights of ``dtype`` into its blocked layout. Its bfloat16 path needs
    AVX-512 BW/VL/DQ or AVX-NE-CONVERT (on an AVX2-only CPU the reorder raises mid-load); float16 is never
    packed (not served on CPU)."""
    if not torch.backends.mkldnn.is_available() or dtype == torch.float16:
        return False
    return dtype != torch.bfloat16 or (cpu_isa().onednn_bfloat16 and _onednn_bfloat16())


def _onednn_bfloat16() -> bool:
    """oneDNN's own answer (it honours ONEDNN_MAX_CPU_ISA, which TOKENYARD_CPU_ISA does not set)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fill_weights(model: LlamaForCausalLM, weights: Iterable[tuple[str, torch.Tensor | AffineGroups]]) -> None:
    """Copy checkpoint tensors (by their checkpoint names) into a freshly built model's parameters, fused
    projections' parts at their offsets and pre-quantized ones in their quantized form; a ValueError names a
    tensor that has no place in the model or a parameter the checkpoint lacks. No packing, no quantizing."""
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
            if isinstance(tensor, AffineGroups):
                module.load_quantized_part(part, tensor)
            else:
                module.load_part(part, tensor) if kind == "weight" else module.load_part_bias(part, tensor)
            loaded[f"{target}.{kind}"] += 1
        elif isinstance(tensor, AffineGroups) and f"{module_path}.{kind}" in params:
            modules[module_path].load_quantized(tensor)  # pre-quantized: the weight changes form in place
            loaded[f"{module_path}.{kind}"] += 1
        elif f"{module_path}.{kind}" in params:
            param = params[f"{module_path}.{kind}"]
            tensor = shard(modules[module_path], kind, tensor)  # tensor parallelism: this rank's part only
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
