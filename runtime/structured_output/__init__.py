"""Structured output: a request's constraint (JSON Schema, JSON object, regex, choice, grammar) compiled once by
llguidance into a grammar, and a matcher per request that says which tokens may come next.

``grammars`` turns constraints into compiled grammars (cached, bounded); ``StructuredOutputs`` (here) is the
engine's one handle: it starts a request's matcher, drafts the tokens a grammar forces and cuts the drafts it
forbids, computes the allowed-token masks the sampler applies, and advances the matchers with the tokens a step
produced."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from tokenyard.runtime.engine.scheduler import Scheduler
from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.sampling_params import StructuredOutputsParams
from tokenyard.runtime.structured_output.grammars import CompiledGrammar, GrammarCompiler

MASK_TIMES_KEPT = 10_000


@dataclass
class StructuredOutputStats:
    requests: Counter[str] = field(default_factory=Counter)  # constrained requests started, by kind
    forced_tokens: int = 0  # tokens the grammar forced, computed in a step with the token before them
    # Per step with constrained rows, the latest ones (the server drains it into a histogram after each step).
    mask_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=MASK_TIMES_KEPT))


class StructuredOutputs:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        self._tokenizer, self.vocab_size = tokenizer, vocab_size
        self._compiler: GrammarCompiler | None = None
        self.stats = StructuredOutputStats()
        self._forced: set[Sequence] = set()  # the sequences whose drafts this step are what their grammar forces

    @property
    def compiler(self) -> GrammarCompiler:
        """Built on the first constraint: wrapping the tokenizer for llguidance takes ~0.3 s that an engine
        serving no constraint need not spend."""
        if self._compiler is None:
            self._compiler = GrammarCompiler(self._tokenizer, self.vocab_size)
        return self._compiler

    def compile(self, constraint: StructuredOutputsParams) -> CompiledGrammar:
        """Compile (or find in the cache); raises InvalidValue naming what is wrong. Thread-safe: the server
        calls it off the event loop before the request reaches the engine, which then finds it cached."""
        return self.compiler.compile(constraint)

    def start(self, seq: Sequence) -> None:
        constraint = seq.params.structured_outputs
        if constraint is None:
            return
        seq.grammar = self.compile(constraint).new_matcher()
        self.stats.requests[constraint.kind] += 1

    def draft(self, scheduler: Scheduler) -> None:
        """Draft what the grammars decide, before a step. A sequence the step can verify drafts for (see
        Scheduler.next_to_verify) whose grammar forces its next tokens (the keys and punctuation of a schema's
        JSON) drafts exactly those, replacing any proposer's drafts: verified against the masked logits they are
        all accepted, so one step computes them all (jump-forward decoding) and the output is what token-by-token
        decoding gives. Every other draft is cut at the first token its grammar forbids: that one could never be
        accepted."""
        self._forced = set()
        if self._compiler is None:  # no constraint yet: nothing to do on this hot path
            return
        for seq in scheduler.next_to_verify(with_prefills=True):
            if seq.grammar is None or len(seq.output_token_ids) < seq.params.min_tokens:
                continue  # min_tokens bans the end only at a step's first position
            forced = seq.grammar.compute_ff_tokens()[: seq.max_tokens - len(seq.output_token_ids) - 1]
            if forced:
                seq.draft_token_ids, seq.draft_probs = forced, None
                self._forced.add(seq)
        for seq in [*scheduler.running, *scheduler.waiting]:
            if seq.grammar is not None and seq.draft_token_ids and seq not in self._forced:
                seq.keep_drafts(seq.grammar.validate_tokens(seq.draft_token_ids))

    def verified(self, seq: Sequence, num_accepted: int) -> bool:
        """After a step: whether the sequence's drafts were its grammar's (counted here, not as speculation)."""
        if seq not in self._forced:
            return False
        self.stats.forced_tokens += num_accepted
        return True

    def allowed_tokens(self, seqs: list[Sequence]) -> tuple[list[torch.Tensor | None], dict[Sequence, str]]:
        """Per sequence, None when it is free, else a (1 + drafts, vocab) boolean mask: the tokens its grammar
        allows next, and after each of its (grammar-valid) draft tokens. Also the sequences whose matcher gave
        up (a step past llguidance's limits), with its reason: the engine ends those, and only those."""
        masks: list[torch.Tensor | None] = [None] * len(seqs)
        failed: dict[Sequence, str] = {}
        if not any(seq.grammar is not None for seq in seqs):
            return masks, failed
        started = time.perf_counter()
        words = (self.vocab_size + 31) // 32
        for index, seq in enumerate(seqs):
            if seq.grammar is None:
                continue
            bits = np.empty((1 + seq.num_draft_tokens, words), dtype=np.int32)
            if not _fill_masks(seq, bits):
                failed[seq] = f"the structured-output constraint could not be followed: {seq.grammar.get_error()}"
                continue
            unpacked = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, : self.vocab_size]
            masks[index] = torch.from_numpy(unpacked.view(np.bool_))
        self.stats.mask_seconds.append(time.perf_counter() - started)
        return masks, failed

    def accept(self, seq: Sequence, token_id: int) -> tuple[str, str | None] | None:
        """Advance the sequence's matcher by a token it produced. ("stop", None) when its grammar is complete
        (nothing but the end may follow, so the answer ends); ("error", why) when the matcher refuses a token its
        own mask allowed (an llguidance inconsistency: the request ends, not the step and its other requests)."""
        assert seq.grammar is not None
        if not seq.grammar.consume_token(token_id):
            return "error", f"the structured-output constraint could not be followed: {seq.grammar.get_error()}"
        return ("stop", None) if seq.grammar.is_stopped() else None


def _fill_masks(seq: Sequence, bits: np.ndarray) -> bool:
    """Row 0: the mask now; row j: after the first j draft tokens (consumed for the mask, then rolled back)."""
    matcher = seq.grammar
    assert matcher is not None
    row_bytes = bits.shape[1] * bits.itemsize
    consumed = 0
    for row in range(bits.shape[0]):
        if row:
            if not matcher.consume_token(seq.draft_token_ids[row - 1]):
                break
            consumed += 1
        matcher.unsafe_compute_mask_ptr(bits[row].ctypes.data, row_bytes)
    ok = not matcher.is_error()
    if consumed:
        matcher.rollback(consumed)
    return ok
