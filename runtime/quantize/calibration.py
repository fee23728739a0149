"""What the algorithms quantize from: our own model in float32 with plain (unpacked) weights, and
calibration sequences run through it layer by layer as one flat prefill batch."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

import tokenyard.runtime.loaders.hf as hf
from tokenyard.runtime.layers.attention import AttentionMetadata, TorchAttentionBackend
from tokenyard.runtime.loaders.export import export_gguf_to_hf
from tokenyard.runtime.loaders.resolve import resolve_model
from tokenyard.runtime.loaders.weights import build_model, fill_weights
from tokenyard.runtime.models.llama import DecoderLayer, LlamaForCausalLM


@dataclass
class FloatModel:
    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    directory: Path  # the Hugging Face directory it came from: its config.json is the output's


def load_float_model(model: str, workdir: Path | None = None) -> FloatModel:
    """Any model our loaders read, in float32. A GGUF file is first exported (dequantized) to a Hugging Face
    directory under ``workdir``, so every input has a config.json and tokenizer files to carry over."""
    source = resolve_model(model)
    directory = source.path
    if source.format == "gguf":
        workdir = workdir or Path(tempfile.mkdtemp(prefix="tokenyard-quantize-"))
        directory = export_gguf_to_hf(source.path, workdir / "float32", dtype=torch.float32)
    config, _ = hf.read_config(directory)
    llama = build_model(config, torch.float32, torch.device("cpu"), TorchAttentionBackend())
    # load_model would pack the linears for oneDNN; the algorithms need plain weight matrices
    fill_weights(llama, hf.iter_weights(directory))
    return FloatModel(llama.eval(), AutoTokenizer.from_pretrained(str(directory)), directory)


def calibration_sequences(
    tokenizer: PreTrainedTokenizerBase, text: str, num_sequences: int, seq_len: int
) -> torch.Tensor:
    """(n, seq_len) token windows spread evenly over the text, without overlap; fewer when the text is short."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    available = len(ids) // seq_len
    if available == 0:
        raise ValueError(
            f"the calibration text has {len(ids)} tokens: at least one sequence of {seq_len} is needed "
            "(give a longer file or a smaller --calibration-seq-len)"
        )
    starts = torch.linspace(0, available - 1, min(num_sequences, available)).long() * seq_len
    return torch.stack([torch.tensor(ids[s : s + seq_len]) for s in starts.tolist()])


class CalibrationBatch:
    """Equal-length sequences as one flat prefill step: the rotary angles, attention metadata and a scratch
    KV cache every decoder layer takes besides its input, built once and shared by all layers."""

    def __init__(self, model: LlamaForCausalLM, sequences: torch.Tensor) -> None:
        num_seqs, seq_len = sequences.shape
        tokens = num_seqs * seq_len
        config = model.config
        self.input_ids = sequences.flatten()
        self.angles = model.rotary.angles(torch.arange(seq_len).repeat(num_seqs))
        self.kv_cache = torch.zeros(2, tokens, config.num_kv_heads, config.head_dim)
        self.meta = AttentionMetadata(
            slot_mapping=torch.arange(tokens),
            query_start_loc=list(range(0, tokens + 1, seq_len)),
            context_lens=[seq_len] * num_seqs,
            block_tables=[[]] * num_seqs,  # nothing is read back from the cache: every sequence starts empty
            num_decodes=0,
            block_size=seq_len,
        )
        model.layers[0].self_attn.backend.prepare(self.meta, torch.device("cpu"))

    def run_layer(self, layer: DecoderLayer, x: torch.Tensor) -> torch.Tensor:
        return layer(self.angles, x, self.kv_cache, self.meta)

    def run_attention(self, layer: DecoderLayer, normed: torch.Tensor) -> torch.Tensor:
        return layer.self_attn(self.angles, normed, self.kv_cache, self.meta)
