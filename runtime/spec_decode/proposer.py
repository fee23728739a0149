"""What the engine sees of speculation: a proposer that fills ``seq.draft_token_ids`` before each step,
and the counters behind the ``vllm:spec_decode_*`` metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.loaders import LoadedModel
from tokenyard.runtime.spec_decode.config import SpeculativeConfig
from tokenyard.runtime.spec_decode.draft_model import DraftModelProposer
from tokenyard.runtime.spec_decode.ngram import NgramProposer


class Proposer(Protocol):
    # Whether it also drafts for the step that computes the rest of a prompt (the answer's first tokens).
    proposes_before_first_token: bool

    def propose(self, seqs: list[Sequence], limits: list[int]) -> None:
        """Set each sequence's ``draft_token_ids`` (at most its limit; fewer or none is fine)."""

    def release(self, seq: Sequence) -> None:
        """The request ended (``seq.finish_reason`` says how): drop whatever is kept for it."""

    def shutdown(self) -> None:
        """The engine shuts down: let go of any model and cache (it proposes nothing afterwards)."""


def build_proposer(config: EngineConfig, spec: SpeculativeConfig, target: LoadedModel) -> Proposer:
    if spec.method == "ngram":
        return NgramProposer(spec)
    return DraftModelProposer(config, spec, target)


@dataclass
class SpecDecodeStats:
    num_drafts: int = 0  # verification steps of a sequence with at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)  # [i]: drafts whose token i was kept

    def record(self, num_draft_tokens: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted
        if len(self.accepted_per_position) < num_draft_tokens:
            self.accepted_per_position += [0] * (num_draft_tokens - len(self.accepted_per_position))
        for position in range(num_accepted):
            self.accepted_per_position[position] += 1

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0
