"""The asyncio lock: ``async with store.lock(...)``, its renew task, ``with_lock`` and exclusion.

What the sync contract suite cannot see through its blocking view: the renewer is a task on the
caller's loop (kept alive while the body awaits, cancelled when the block exits however it exits,
starved when the body blocks the loop), ``with_lock`` awaits a coroutine function inside the lock,
and the lock excludes tasks of one loop from each other.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aio_support import (
    AIO_REDIS_BACKENDS,
    AsyncStoreFactory,
    assert_lock_is_free,
    assert_lock_is_held,
    make_run,
    renew_tasks,
)

from mpstate import LockNotOwnedError, PipelineRun, StaleFenceError
from mpstate.aio import AsyncPipelineStateStore

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

#: A lock TTL the tests outlive quickly (expiry tests).
TTL_S = 0.3
#: The TTL of locks that must stay held by renewal: renewing at a third of it leaves 0.5 s for a
#: renewal's round trip, which a loaded 2-core machine needs (0.2 s did not always suffice).
RENEW_TTL_S = 0.75
#: How long those bodies await between checks: 0.8 TTL, so a block exits between two renewals
#: (every TTL / 3) rather than as one starts (see the last test of this module).
HOLD_STEP_S = 0.6
#: How long a block may take to exit after its body ended before it counts as hung: a hung block
#: never exits; under xdist on a loaded 2-core machine a whole round of blocks was once seen 2 s
#: late together (the process was not scheduled), so 2 s did not always suffice.
EXIT_WITHIN_S = 10.0


async def test_auto_renew_keeps_the_lock_for_several_ttls_while_the_body_awaits(
    make_async_store: AsyncStoreFactory,
) -> None:
    store = make_async_store(lock_ttl_seconds=RENEW_TTL_S)
    await make_run(store)
    started = time.monotonic()
    async with store.lock("r1", auto_renew=True) as held:
        for _ in range(3):
            await asyncio.sleep(HOLD_STEP_S)
            await assert_lock_is_held(store)
        assert time.monotonic() - started >= 2 * RENEW_TTL_S
        run = await store.update("r1", {"error": "still mine"}, fence=held.fence)
        assert run.version == 2
    await assert_lock_is_free(store)


async def test_without_auto_renew_the_lock_is_free_after_its_ttl_and_exit_raises_lock_not_owned(
    make_async_store: AsyncStoreFactory,
) -> None:
    store = make_async_store(lock_ttl_seconds=TTL_S)
    await make_run(store)
    with pytest.raises(LockNotOwnedError):
        async with store.lock("r1"):
            await asyncio.sleep(TTL_S * 2)
            await assert_lock_is_free(store)


async def test_the_renew_task_runs_only_while_the_block_runs(
    make_async_store: AsyncStoreFactory,
) -> None:
    store = make_async_store(lock_ttl_seconds=TTL_S)
    await make_run(store)
    assert renew_tasks() == set()
    async with store.lock("r1", auto_renew=True):
        renewers = renew_tasks()
        assert len(renewers) == 1
    assert all(task.done() for task in renewers)
    assert renew_tasks() == set()
    await assert_lock_is_free(store)
    # Nothing renews a lock without auto_renew.
    async with store.lock("r1"):
        assert renew_tasks() == set()


async def test_the_renew_task_is_cancelled_and_the_lock_released_when_the_body_raises(
    make_async_store: AsyncStoreFactory,
) -> None:
    store = make_async_store(lock_ttl_seconds=TTL_S)
    await make_run(store)
    with pytest.raises(RuntimeError, match="boom"):
        async with store.lock("r1", auto_renew=True):
            renewers = renew_tasks()
            await asyncio.sleep(TTL_S / 2)
            raise RuntimeError("boom")
    assert len(renewers) == 1 and all(task.done() for task in renewers)
    await assert_lock_is_free(store)


async def test_cancelling_the_holding_task_cancels_the_renewer_and_releases_the_lock(
    make_async_store: AsyncStoreFactory,
) -> None:
    store = make_async_store(lock_ttl_seconds=RENEW_TTL_S)
    await make_run(store)
    entered = asyncio.Event()
    renewers: set[asyncio.Task[object]] = set()

    async def hold_forever() -> None:
        async with store.lock("r1", auto_renew=True):
            renewers.update(renew_tasks())
            entered.set()
            await asyncio.sleep(3600)

    holder = asyncio.create_task(hold_forever())
    await asyncio.wait_for(entered.wait(), 10)
    await asyncio.sleep(RENEW_TTL_S * 1.5)  # renewed meanwhile
    await assert_lock_is_held(store)
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert len(renewers) == 1 and all(task.done() for task in renewers)
    await assert_lock_is_free(store)


async def test_a_body_that_blocks_the_loop_past_the_ttl_loses_the_lock_and_exit_raises_lock_not_owned(  # noqa: E501
    make_async_store: AsyncStoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The renewer is a task: a body that blocks the loop (a sync sleep, CPU work) starves it."""
    store = make_async_store(lock_ttl_seconds=0.2)
    await make_run(store)
    caplog.set_level(logging.ERROR, logger="mpstate.store")
    with pytest.raises(LockNotOwnedError):
        async with store.lock("r1", auto_renew=True) as first:
            renewers = renew_tasks()
            time.sleep(0.5)  # blocks the event loop: the renewer cannot run
            async with store.lock("r1", timeout_ms=0) as second:  # the lock was free
                assert second.fence > first.fence
                with pytest.raises(StaleFenceError):
                    await store.update("r1", {"error": "stale"}, fence=first.fence)
                await asyncio.sleep(0.1)  # the renewer runs, finds the lock gone and stops
    assert len(renewers) == 1 and all(task.done() for task in renewers)
    assert any("stopped renewing" in record.getMessage() for record in caplog.records)
    await assert_lock_is_free(store)


async def test_with_lock_awaits_a_coroutine_function_while_holding_the_lock(
    async_store: AsyncPipelineStateStore,
) -> None:
    await make_run(async_store)
    seen: list[PipelineRun] = []

    async def body(run: PipelineRun) -> int:
        seen.append(run)
        await asyncio.sleep(0.05)
        await assert_lock_is_held(async_store)  # still held after the body awaited
        return run.version

    assert await async_store.with_lock("r1", body) == 1
    assert [run.run_id for run in seen] == ["r1"]
    await assert_lock_is_free(async_store)


async def test_with_lock_returns_what_a_plain_function_returns(
    async_store: AsyncPipelineStateStore,
) -> None:
    await make_run(async_store)
    assert await async_store.with_lock("r1", lambda run: (run.run_id, run.version)) == ("r1", 1)
    await assert_lock_is_free(async_store)


async def test_with_lock_releases_the_lock_when_the_coroutine_function_raises(
    async_store: AsyncPipelineStateStore,
) -> None:
    await make_run(async_store)

    async def body(run: PipelineRun) -> None:
        await asyncio.sleep(0)
        raise KeyError(run.run_id)

    with pytest.raises(KeyError):
        await async_store.with_lock("r1", body)
    await assert_lock_is_free(async_store)


TASKS = 20
ROUNDS = 3


async def test_the_lock_admits_one_task_at_a_time_among_many_tasks_on_one_loop(
    make_async_store: AsyncStoreFactory,
) -> None:
    store = make_async_store(lock_poll_interval_ms=20)
    await make_run(store)
    counter = 0
    inside = 0
    most_inside = 0
    fences: list[int] = []

    async def worker() -> None:
        nonlocal counter, inside, most_inside
        for _ in range(ROUNDS):
            async with store.lock("r1", timeout_ms=30_000) as held:
                inside += 1
                most_inside = max(most_inside, inside)
                fences.append(held.fence)
                seen = counter
                await asyncio.sleep(0.001)
                step = (await store.require("r1", include_events=False)).current_step_index
                await store.update("r1", {"currentStepIndex": step + 1}, fence=held.fence)
                await asyncio.sleep(0)
                counter = seen + 1
                inside -= 1

    await asyncio.gather(*(worker() for _ in range(TASKS)))

    assert most_inside == 1
    assert counter == TASKS * ROUNDS
    run = await store.require("r1", include_events=False)
    assert run.current_step_index == TASKS * ROUNDS
    assert fences == sorted(fences) and len(set(fences)) == TASKS * ROUNDS


async def test_without_the_lock_the_same_tasks_overlap_and_lose_increments() -> None:
    """Control: the awaits in the workload above really let the tasks interleave."""
    counter = 0

    async def worker() -> None:
        nonlocal counter
        for _ in range(ROUNDS):
            seen = counter
            await asyncio.sleep(0.001)
            counter = seen + 1

    await asyncio.gather(*(worker() for _ in range(TASKS)))
    assert counter < TASKS * ROUNDS


@pytest.mark.parametrize("aio_backend", AIO_REDIS_BACKENDS, indirect=True)
async def test_every_auto_renewed_block_exits_even_when_it_ends_as_a_renewal_is_being_sent(
    make_async_store: AsyncStoreFactory,
) -> None:
    """Many short blocks on 8 runs at once, each lock renewed every 10 ms: some blocks end while
    their renewal is in flight. A block that has not exited ``EXIT_WITHIN_S`` after its body
    ended hangs."""
    store = make_async_store(lock_ttl_seconds=0.03)
    runs = [f"r{i}" for i in range(8)]
    for run_id in runs:
        await make_run(store, run_id)
    deadline = time.monotonic() + 30
    hung: list[str] = []

    async def hold(run_id: str, pause: float) -> None:
        async with store.lock(run_id, auto_renew=True, timeout_ms=5000):
            await asyncio.sleep(pause)

    async def rescue(holder: asyncio.Task[None]) -> None:
        """Cancel the renewers again (they now wait in asyncio.sleep, where a cancel lands), so
        the hung block releases its lock and ends instead of outliving the test."""
        give_up = time.monotonic() + 10
        while not holder.done() and time.monotonic() < give_up:
            for task in renew_tasks():
                task.cancel()
            await asyncio.sleep(0.05)

    async def blocks_on(run_id: str) -> None:
        rounds = 0
        while not hung and rounds < 1000 and time.monotonic() < deadline:
            rounds += 1
            holder = asyncio.create_task(hold(run_id, (rounds % 13) / 1000))
            done, _ = await asyncio.wait({holder}, timeout=EXIT_WITHIN_S)
            if not done:
                hung.append(f"{run_id}, block {rounds}")
                await rescue(holder)
                return
            # A 30 ms TTL is sometimes lost under load; that is not what this test is about.
            error = holder.exception()
            if error is not None and not isinstance(error, LockNotOwnedError):
                raise error

    await asyncio.gather(*(blocks_on(run_id) for run_id in runs))
    assert not hung, (
        f"blocks that did not exit within {EXIT_WITHIN_S} s (their renewer outlived them): {hung}"
    )
