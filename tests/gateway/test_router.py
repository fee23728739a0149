"""Replica choice: prefix affinity bounded by load, least outstanding otherwise, ejected replicas skipped."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tokenyard.gateway.router import LOAD_BOUND, Overloaded, Replica, Router, affinity_key


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


# --- leases and admission (asyncio, no network) -----------------------------------------------------------------


def test_a_lease_counts_the_request_until_it_ends_however_it_ends():
    async def scenario() -> None:
        replica = Router(["http://a"]).replicas[0]
        async with replica.lease():
            assert replica.outstanding == 1
        with contextlib.suppress(RuntimeError):
            async with replica.lease():
                raise RuntimeError("the exchange failed")
        task = asyncio.create_task(hold(replica, 10))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert replica.outstanding == 0

    asyncio.run(scenario())


async def hold(replica: Replica, seconds: float) -> None:
    async with replica.lease():
        await asyncio.sleep(seconds)


def test_a_full_replica_makes_requests_wait_in_line_first_come_first_served():
    async def scenario() -> list[int]:
        router = Router(["http://a"], max_outstanding=1, max_queued=8, max_wait_seconds=5)
        order: list[int] = []

        async def request(i: int) -> None:
            replica = await router.acquire(None)
            async with replica.lease():
                order.append(i)
                await asyncio.sleep(0.01)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(request(i)))
            await asyncio.sleep(0)  # arrive in this order
        await asyncio.gather(*tasks)
        assert router.replicas[0].outstanding == 0 and router.queued == 0
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_a_full_line_or_a_long_wait_sheds_and_a_retry_never_waits():
    async def scenario() -> None:
        router = Router(["http://a", "http://b"], max_outstanding=1, max_queued=1, max_wait_seconds=0.2)
        a, b = router.replicas
        busy = [asyncio.create_task(hold(a, 1)), asyncio.create_task(hold(b, 1))]
        await asyncio.sleep(0)
        waiting = asyncio.create_task(router.acquire(None))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="already waiting"):
            await router.acquire(None)  # the line (1) is full
        with pytest.raises(Overloaded, match=r"within 0\.2 s"):
            await waiting
        assert await router.acquire(None, exclude={a}) is None  # a retry: b is busy, so the refusal stands
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        a.eject()
        assert await router.acquire(None, exclude={b}) is None  # nothing healthy left to try
        assert await router.acquire(None) is b

    asyncio.run(scenario())


def test_a_waiter_handed_room_that_leaves_passes_it_on():
    async def scenario() -> None:
        router = Router(["http://a"], max_outstanding=1, max_queued=4, max_wait_seconds=5)
        replica = router.replicas[0]
        async with replica.lease():
            first = asyncio.create_task(router.acquire(None))
            second = asyncio.create_task(router.acquire(None))
            await asyncio.sleep(0)
            assert router.queued == 2
        first.cancel()  # handed the room as the lease ended, but its client went away before it ran
        assert await second is replica
        await asyncio.gather(first, return_exceptions=True)
        assert first.cancelled() and router.queued == 0

    asyncio.run(scenario())
