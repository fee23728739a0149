"""int8 KV cache: each token's keys and values per head are stored as int8 codes with one scale, so the
same memory holds about twice the blocks, and attention over the dequantized cache picks the same
greedy tokens as the float cache. (The backend's paths over an int8 cache: tests/runtime/test_attention.py.)"""

from __future__ import annotations

import pytest
import torch

from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.layers.attention import dequantize_kv, quantize_kv

from .conftest import CLASSIFIER_SYSTEM

KV_HEADS = 2


def test_entries_read_back_within_half_a_step_of_their_scale():
    x = torch.randn(50, KV_HEADS, 64) * torch.logspace(-4, 2, 50)[:, None, None]  # tiny to large tokens
    back = dequantize_kv(quantize_kv(x, "int8"), "int8", torch.float32)
    step = x.abs().amax(-1, keepdim=True) / 127
    assert ((back - x).abs() <= step * 0.502).all()


@pytest.fixture(scope="module")
def head_dim_64_dir(tmp_path_factory, smollm2_tokenizer):
    """SmolLM2's head size (64), where a per-token scale costs 2 bytes per 64 codes."""
    from .tiny_models import write_hf_model

    return write_hf_model(
        "llama",
        tmp_path_factory.mktemp("kv") / "llama",
        smollm2_tokenizer,
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
    )


def test_the_same_budget_holds_about_twice_the_blocks(head_dim_64_dir):
    budget = 8 << 20
    bf16 = LLM(str(head_dim_64_dir), dtype="bfloat16", kv_cache_memory_bytes=budget)
    int8 = LLM(str(head_dim_64_dir), dtype="bfloat16", kv_cache_memory_bytes=budget, kv_cache_dtype="int8")
    bf16_blocks, int8_blocks = bf16.engine.kv_cache.num_blocks, int8.engine.kv_cache.num_blocks
    assert int8.engine.executor.runner.kv_bytes_per_token == 2 * 2 * 1 * (
        64 + 2
    )  # layers * K/V * heads * (codes + scale)
    assert int8_blocks / bf16_blocks >= 1.9
    assert int8.engine.executor.runner.kv_caches[0].dtype == torch.int8


NEAR_TIE = 0.05


def test_greedy_tokens_match_the_float_cache_except_at_near_ties(smollm2_gguf, llm_fp32):
    """On the real SmolLM2 (float32): batched decodes sharing the cached system prompt (cascade), then
    the same conversations again from the prefix cache in small chunks (prefill after cached context).
    The int8 cache's rounding may flip only a choice the float model itself nearly tied on (top two within
    NEAR_TIE in logprob); up to such a point the tokens are the same, and each sequence must get there."""
    conversations = [
        [{"role": "system", "content": CLASSIFIER_SYSTEM}, {"role": "user", "content": turn}]
        for turn in ("Reply: Yes! The sky is blue and I love it!", "Reply: three", "Reply: Why is this so boring.")
    ]
    params = SamplingParams(temperature=0, max_tokens=24, logprobs=2)
    reference = [o.outputs[0] for o in llm_fp32.chat(conversations, params)]
    llm = LLM(
        str(smollm2_gguf),
        dtype="float32",
        kv_cache_dtype="int8",
        max_model_len=1024,
        max_num_batched_tokens=48,
        kv_cache_memory_bytes=32 << 20,
    )
    for _ in range(2):  # the second round starts from the prefix cache
        outs = llm.chat(conversations, params)
        for out, expected in zip(outs, reference, strict=True):
            ours, theirs = out.outputs[0].token_ids, expected.token_ids
            if ours == theirs:
                continue
            same = next(i for i, (a, b) in enumerate(zip([*ours, None], [*theirs, None], strict=False)) if a != b)
            assert 8 <= same < len(theirs), f"diverged from the float cache at token {same}"
            first, second = sorted(expected.logprobs[same].values(), reverse=True)[:2]
            assert first - second < NEAR_TIE, f"token {same} flipped with a margin of {first - second:.3f}"
    assert all(o.num_cached_tokens >= 64 for o in outs)


def test_fp8_is_refused_without_fp8_hardware(tiny_llama_dir):
    with pytest.raises(ValueError, match=r"kv_cache_dtype='fp8' is invalid on cpu: .*allowed here: auto, int8"):
        LLM(str(tiny_llama_dir), kv_cache_dtype="fp8", kv_cache_memory_bytes=4 << 20)


def test_unknown_kv_cache_dtype_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"kv_cache_dtype='int4' is invalid: must be auto, int8, fp8, fp8_e4m3"):
        EngineConfig(kv_cache_dtype="int4")
