"""Speculative decoding: proposals (n-gram lookup, a draft model) never change what greedy decoding
produces, sampled output still follows the target's distribution, rejected tokens leave no trace in
the KV cache, and the counters behind the vllm:spec_decode_* metrics move."""

from __future__ import annotations

import itertools

import pytest
import torch

from tokenyard.runtime import LLM, EngineConfig, SamplingParams
from tokenyard.runtime.engine.kv_cache_manager import chain_hash
from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.server.metrics import ServerMetrics
from tokenyard.runtime.spec_decode.ngram import RecentOutputs

from .conftest import CLASSIFIER_SYSTEM
from .test_engine import assert_no_leak
from .tiny_models import write_hf_model

SMALL = dict(dtype="float32", max_num_seqs=32, max_num_batched_tokens=256, kv_cache_memory_bytes=4 << 20)
GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
# A 64-token vocabulary: random models then repeat themselves often enough for n-gram lookups to hit.
VOCAB = 64
REPEATING = [  # prompts whose continuation a lookup can find in themselves
    {"prompt_token_ids": [5, 6, 7, 5, 6, 7, 5, 6]},
    {"prompt_token_ids": [10, 11, 12, 13, 10, 11, 12]},
    {"prompt_token_ids": [3] * 6},
    {"prompt_token_ids": list(range(20, 60))},
]
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory, smollm2_tokenizer):
    return write_hf_model(
        "llama", tmp_path_factory.mktemp("target") / "llama", smollm2_tokenizer, seed=5, vocab_size=VOCAB
    )


@pytest.fixture(scope="module")
def draft_dir(target_dir, tmp_path_factory):
    """The target's weights plus noise: a draft that is right often, and wrong often enough to test rejection."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    out = tmp_path_factory.mktemp("draft") / "llama"
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(target_dir)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def plain_llm(target_dir) -> LLM:
    return LLM(str(target_dir), **SMALL)


def spec_llm(target, draft=None, k: int = 3, draft_dtype: str = "float32", ngram=None, **settings) -> LLM:
    """An engine speculating with n-gram lookup (``ngram``: settings over NGRAM's), or with ``draft`` as the
    draft model."""
    spec = {**NGRAM, **(ngram or {})}
    if draft is not None:
        spec = {"method": "draft_model", "num_speculative_tokens": k, "model": str(draft), "dtype": draft_dtype}
    return LLM(str(target), speculative_config=spec, **{**SMALL, **settings})


def run_checking_blocks(llm: LLM, prompts: list, params: list[SamplingParams]) -> list:
    """Generate, checking after every step that each running sequence holds exactly the blocks of its
    computed tokens (the blocks of rejected drafts went back) and every cached block holds real tokens."""
    engine, bs = llm.engine, llm.engine.kv_cache.block_size
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        engine.add_request(f"r{i}", prompt, p)
    done, seqs = {}, {r.seq.request_id: r.seq for r in engine._requests.values()}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        for seq in engine.scheduler.running:
            assert len(seq.block_table) == -(-seq.num_computed_tokens // bs)
            for index, block_id in enumerate(seq.block_table[: seq.num_computed_tokens // bs]):
                block = engine.kv_cache.blocks[block_id]
                assert block.block_hash is None or block.token_ids == tuple(
                    seq.token_ids[index * bs : (index + 1) * bs]
                )
    real = set()
    for seq in seqs.values():
        parent = None
        for index in range(seq.num_tokens // bs):
            parent = chain_hash(parent, tuple(seq.token_ids[index * bs : (index + 1) * bs]))
            real.add(parent)
    assert set(engine.kv_cache._cached) <= real, "a cached block holds a token no request kept"
    assert_no_leak(llm)
    return [done[f"r{i}"] for i in range(len(prompts))]


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


@pytest.mark.parametrize("method", ["ngram", "draft_model", "self_draft"])
def test_greedy_output_is_identical_to_plain_decoding_single_and_batched(plain_llm, target_dir, draft_dir, method):
    """self_draft: the target's own weights in bfloat16 drafting for the float32 target."""
    draft = {"ngram": None, "draft_model": draft_dir, "self_draft": target_dir}[method]
    llm = spec_llm(target_dir, draft, draft_dtype="bfloat16" if method == "self_draft" else "float32")
    prompts = [*REPEATING, {"prompt_token_ids": [40 + i % 7 for i in range(70)]}]
    params = [GREEDY] * len(prompts)
    expected = token_ids(plain_llm.generate(prompts, params))
    assert token_ids(run_checking_blocks(llm, prompts[:1], params[:1])) == expected[:1]
    assert token_ids(run_checking_blocks(llm, prompts, params)) == expected
    stats = llm.engine.spec_decode_stats
    assert stats.num_accepted_tokens > 0
    if method != "self_draft":
        assert stats.num_accepted_tokens < stats.num_draft_tokens, "some drafts must be rejected for this to test"


@pytest.mark.parametrize(
    "settings",
    [{"enable_prefix_caching": True}, {"max_num_batched_tokens": 8}],
    ids=["prefix-caching", "chunked-prefill-tiny-budget"],
)
@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_greedy_output_is_unchanged_amid_other_requests_prefix_hits_and_chunked_prefill(
    target_dir, draft_dir, method, settings
):
    plain = LLM(str(target_dir), **{**SMALL, **settings})
    llm = spec_llm(target_dir, draft_dir if method == "draft_model" else None, **settings)
    shared = [(7 * i) % VOCAB for i in range(40)]  # a shared head of two and a half blocks
    prompts = [{"prompt_token_ids": shared + p["prompt_token_ids"]} for p in REPEATING[:3]] + REPEATING[:3]
    params = [GREEDY] * len(prompts)
    # requests that do not speculate decode in the same batches: sampled ones, and min_tokens not reached
    extra_prompts = [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [*shared, 9]}]
    extra = [
        SamplingParams(temperature=0.8, seed=3, max_tokens=20),
        SamplingParams(temperature=0, max_tokens=30, min_tokens=30, ignore_eos=True),
    ]
    expected = token_ids(plain.generate(prompts + extra_prompts[1:], params + extra[1:]))
    outputs = token_ids(run_checking_blocks(llm, prompts + extra_prompts, params + extra))
    assert outputs[: len(prompts)] + outputs[len(prompts) + 1 :] == expected
    assert llm.engine.spec_decode_stats.num_accepted_tokens > 0
    if settings.get("enable_prefix_caching"):
        assert llm.engine.kv_cache.prefix_cache_hits > 0


def test_stops_inside_an_accepted_run_cut_it_as_plain_decoding_does(tiny_llm, tiny_llama_dir):
    """A self-draft accepts runs of k tokens, so stops land inside them. (The full-vocabulary tiny
    model, so that its text has words to stop at.)"""
    llm = spec_llm(tiny_llama_dir, tiny_llama_dir, k=4)
    [free] = tiny_llm.generate("The sky is", GREEDY)
    tokens, text = free.outputs[0].token_ids, free.outputs[0].text
    cases = [
        SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[text[len(text) // 3 :][:3]]),
        SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop_token_ids=[tokens[7]]),
        SamplingParams(temperature=0, max_tokens=13, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=2),
    ]
    for params in cases:
        [plain] = tiny_llm.generate("The sky is", params)
        [spec] = llm.generate("The sky is", params)
        want, got = plain.outputs[0], spec.outputs[0]
        assert (got.token_ids, got.text, got.finish_reason, got.stop_reason) == (
            want.token_ids,
            want.text,
            want.finish_reason,
            want.stop_reason,
        )
        if params.logprobs:
            assert len(got.logprobs) == len(got.token_ids)
            for got_entry, want_entry in zip(got.logprobs, want.logprobs, strict=True):
                assert got_entry.keys() == want_entry.keys()
                assert list(got_entry.values()) == pytest.approx(list(want_entry.values()), abs=1e-4)
    assert llm.engine.spec_decode_stats.num_accepted_tokens > 0
    assert_no_leak(llm)


def test_sampled_output_follows_the_target_distribution(target_dir, draft_dir):
    """The second token of each request is the first one that speculation verifies (the draft proposes
    after the first). Over 1,000 seeded requests its frequencies must match the target's own marginal
    sum_t1 p(t1) p(t2 | t1) (transformers computes it), with a draft that is often wrong. Top-k 4 keeps
    the cells few and populated; the seeds make the test deterministic, so never flaky."""
    from transformers import AutoModelForCausalLM

    prompt, temperature, top_k, n = [5, 17, 33, 9], 1.5, 4, 1000
    model = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()

    def probs(logits: torch.Tensor) -> torch.Tensor:  # the sampler's top-k and temperature, written out
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        return torch.softmax(logits.masked_fill(logits < kth, float("-inf")) / temperature, -1)

    with torch.no_grad():
        p1 = probs(model(torch.tensor([prompt])).logits[0, -1])
        p2_given_t1 = probs(model(torch.tensor([[*prompt, t] for t in range(VOCAB)])).logits[:, -1])
    expected = (p1[:, None] * p2_given_t1).sum(0).double() * n

    llm = spec_llm(target_dir, draft_dir, k=2, max_num_seqs=256, max_num_batched_tokens=2048)
    params = [
        SamplingParams(temperature=temperature, top_k=top_k, max_tokens=3, ignore_eos=True, seed=s) for s in range(n)
    ]
    outputs = llm.generate([{"prompt_token_ids": prompt}] * n, params)
    observed = torch.bincount(torch.tensor([o.outputs[0].token_ids[1] for o in outputs]), minlength=VOCAB).double()
    stats = llm.engine.spec_decode_stats
    assert stats.num_drafts == n
    assert 0.1 < stats.acceptance_rate < 0.9, "both the accept and the residual path must be exercised"
    assert observed[expected == 0].sum() == 0, "a token the target never samples here was produced"
    common = expected >= 5  # pool the rare tokens so every cell has an expected count of at least 5
    obs, exp = observed[common], expected[common]
    if expected[~common].sum() > 0:
        obs, exp = torch.cat([obs, observed[~common].sum()[None]]), torch.cat([exp, expected[~common].sum()[None]])
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2), torch.tensor(chi2 / 2)))
    print(
        f"chi-square {chi2:.1f} on {df} degrees of freedom, p = {p_value:.3f}, acceptance {stats.acceptance_rate:.2f}"
    )
    assert p_value > 1e-3, f"chi-square {chi2:.1f} on {df} degrees of freedom"


def test_metrics_counters_follow_the_engine(target_dir):
    llm = spec_llm(target_dir)
    llm.generate(REPEATING, GREEDY)
    stats = llm.engine.spec_decode_stats
    metrics = ServerMetrics("tiny", 1024)
    metrics.record_step(llm.engine)
    value = lambda name, **labels: metrics.registry.get_sample_value(name, {"model_name": "tiny", **labels})  # noqa: E731
    assert value("vllm:spec_decode_num_drafts_total") == stats.num_drafts > 0
    assert value("vllm:spec_decode_num_draft_tokens_total") == stats.num_draft_tokens
    assert value("vllm:spec_decode_num_accepted_tokens_total") == stats.num_accepted_tokens > 0
    assert value("vllm:spec_decode_num_accepted_tokens_per_pos_total", position="0") == stats.accepted_per_position[0]
    assert sum(stats.accepted_per_position) == stats.num_accepted_tokens


REQUEST_IDS = itertools.count()


def steps_to_finish(llm: LLM, prompt: dict, params: SamplingParams) -> tuple[list[int], int]:
    """The request's tokens, and how many engine steps it took alone."""
    engine, steps = llm.engine, 0
    engine.add_request(f"request-{next(REQUEST_IDS)}", prompt, params)
    while engine.has_unfinished_requests():
        outputs = engine.step()
        steps += 1
    return outputs[0].outputs[0].token_ids, steps


def test_a_repeated_answer_is_drafted_from_recent_outputs_from_its_first_token(plain_llm, target_dir):
    """A request like an earlier one (the classifier workload: the same system prompt, answers that repeat)
    gets the earlier answer as drafts, on the step that finishes its prompt too; the output stays the
    target's own. Looking up in the prompt only (lookup_recent_outputs 0), nothing is drafted here."""
    prompt = {"prompt_token_ids": list(range(20, 44))}  # no n-gram repeats inside it
    params = SamplingParams(temperature=0, max_tokens=24)
    [expected] = token_ids(plain_llm.generate([prompt], [params]))
    lookup = {"prompt_lookup_min": 3, "prompt_lookup_max": 3}
    prompt_only = spec_llm(target_dir, ngram={**lookup, "lookup_recent_outputs": 0})
    llm = spec_llm(target_dir, ngram=lookup)
    first, first_steps = steps_to_finish(llm, prompt, params)
    again, again_steps = steps_to_finish(llm, prompt, params)
    assert first == again == expected
    assert steps_to_finish(prompt_only, prompt, params) == (expected, first_steps)
    assert again_steps <= -(-len(expected) // 4) + 1, (
        f"{again_steps} steps for {len(expected)} tokens drafted 3 at a time"
    )
    assert_no_leak(llm)


def test_recent_outputs_propose_what_most_of_them_continue_with_and_forget_the_oldest():
    def finished(prompt: list[int], output: list[int]) -> Sequence:
        seq = Sequence("r", prompt, GREEDY, max_tokens=50)
        seq.output_token_ids = output
        return seq

    recent = RecentOutputs(capacity=3, min_n=2, max_n=2)
    for answer in ([7, 8, 9, 1], [7, 8, 9, 2], [7, 8, 5, 3]):
        recent.add(finished([0, 6], answer))
    # after [0, 6]: 7 and 8 always, then 9 twice out of three, then no majority
    assert recent.lookup([4, 0, 6], n=2, k=5) == [7, 8, 9]
    assert recent.lookup([8, 5], n=2, k=5) == [3]
    assert recent.lookup([1, 2], n=2, k=5) == []
    recent.add(finished([0, 6], [7, 4, 4]))  # the first answer is forgotten: 8, 9 then 8, 5 and 4, 4
    assert len(recent) == 3
    assert recent.lookup([9, 1], n=2, k=5) == []
    assert recent.lookup([0, 6], n=2, k=5) == [7, 8]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"method": "eagle", "num_speculative_tokens": 3}, r"speculative_config.method='eagle'.*ngram, draft_model"),
        ({"method": "ngram", "num_speculative_tokens": 0}, r"num_speculative_tokens=0 .*integer >= 1"),
        ({"method": "ngram"}, r"num_speculative_tokens=None .*integer >= 1"),
        ({"method": "draft_model", "num_speculative_tokens": 2}, r"speculative_config.model=None .*draft model"),
        (
            {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2},
            r"prompt_lookup_min=4 .*<= prompt_lookup_max \(2\)",
        ),
        ({"method": "ngram", "num_speculative_tokens": 2, "lookahead": 3}, r"\['lookahead'\].*made of the keys"),
        ({"method": "ngram", "num_speculative_tokens": 2, "adaptive": True}, r"\['adaptive'\].*made of the keys"),
        (
            {"method": "ngram", "num_speculative_tokens": 2, "lookup_recent_outputs": -1},
            r"lookup_recent_outputs=-1 .*integer >= 0",
        ),
    ],
)
def test_invalid_speculative_configs_are_refused_naming_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(speculative_config=spec)


def test_a_draft_with_another_vocabulary_is_refused(tiny_llama_dir, target_dir):
    with pytest.raises(ValueError, match=r"speculative_config.model=.*vocabulary size 49152 \(it has 64\)"):
        spec_llm(tiny_llama_dir, target_dir)


def test_speculation_switches_off_above_disable_by_batch_size(target_dir):
    llm = LLM(str(target_dir), speculative_config={**NGRAM, "disable_by_batch_size": 2}, **SMALL)
    llm.generate(REPEATING, GREEDY)  # four at once: no proposals
    assert llm.engine.spec_decode_stats.num_drafts == 0
    llm.generate(REPEATING[:1], GREEDY)
    assert llm.engine.spec_decode_stats.num_drafts > 0


def test_smollm2_classifier_answers_are_unchanged_and_mostly_drafted(smollm2_gguf, llm_fp32):
    """The classifier workload: JSON labels that echo the system prompt's words, which n-gram lookup finds."""
    llm = LLM(
        str(smollm2_gguf),
        dtype="float32",
        max_model_len=2048,
        kv_cache_memory_bytes=256 << 20,
        speculative_config={"method": "ngram", "num_speculative_tokens": 4},
    )
    turns = [
        "Tutor question: What colour is the sky?\nChild's reply: blue!! I love it",
        "Tutor question: Say hello in English.\nChild's reply: Xin chào... hello?",
    ]
    conversations = [[{"role": "system", "content": CLASSIFIER_SYSTEM}, {"role": "user", "content": t}] for t in turns]
    params = SamplingParams(temperature=0, max_tokens=50)
    expected = token_ids(llm_fp32.chat(conversations, params))
    assert token_ids(llm.chat(conversations, params)) == expected
    assert token_ids(llm.chat(conversations[:1], params)) == expected[:1]
    assert llm.engine.spec_decode_stats.acceptance_rate > 0.3
    assert_no_leak(llm)
