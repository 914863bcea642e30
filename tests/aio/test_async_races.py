"""Asyncio tasks racing on one store: the store's guards, not luck, keep the totals exact.

Many tasks share one ``AsyncRedisPipelineStateStore`` (one client, one connection pool) on a real
redis-server or a Redis Cluster; every read and write is an await, so the tasks interleave at
each one. The control test runs the same workload without ``expected_version`` and loses
updates: the race is real, and the exact totals are the compare-and-set's doing.
"""

from __future__ import annotations

import asyncio

import pytest
from aio_support import AIO_REDIS_BACKENDS, make_run

from mpstate import VersionConflictError
from mpstate.aio import AsyncPipelineStateStore

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(120),
    pytest.mark.parametrize("aio_backend", AIO_REDIS_BACKENDS, indirect=True),
]

WRITERS = 20
INCREMENTS = 25
CREATORS = 30


async def increment_with_retries(store: AsyncPipelineStateStore, run_id: str, times: int) -> int:
    """Add one to ``cost_usd`` ``times`` times by compare-and-set; return the conflicts met."""
    conflicts = 0
    for _ in range(times):
        while True:
            current = await store.require(run_id, include_events=False)
            try:
                await store.update(
                    run_id, {"costUsd": current.cost_usd + 1}, expected_version=current.version
                )
                break
            except VersionConflictError:
                conflicts += 1
    return conflicts


async def test_twenty_tasks_of_compare_and_set_increments_end_exactly_at_five_hundred(
    async_store: AsyncPipelineStateStore,
) -> None:
    await make_run(async_store)

    conflicts = await asyncio.gather(
        *(increment_with_retries(async_store, "r1", INCREMENTS) for _ in range(WRITERS))
    )

    run = await async_store.require("r1", include_events=False)
    assert run.cost_usd == WRITERS * INCREMENTS == 500
    assert run.version == 1 + WRITERS * INCREMENTS
    assert sum(conflicts) > 0  # the tasks really interleaved between read and write


async def test_the_same_tasks_without_expected_version_lose_increments(
    async_store: AsyncPipelineStateStore,
) -> None:
    """Control: the workload above races; without the compare-and-set it ends short."""
    await make_run(async_store)

    async def increment_blindly() -> None:
        for _ in range(INCREMENTS):
            current = await async_store.require("r1", include_events=False)
            await async_store.update("r1", {"costUsd": current.cost_usd + 1})

    await asyncio.gather(*(increment_blindly() for _ in range(WRITERS)))

    run = await async_store.require("r1", include_events=False)
    assert run.version == 1 + WRITERS * INCREMENTS  # every write was applied ...
    assert run.cost_usd < WRITERS * INCREMENTS  # ... over each other's sums


async def test_thirty_tasks_racing_create_or_get_with_one_idempotency_key_create_exactly_one_run(
    async_store: AsyncPipelineStateStore,
) -> None:
    # One request first: a fresh asyncio cluster client fails a burst of first requests
    # (test_async_cluster_client.py); this test races the store's writes, not that.
    assert await async_store.get("warm-up") is None
    start = asyncio.Event()

    async def create(index: int) -> tuple[str, bool]:
        await start.wait()
        run, created = await async_store.create_or_get(
            {"runId": f"run-{index}", "pipelineId": "p", "idempotencyKey": "k"}
        )
        return run.run_id, created

    tasks = [asyncio.create_task(create(i)) for i in range(CREATORS)]
    await asyncio.sleep(0.01)  # every task waits at the start line
    start.set()
    outcomes = await asyncio.gather(*tasks)

    winners = [run_id for run_id, created in outcomes if created]
    assert len(winners) == 1
    winner = winners[0]
    assert {run_id for run_id, _ in outcomes} == {winner}  # the losers got the key's holder
    assert [run.run_id for run in await async_store.list_runs(idempotency_key="k")] == [winner]
    for index in range(CREATORS):
        if f"run-{index}" != winner:
            assert await async_store.get(f"run-{index}") is None
    assert [event.kind for event in await async_store.list_events(winner)] == ["run-created"]
