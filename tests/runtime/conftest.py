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
