"""Continuous batching under a token budget: running decodes first, then partial and new prefills
chunked into what is left, FCFS, and preemption by recompute when the KV pool runs dry."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.kv_cache_manager import KVCacheManager
from tokenyard.runtime.engine.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    """One step's work, decodes first: ``num_new_tokens[i]`` tokens of ``seqs[i]`` get computed."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    def add(self, seq: Sequence, num_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_tokens)

    def items(self) -> Iterator[tuple[Sequence, int]]:
        return zip(self.seqs, self.num_new_tokens, strict=True)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, config: EngineConfig, kv_cache: KVCacheManager) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the newest is preempted first
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        # plain decodes, then decodes with draft tokens to verify, then prefills (the attention backend's order)
        decodes_first = sorted(self.running, key=lambda s: (s.num_uncomputed_tokens > 1, s.num_draft_tokens > 0))
        for seq in decodes_first:
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            seq.keep_drafts(max(budget - seq.num_uncomputed_tokens, 0))  # the budget counts draft tokens
            num_tokens = min(seq.num_uncomputed_tokens + seq.num_draft_tokens, budget)
            if num_tokens < seq.num_uncomputed_tokens and not self.config.enable_chunked_prefill:
                continue
            if seq.num_draft_tokens and not self.kv_cache.allocate(seq, num_tokens):
                seq.keep_drafts(0)  # draft tokens never cost another sequence a preemption
                num_tokens = seq.num_uncomputed_tokens
            if self._allocate_or_preempt(seq, num_tokens, batch):
                batch.add(seq, num_tokens)
                budget -= num_tokens
        if not batch.preempted:  # never admit new work while running ones are short of blocks
            self._admit_waiting(batch, budget)
        for seq in batch.seqs:
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.monotonic()
        return batch

    def _allocate_or_preempt(self, seq: Sequence, num_tokens: int, batch: ScheduledBatch) -> bool:
        while not self.kv_cache.allocate(seq, num_tokens):
            victims = [s for s in self.running if s is not seq and s not in batch.seqs]
            victim = victims[-1] if victims else seq
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def next_to_verify(self, with_prefills: bool) -> list[Sequence]:
        """The sequences the next step can verify draft tokens for: running decodes and, ``with_prefills``, those
        whose next step may finish their prompt (running partial prefills, then next_admitted)."""
        decodes = [s for s in self.running if s.num_uncomputed_tokens == 1 and s.output_token_ids]
        if not with_prefills:
            return decodes
        return [s for s in self.running if s.num_uncomputed_tokens > 1] + self.next_admitted() + decodes

    def next_admitted(self) -> list[Sequence]:
        """The waiting requests the next step may admit: in order, while seats and the token budget last
        (counting whole prompts, so a burst of prompts with cached prefixes gets fewer drafts than it could)."""
        seats = self.config.max_num_seqs - len(self.running)
        budget = self.config.max_num_batched_tokens
        admitted = []
        for seq in itertools.islice(self.waiting, max(seats, 0)):
            budget -= seq.num_tokens
            if budget < 0:
                break
            admitted.append(seq)
        return admitted

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            cached = self.kv_cache.match_prefix(seq)
            if self.kv_cache.computed_elsewhere_soon(seq, len(cached)):
                break
            num_cached = len(cached) * self.kv_cache.block_size
            remainder = seq.num_tokens - num_cached
            if remainder > budget and not self.config.enable_chunked_prefill:
                break
            seq.keep_drafts(max(budget - remainder, 0))  # drafts ride along only with the whole remainder
            num_tokens = min(remainder + seq.num_draft_tokens, budget)
            if not self.kv_cache.allocate(seq, num_tokens, cached):
                if not seq.num_draft_tokens:
                    break
                seq.keep_drafts(0)  # as for decodes: draft tokens never hold back an admission
                num_tokens = min(remainder, budget)
                if not self.kv_cache.allocate(seq, num_tokens, cached):
                    break
            if self.kv_cache.enable_prefix_caching:
                self.kv_cache.record_lookup(seq.num_tokens, num_cached)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            seq.num_computed_tokens = seq.num_cached_tokens = num_cached
            self.running.append(seq)
            batch.add(seq, num_tokens)
            budget -= num_tokens

    def _preempt(self, seq: Sequence) -> None:
        """Free the victim's blocks; it recomputes later (its own prefix may still be cached)."""
        self.running.remove(seq)
        self.kv_cache.free(seq)
        seq.status = Status.WAITING
        seq.num_computed_tokens = 0
        seq.keep_drafts(0)
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def account(self, seq: Sequence, num_tokens: int) -> None:
        """Account tokens the model just computed (rejected draft tokens excluded), and share their full blocks."""
        seq.num_computed_tokens += num_tokens
        self.kv_cache.cache_full_blocks(seq, num_tokens)

    def finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None) -> None:
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        self.kv_cache.free(seq)
        seq.status = Status.FINISHED
        seq.finish_reason, seq.stop_reason = reason, stop_reason
