"""N-gram prompt lookup: no model. If the last n tokens occurred earlier in the sequence, the tokens that
followed them then are a good guess now (extraction, quoting, code edits, JSON that echoes the input)."""

from __future__ import annotations

import numpy as np
from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.spec_decode.config import SpeculativeConfig


def ngram_lookup(tokens: np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """The up to ``k`` tokens that followed the latest earlier occurrence of the last n tokens, trying
    n from ``max_n`` down to ``min_n`` (a longer match is a better predictor)."""
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        # windows starting at 0 .. length - n - 1: each has at least one token after it
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)
        hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            return tokens[start : start + k].tolist()
    return []


class NgramProposer:
    def __init__(self, spec: SpeculativeConfig) -> None:
        self.min_n, self.max_n = spec.prompt_lookup_min, spec.prompt_lookup_max

    def propose(self, seqs: list[Sequence], limits: list[int]) -> None:
        for seq, limit in zip(seqs, limits, strict=True):
            seq.draft_token_ids = ngram_lookup(np.array(seq.token_ids), self.min_n, self.max_n, limit)

    def release(self, request_id: str) -> None:
        """Nothing is kept per request."""
