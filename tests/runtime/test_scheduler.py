"""Continuous batching policy, without a model: what gets computed in a step, and who is preempted."""

from __future__ import annotations

from tokenyard.runtime import EngineConfig, SamplingParams
from tokenyard.runtime.engine.kv_cache_manager import KVCacheManager
from tokenyard.runtime.engine.scheduler import Scheduler
from tokenyard.runtime.engine.sequence import Sequence, Status


def make(num_blocks=64, **config) -> Scheduler:
    cfg = EngineConfig(block_size=4, **config)
    return Scheduler(cfg, KVCacheManager(num_blocks, 4, cfg.enable_prefix_caching))


def seq(name: str, length: int) -> Sequence:
    return Sequence(name, [ord(name[0]) * 100 + i for i in range(length)], SamplingParams(), max_tokens=100)


def run_step(scheduler: Scheduler) -> dict[str, int]:
    """Schedule, pretend the model ran, and give every finished prefill a new token."""
    batch = scheduler.schedule()
    for s, n in batch.items():
        scheduler.account(s, n)
        if s.num_computed_tokens == s.num_tokens:
            s.append_token(1, None)
    return {s.request_id: n for s, n in batch.items()}


def test_running_decodes_come_first_and_prefills_are_chunked_into_the_rest():
    scheduler = make(max_num_batched_tokens=10)
    scheduler.add(seq("a", 3))
    assert run_step(scheduler) == {"a": 3}
    scheduler.add(seq("b", 25))
    assert run_step(scheduler) == {"a": 1, "b": 9}
    assert run_step(scheduler) == {"a": 1, "b": 9}
    assert run_step(scheduler) == {"a": 1, "b": 7}
    assert run_step(scheduler) == {"a": 1, "b": 1}


def test_without_chunked_prefill_a_prompt_waits_for_a_budget_it_fits_whole():
    scheduler = make(max_num_batched_tokens=10, enable_chunked_prefill=False)
    scheduler.add(seq("a", 3))
    run_step(scheduler)
    scheduler.add(seq("b", 10))
    assert run_step(scheduler) == {"a": 1}  # 1 + 10 does not fit
    scheduler.running[0].status = Status.FINISHED  # a leaves
    scheduler.running.clear()
    assert run_step(scheduler) == {"b": 10}


def test_at_most_max_num_seqs_run_and_the_rest_wait_in_order():
    scheduler = make(max_num_seqs=2)
    for name in "abc":
        scheduler.add(seq(name, 2))
    assert run_step(scheduler) == {"a": 2, "b": 2}
    assert [s.request_id for s in scheduler.waiting] == ["c"]


def test_waiting_requests_are_admitted_first_come_first_served():
    scheduler = make(num_blocks=4)  # 16 tokens
    scheduler.add(seq("big", 14))
    scheduler.add(seq("small", 2))
    assert run_step(scheduler) == {"big": 14}  # small fits the budget but must not overtake big's turn
    assert [s.request_id for s in scheduler.waiting] == ["small"]


def test_when_blocks_run_out_the_newest_request_is_preempted_and_requeued_first():
    scheduler = make(num_blocks=4)  # 16 tokens
    scheduler.add(seq("old", 8))
    scheduler.add(seq("new", 7))
    scheduler.add(seq("later", 1))
    assert run_step(scheduler) == {"old": 8, "new": 7}  # 4 blocks used; "later" does not fit
    steps = [run_step(scheduler) for _ in range(2)]  # new needs a 5th block at its 9th token
    assert "new" not in steps[-1]
    new = next(s for s in scheduler.waiting if s.request_id == "new")
    assert new.num_preemptions == 1 and new.num_computed_tokens == 0 and new.block_table == []
    assert [s.request_id for s in scheduler.waiting] == ["new", "later"]
    assert scheduler.num_preemptions == 1
