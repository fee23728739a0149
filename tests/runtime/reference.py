"""Checking engine outputs against a transformers model (the reference implementation)."""

from __future__ import annotations

import torch

from tokenyard.runtime import RequestOutput

# How far each step's logprobs may move from the dequantized reference's, by the codes' bits. 8-bit codes compute
# in float32 (to rounding); 4-bit codes on AVX-512, and on AVX2 in decode and prefill, multiply by x as two int8
# terms (within max|x| / 64516 of x per group, see runtime/kernels/simd/quantized_linear.h), which moves a logprob
# by up to ~1.3e-3 across the tiny model's layers.
LOGPROB_ATOL = {8: 1e-3, 4: 2e-3}


def assert_matches_reference(model, output: RequestOutput, logprob_tolerance: float = 1e-3) -> None:
    """Every generated token is the reference's argmax at its position (or ties it within 1e-4), and
    each reported logprob is the reference's within ``logprob_tolerance``."""
    generated = output.outputs[0].token_ids
    ids = output.prompt_token_ids + generated
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    start = len(output.prompt_token_ids) - 1
    ref_logprobs = torch.log_softmax(logits, dim=-1)
    logprobs = output.outputs[0].logprobs
    assert logprobs is not None and len(logprobs) == len(generated)
    for step, token in enumerate(generated):
        row = logits[start + step]
        assert row[token] >= row.max() - 1e-4, f"token {step}: picked {token}, reference argmax {int(row.argmax())}"
        for token_id, logprob in logprobs[step].items():
            expected = float(ref_logprobs[start + step, token_id])
            assert abs(logprob - expected) < logprob_tolerance, f"token {step}, id {token_id}: {logprob} vs {expected}"
