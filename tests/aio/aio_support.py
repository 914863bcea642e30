"""Helpers for the asyncio tests: the backends, a ticker showing the loop is free, lock checks."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from types import TracebackType

import pytest

from mpstate import LockTimeoutError
from mpstate.aio import AsyncPipelineStateStore

#: The asyncio stores: in process memory, on the suite's redis-server, on a local Redis Cluster
#: (skipped unless MPSTATE_TEST_CLUSTER is set).
AIO_BACKENDS = ("aio-memory", "aio-redis", "aio-cluster")
#: The asyncio stores on a real Redis: only they do real I/O, so only their tasks interleave.
AIO_REDIS_BACKENDS = ("aio-redis", "aio-cluster")

#: Builds an asyncio store of the test's backend (the ``make_async_store`` fixture).
AsyncStoreFactory = Callable[..., AsyncPipelineStateStore]

#: How often the ticker ticks, in seconds.
TICK_S = 0.01
#: Longest gap between two ticks that still counts as "the loop kept running": a loop blocked by
#: one backend wait (up to a second for follow_events) would show a gap of the whole wait.
MAX_TICK_GAP_S = 0.4


class Ticker:
    """A task that records a timestamp every ``TICK_S`` while the event loop is free.

    ``async with Ticker() as ticker`` runs it for the block; ``ticks_between(start, end)`` and
    ``longest_gap(start, end)`` then tell what the loop did meanwhile.
    """

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.stamps.append(time.monotonic())
            await asyncio.sleep(TICK_S)

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)  # let it record its first stamp
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def ticks_between(self, start: float, end: float) -> int:
        return sum(1 for stamp in self.stamps if start <= stamp <= end)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in ``[start, end]`` the ticker did not tick."""
        points = [start, *(s for s in self.stamps if start < s < end), end]
        return max(later - earlier for earlier, later in itertools.pairwise(points))


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Await (not block) until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def make_run(store: AsyncPipelineStateStore, run_id: str = "r1") -> None:
    await store.create({"runId": run_id, "pipelineId": "p"})


async def assert_lock_is_held(store: AsyncPipelineStateStore, run_id: str = "r1") -> None:
    with pytest.raises(LockTimeoutError):
        async with store.lock(run_id, timeout_ms=0):
            pass


async def assert_lock_is_free(store: AsyncPipelineStateStore, run_id: str = "r1") -> None:
    async with store.lock(run_id, timeout_ms=0):
        pass


def renew_tasks() -> set[asyncio.Task[object]]:
    """The lock renewers (``mpstate.aio.store._renew``) alive on the running loop."""
    return {
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "_renew" and not task.done()
    }
