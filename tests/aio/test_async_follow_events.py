"""``follow_events`` as an async iterator: live, over at the terminal event or at ``timeout_s``,
and never blocking the event loop it runs on.

A ticker task records a timestamp every 10 ms; a feed that blocked the loop during one of its
backend waits (up to a second) would leave a gap of the whole wait in the ticks.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aio_support import MAX_TICK_GAP_S, Ticker, make_run, wait_until

from mpstate import PipelineEvent, RunCompleted, RunStarted, StepProgress
from mpstate.aio import AsyncPipelineStateStore

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

#: Longest a feed with ``timeout_s=0.5`` may run before its test fails, in seconds.
FEED_DEADLINE_S = 30.0

#: How long the producer leaves the feed without events, so the feed waits on the backend.
QUIET_S = 0.6


class Follower:
    """A task following one run; records each event and when it arrived."""

    def __init__(self, store: AsyncPipelineStateStore, run_id: str, **options: object) -> None:
        self.seen: list[tuple[PipelineEvent, float]] = []
        self.task = asyncio.create_task(self._follow(store, run_id, options))

    async def _follow(
        self, store: AsyncPipelineStateStore, run_id: str, options: dict[str, object]
    ) -> None:
        async for event in store.follow_events(run_id, **options):  # type: ignore[arg-type]
            self.seen.append((event, time.monotonic()))

    def seqs(self) -> list[int]:
        return [event.seq for event, _ in self.seen]


async def test_a_follower_task_gets_each_event_live_while_other_tasks_keep_running(
    async_store: AsyncPipelineStateStore,
) -> None:
    await make_run(async_store)
    async with Ticker() as ticker:
        follower = Follower(async_store, "r1", since_seq=1, timeout_s=30)
        await asyncio.sleep(0.05)  # the follower has replayed (nothing) and waits
        appended_at = [time.monotonic()]
        await async_store.append_event("r1", RunStarted(run_id="r1"))
        await wait_until(lambda: len(follower.seen) == 1)

        quiet_from = time.monotonic()
        await asyncio.sleep(QUIET_S)  # the feed waits on the backend meanwhile
        quiet_to = time.monotonic()

        for count, pct in enumerate((10, 60, 100), start=2):
            appended_at.append(time.monotonic())
            await async_store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=pct))
            await wait_until(lambda count=count: len(follower.seen) == count)
        appended_at.append(time.monotonic())
        await async_store.append_event("r1", RunCompleted(run_id="r1", total_cost_usd=0))
        await asyncio.wait_for(follower.task, 10)  # the feed ends at the terminal event

    assert follower.seqs() == [2, 3, 4, 5, 6]
    assert follower.seen[-1][0].kind == "run-completed"
    # Each event arrived promptly (the feed wakes on an append) ...
    for (_, arrived), appended in zip(follower.seen, appended_at, strict=True):
        assert arrived - appended < 1.0
    # ... and the loop kept serving the ticker while the feed waited.
    assert ticker.longest_gap(quiet_from, quiet_to) < MAX_TICK_GAP_S
    assert ticker.ticks_between(quiet_from, quiet_to) >= 10


async def test_a_quiet_follow_ends_at_its_timeout_without_blocking_the_loop(
    async_store: AsyncPipelineStateStore,
) -> None:
    await make_run(async_store)
    timeout_s = 1.5  # longer than one backend wait (1 s), so the feed waits at least twice
    async with Ticker() as ticker:
        started = time.monotonic()
        events = [e async for e in async_store.follow_events("r1", timeout_s=timeout_s)]
        ended = time.monotonic()

    assert [event.kind for event in events] == ["run-created"]
    assert timeout_s - 0.05 <= ended - started < timeout_s + 1.0
    assert ticker.longest_gap(started, ended) < MAX_TICK_GAP_S
    assert ticker.ticks_between(started, ended) >= 30


async def test_many_followers_on_one_loop_all_get_every_event_and_end_together(
    async_store: AsyncPipelineStateStore,
) -> None:
    """Ten feeds waiting at once (ten Redis connections blocked in XREAD, or ten worker threads
    for the in-memory store) still leave the loop free and all wake on each append."""
    await make_run(async_store)
    async with Ticker() as ticker:
        followers = [Follower(async_store, "r1", timeout_s=30) for _ in range(10)]
        await wait_until(lambda: all(len(f.seen) == 1 for f in followers))
        quiet_from = time.monotonic()
        await asyncio.sleep(QUIET_S)
        quiet_to = time.monotonic()
        await async_store.append_event("r1", RunStarted(run_id="r1"))
        await async_store.append_event("r1", RunCompleted(run_id="r1", total_cost_usd=0))
        completed_at = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(f.task for f in followers)), 10)

    for follower in followers:
        assert follower.seqs() == [1, 2, 3]
        assert follower.seen[-1][1] - completed_at < 1.5
    assert ticker.longest_gap(quiet_from, quiet_to) < MAX_TICK_GAP_S


async def test_a_follow_ends_at_its_timeout_even_while_events_keep_coming(
    async_store: AsyncPipelineStateStore,
) -> None:
    await make_run(async_store)

    async def produce() -> None:
        while True:
            await async_store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=1))
            await asyncio.sleep(0.02)

    producer = asyncio.create_task(produce())
    try:
        started = time.monotonic()
        # A feed that does not end fails here, where the producer is still cancelled below: past
        # pytest-timeout it would run on in the teardown's loop, and the teardown never end.
        async with asyncio.timeout(FEED_DEADLINE_S):
            seen = [event async for event in async_store.follow_events("r1", timeout_s=0.5)]
        elapsed = time.monotonic() - started
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)

    assert 0.45 <= elapsed < 1.5
    assert len(seen) > 5
    assert [event.seq for event in seen] == list(range(1, len(seen) + 1))


async def test_cancelling_a_follower_mid_wait_leaves_the_store_answering_correctly(
    async_store: AsyncPipelineStateStore,
) -> None:
    """A task cancelled while its feed waits in XREAD BLOCK must not leave that reply pending on
    a pooled connection for the next command to read."""
    await make_run(async_store)
    for _ in range(5):
        follower = Follower(async_store, "r1", since_seq=1, timeout_s=30)
        await asyncio.sleep(0.1)  # the feed is in its backend wait
        follower.task.cancel()
        await asyncio.gather(follower.task, return_exceptions=True)
        assert follower.task.cancelled()
        for _ in range(20):
            run = await async_store.require("r1", include_events=False)
            assert run.run_id == "r1" and run.version == 1
            assert [e.kind for e in await async_store.list_events("r1")] == ["run-created"]

    # A new feed still works: it sees an event appended after the cancellations.
    follower = Follower(async_store, "r1", since_seq=1, timeout_s=30)
    await async_store.append_event("r1", RunCompleted(run_id="r1", total_cost_usd=0))
    await asyncio.wait_for(follower.task, 10)
    assert follower.seqs() == [2]


async def test_breaking_out_of_a_feed_and_closing_it_stops_it(
    async_store: AsyncPipelineStateStore,
) -> None:
    await make_run(async_store)
    await async_store.append_event("r1", RunStarted(run_id="r1"))
    feed = async_store.follow_events("r1", timeout_s=30)
    async for event in feed:
        assert event.seq == 1
        break
    await feed.aclose()  # type: ignore[attr-defined]
    with pytest.raises(StopAsyncIteration):
        await feed.__anext__()
