"""N-gram lookup: no model. If the last n tokens occurred before, the tokens that followed them then are a
good guess now. Two places are searched:

- the sequence itself (vLLM's prompt lookup): extraction, quoting, code edits, JSON that echoes the input;
- the outputs of recent requests (as in suffix decoding): a service that answers one kind of request over
  and over (the classifier workload's "The answer is ...", the same JSON keys every time) repeats itself
  across requests, not within one. There the continuation most of the matches agree on is proposed.

Proposals only cost speed when wrong: the target verifies every token, so no output depends on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np

from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.spec_decode.config import SpeculativeConfig

# Matches kept per n-gram in the recent outputs: enough for a majority, bounded for the vote's cost.
MATCHES_PER_NGRAM = 32
# What is kept of each output: the openings and short answers that repeat across requests.
MAX_TOKENS_PER_OUTPUT = 128
_SPAN = 1 << 32  # a match packs (serial number, offset) into one int (offsets: below 128 + max_n)


def ngram_lookup(tokens: np.ndarray, n: int, k: int) -> list[int]:
    """The up to ``k`` tokens that followed the latest earlier occurrence of the last ``n`` tokens."""
    if len(tokens) <= n:
        return []
    # windows starting at 0 .. length - n - 1: each has at least one token after it
    windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)
    hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
    if not len(hits):
        return []
    start = int(hits[-1]) + n
    following: list[int] = tokens[start : start + k].tolist()
    return following


class RecentOutputs:
    """The last ``capacity`` finished requests' outputs (their first MAX_TOKENS_PER_OUTPUT tokens), each with
    the end of its prompt (where the answer starts), indexed by every n-gram of ``min_n`` to ``max_n``
    tokens. Bounded so: tens of thousands of small Python objects at most, and each finished request costs
    the engine loop well under a millisecond to learn."""

    def __init__(self, capacity: int, min_n: int, max_n: int) -> None:
        self.capacity, self.min_n, self.max_n = capacity, min_n, max_n
        self._texts: dict[int, list[int]] = {}  # serial number -> tokens, oldest first
        self._serial = 0
        # n-gram -> where its continuations start, oldest first, each as serial * _SPAN + offset
        self._index: dict[tuple[int, ...], list[int]] = {}

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, seq: Sequence) -> None:
        if not self.capacity or not seq.output_token_ids:
            return
        tokens = seq.prompt_token_ids[-self.max_n :] + seq.output_token_ids[:MAX_TOKENS_PER_OUTPUT]
        serial, self._serial = self._serial, self._serial + 1
        self._texts[serial] = tokens
        for offset, key in self._ngrams(tokens):
            matches = self._index.setdefault(key, [])
            matches.append(serial * _SPAN + offset)
            if len(matches) > MATCHES_PER_NGRAM:
                del matches[0]
        if len(self._texts) > self.capacity:
            self._evict()

    def lookup(self, context: list[int], n: int, k: int) -> list[int]:
        """Up to ``k`` tokens after the last ``n`` of ``context``, as most of their recent occurrences continue,
        token by token while a majority agrees."""
        matches = self._index.get(tuple(context[-n:])) if len(context) >= n else None
        if not matches:
            return []
        return _majority_continuation([(self._texts[m // _SPAN], m % _SPAN) for m in matches], k)

    def _ngrams(self, tokens: list[int]) -> Iterator[tuple[int, tuple[int, ...]]]:
        """(offset of the token after it, n-gram) for every n-gram followed by at least one token."""
        for n in range(self.min_n, self.max_n + 1):
            for end in range(n, len(tokens)):
                yield end, tuple(tokens[end - n : end])

    def _evict(self) -> None:
        serial = next(iter(self._texts))
        for _, key in self._ngrams(self._texts.pop(serial)):
            matches = self._index.get(key)
            if matches is None:
                continue
            while matches and matches[0] // _SPAN <= serial:
                del matches[0]
            if not matches:
                del self._index[key]


def _majority_continuation(matches: list[tuple[list[int], int]], k: int) -> list[int]:
    draft: list[int] = []
    while len(draft) < k and matches:
        votes = Counter(text[offset] for text, offset in matches if offset < len(text))
        if not votes:
            break
        token, count = votes.most_common(1)[0]
        if 2 * count <= len(matches) and draft:  # no majority past the first token: stop guessing
            break
        draft.append(token)
        matches = [(text, offset + 1) for text, offset in matches if offset < len(text) and text[offset] == token]
    return draft


class NgramProposer:
    # Its guesses cost nothing to make, so it also proposes for the step that finishes a prompt.
    proposes_before_first_token = True

    def __init__(self, spec: SpeculativeConfig) -> None:
        self.min_n, self.max_n = spec.prompt_lookup_min, spec.prompt_lookup_max
        self.recent = RecentOutputs(spec.lookup_recent_outputs, self.min_n, self.max_n)

    def propose(self, seqs: list[Sequence], limits: list[int]) -> None:
        for seq, limit in zip(seqs, limits, strict=True):
            seq.draft_token_ids = self._draft(seq, limit) if limit else []

    def _draft(self, seq: Sequence, k: int) -> list[int]:
        """The longest match wins; at equal length the sequence's own text before recent outputs."""
        context = seq.token_ids
        tokens = np.array(context)
        for n in range(min(self.max_n, len(context) - 1), self.min_n - 1, -1):
            draft = ngram_lookup(tokens, n, k) or self.recent.lookup(context, n, k)
            if draft:
                return draft
        return []

    def release(self, seq: Sequence) -> None:
        """Learn from a request that ended normally (an aborted one may stop anywhere)."""
        if seq.finish_reason in ("stop", "length"):
            self.recent.add(seq)

    def shutdown(self) -> None:
        self.recent = RecentOutputs(0, self.min_n, self.max_n)
