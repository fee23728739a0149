"""Models load from GGUF files (every supported tensor type), Hugging Face directories (llama, mistral,
qwen2 with its q/k/v biases, Llama 3 rope scaling) and the local Hugging Face cache, and compute what
transformers computes from the same files. Nothing is downloaded; a missing model says where we looked."""

from __future__ import annotations

import pytest
import torch

from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.loaders import resolve_model
from tokenyard.runtime.loaders.export import export_gguf_to_hf

from .reference import assert_matches_reference
from .tiny_models import write_gguf_model, write_hf_model

PROMPTS = ["hello world", "The capital of France is", "Một hai ba bốn năm sáu bảy tám chín mười, one two three"]
GREEDY = SamplingParams(temperature=0, max_tokens=12, logprobs=2, ignore_eos=True)


def engine(path) -> LLM:
    return LLM(str(path), dtype="float32", kv_cache_memory_bytes=16 << 20)


def transformers_model(path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kwargs).eval()


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True}),
        ("mistral", {"sliding_window": None}),
        ("qwen2", {}),  # q/k/v projections with biases
        (
            "llama",
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
        ),
    ],
    ids=["llama", "llama-tied", "mistral", "qwen2-bias", "llama3-rope-scaling"],
)
def test_hugging_face_directory_matches_transformers(tmp_path, smollm2_tokenizer, family, overrides):
    path = write_hf_model(family, tmp_path / family, smollm2_tokenizer, **overrides)
    reference = transformers_model(path)
    for out in engine(path).generate(PROMPTS, GREEDY):
        assert_matches_reference(reference, out)


@pytest.mark.parametrize("tensor_type", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_tensor_types_match_transformers_on_the_same_file(tmp_path, tiny_llama_dir, smollm2_gguf, tensor_type):
    path = write_gguf_model(tiny_llama_dir, tmp_path / f"tiny-{tensor_type}.gguf", tensor_type, smollm2_gguf)
    reference = transformers_model(path.parent, gguf_file=path.name)
    for out in engine(path).generate(PROMPTS, GREEDY):
        assert_matches_reference(reference, out)


def test_packaged_model_exported_to_hugging_face_format_gives_the_same_tokens(tmp_path, smollm2_gguf, llm_fp32):
    directory = export_gguf_to_hf(smollm2_gguf, tmp_path / "smollm2", torch.float32)
    from_hf = LLM(str(directory), dtype="float32", max_model_len=1024, kv_cache_memory_bytes=64 << 20)
    conversation = [{"role": "user", "content": "Name three colors."}]
    params = SamplingParams(temperature=0, max_tokens=20)
    assert (
        from_hf.chat(conversation, params)[0].outputs[0].token_ids
        == llm_fp32.chat(conversation, params)[0].outputs[0].token_ids
    )


def test_hub_id_is_found_in_the_local_hugging_face_cache(tmp_path, monkeypatch, tiny_llama_dir):
    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(tiny_llama_dir)
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    source = resolve_model("acme/tiny")
    assert (source.format, source.path) == ("hf", snapshot)


def test_default_model_falls_back_to_the_packaged_gguf(tmp_path, monkeypatch, smollm2_gguf):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    source = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (source.format, source.path) == ("gguf", smollm2_gguf)


def test_a_model_that_is_nowhere_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        resolve_model("acme/missing")
    message = str(error.value)
    assert "acme/missing" in message and str(tmp_path) in message and "never downloads" in message
    with pytest.raises(FileNotFoundError, match="GGUF file"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_unsupported_architecture_is_refused_by_name(tmp_path, tiny_llama_dir):
    import json
    import shutil

    path = shutil.copytree(tiny_llama_dir, tmp_path / "gpt2ish")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*not supported.*LlamaForCausalLM"):
        engine(path)


def test_checkpoint_missing_a_tensor_is_refused(tmp_path, tiny_llama_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    path = shutil.copytree(tiny_llama_dir, tmp_path / "broken")
    weights = load_file(str(path / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks 1 tensors.*layers\.1\.mlp\.gate_up_proj"):
        engine(path)
