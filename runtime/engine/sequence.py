"""A request's state as the engine sees it. State only: the scheduler and the cache manager act on it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tokenyard.runtime.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llguidance import LLMatcher


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved against max_model_len
    prompt: str | None = None
    generator: torch.Generator | None = None  # per-request RNG: a seed gives the same output in any batch
    arrival_time: float = field(default_factory=time.monotonic)

    status: Status = Status.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at (last) admission
    num_preemptions: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    # Speculative decoding: tokens proposed after the last one, verified in the next step; the draft
    # model's probabilities for them ((drafts, vocab)), None for point-mass proposals.
    draft_token_ids: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None
    # Structured output: the matcher of the request's constraint, advanced by every token it keeps (so it
    # survives preemption and recompute); None for a free request.
    grammar: LLMatcher | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def num_draft_tokens(self) -> int:
        return len(self.draft_token_ids)

    def keep_drafts(self, count: int) -> None:
        """Keep the first ``count`` draft tokens (the budget or the cache has no room for the rest)."""
        del self.draft_token_ids[count:]
        if self.draft_probs is not None:
            self.draft_probs = self.draft_probs[:count] if count else None

    def append_token(self, token_id: int, logprobs: dict[int, float] | None) -> None:
        self.output_token_ids.append(token_id)
        if logprobs is not None:
            self.logprobs.append(logprobs)
