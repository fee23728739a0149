"""Small random-weight models the tests build themselves: Hugging Face directories written by
transformers, and GGUF files written with the `gguf` package, each with the SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import quantize
from safetensors.torch import load_file

SIZES = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)


def write_hf_model(family: str, out: Path, tokenizer, seed: int = 0, **overrides) -> Path:
    """A random llama-family checkpoint saved by transformers (safetensors), with the tokenizer."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    torch.manual_seed(seed)
    config = config_cls(**{**SIZES, "eos_token_id": 2, "bos_token_id": 1, "rope_theta": 10000.0, **overrides})
    model = model_cls(config)
    with torch.no_grad():  # larger than the default init so logits are far from uniform (no argmax ties)
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.2)
            elif param.dim() == 1 and "bias" in str(param):
                param.normal_(0, 0.1)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer built here ("w3 w17 ..." and ids 3..vocab_size-1; 0-2 are unk, bos, eos), for
    machines that have not the packaged model, whose tokenizer the other tiny models borrow."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _permute_for_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter layout for q/k projections (what a real llama GGUF holds)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf_model(hf_dir: Path, out: Path, tensor_type: str, tokenizer_source: Path) -> Path:
    """The same weights as a llama GGUF with 2-D tensors stored as ``tensor_type`` (norms stay F32)."""
    import json

    cfg = json.loads((hf_dir / "config.json").read_text())
    weights = load_file(str(hf_dir / "model.safetensors"))
    qtype = GGMLQuantizationType[tensor_type]
    writer = GGUFWriter(str(out), "llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    _copy_tokenizer(GGUFReader(str(tokenizer_source)), writer)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for name, tensor in weights.items():
        array = tensor.float().numpy()
        if name.startswith("model.layers."):
            _, _, layer, *rest = name.split(".")
            module, kind = ".".join(rest[:-1]), rest[-1]
            if module == "self_attn.q_proj":
                array = _permute_for_gguf(array, cfg["num_attention_heads"])
            elif module == "self_attn.k_proj":
                array = _permute_for_gguf(array, cfg["num_key_value_heads"])
            gguf_name = f"blk.{layer}.{parts[module]}.{kind}"
        else:
            gguf_name = names[name]
        if array.ndim == 2 and qtype != GGMLQuantizationType.F32:
            if qtype == GGMLQuantizationType.F16:
                writer.add_tensor(gguf_name, array.astype(np.float16))
            else:
                writer.add_tensor(gguf_name, quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _copy_tokenizer(source: GGUFReader, writer: GGUFWriter) -> None:
    fields = source.fields
    writer.add_tokenizer_model(fields["tokenizer.ggml.model"].contents())
    writer.add_tokenizer_pre(fields["tokenizer.ggml.pre"].contents())
    writer.add_token_list(fields["tokenizer.ggml.tokens"].contents())
    writer.add_token_types(fields["tokenizer.ggml.token_type"].contents())
    writer.add_token_merges(fields["tokenizer.ggml.merges"].contents())
    writer.add_bos_token_id(fields["tokenizer.ggml.bos_token_id"].contents())
    writer.add_eos_token_id(fields["tokenizer.ggml.eos_token_id"].contents())
    writer.add_add_bos_token(False)
    writer.add_chat_template(fields["tokenizer.chat_template"].contents())
