"""The adaptive draft budget (runtime/spec_decode/policy.py): each sequence drafts the tokens that raise
tokens per second at the current load. Steps and verifies are reported as the engine reports them, here
from a known step-time line and known acceptance patterns, so each decision can be checked against the
goodput it is meant to maximise."""

from __future__ import annotations

import random

import pytest
from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.sampling_params import SamplingParams
from tokenyard.runtime.spec_decode.policy import EXPLORE_EVERY, MIN_STEPS, DraftBudget

K = 4


def sequence(name: str) -> Sequence:
    return Sequence(name, [1, 2, 3], SamplingParams(), max_tokens=100)


def budget_with(fixed: float, per_token: float, rows: int) -> DraftBudget:
    """A budget that has seen decode steps costing ``fixed + per_token * tokens`` around ``rows`` rows."""
    budget = DraftBudget(K)
    for step in range(4 * MIN_STEPS):
        tokens = rows + step % (K + 1) * rows // 2  # steps of several sizes, as drafts make them
        budget.record_step(rows, tokens, fixed + per_token * tokens)
    return budget


def geometric(budget: DraftBudget, seq: Sequence, rate: float, verifies: int = 400) -> None:
    """Verifies of K drafts, each kept with chance ``rate`` while all before it were (independent tokens)."""
    draw = random.Random(7)
    for _ in range(verifies):
        kept = 0
        while kept < K and draw.random() < rate:
            kept += 1
        budget.record_verify(seq, K, kept)


def runs(budget: DraftBudget, seq: Sequence, rate: float, verifies: int = 400) -> None:
    """n-gram-like verifies: with chance ``rate`` the lookup is right and every draft is kept, else none."""
    draw = random.Random(7)
    for _ in range(verifies):
        budget.record_verify(seq, K, K if draw.random() < rate else 0)


def goodput(fixed: float, per_token: float, rows: int, chances: list[float], drafts: int) -> float:
    return rows * (1 + sum(chances[:drafts])) / (fixed + per_token * rows * (1 + drafts))


def test_the_fitted_step_time_is_the_line_the_steps_followed():
    fixed, per_token = budget_with(0.004, 0.0001, rows=1).step_time(1)
    assert fixed == pytest.approx(0.004) and per_token == pytest.approx(0.0001)


def test_until_step_sizes_vary_every_sequence_drafts_its_full_limit():
    budget, seq = DraftBudget(K), sequence("a")
    for _ in range(4 * MIN_STEPS):
        budget.record_step(1, 1, 0.004)  # always one token: no slope to fit
    assert budget.step_time(1) is None
    assert budget.limits([seq], [K], step_rows=1) == [K]


def test_at_batch_one_where_weights_dominate_every_draft_pays():
    """A step of a 135M model on a CPU: ~3 ms of weights, ~0.05 ms a token."""
    budget, seq = budget_with(0.003, 0.00005, rows=1), sequence("a")
    geometric(budget, seq, 0.5)
    assert budget.limits([seq], [K], step_rows=1) == [K]


def test_under_load_where_tokens_cost_their_compute_speculation_switches_off():
    """64 rows of a step whose time is mostly per-token compute: a draft kept half the time returns half of
    what it costs."""
    rows, fixed, per_token = 64, 0.01, 0.002
    budget = budget_with(fixed, per_token, rows=rows)
    seqs = [sequence(str(i)) for i in range(rows)]
    for seq in seqs:
        geometric(budget, seq, 0.5)
    assert budget.limits(seqs, [K] * rows, step_rows=rows) == [0] * rows
    chances = budget.kept_chances(seqs[0])
    assert goodput(fixed, per_token, rows, chances, 0) > goodput(fixed, per_token, rows, chances, 1)


@pytest.mark.parametrize("rate", [0.5, 0.7, 0.9])
def test_in_between_the_chosen_draft_length_is_the_goodput_maximum(rate):
    rows, fixed, per_token = 8, 0.01, 0.0004
    budget = budget_with(fixed, per_token, rows=rows)
    seqs = [sequence(str(i)) for i in range(rows)]
    for seq in seqs:
        geometric(budget, seq, rate)
    chosen = budget.limits(seqs, [K] * rows, step_rows=rows)
    chances = budget.kept_chances(seqs[0])
    best = max(range(K + 1), key=lambda k: goodput(fixed, per_token, rows, chances, k))
    assert chosen == [best] * rows


def limits_of_two(budget: DraftBudget, rows: int, first: Sequence, second: Sequence) -> tuple[int, int]:
    """The limits of two sequences in a step of ``rows`` rows (the others with no record of their own)."""
    others = [sequence(str(i)) for i in range(rows - 2)]
    limits = budget.limits([first, second, *others], [K] * rows, step_rows=rows)
    return limits[0], limits[1]


def test_drafts_that_come_in_runs_are_drafted_whole_where_independent_ones_are_cut():
    """n-gram lookups are right or wrong for a whole span: once the first draft is kept the rest mostly are,
    so their later drafts are worth more than independent tokens' at the same first-draft rate."""
    budget = budget_with(0.01, 0.0004, rows=8)
    spans, tokens = sequence("spans"), sequence("tokens")
    runs(budget, spans, 0.6)
    geometric(budget, tokens, 0.6)
    spans_limit, tokens_limit = limits_of_two(budget, 8, spans, tokens)
    assert spans_limit == K > tokens_limit


def test_a_sequence_whose_drafts_are_kept_drafts_more_than_one_whose_drafts_fail():
    budget = budget_with(0.01, 0.0005, rows=16)
    hits, misses = sequence("hits"), sequence("misses")
    geometric(budget, hits, 0.9)
    geometric(budget, misses, 0.1)
    hits_limit, misses_limit = limits_of_two(budget, 16, hits, misses)
    assert hits_limit > misses_limit == 0


def test_caps_still_bound_every_sequence():
    budget, seq = budget_with(0.003, 0.00005, rows=1), sequence("a")
    geometric(budget, seq, 0.9)
    assert budget.limits([seq], [2], step_rows=1) == [2]


def test_a_finished_sequence_is_forgotten():
    budget, seq = budget_with(0.003, 0.00005, rows=1), sequence("a")
    geometric(budget, seq, 0.9)
    budget.release(seq)
    assert budget.kept_chances(seq) == budget.kept_chances(sequence("new"))


def test_the_cost_of_a_token_is_judged_at_the_load_of_the_step():
    """A busy spell (64 rows, tokens costly: no drafts) does not stop drafting once the load is back to one row."""
    budget = budget_with(0.01, 0.002, rows=64)
    for step in range(4 * MIN_STEPS):  # then single-row steps, where a token costs little
        tokens = 1 + step % (K + 1)
        budget.record_step(1, tokens, 0.003 + 0.00005 * tokens)
    seq = sequence("a")
    geometric(budget, seq, 0.5)
    busy = [sequence(str(i)) for i in range(64)]
    assert budget.limits(busy, [K] * 64, step_rows=64) == [0] * 64
    assert budget.limits([seq], [K], step_rows=1) == [K]


def test_while_nothing_is_drafted_one_step_in_explore_every_drafts_in_full():
    rows = 64
    budget = budget_with(0.01, 0.002, rows=rows)
    seqs = [sequence(str(i)) for i in range(rows)]
    for seq in seqs:
        geometric(budget, seq, 0.5)
    decisions = [budget.limits(seqs, [K] * rows, step_rows=rows) for _ in range(2 * EXPLORE_EVERY)]
    full = [i for i, limits in enumerate(decisions) if limits == [K] * rows]
    assert full == [EXPLORE_EVERY - 1, 2 * EXPLORE_EVERY - 1]
    assert all(limits == [0] * rows for i, limits in enumerate(decisions) if i not in full)


def test_a_load_not_yet_seen_is_judged_by_the_line_of_a_neighbouring_load():
    budget = budget_with(0.01, 0.002, rows=64)  # only steps of 64 rows so far
    assert budget.step_time(40) == pytest.approx(budget.step_time(64))
    seqs = [sequence(str(i)) for i in range(40)]
    for seq in seqs:
        geometric(budget, seq, 0.5)
    assert budget.limits(seqs, [K] * 40, step_rows=40) == [0] * 40


def test_after_a_busy_spell_a_single_row_drafts_in_full_until_its_own_steps_tell():
    """Busy steps' line (tokens costly, a small intercept) would cut a single row's drafts, whose step time is
    mostly the weights streaming: loads far from any measured one draft in full."""
    budget = budget_with(0.01, 0.002, rows=64)
    assert budget.step_time(1) is None
    seq = sequence("a")
    geometric(budget, seq, 0.5)
    assert budget.limits([seq], [K], step_rows=1) == [K]
