"""The asyncio and sync Redis stores on one Redis (or Cluster) and prefix are one store.

Same keys, Lua scripts and encoding: a run created, updated, locked or followed through either
is seen the same way through the other, with the same versions, events and fences.
"""

from __future__ import annotations

import asyncio

import pytest
from aio_support import AIO_REDIS_BACKENDS, assert_lock_is_free, assert_lock_is_held

from mpstate import (
    LockTimeoutError,
    PipelineStateStore,
    RunCompleted,
    RunStarted,
    StepProgress,
    VersionConflictError,
)
from mpstate.aio import AsyncPipelineStateStore

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.parametrize("aio_backend", AIO_REDIS_BACKENDS, indirect=True),
]


def dumped(run: object) -> object:
    """A run as stored, for comparing what the two stores return."""
    return run.model_dump(mode="json")  # type: ignore[attr-defined]


async def test_a_run_created_by_the_async_store_is_read_updated_and_listed_by_the_sync_store(
    async_store: AsyncPipelineStateStore, sync_store: PipelineStateStore
) -> None:
    created = await async_store.create({"runId": "r1", "pipelineId": "p", "tenantId": "acme"})
    await async_store.append_event("r1", RunStarted(run_id="r1"))

    read = sync_store.require("r1")
    assert dumped(read) == dumped(await async_store.require("r1"))
    assert read.version == created.version == 1
    assert [event.kind for event in read.events] == ["run-created", "run-started"]

    updated = sync_store.update("r1", {"status": "running", "costUsd": 1.5}, expected_version=1)
    assert updated.version == 2
    seen = await async_store.require("r1", include_events=False)
    assert (seen.version, seen.status, seen.cost_usd) == (2, "running", 1.5)
    with pytest.raises(VersionConflictError):
        await async_store.update("r1", {"costUsd": 9}, expected_version=1)

    assert [run.run_id for run in sync_store.list_runs(status="running")] == ["r1"]
    assert [run.run_id for run in sync_store.for_tenant("acme").list_runs()] == ["r1"]
    assert sync_store.list_runs(status="pending") == []


async def test_a_run_created_by_the_sync_store_is_read_updated_and_listed_by_the_async_store(
    async_store: AsyncPipelineStateStore, sync_store: PipelineStateStore
) -> None:
    sync_store.create({"runId": "r1", "pipelineId": "p", "idempotencyKey": "k"})
    sync_store.commit(
        "r1",
        {"externalJobIds": {"provider": "job-1"}},
        [StepProgress(run_id="r1", step_id="s", pct=40)],
    )

    read = await async_store.require("r1")
    assert dumped(read) == dumped(sync_store.require("r1"))
    assert read.version == 2
    assert [event.seq for event in read.events] == [1, 2]

    result = await async_store.commit(
        "r1", {"costUsd": 2}, [RunStarted(run_id="r1")], expected_version=2
    )
    assert result.seqs == (3,)
    assert sync_store.require("r1", include_events=False).version == 3
    assert [e.kind for e in sync_store.list_events("r1", since_seq=2)] == ["run-started"]

    found = await async_store.find_by_external_job_id("provider", "job-1")
    assert found is not None and found.run_id == "r1"
    assert [run.run_id for run in await async_store.list_runs(idempotency_key="k")] == ["r1"]
    # The idempotency key taken through one store is held against the other.
    run, created = await async_store.create_or_get(
        {"runId": "r2", "pipelineId": "p", "idempotencyKey": "k"}
    )
    assert (run.run_id, created) == ("r1", False)


async def test_events_appended_in_turn_by_both_stores_form_one_log(
    async_store: AsyncPipelineStateStore, sync_store: PipelineStateStore
) -> None:
    await async_store.create({"runId": "r1", "pipelineId": "p"})
    for pct in range(10):
        store_seq = (
            await async_store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=pct))
            if pct % 2
            else sync_store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=pct))
        )
        assert store_seq == pct + 2

    from_async = await async_store.list_events("r1")
    from_sync = sync_store.list_events("r1")
    assert [dumped(e) for e in from_async] == [dumped(e) for e in from_sync]
    assert [e.seq for e in from_async] == list(range(1, 12))


async def test_the_lock_is_one_lock_for_both_stores_with_one_sequence_of_fences(
    async_store: AsyncPipelineStateStore, sync_store: PipelineStateStore
) -> None:
    await async_store.create({"runId": "r1", "pipelineId": "p"})
    with sync_store.lock("r1") as sync_held:
        await assert_lock_is_held(async_store)
    async with async_store.lock("r1") as async_held:
        assert async_held.fence > sync_held.fence
        with pytest.raises(LockTimeoutError), sync_store.lock("r1", timeout_ms=0):
            pass
    assert sync_store.with_lock("r1", lambda run: run.run_id) == "r1"
    await assert_lock_is_free(async_store)


async def test_an_async_waiter_gets_the_lock_promptly_when_a_sync_holder_in_a_thread_releases_it(
    async_store: AsyncPipelineStateStore, sync_store: PipelineStateStore
) -> None:
    await async_store.create({"runId": "r1", "pipelineId": "p"})
    taken, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold() -> None:
        with sync_store.lock("r1"):
            loop.call_soon_threadsafe(taken.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)

    holder = asyncio.create_task(asyncio.to_thread(hold))
    await asyncio.wait_for(taken.wait(), 10)
    waiter = asyncio.create_task(async_store.with_lock("r1", lambda run: run.version, 10_000))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    release.set()
    assert await asyncio.wait_for(waiter, 2) == 1
    await holder


async def test_an_async_follower_gets_events_appended_by_the_sync_store_live(
    async_store: AsyncPipelineStateStore, sync_store: PipelineStateStore
) -> None:
    sync_store.create({"runId": "r1", "pipelineId": "p"})
    seen: list[int] = []

    async def follow() -> None:
        async for event in async_store.follow_events("r1", since_seq=1, timeout_s=30):
            seen.append(event.seq)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    await asyncio.to_thread(sync_store.append_event, "r1", RunStarted(run_id="r1"))
    await asyncio.to_thread(
        sync_store.append_event, "r1", RunCompleted(run_id="r1", total_cost_usd=0)
    )
    await asyncio.wait_for(follower, 5)
    assert seen == [2, 3]


async def test_a_run_cancelled_by_the_async_store_is_cancelled_for_the_sync_store(
    async_store: AsyncPipelineStateStore, sync_store: PipelineStateStore
) -> None:
    sync_store.create({"runId": "r1", "pipelineId": "p"})
    cancelled = await async_store.cancel("r1", "operator asked")
    run = sync_store.require("r1")
    assert dumped(run) == dumped(await async_store.require("r1"))
    assert (run.status, run.error) == ("cancelled", "operator asked")
    assert run.version == cancelled.version
    assert run.events[-1].kind == "run-cancelled"
    # The sync feed ends at the cancellation the async store logged.
    assert [e.kind for e in sync_store.follow_events("r1", timeout_s=5)][-1] == "run-cancelled"
