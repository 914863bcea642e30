"""A fresh asyncio Redis Cluster store under a burst of concurrent first requests.

``redis.asyncio.cluster.RedisCluster`` learns the slot map on its first command, and redis-py
8.1 fails when many tasks send the first commands at once (a bare AttributeError, "'NoneType'
object has no attribute 'writelines'", from connections torn down by another task's
initialization). A service starts exactly like that: many requests at once, none of them first.
The store initializes its cluster client once, under a lock, before its first request.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from mpstate import MpStateError
from mpstate.aio import AsyncRedisPipelineStateStore

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

#: Stores tried: a bare redis-py 8.1 client fails such a burst about 4 times in 5, so five
#: stores all passing by luck is about 1 in 10,000.
ROUNDS = 5
TASKS = 30


async def first_requests(store: AsyncRedisPipelineStateStore) -> list[BaseException]:
    outcomes = await asyncio.gather(
        *(store.get(f"run-{i}") for i in range(TASKS)), return_exceptions=True
    )
    return [outcome for outcome in outcomes if isinstance(outcome, BaseException)]


def describe(failures: list[BaseException]) -> str:
    untyped = [error for error in failures if not isinstance(error, MpStateError)]
    return (
        f"{len(failures)} of {ROUNDS * TASKS} first requests failed, {len(untyped)} with an "
        f"error outside mpstate's hierarchy, e.g. {failures[0]!r}"
    )


@pytest.mark.parametrize("build", ["constructor", "from_url"])
async def test_a_fresh_cluster_store_serves_a_burst_of_concurrent_first_requests(
    cluster_url: str, prefix: str, build: str
) -> None:
    failures: list[BaseException] = []
    for _ in range(ROUNDS):
        if build == "from_url":
            store = AsyncRedisPipelineStateStore.from_url(
                cluster_url.replace("redis://", "redis+cluster://", 1), prefix=prefix
            )
        else:
            store = AsyncRedisPipelineStateStore(AsyncRedisCluster.from_url(cluster_url), prefix)
        try:
            failures += await first_requests(store)
        finally:
            await store.aclose()
    assert failures == [], describe(failures)


async def test_a_cluster_store_used_again_after_aclose_serves_a_burst_of_first_requests(
    cluster_url: str, prefix: str
) -> None:
    store = AsyncRedisPipelineStateStore(AsyncRedisCluster.from_url(cluster_url), prefix)
    failures: list[BaseException] = []
    try:
        for _ in range(ROUNDS):
            assert await store.get("warm-up") is None
            await store.aclose()  # e.g. an app's shutdown; the client reconnects on next use
            failures += await first_requests(store)
    finally:
        await store.aclose()
    assert failures == [], describe(failures)
