"""From logits to the next token: penalties, temperature, top-k / top-p / min-p, a per-request RNG,
and logprobs of the raw model output (as vLLM reports them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenyard.runtime.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    params: SamplingParams
    generator: torch.Generator | None
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    banned_token_ids: list[int]  # e.g. EOS while min_tokens is not reached
    # Speculative decoding: proposals to verify, one more logits row each, and the draft's probabilities
    # for them ((drafts, vocab); None: each proposal is a point mass, as n-gram lookups are).
    draft_token_ids: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None
    # Structured output: (1 + len(draft_token_ids), vocab) booleans, the tokens the request's grammar allows at
    # each position; None for a free request.
    allowed_tokens: torch.Tensor | None = None


@dataclass
class Sampled:
    token_id: int
    logprobs: dict[int, float] | None


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> list[Sampled]:
    """logits: (rows, vocab) float32, one row per request that needs a token this step."""
    raw_logprobs = raw_logprobs_if_wanted(logits, rows)
    logits = process_logits(logits, rows)
    chosen = logits.argmax(dim=-1)
    sampled_rows = [i for i, row in enumerate(rows) if not row.params.greedy]
    if sampled_rows:
        probs = filtered_probs(logits[sampled_rows], [rows[i].params for i in sampled_rows])
        for j, i in enumerate(sampled_rows):
            chosen[i] = draw(probs[j], rows[i].generator)
    tokens = chosen.tolist()
    return [Sampled(tokens[i], logprob_entry(raw_logprobs, i, tokens[i], row.params)) for i, row in enumerate(rows)]


def raw_logprobs_if_wanted(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor | None:
    """Logprobs of the raw model output (before penalties and temperature), as vLLM reports them."""
    return torch.log_softmax(logits, dim=-1) if any(r.params.logprobs is not None for r in rows) else None


def process_logits(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Penalties, logit biases, banned tokens and the grammar's mask applied, on a copy when anything changes."""
    if any(
        row.params.uses_penalties or row.params.logit_bias or row.banned_token_ids or row.allowed_tokens is not None
        for row in rows
    ):
        logits = logits.clone()
    for i, row in enumerate(rows):
        if row.params.uses_penalties:
            _apply_penalties(logits[i], row)
        if row.params.logit_bias:
            ids = torch.tensor(list(row.params.logit_bias), dtype=torch.long, device=logits.device)
            biases = torch.tensor(list(row.params.logit_bias.values()), dtype=logits.dtype, device=logits.device)
            logits[i].index_add_(0, ids, biases)
        if row.banned_token_ids:
            logits[i, row.banned_token_ids] = float("-inf")
        if row.allowed_tokens is not None:
            logits[i].masked_fill_(~row.allowed_tokens[0].to(logits.device, non_blocking=True), float("-inf"))
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from ``probs`` (unnormalised is fine) with the request's own RNG: the exponential race,
    argmax(p / E) with E ~ Exp(1), draws from p."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return int((probs / noise).argmax())


def logprob_entry(raw_logprobs: torch.Tensor | None, index: int, token: int, params: SamplingParams) -> dict | None:
    """The chosen token's logprob and the top ``params.logprobs`` of logits row ``index``."""
    if raw_logprobs is None or params.logprobs is None:
        return None
    entry = {token: float(raw_logprobs[index, token])}
    if params.logprobs:
        values, ids = raw_logprobs[index].topk(params.logprobs)
        entry.update(zip(ids.tolist(), values.tolist(), strict=True))
    return entry


def _apply_penalties(logits: torch.Tensor, row: SamplingRow) -> None:
    p = row.params
    if p.repetition_penalty != 1:  # over prompt and output, as Hugging Face and vLLM do
        seen = torch.tensor(
            sorted(set(row.prompt_token_ids) | set(row.output_token_ids)),
            dtype=torch.long,
            device=logits.device,
        )
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
    if row.output_token_ids and (p.presence_penalty or p.frequency_penalty):  # OpenAI: output only
        counts = torch.bincount(
            torch.tensor(row.output_token_ids, device=logits.device), minlength=logits.shape[-1]
        ).to(logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    temperature = torch.tensor([p.temperature for p in params], device=logits.device)[:, None]
    probs = torch.softmax(logits / temperature, dim=-1)
    if any(p.top_k or p.top_p < 1 for p in params):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        rank = torch.arange(probs.shape[-1], device=probs.device)[None, :]
        vocab = probs.shape[-1]
        top_k = torch.tensor([min(p.top_k, vocab) or vocab for p in params], device=probs.device)[:, None]
        top_p = torch.tensor([p.top_p for p in params], device=probs.device)[:, None]
        # keep a token if it is within top-k and the mass before it is below top-p (the first always stays)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = (rank >= top_k) | (before >= top_p)
        probs = probs.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), 0.0)
    min_p = torch.tensor([p.min_p for p in params], device=probs.device)[:, None]
    if bool((min_p > 0).any()):
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    return probs
