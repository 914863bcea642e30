"""``AsyncPipelineStateStore``: the store contract's asyncio API.

The same backends and plans as the sync store (``mpstate.core.StoreCore``), driven by an asyncio
executor (``mpstate.plans.AsyncExecutor``). What differs is only what asyncio callers need: the
lock as an async context manager renewed by a task, and the live feed as an async iterator.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from mpstate.changes import CommitResult
from mpstate.core import FollowCursor
from mpstate.deliveries import UnmatchedCallback
from mpstate.errors import InvalidInputError, LockNotOwnedError
from mpstate.events import PipelineEvent
from mpstate.filters import RunFilter
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.patches import ValidPatch
from mpstate.plans import AsyncExecutor, Plan, drive_async
from mpstate.shell import StoreShell

__all__ = ["AsyncHeldLock", "AsyncPipelineStateStore"]

log = logging.getLogger("mpstate.store")

T = TypeVar("T")


@dataclass(slots=True)
class AsyncHeldLock:
    """A granted run lock. Pass ``fence`` to writes made under it so a stale holder is refused."""

    run_id: str
    token: str
    fence: int
    run: PipelineRun
    #: The store's ``(run_id, token, ttl_ms) -> still held``.
    _extend: Callable[[str, str, int | None], Awaitable[bool]] = field(repr=False)

    async def extend(self, ttl_ms: int | None = None) -> None:
        """Reset the lock's time to live; ``LockNotOwnedError`` if it was lost meanwhile."""
        if not await self._extend(self.run_id, self.token, ttl_ms):
            raise LockNotOwnedError(self.run_id)


class AsyncPipelineStateStore(StoreShell[AsyncExecutor]):
    """The store contract for asyncio; every method is the sync store's, awaited.

    A backend's plans carried out by an ``AsyncExecutor``; see ``PipelineStateStore``.
    """

    async def aclose(self) -> None:
        """Close the store's connections (a store in memory has none)."""
        await self._executor.aclose()

    def reset_connections(self) -> None:
        """See ``PipelineStateStore.reset_connections`` (no I/O, so not a coroutine)."""
        self._executor.reset_connections()

    async def _drive(self, plan: Plan[T]) -> T:
        return await drive_async(plan, self._executor)

    async def _extend(self, run_id: str, token: str, ttl_ms: int | None) -> bool:
        return await self._drive(self._backend._plan_extend(run_id, token, ttl_ms))

    async def create(
        self,
        run: PipelineRun | Mapping[str, Any],
        *,
        events: Sequence[PipelineEvent | Mapping[str, Any]] = (),
    ) -> PipelineRun:
        """See ``PipelineStateStore.create``."""
        plan = self._backend._plan_create(run, return_existing=False, events=events)
        stored, _ = await self._drive(plan)
        return stored

    async def create_or_get(
        self,
        run: PipelineRun | Mapping[str, Any],
        *,
        events: Sequence[PipelineEvent | Mapping[str, Any]] = (),
    ) -> tuple[PipelineRun, bool]:
        """See ``PipelineStateStore.create_or_get``."""
        plan = self._backend._plan_create(run, return_existing=True, events=events)
        return await self._drive(plan)

    async def get(self, run_id: str, *, include_events: bool = True) -> PipelineRun | None:
        """See ``PipelineStateStore.get``."""
        return await self._drive(self._backend._plan_get(run_id, include_events))

    async def require(self, run_id: str, *, include_events: bool = True) -> PipelineRun:
        """See ``PipelineStateStore.require``."""
        return await self._drive(self._backend._plan_require(run_id, include_events))

    async def list_events(
        self, run_id: str, since_seq: int = 0, limit: int | None = None
    ) -> list[PipelineEvent]:
        """See ``PipelineStateStore.list_events``."""
        return await self._drive(self._backend._plan_list_events(run_id, since_seq, limit))

    async def last_event(self, run_id: str) -> PipelineEvent | None:
        """See ``PipelineStateStore.last_event``."""
        return await self._drive(self._backend._plan_last_event(run_id))

    async def follow_events(
        self, run_id: str, since_seq: int = 0, *, timeout_s: float | None = None
    ) -> AsyncIterator[PipelineEvent]:
        """See ``PipelineStateStore.follow_events``; an async iterator."""
        cursor = FollowCursor(self._backend, run_id, since_seq, timeout_s)
        while (plan := cursor.next_plan()) is not None:
            for event in cursor.emit(await self._drive(plan)):
                yield event

    async def list_runs(
        self, filter: RunFilter | Mapping[str, Any] | None = None, **fields: Any
    ) -> list[PipelineRun]:
        """See ``PipelineStateStore.list_runs``."""
        return await self._drive(self._backend._plan_list_runs(filter, fields))

    async def find_by_external_job_id(self, provider: str, job_id: str) -> PipelineRun | None:
        """See ``PipelineStateStore.find_by_external_job_id``."""
        return await self._drive(self._backend._plan_find_job(provider, job_id))

    async def find_job_providers(self, job_id: str) -> list[str]:
        """See ``PipelineStateStore.find_job_providers``."""
        return await self._drive(self._backend._plan_find_job_providers(job_id))

    async def update(
        self,
        run_id: str,
        patch: Mapping[str, Any] | BaseModel,
        expected_version: int | None = None,
        *,
        fence: int | None = None,
    ) -> PipelineRun:
        """See ``PipelineStateStore.update``."""
        result = await self.commit(run_id, patch, expected_version=expected_version, fence=fence)
        return result.run

    async def commit(
        self,
        run_id: str,
        patch: Mapping[str, Any] | BaseModel | ValidPatch | None = None,
        events: Sequence[PipelineEvent | Mapping[str, Any]] = (),
        *,
        expected_version: int | None = None,
        fence: int | None = None,
        operation_id: str | None = None,
        base: PipelineRun | None = None,
    ) -> CommitResult:
        """See ``PipelineStateStore.commit``."""
        return await self._drive(
            self._backend._plan_commit(
                run_id,
                patch,
                events,
                expected_version=expected_version,
                fence=fence,
                operation_id=operation_id,
                base=base,
            )
        )

    async def cancel(self, run_id: str, reason: str, *, fence: int | None = None) -> PipelineRun:
        """See ``PipelineStateStore.cancel``."""
        return await self._drive(self._backend._plan_cancel(run_id, reason, fence))

    async def append_event(
        self, run_id: str, event: PipelineEvent | Mapping[str, Any], *, fence: int | None = None
    ) -> int:
        """See ``PipelineStateStore.append_event``."""
        return await self._drive(self._backend._plan_append_event(run_id, event, fence))

    async def claim_delivery(self, provider: str, delivery_id: str, ttl_s: float) -> bool:
        """See ``PipelineStateStore.claim_delivery``."""
        return await self._drive(self._backend._plan_claim_delivery(provider, delivery_id, ttl_s))

    async def release_delivery(self, provider: str, delivery_id: str) -> None:
        """See ``PipelineStateStore.release_delivery``."""
        await self._drive(self._backend._plan_release_delivery(provider, delivery_id))

    async def record_unmatched(self, callback: UnmatchedCallback | Mapping[str, Any]) -> None:
        """See ``PipelineStateStore.record_unmatched``."""
        await self._drive(self._backend._plan_record_unmatched(callback))

    async def list_unmatched(
        self, *, provider: str | None = None, limit: int = 100
    ) -> list[UnmatchedCallback]:
        """See ``PipelineStateStore.list_unmatched``."""
        return await self._drive(self._backend._plan_list_unmatched(provider, limit))

    async def count_by_status(self, tenant_id: str | None = None) -> dict[PipelineRunStatus, int]:
        """See ``PipelineStateStore.count_by_status``."""
        return await self._drive(self._backend._plan_count_by_status(tenant_id))

    async def count_unmatched(self) -> dict[tuple[str, str], int]:
        """See ``PipelineStateStore.count_unmatched``."""
        return await self._drive(self._backend._plan_count_unmatched())

    async def with_lock(
        self,
        run_id: str,
        fn: Callable[[PipelineRun], T | Awaitable[T]],
        timeout_ms: int | None = None,
    ) -> T:
        """Run ``fn(run)`` (a function or a coroutine function) holding the run's lock."""
        if not callable(fn):
            raise InvalidInputError("fn must be callable")
        async with self.lock(run_id, timeout_ms=timeout_ms) as held:
            result = fn(held.run)
            if inspect.isawaitable(result):
                return await result
            return result

    @asynccontextmanager
    async def lock(
        self, run_id: str, timeout_ms: int | None = None, *, auto_renew: bool = False
    ) -> AsyncIterator[AsyncHeldLock]:
        """See ``PipelineStateStore.lock``; with ``auto_renew`` a task extends the lock."""
        grant = await self._drive(self._backend._plan_acquire(run_id, timeout_ms))
        held = AsyncHeldLock(grant.run_id, grant.token, grant.fence, grant.run, self._extend)
        stop_renewing = asyncio.Event()
        renewer = (
            asyncio.create_task(_renew(held, self.options.lock_ttl_ms, stop_renewing))
            if auto_renew
            else None
        )
        body_failed = False
        try:
            yield held
        except BaseException:
            body_failed = True
            raise
        finally:
            if renewer is not None:
                # A flag as well as a cancel: on Python 3.11 a cancel that lands as an awaited
                # command finishes can be lost (asyncio.wait_for), and the renewer would go on.
                stop_renewing.set()
                renewer.cancel()
                await asyncio.wait({renewer}, timeout=self.options.lock_ttl_ms / 1000)
            released = await self._drive(self._backend._release_lock(run_id, held.token))
            if not released and not body_failed:
                raise LockNotOwnedError(run_id)
            if not released:
                log.warning("lock on run %r was lost before its holder finished", run_id)


async def _renew(held: AsyncHeldLock, ttl_ms: int, stop: asyncio.Event) -> None:
    """Extend a held lock at a third of its TTL until ``stop`` is set or the lock is lost."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), ttl_ms / 3000)
            return
        except TimeoutError:
            pass
        try:
            await held.extend(ttl_ms)
        except LockNotOwnedError:
            log.error("lock on run %r was lost; stopped renewing it", held.run_id)
            return
        except Exception:
            log.exception("renewing the lock on run %r failed; will retry", held.run_id)
