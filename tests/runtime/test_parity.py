"""The engine computes what transformers computes: on the real SmolLM2 in float32, every greedily
picked token is the reference's argmax (or ties it within 1e-4), and logprobs agree within 1e-3,
whether requests run alone, batched, from the prefix cache, in tiny prefill chunks or after preemption."""

from __future__ import annotations

import pytest
import torch

from tokenyard.runtime import LLM, RequestOutput, SamplingParams

from .conftest import CLASSIFIER_SYSTEM
from .reference import assert_matches_reference as check

USER_TURNS = [
    "Question: What color is the sky? Answer: blue. Reply: Yes! The sky is blue and I love it!",
    "Question: How many legs does a cat have? Answer: four. Reply: three",
    "Câu hỏi: Con chó kêu thế nào? Trả lời: gâu gâu. Reply: I don't know, this is hard...",
    "Hi",
    "Question: Say 'apple'. Answer: apple. Reply: Aple!! I did it, I did it!",
    "Question: What is 2 + 2? Answer: 4. Reply: Why do I have to do this, it is so boring.",
]
GREEDY = SamplingParams(temperature=0, max_tokens=24, logprobs=3)


def conversations(turns=USER_TURNS):
    return [[{"role": "system", "content": CLASSIFIER_SYSTEM}, {"role": "user", "content": t}] for t in turns]


def assert_matches_reference(reference, output: RequestOutput) -> None:
    check(reference[0], output)


def test_chat_prompt_ids_are_the_reference_template_ids(llm_fp32, reference):
    _, tokenizer = reference
    for conversation in conversations():
        [out] = llm_fp32.chat(conversation, SamplingParams(temperature=0, max_tokens=1))
        expected = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
        assert out.prompt_token_ids == list(expected)


def test_single_request(llm_fp32, reference):
    [out] = llm_fp32.chat(conversations()[0], GREEDY)
    assert out.outputs[0].token_ids
    assert_matches_reference(reference, out)


def test_batch_of_mixed_lengths(llm_fp32, reference):
    prompts = ["The quick brown fox", "Once upon a time, in a land far away, there lived a", "1, 2, 3,"]
    outs = llm_fp32.generate(prompts, GREEDY) + llm_fp32.chat(conversations(), GREEDY)
    for out in outs:
        assert_matches_reference(reference, out)


def test_prefix_cache_hits_give_the_same_tokens(llm_fp32, reference):
    llm_fp32.engine.kv_cache.reset_prefix_cache()
    first = llm_fp32.chat(conversations()[0], GREEDY)
    assert first[0].num_cached_tokens == 0
    # the shared system prompt is now cached: the other conversations start from it
    cold = first + llm_fp32.chat(conversations()[1:], GREEDY)
    assert all(o.num_cached_tokens >= 64 for o in cold[1:])
    # the whole prompts are cached now: everything but the last block comes from the cache
    warm = llm_fp32.chat(conversations(), GREEDY)
    assert all(o.num_cached_tokens >= len(o.prompt_token_ids) - 16 for o in warm)
    for c, w in zip(cold, warm, strict=True):
        assert c.outputs[0].token_ids == w.outputs[0].token_ids
        assert_matches_reference(reference, w)


@pytest.mark.parametrize("budget", [7, 64])
def test_prompts_chunked_under_a_tiny_token_budget(smollm2_gguf, reference, budget):
    llm = LLM(
        str(smollm2_gguf),
        dtype="float32",
        max_num_batched_tokens=budget,
        max_num_seqs=4,
        max_model_len=1024,
        kv_cache_memory_bytes=64 << 20,
    )
    outs = llm.chat(conversations(), GREEDY)
    for out in outs:
        assert_matches_reference(reference, out)
    # a one-token answer still comes after the last chunk
    [one] = llm.chat(conversations()[1], SamplingParams(temperature=0, max_tokens=1))
    assert len(one.outputs[0].token_ids) == 1


def test_preempted_requests_finish_with_the_reference_output(smollm2_gguf, reference):
    kv_bytes_per_token = 2 * 30 * 3 * 64 * 4
    blocks = 24  # 384 tokens: six requests growing to ~200 tokens each cannot all stay
    llm = LLM(
        str(smollm2_gguf),
        dtype="float32",
        max_model_len=256,
        max_num_batched_tokens=256,
        kv_cache_memory_bytes=blocks * 16 * kv_bytes_per_token,
    )
    params = SamplingParams(temperature=0, max_tokens=96, ignore_eos=True, logprobs=1)
    outs = llm.chat(conversations(), params)
    assert llm.engine.scheduler.num_preemptions > 0
    for out in outs:
        assert len(out.outputs[0].token_ids) == 96
        assert_matches_reference(reference, out)


def test_bfloat16_stays_close_to_the_float32_reference(smollm2_gguf, reference):
    """bfloat16 cannot match float32 token for token, but each token it picks must be one the reference
    finds nearly as likely as its own choice (a coarse kernel once turned "Paris" into nonsense)."""
    model, _ = reference
    llm = LLM(str(smollm2_gguf), dtype="bfloat16", max_model_len=1024, kv_cache_memory_bytes=64 << 20)
    outs = llm.chat(
        [*conversations(), [{"role": "user", "content": "What is the capital of France?"}]],
        SamplingParams(temperature=0, max_tokens=16),
    )
    assert "Paris" in outs[-1].outputs[0].text
    for out in outs:
        ids = out.prompt_token_ids + out.outputs[0].token_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        start = len(out.prompt_token_ids) - 1
        for step, token in enumerate(out.outputs[0].token_ids):
            row = logprobs[start + step]
            assert row[token] >= row.max() - 1.0, f"token {step}: {token} is far from the reference's choice"
