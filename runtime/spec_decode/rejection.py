"""Verification of proposed tokens against the target model, one logits row per position.

Greedy requests keep drafts while they equal the target's argmax. Sampled requests use rejection
sampling (Leviathan et al., 2023): draft token x is kept with probability min(1, p(x) / q(x)); the first
rejected position draws from norm(max(0, p - q)) instead; when every draft is kept, one bonus token is
drawn from the last row. The output then follows the target's distribution p whatever the draft is.
p is the normal sampler's distribution (penalties, temperature, top-k/top-p/min-p), from its own functions.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tokenyard.runtime.layers.sampler import (
    Sampled,
    SamplingRow,
    draw,
    filtered_probs,
    logprob_entry,
    process_logits,
    raw_logprobs_if_wanted,
)


def verify(logits: torch.Tensor, rows: list[SamplingRow]) -> list[list[Sampled]]:
    """logits: (sum of 1 + len(row.draft_token_ids), vocab) float32, each row's positions consecutive.
    Returns, per row, the accepted drafts followed by one target token (a correction or a bonus)."""
    positions = [position for row in rows for position in _positions(row)]
    raw_logprobs = raw_logprobs_if_wanted(logits, positions)
    logits = process_logits(logits, positions)
    results, start = [], 0
    for row in rows:
        end = start + len(row.draft_token_ids) + 1
        tokens = _greedy(logits[start:end], row) if row.params.greedy else _rejection(logits[start:end], row)
        results.append(
            [Sampled(t, logprob_entry(raw_logprobs, start + j, t, row.params)) for j, t in enumerate(tokens)]
        )
        start = end
    return results


def _positions(row: SamplingRow) -> list[SamplingRow]:
    """One row per verified position: position j has seen the drafts before it (penalties count them) and has
    its own grammar mask. Drafts are only proposed once min_tokens is reached, so only position 0 can have
    banned tokens."""
    if not row.draft_token_ids:
        return [row]
    drafts, allowed = row.draft_token_ids, row.allowed_tokens
    return [row] + [
        replace(
            row,
            output_token_ids=row.output_token_ids + drafts[:j],
            banned_token_ids=[],
            allowed_tokens=None if allowed is None else allowed[j:],
        )
        for j in range(1, len(drafts) + 1)
    ]


def _greedy(logits: torch.Tensor, row: SamplingRow) -> list[int]:
    target = logits.argmax(dim=-1).tolist()
    accepted = 0
    while accepted < len(row.draft_token_ids) and row.draft_token_ids[accepted] == target[accepted]:
        accepted += 1
    return [*row.draft_token_ids[:accepted], target[accepted]]


def _rejection(logits: torch.Tensor, row: SamplingRow) -> list[int]:
    p = filtered_probs(logits, [row.params] * logits.shape[0])
    p = p / p.sum(dim=-1, keepdim=True)
    tokens: list[int] = []
    for j, x in enumerate(row.draft_token_ids):
        q = row.draft_probs[j] if row.draft_probs is not None else None
        q_x = float(q[x]) if q is not None else 1.0
        u = float(torch.rand((), generator=row.generator, device=logits.device))
        if u * q_x < float(p[j, x]):
            tokens.append(x)
            continue
        return [*tokens, draw(_residual(p[j], q, x), row.generator)]
    return [*tokens, draw(p[-1], row.generator)]


def _residual(p: torch.Tensor, q: torch.Tensor | None, x: int) -> torch.Tensor:
    """max(0, p - q), unnormalised (``draw`` does not need it); q None is the point mass at x."""
    if q is None:
        residual = p.clone()
        residual[x] = 0.0
    else:
        residual = (p - q).clamp_(min=0.0)
    return residual if bool(residual.sum() > 0) else p  # p == q up to rounding: any draw from p is right
