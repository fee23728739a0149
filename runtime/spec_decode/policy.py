"""How many draft tokens each sequence verifies in a step, so that speculation pays at every load
(``"adaptive": true`` in ``--speculative-config``; off by default).

Speculation trades compute for steps: a verify step computes a sequence's drafts alongside its own token,
and keeps the drafts up to the first rejected one. While a step's time is mostly the weights streaming
(batch 1), the extra tokens are nearly free and every draft pays; under load each token costs its own
compute and only drafts that are almost sure to be kept pay (vLLM users see speculation slow a busy server
down). After SmartSpec's goodput (Liu et al., 2024): with a step time of ``a + b * n`` for ``n`` tokens
(a line fitted to the engine's recent decode steps of about as many rows, or of a neighbouring load while
those are too few: the cost of a token depends on the load, and a line fitted to busy steps says nothing of a
single row, whose time is mostly the weights streaming) and ``T`` tokens expected from the step, one more
draft token raises tokens per second when the chance it is kept exceeds ``b * T / (a + b * n)``. The chance
that draft ``j`` is kept is the product of the chances that each draft up to it is kept given the one before
was: measured per position (n-gram drafts come in runs, so a later draft, once reached, is kept far more often
than the first), for each sequence, drawn towards everyone's while its own record is short. A sequence drafts
while that chance clears the bar: fewer tokens as load rises, none once one more token costs about what it
returns. While none are drafted nothing new is learnt, so one step in ``EXPLORE_EVERY`` drafts in full.
"""

from __future__ import annotations

import itertools
import operator

from tokenyard.runtime.engine.sequence import Sequence

# Recent steps weigh most: the load and the requests change (a step's weight halves after this many steps).
HALF_LIFE_STEPS = 200
# A line needs steps of different sizes to have a slope; until then every sequence drafts its full limit.
MIN_STEPS = 16
EXPLORE_EVERY = 32  # steps without drafts before one drafts in full, to measure again what drafts return
PRIOR_WEIGHT = 4.0  # verifies that reached a position before a sequence's own record there counts as much


class _Survival:
    """Per draft position: how often it was reached (all drafts before it kept) and how often kept."""

    def __init__(self, positions: int) -> None:
        self.reached = [0.0] * positions
        self.kept = [0.0] * positions

    def record(self, num_drafts: int, num_accepted: int) -> None:
        for j in range(min(num_accepted + 1, num_drafts)):
            self.reached[j] += 1
            self.kept[j] += j < num_accepted

    def decay(self, factor: float) -> None:
        self.reached = [r * factor for r in self.reached]
        self.kept = [k * factor for k in self.kept]

    def kept_given_reached(self, prior: list[float] | None, weight: float) -> list[float]:
        """Each position's chance of being kept once reached, drawn towards ``prior`` by ``weight`` verifies
        (without a prior, towards the position before's, and a half for the first)."""
        rates, previous = [], 0.5
        for j, (kept, reached) in enumerate(zip(self.kept, self.reached, strict=True)):
            previous = (kept + weight * (previous if prior is None else prior[j])) / (reached + weight)
            rates.append(previous)
        return rates


class _StepTime:
    """A line through (tokens, seconds) of recent steps, least squares over exponentially decayed sums."""

    def __init__(self) -> None:
        self.steps = 0
        self.sums = [0.0] * 5  # weight, n, t, n*n, n*t

    def record(self, tokens: int, seconds: float, decay: float) -> None:
        self.steps += 1
        self.sums = [s * decay for s in self.sums]
        for i, value in enumerate((1.0, tokens, seconds, tokens * tokens, tokens * seconds)):
            self.sums[i] += value

    def fit(self) -> tuple[float, float] | None:
        """(a, b) of ``a + b * tokens`` in seconds, or None while it cannot be told (steps all one size)."""
        weight, n, t, nn, nt = self.sums
        spread = weight * nn - n * n
        if self.steps < MIN_STEPS or spread <= 1e-9 * weight * weight:
            return None
        per_token = max((weight * nt - n * t) / spread, 0.0)
        return max((t - per_token * n) / weight, 1e-9), per_token


class DraftBudget:
    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._decay = 0.5 ** (1 / HALF_LIFE_STEPS)
        self._everyone = _Survival(max_tokens)
        self._sequences: dict[str, _Survival] = {}
        self._step_times: dict[int, _StepTime] = {}  # by rows, in powers of two: 1, 2-3, 4-7, ...
        self._steps_without_drafts = 0

    # --- what the engine reports -------------------------------------------------------------------
    def record_verify(self, seq: Sequence, num_drafts: int, num_accepted: int) -> None:
        own = self._sequences.setdefault(seq.request_id, _Survival(self.max_tokens))
        for record in (own, self._everyone):
            record.record(num_drafts, num_accepted)

    def record_step(self, rows: int, tokens: int, seconds: float) -> None:
        """A step that only decoded (and verified drafts): its rows, its tokens (drafts included) and its wall
        time, proposals included."""
        self._everyone.decay(self._decay)
        self._step_times.setdefault(rows.bit_length(), _StepTime()).record(tokens, seconds, self._decay)

    def release(self, seq: Sequence) -> None:
        self._sequences.pop(seq.request_id, None)

    # --- the decision ------------------------------------------------------------------------------
    def limits(self, seqs: list[Sequence], caps: list[int], step_rows: int) -> list[int]:
        """Each sequence's draft tokens for the next step, at most its cap, in a step of ``step_rows`` rows."""
        line = self.step_time(step_rows)
        if line is None:
            return caps
        fixed, per_token = line
        everyone = self._everyone.kept_given_reached(None, 2.0)
        chances = [self.kept_chances(seq, everyone) for seq in seqs]
        drafts = [0] * len(seqs)
        for _ in range(2):  # the bar rises with the tokens the drafts add; settle it once
            tokens = step_rows + sum(drafts)
            expected = step_rows + sum(sum(c[:k]) for c, k in zip(chances, drafts, strict=True))
            bar = per_token * expected / (fixed + per_token * tokens)
            drafts = [min(cap, sum(chance > bar for chance in c)) for c, cap in zip(chances, caps, strict=True)]
        if any(drafts):
            self._steps_without_drafts = 0
            return drafts
        self._steps_without_drafts += 1
        return caps if self._steps_without_drafts % EXPLORE_EVERY == 0 else drafts

    def kept_chances(self, seq: Sequence, everyone: list[float] | None = None) -> list[float]:
        """The chance that each of a sequence's next drafts is kept (non-increasing along the drafts);
        ``everyone``: the per-position rates over all sequences, if already at hand."""
        everyone = everyone or self._everyone.kept_given_reached(None, 2.0)
        own = self._sequences.get(seq.request_id)
        given = everyone if own is None else own.kept_given_reached(everyone, PRIOR_WEIGHT)
        return list(itertools.accumulate(given, operator.mul))

    def step_time(self, rows: int) -> tuple[float, float] | None:
        """(a, b) of the step time ``a + b * tokens`` in seconds fitted to steps of about ``rows`` rows (up to
        twice as many or half as many while those cannot tell, the lighter load first: it errs towards
        drafting), or None while none can: then drafts go in full until the steps tell."""
        bucket = rows.bit_length()
        for near in (bucket, bucket - 1, bucket + 1):
            line = self._step_times.get(near)
            fit = line.fit() if line is not None else None
            if fit is not None:
                return fit
        return None
