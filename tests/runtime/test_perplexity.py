"""The perplexity harness scores a token stream as transformers does (sliding windows, each token scored
once, float32), whatever the prefill chunking; its corpus splits are disjoint and reproducible."""

from __future__ import annotations

import math

import pytest
import torch

from tokenyard.benchmarks.perplexity import load_runner, paragraphs, perplexity, pydoc_corpus


def transformers_perplexity(model, ids: list[int], window: int, stride: int) -> float:
    """The same windows through transformers: each scores the next ``stride`` tokens with up to ``window``."""
    total, scored_until = 0.0, 1
    while scored_until < len(ids):
        end = min(scored_until + stride, len(ids))
        begin = max(0, end - window)
        with torch.no_grad():
            logits = model(torch.tensor([ids[begin:end]])).logits[0].float()
        logprobs = torch.log_softmax(logits[scored_until - 1 - begin : end - 1 - begin], dim=-1)
        total -= float(logprobs.gather(1, torch.tensor(ids[scored_until:end])[:, None]).sum())
        scored_until = end
    return math.exp(total / (len(ids) - 1))


@pytest.fixture(scope="module")
def runner(tiny_llama_dir):
    return load_runner(str(tiny_llama_dir), window=128, kv_cache_memory_bytes=4 << 20)


@pytest.fixture(scope="module")
def stream(runner):
    return runner.loaded.tokenizer.encode(pydoc_corpus()[1][:4000], add_special_tokens=False)[:300]


@pytest.mark.parametrize("chunk", [None, 48, 1])
def test_perplexity_equals_transformers_on_the_same_weights(tiny_llama_dir, runner, stream, chunk):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    ids = stream[:150] if chunk == 1 else stream  # one token per step is slow: a shorter stream
    expected = transformers_perplexity(reference, ids, window=128, stride=64)
    result = perplexity(runner, ids, window=128, stride=64, chunk=chunk)
    assert result.tokens == len(ids) - 1
    assert result.perplexity == pytest.approx(expected, rel=1e-3)


def test_corpus_parts_are_disjoint_deterministic_english():
    calibration, evaluation = pydoc_corpus()
    assert (calibration, evaluation) == pydoc_corpus()
    assert len(calibration) > 100_000 and len(evaluation) > 100_000
    assert not set(paragraphs(calibration)) & set(paragraphs(evaluation))


def test_bad_windows_are_refused(runner, stream):
    with pytest.raises(ValueError, match="stride=128 is invalid: must be in \\[1, window=128\\)"):
        perplexity(runner, stream, window=128, stride=128)
