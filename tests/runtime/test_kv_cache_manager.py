"""Block pool bookkeeping and automatic prefix caching, without a model."""

from __future__ import annotations

from tokenyard.runtime import SamplingParams
from tokenyard.runtime.engine.kv_cache_manager import KVCacheManager
from tokenyard.runtime.engine.sequence import Sequence

BS = 4


def seq(request_id: str, tokens: list[int]) -> Sequence:
    return Sequence(request_id, list(tokens), SamplingParams(), max_tokens=8)


def admit(kv: KVCacheManager, s: Sequence) -> int:
    """Admit and fully compute ``s``'s prompt, as the scheduler and runner would. Returns cached tokens."""
    cached = kv.match_prefix(s)
    assert kv.allocate(s, s.num_tokens - len(cached) * BS, cached)
    s.num_computed_tokens = s.num_tokens
    kv.cache_full_blocks(s, s.num_tokens - len(cached) * BS)
    return len(cached) * BS


def test_blocks_cover_the_tokens_and_come_back_when_freed():
    kv = KVCacheManager(8, BS, enable_prefix_caching=False)
    s = seq("a", list(range(9)))
    admit(kv, s)
    assert len(s.block_table) == 3 and kv.num_free_blocks == 5
    kv.free(s)
    assert kv.num_free_blocks == 8 and s.block_table == []


def test_allocation_fails_without_side_effects_when_the_pool_is_short():
    kv = KVCacheManager(2, BS, enable_prefix_caching=True)
    s = seq("a", list(range(12)))
    assert not kv.allocate(s, 12)
    assert s.block_table == [] and kv.num_free_blocks == 2


def test_a_shared_prefix_is_reused_by_reference_not_recomputed():
    kv = KVCacheManager(16, BS, enable_prefix_caching=True)
    first, second = seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), seq("b", [1, 2, 3, 4, 5, 6, 7, 8, 99])
    assert admit(kv, first) == 0
    assert admit(kv, second) == 8
    assert second.block_table[:2] == first.block_table[:2]
    assert [kv.blocks[b].ref_count for b in first.block_table[:2]] == [2, 2]


def test_a_fully_cached_prompt_still_computes_its_last_token():
    kv = KVCacheManager(16, BS, enable_prefix_caching=True)
    admit(kv, seq("a", list(range(8))))
    again = seq("b", list(range(8)))
    assert len(kv.match_prefix(again)) == 1  # 4 of 8 tokens: the last block is recomputed, not shared


def test_a_hash_hit_with_different_tokens_is_not_served():
    kv = KVCacheManager(16, BS, enable_prefix_caching=True)
    first = seq("a", [1, 2, 3, 4, 5])
    admit(kv, first)
    kv.blocks[first.block_table[0]].token_ids = (9, 9, 9, 9)  # as if another prefix had the same hash
    assert kv.match_prefix(seq("b", [1, 2, 3, 4, 5])) == []


def test_a_prefix_is_only_shared_after_the_same_preceding_blocks():
    kv = KVCacheManager(16, BS, enable_prefix_caching=True)
    admit(kv, seq("a", [1, 2, 3, 4, 5, 6, 7, 8, 0]))
    assert kv.match_prefix(seq("b", [0, 0, 0, 0, 5, 6, 7, 8, 0])) == []


def test_freed_cached_blocks_stay_findable_until_evicted_least_recently_used_first():
    kv = KVCacheManager(5, BS, enable_prefix_caching=True)
    for name, token in (("older", 1), ("newer", 2)):
        s = seq(name, [token] * BS + [0])
        admit(kv, s)
        kv.free(s)
    assert kv.num_free_blocks == 5
    assert kv.match_prefix(seq("probe", [1] * BS + [0])) != []  # free, yet still cached
    # 4 new blocks: the 3 that hold nothing cached go first, then the least recently freed cached one
    assert kv.allocate(seq("filler", [5] * 16), 16)
    assert kv.match_prefix(seq("older-again", [1] * BS + [0])) == []
    assert kv.match_prefix(seq("newer-again", [2] * BS + [0])) != []


def test_free_releases_the_tail_first_so_shared_heads_survive_longest():
    kv = KVCacheManager(4, BS, enable_prefix_caching=True)
    s = seq("a", list(range(13)))
    admit(kv, s)
    table = list(s.block_table)
    kv.free(s)
    # evicted order: the unhashed partial block first, then cached blocks from the tail to the head
    assert [kv._pop_free() for _ in range(4)] == [table[3], table[2], table[1], table[0]]


def test_prefix_cache_counters_count_tokens():
    kv = KVCacheManager(16, BS, enable_prefix_caching=True)
    kv.record_lookup(10, 8)
    kv.record_lookup(5, 0)
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (15, 8)
