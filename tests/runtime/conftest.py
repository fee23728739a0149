from __future__ import annotations

import pytest
import torch

from tokenyard.runtime import LLM

CLASSIFIER_SYSTEM = (
    "You label one reply from a child in an English-learning chat. Answer with one line of JSON: "
    '{"emotion": <label>, "learn_score": <true|false>}. Labels: happy, sad, angry, scared, surprised, '
    "bored, confused, proud, neutral."
)


@pytest.fixture(scope="session")
def reference(smollm2_gguf):
    """transformers' own implementation of the same file, dequantized to float32: the reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def llm_fp32(smollm2_gguf) -> LLM:
    return LLM(str(smollm2_gguf), dtype="float32", max_model_len=2048, kv_cache_memory_bytes=256 << 20)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer):
    """A 2-layer random llama with the SmolLM2 tokenizer: fast enough for thousands of requests."""
    from .tiny_models import write_hf_model

    return write_hf_model("llama", tmp_path_factory.mktemp("tiny") / "llama", smollm2_tokenizer)


@pytest.fixture(scope="session")
def tiny_llm(tiny_llama_dir) -> LLM:
    return LLM(
        str(tiny_llama_dir), dtype="float32", max_num_seqs=32, max_num_batched_tokens=256, kv_cache_memory_bytes=4 << 20
    )
