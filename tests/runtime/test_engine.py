"""The engine's contract with its callers: validation, sampling controls, stopping, aborts, and
that no KV block leaks, whatever happens to the requests."""

from __future__ import annotations

import random
import weakref

import pytest
import torch

from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.engine.model_runner import decode_bucket
from tokenyard.runtime.layers.sampler import SamplingRow, sample


def finish_all(llm: LLM) -> dict[str, object]:
    done = {}
    while llm.engine.has_unfinished_requests():
        for out in llm.engine.step():
            if out.finished:
                done[out.request_id] = out
    return done


def assert_no_leak(llm: LLM) -> None:
    kv = llm.engine.kv_cache
    assert kv.num_free_blocks == kv.num_blocks, "blocks still held after every request ended"
    assert all(b.ref_count == 0 for b in kv.blocks)
    assert not llm.engine.scheduler.running and not llm.engine.scheduler.waiting


@pytest.mark.parametrize(
    ("make_request", "field", "allowed"),
    [
        (lambda: ("", SamplingParams()), "prompt", "at least one token"),
        (lambda: ("word " * 2000, SamplingParams()), "prompt", "shorter than max_model_len=1024"),
        (lambda: ("hi", SamplingParams(max_tokens=0)), "max_tokens", ">= 1"),
        (lambda: ("hi", SamplingParams(top_p=0)), "top_p", "in (0, 1]"),
        (lambda: ("hi", SamplingParams(top_p=1.5)), "top_p", "in (0, 1]"),
        (lambda: ("hi", SamplingParams(temperature=-0.5)), "temperature", ">= 0"),
        (lambda: ("hi", SamplingParams(top_k=-3)), "top_k", "-1 or 0"),
        (lambda: ({"prompt_token_ids": [1, 10**9]}, SamplingParams()), "prompt_token_ids", "[0, 49152)"),
    ],
    ids=[
        "empty",
        "too-long",
        "max_tokens",
        "top_p-zero",
        "top_p-above-one",
        "negative-temperature",
        "top_k",
        "token-id",
    ],
)
def test_bad_input_is_a_clear_value_error_and_the_others_are_still_served(tiny_llm, make_request, field, allowed):
    tiny_llm.engine.add_request("good-before", "The sky is", SamplingParams(temperature=0, max_tokens=3))
    with pytest.raises(ValueError) as error:
        prompt, params = make_request()
        tiny_llm.engine.add_request("bad", prompt, params)
    assert field in str(error.value) and allowed in str(error.value)
    tiny_llm.engine.add_request("good-after", "Hello", SamplingParams(temperature=0, max_tokens=3))
    done = finish_all(tiny_llm)
    assert set(done) == {"good-before", "good-after"}
    assert all(len(o.outputs[0].token_ids) == 3 for o in done.values())
    assert_no_leak(tiny_llm)


def test_generate_names_the_bad_prompt_and_starts_nothing(tiny_llm):
    with pytest.raises(ValueError, match="prompt 1: "):
        tiny_llm.generate(["fine", ""], SamplingParams(max_tokens=2))
    assert not tiny_llm.engine.has_unfinished_requests()


def test_no_block_leaks_after_a_thousand_mixed_requests_with_aborts(tiny_llm):
    rng = random.Random(0)
    engine = tiny_llm.engine
    shared = list(range(100, 164))  # a shared 64-token prefix for half of them, so the prefix cache is busy
    live: list[str] = []
    for i in range(1000):
        body = [rng.randrange(200, 40000) for _ in range(rng.randrange(1, 300))]
        prompt = (shared + body) if i % 2 else body
        params = SamplingParams(temperature=rng.choice([0, 0.8]), max_tokens=rng.randrange(1, 24), seed=i)
        engine.add_request(f"r{i}", {"prompt_token_ids": prompt}, params)
        live.append(f"r{i}")
        if i % 7 == 0:
            for out in engine.step():
                if out.finished:
                    live.remove(out.request_id)
        if i % 11 == 0 and live:  # abort something: running, waiting or just added
            victim = live.pop(rng.randrange(len(live)))
            assert engine.abort_request(victim)
    finish_all(tiny_llm)
    assert_no_leak(tiny_llm)
    assert engine.kv_cache.prefix_cache_hits > 0


def test_abort_frees_blocks_at_once(tiny_llm):
    engine = tiny_llm.engine
    engine.add_request("long", "Tell me a story", SamplingParams(max_tokens=200, ignore_eos=True))
    engine.step()
    assert engine.kv_cache.num_free_blocks < engine.kv_cache.num_blocks
    assert engine.abort_request("long")
    assert_no_leak(tiny_llm)
    assert not engine.abort_request("long")


def test_a_seed_gives_the_same_output_whatever_else_is_in_the_batch(tiny_llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    [alone] = tiny_llm.generate("Once upon a time", params)
    crowd = tiny_llm.generate(
        ["Something else entirely", "Once upon a time", "A third prompt, longer than the others are"],
        [SamplingParams(temperature=1.0, max_tokens=16), params, SamplingParams(temperature=0.7, max_tokens=9)],
    )
    assert crowd[1].outputs[0].token_ids == alone.outputs[0].token_ids
    [other_seed] = tiny_llm.generate("Once upon a time", SamplingParams(temperature=1.0, seed=99, max_tokens=16))
    assert other_seed.outputs[0].token_ids != alone.outputs[0].token_ids


def test_stop_strings_end_the_output_and_are_not_included(llm_fp32):
    conversation = [{"role": "user", "content": "Count from one to ten in words, separated by commas."}]
    [free] = llm_fp32.chat(conversation, SamplingParams(temperature=0, max_tokens=40))
    text = free.outputs[0].text
    assert len(text) > 12
    stop = text[8:11]  # whatever the model says, stop in the middle of it
    [stopped] = llm_fp32.chat(conversation, SamplingParams(temperature=0, max_tokens=40, stop=[stop, "zzz"]))
    out = stopped.outputs[0]
    assert out.text == text[: text.index(stop)]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)


def test_stop_token_ids_eos_ignore_eos_and_max_tokens(llm_fp32):
    conversation = [{"role": "user", "content": "Say hi."}]
    [natural] = llm_fp32.chat(conversation, SamplingParams(temperature=0, max_tokens=64))
    tokens = natural.outputs[0].token_ids
    assert natural.outputs[0].finish_reason == "stop" and tokens[-1] == 2  # <|im_end|>, the model's EOS
    assert "<|im_end|>" not in natural.outputs[0].text
    [by_id] = llm_fp32.chat(conversation, SamplingParams(temperature=0, max_tokens=64, stop_token_ids=[tokens[1]]))
    assert by_id.outputs[0].token_ids == tokens[:2] and by_id.outputs[0].stop_reason == tokens[1]
    [ignored] = llm_fp32.chat(conversation, SamplingParams(temperature=0, max_tokens=len(tokens) + 3, ignore_eos=True))
    assert len(ignored.outputs[0].token_ids) == len(tokens) + 3 and ignored.outputs[0].finish_reason == "length"
    [short] = llm_fp32.chat(conversation, SamplingParams(temperature=0, max_tokens=2))
    assert short.outputs[0].token_ids == tokens[:2] and short.outputs[0].finish_reason == "length"
    [at_least] = llm_fp32.chat(conversation, SamplingParams(temperature=0, max_tokens=64, min_tokens=len(tokens) + 1))
    assert len(at_least.outputs[0].token_ids) > len(tokens)


def test_logprobs_hold_the_chosen_token_and_the_top_k(llm_fp32):
    [out] = llm_fp32.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=5, logprobs=4))
    for token, entry in zip(out.outputs[0].token_ids, out.outputs[0].logprobs, strict=True):
        assert token in entry and 4 <= len(entry) <= 5
        assert entry[token] == max(entry.values())  # greedy: the chosen token is the most likely
    [none] = llm_fp32.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=2))
    assert none.outputs[0].logprobs is None


def test_custom_chat_template_is_applied(tiny_llm):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    [out] = tiny_llm.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=1), chat_template=template)
    assert out.prompt == "[user] hi\n[assistant]"


# --- the sampler on its own -------------------------------------------------------------------------


def row(**params) -> SamplingRow:
    generator = torch.Generator().manual_seed(0)
    return SamplingRow(
        SamplingParams(**params), generator, prompt_token_ids=[0], output_token_ids=[1, 1, 2], banned_token_ids=[]
    )


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.zeros(1, 5)
    [picked] = sample(logits.clone(), [row(temperature=0, presence_penalty=0.5, frequency_penalty=0.25, logprobs=0)])
    # token 1 (seen twice): -0.5 - 2 * 0.25 = -1.0; token 2: -0.75; tokens 0, 3, 4: 0 -> a tie, argmax takes 0
    assert picked.token_id == 0


def test_repetition_penalty_covers_prompt_and_output():
    logits = torch.tensor([[2.0, 2.0, 2.0, 1.5, -1.0]])
    [picked] = sample(logits, [row(temperature=0, repetition_penalty=2.0)])
    assert picked.token_id == 3  # 0, 1 and 2 were seen: 2.0 / 2 = 1.0 < 1.5


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        ({"top_k": 2}, {0, 1}),
        ({"top_p": 0.6}, {0, 1}),  # 0.4 + 0.3 reaches 0.6
        ({"min_p": 0.5}, {0, 1}),  # >= half of the top probability 0.4
    ],
)
def test_top_k_top_p_and_min_p_restrict_what_can_be_drawn(params, allowed):
    logits = torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]).log()
    seen = set()
    for seed in range(200):
        r = row(temperature=1.0, **params)
        r.generator.manual_seed(seed)
        seen.add(sample(logits, [r])[0].token_id)
    assert seen == allowed


def test_decode_steps_padded_to_static_shapes_give_the_same_tokens(tiny_llm):
    """On a GPU, decode batches are padded to a few fixed sizes so CUDA graphs can replay them; the
    padding rows must not change anyone's output."""
    prompts = ["one", "two words", "three little words", "and four more words", "five"]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    runner = tiny_llm.engine.executor.runner
    plain = tiny_llm.generate(prompts, params)
    runner.pad_decode_batches = True  # what a GPU without enforce_eager does
    try:
        padded = tiny_llm.generate(prompts, params)
    finally:
        runner.pad_decode_batches = False
    assert [o.outputs[0].token_ids for o in padded] == [o.outputs[0].token_ids for o in plain]
    assert [decode_bucket(n, 64) for n in (1, 3, 5, 9, 16, 17, 63)] == [1, 4, 8, 16, 16, 32, 64]
    assert decode_bucket(17, 20) == 20


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"quantization": "int3"}, "quantization='int3' is invalid: must be .*int8.*int4.*gptq.*awq"),
        ({"quantization": "int4", "quantization_group_size": 48}, "quantization_group_size=48 is invalid: .*32"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size=0 is invalid: must be >= 1"),
        ({"speculative_config": {"method": "eagle"}}, "method.*eagle.*ngram"),
        ({"kv_cache_dtype": "int4"}, "kv_cache_dtype='int4' is invalid: must be .*int8"),
        ({"dtype": "float64"}, r"dtype='float64' is invalid: must be one of auto, float32, bfloat16, float16"),
        ({"max_num_seqs": 0}, "max_num_seqs=0 is invalid: must be >= 1"),
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization=1.5 is invalid: must be in \(0, 1\]"),
    ],
)
def test_engine_settings_that_cannot_be_honoured_are_refused_not_ignored(settings, message):
    from tokenyard.runtime import EngineConfig

    with pytest.raises(ValueError, match=message):
        EngineConfig(**settings)


def test_float16_is_refused_on_cpu_with_the_reason(tiny_llama_dir):
    with pytest.raises(ValueError, match=r"float16.*not served on CPU.*bfloat16 or float32"):
        LLM(str(tiny_llama_dir), dtype="float16", device="cpu")


def test_a_kv_budget_smaller_than_one_sequence_is_refused(tiny_llama_dir):
    with pytest.raises(ValueError, match=r"KV cache holds .* tokens, fewer than one sequence of max_model_len=1024"):
        LLM(str(tiny_llama_dir), kv_cache_memory_bytes=64 << 10)


def test_a_shut_down_engine_lets_go_of_its_kv_cache_and_weights_and_refuses_requests(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), dtype="float32", kv_cache_memory_bytes=4 << 20)
    runner = llm.engine.executor.runner
    cache, weight = weakref.ref(runner.kv_caches[0]), weakref.ref(next(runner.model.parameters()))
    with llm:
        assert len(llm.generate("Hello", SamplingParams(max_tokens=3, ignore_eos=True))[0].outputs[0].token_ids) == 3
    assert cache() is None and weight() is None  # nothing else holds them: the memory is free to go back
    with pytest.raises(RuntimeError, match="shut down: it takes no more requests"):
        llm.generate("Hello")
    llm.shutdown()  # a second time does nothing
