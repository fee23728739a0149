"""Replica choice: prefix affinity bounded by load, least outstanding otherwise, ejected replicas skipped."""

from __future__ import annotations

from tokenyard.gateway.router import LOAD_BOUND, Router, affinity_key


def test_requests_sharing_a_prefix_land_on_one_replica():
    router = Router(["http://a", "http://b", "http://c"])
    assert len({router.pick("the same long system prompt").url for _ in range(20)}) == 1
    spread = {router.pick(f"system prompt {i}").url for i in range(50)}
    assert len(spread) == 3  # different prefixes spread over the replicas


def test_no_replica_takes_more_than_the_load_bound_under_concurrency():
    router = Router(["http://a", "http://b", "http://c"])
    for _ in range(60):
        router.pick("the same long system prompt").outstanding += 1
        loads = [r.outstanding for r in router.replicas]
        assert max(loads) <= -(-LOAD_BOUND * sum(loads) // len(loads))


def test_without_affinity_the_least_loaded_replica_is_chosen_and_ejected_ones_are_skipped():
    router = Router(["http://a", "http://b"])
    router.replicas[0].outstanding = 3
    assert router.pick(None).url == "http://b"
    router.replicas[1].eject()
    assert router.pick(None).url == "http://a"
    router.replicas[0].eject()
    assert router.pick(None) is None


def test_the_affinity_key_is_the_system_prompt():
    assert affinity_key({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}]}) == "S"
    assert affinity_key({"messages": [{"role": "user", "content": "u"}]}) is None
