"""Run the sync contract suite against the asyncio stores: a blocking view of an async store.

``BlockingView(async_store)`` has the sync store's API; each call runs the async store's
coroutine on one event loop in a background thread and waits for it (many test threads may call
at once, as the concurrency tests do). Only the tests use it: asyncio code awaits the store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from mpstate.aio import AsyncHeldLock, AsyncPipelineStateStore
from mpstate.errors import InvalidInputError

T = TypeVar("T")

_PASSTHROUGH = (
    "create",
    "create_or_get",
    "get",
    "require",
    "list_events",
    "last_event",
    "list_runs",
    "find_by_external_job_id",
    "find_job_providers",
    "update",
    "commit",
    "cancel",
    "append_event",
    "claim_delivery",
    "release_delivery",
    "record_unmatched",
    "list_unmatched",
    "count_by_status",
    "count_unmatched",
)


class EventLoopThread:
    """One event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class BlockingLock:
    """The sync ``HeldLock`` API over an ``AsyncHeldLock``."""

    def __init__(self, held: AsyncHeldLock, loop: EventLoopThread) -> None:
        self._held = held
        self._loop = loop
        self.run_id, self.token, self.fence, self.run = (
            held.run_id,
            held.token,
            held.fence,
            held.run,
        )

    def extend(self, ttl_ms: int | None = None) -> None:
        self._loop.run(self._held.extend(ttl_ms))


class BlockingView:
    """The sync store API over an ``AsyncPipelineStateStore`` (for the shared contract suite)."""

    def __init__(self, store: AsyncPipelineStateStore, loop: EventLoopThread) -> None:
        self.async_store = store
        self._loop = loop

    @property
    def options(self) -> Any:
        return self.async_store.options

    @property
    def tenant_id(self) -> str | None:
        return self.async_store.tenant_id

    @property
    def keys(self) -> Any:
        store: Any = self.async_store  # the Redis stores' key builder
        return store.keys

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` on the view's event loop (to race tasks on the async store)."""
        return self._loop.run(coroutine)

    def for_tenant(self, tenant_id: str) -> BlockingView:
        return BlockingView(self.async_store.for_tenant(tenant_id), self._loop)

    def __getattr__(self, name: str) -> Any:
        if name not in _PASSTHROUGH:
            raise AttributeError(name)
        method = getattr(self.async_store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(method(*args, **kwargs))

        return call

    def follow_events(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        feed: AsyncIterator[Any] = self.async_store.follow_events(*args, **kwargs)
        while True:
            try:
                yield self._loop.run(_next(feed))
            except StopAsyncIteration:
                return

    def with_lock(self, run_id: str, fn: Callable[[Any], T], timeout_ms: int | None = None) -> T:
        """The lock is the async store's; ``fn`` runs in the caller's thread (it may call the
        view, which would deadlock inside the event loop). tests/aio cover the async one."""
        if not callable(fn):
            raise InvalidInputError("fn must be callable")
        with self.lock(run_id, timeout_ms=timeout_ms) as held:
            return fn(held.run)

    @contextmanager
    def lock(self, *args: Any, **kwargs: Any) -> Iterator[BlockingLock]:
        manager = self.async_store.lock(*args, **kwargs)
        held = self._loop.run(manager.__aenter__())
        try:
            yield BlockingLock(held, self._loop)
        except BaseException as exc:
            if not self._loop.run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._loop.run(manager.__aexit__(None, None, None))


async def _next(feed: AsyncIterator[T]) -> T:
    return await feed.__anext__()
