"""``PipelineStateStore``: the store contract's synchronous API.

A store is composed, as an httpx client is of a transport: a backend (``mpstate.core.StoreCore``,
whose plans hold the logic), an executor (``mpstate.plans.Executor``, the backend's sync I/O) and
the backend's ``StoreOptions``. This class drives the backend's plans with the executor and adds
what only a thread-based caller needs: the lock as a context manager with a renewing thread, and
the live event feed as an iterator. ``mpstate.aio.AsyncPipelineStateStore`` is the same contract
for asyncio.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from mpstate.changes import CommitResult
from mpstate.core import (
    MAX_EVENTS_PER_COMMIT,
    FollowCursor,
    LockAttempt,
)
from mpstate.deliveries import UnmatchedCallback
from mpstate.errors import InvalidInputError, LockNotOwnedError
from mpstate.events import PipelineEvent
from mpstate.filters import RunFilter
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.options import StoreOptions
from mpstate.patches import ValidPatch
from mpstate.plans import Executor, Plan, drive
from mpstate.shell import StoreShell

__all__ = [
    "MAX_EVENTS_PER_COMMIT",
    "HeldLock",
    "LockAttempt",
    "PipelineStateStore",
    "StoreOptions",
]

log = logging.getLogger("mpstate.store")

T = TypeVar("T")


@dataclass(slots=True)
class HeldLock:
    """A granted run lock. Pass ``fence`` to writes made under it so a stale holder is refused."""

    run_id: str
    token: str
    fence: int
    run: PipelineRun
    #: The store's ``(run_id, token, ttl_ms) -> still held``.
    _extend: Callable[[str, str, int | None], bool] = field(repr=False)

    def extend(self, ttl_ms: int | None = None) -> None:
        """Reset the lock's time to live; ``LockNotOwnedError`` if it was lost meanwhile."""
        if not self._extend(self.run_id, self.token, ttl_ms):
            raise LockNotOwnedError(self.run_id)


class PipelineStateStore(StoreShell[Executor]):
    """The store contract: a backend's plans carried out by a sync executor.

    Construct a concrete store (``InMemoryPipelineStateStore``, ``RedisPipelineStateStore``), or
    this class with a ``StoreCore`` backend and an ``Executor`` of your own; annotate with it.
    ``for_tenant`` gives a tenant-scoped view.
    """

    def close(self) -> None:
        """Close the store's connections (a store in memory has none)."""
        self._executor.close()

    def reset_connections(self) -> None:
        """Forget the pooled connections without closing them: call it in a forked child.

        A process forked after the store connected (a Celery prefork child; ``MpState`` does it
        on ``worker_process_init``) shares its parent's sockets: using them would mix both
        processes' replies, and closing them would close the parent's. The store opens new
        connections on its next request. A store without connections (in memory) has none.
        """
        self._executor.reset_connections()

    def _drive(self, plan: Plan[T]) -> T:
        return drive(plan, self._executor)

    def _extend(self, run_id: str, token: str, ttl_ms: int | None) -> bool:
        return self._drive(self._backend._plan_extend(run_id, token, ttl_ms))

    # -- creating ---------------------------------------------------------------------------

    def create(
        self,
        run: PipelineRun | Mapping[str, Any],
        *,
        events: Sequence[PipelineEvent | Mapping[str, Any]] = (),
    ) -> PipelineRun:
        """Store a new run (version 1) and log ``run-created`` as its event 1.

        ``events`` are logged after it, in the same write (seqs 2, 3, ...): a run created in a
        later state than pending with the events that took it there, e.g. already started
        (``MpState.start_run`` does this: one write instead of a create and a commit).

        Raises ``RunAlreadyExistsError`` when the run id exists and ``IdempotencyKeyInUseError``
        (naming the holder) when the run's idempotency key belongs to another live run; both are
        ``RunInProgressError``. Of concurrent creates of one id or one key, exactly one succeeds.
        """
        plan = self._backend._plan_create(run, return_existing=False, events=events)
        stored, _ = self._drive(plan)
        return stored

    def create_or_get(
        self,
        run: PipelineRun | Mapping[str, Any],
        *,
        events: Sequence[PipelineEvent | Mapping[str, Any]] = (),
    ) -> tuple[PipelineRun, bool]:
        """Like ``create``, but return ``(existing run, False)`` instead of raising (the existing
        run is returned as it is: ``events`` are logged only with a run this call creates)."""
        return self._drive(self._backend._plan_create(run, return_existing=True, events=events))

    # -- reading ----------------------------------------------------------------------------

    def get(self, run_id: str, *, include_events: bool = True) -> PipelineRun | None:
        """The run with its event log (or without, with ``include_events=False``), or None."""
        return self._drive(self._backend._plan_get(run_id, include_events))

    def require(self, run_id: str, *, include_events: bool = True) -> PipelineRun:
        """Like ``get``, but raise ``RunNotFoundError`` instead of returning None."""
        return self._drive(self._backend._plan_require(run_id, include_events))

    def list_events(
        self, run_id: str, since_seq: int = 0, limit: int | None = None
    ) -> list[PipelineEvent]:
        """Events with ``seq > since_seq`` in seq order (at most ``limit``).

        Raises ``RunNotFoundError`` for a missing run.
        """
        return self._drive(self._backend._plan_list_events(run_id, since_seq, limit))

    def last_event(self, run_id: str) -> PipelineEvent | None:
        """The run's newest event, read alone (Redis: ``XREVRANGE ... COUNT 1``), however long
        the log: what a scan for idle runs needs, without reading every run's log.

        A run's log starts with ``run-created``, so None only for a log that is empty. Raises
        ``RunNotFoundError`` for a missing run (or another tenant's, through a tenant view).
        """
        return self._drive(self._backend._plan_last_event(run_id))

    def follow_events(
        self, run_id: str, since_seq: int = 0, *, timeout_s: float | None = None
    ) -> Iterator[PipelineEvent]:
        """Events with ``seq > since_seq``, then each new one as it is appended (a live feed).

        The feed replays the log from ``since_seq`` and then blocks in the backend until an
        event is appended (Redis: ``XREAD BLOCK`` on the run's stream), so a quiet run costs one
        short read per wait, never a read of the whole log. It ends after the run's terminal
        event, or when ``timeout_s`` passes (a suspended run can wait hours for a webhook).
        Raises ``RunNotFoundError`` for a missing run, also when it expires while followed.
        """
        cursor = FollowCursor(self._backend, run_id, since_seq, timeout_s)
        while (plan := cursor.next_plan()) is not None:
            yield from cursor.emit(self._drive(plan))

    def list_runs(
        self,
        filter: RunFilter | Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> list[PipelineRun]:
        """Runs matching the filter, by ``created_at`` then ``run_id``, without their events."""
        return self._drive(self._backend._plan_list_runs(filter, fields))

    def find_by_external_job_id(self, provider: str, job_id: str) -> PipelineRun | None:
        """The run that recorded this provider job (``external_job_ids`` or the legacy field)."""
        return self._drive(self._backend._plan_find_job(provider, job_id))

    def find_job_providers(self, job_id: str) -> list[str]:
        """The providers (sorted) under which some run recorded ``job_id``, within the job TTL.

        For a callback that matched no run: a job id recorded under another provider name points
        at a misconfigured provider, not at an unknown job. Like the pointer behind
        ``find_by_external_job_id`` it is a hint (a provider can outlive its run's record of the
        job), so confirm with ``find_by_external_job_id(provider, job_id)``. A tenant view
        refuses it (``InvalidInputError``): it would reveal other tenants' jobs.
        """
        return self._drive(self._backend._plan_find_job_providers(job_id))

    # -- writing ----------------------------------------------------------------------------

    def update(
        self,
        run_id: str,
        patch: Mapping[str, Any] | BaseModel,
        expected_version: int | None = None,
        *,
        fence: int | None = None,
    ) -> PipelineRun:
        """Apply ``patch`` (run fields, either spelling), add one to the version, set updated_at.

        With ``expected_version`` it is a compare-and-set: a mismatch raises
        ``VersionConflictError`` and writes nothing. With ``fence`` (from ``lock()``) a write by a
        holder whose lock was since granted to another raises ``StaleFenceError``.
        """
        return self.commit(run_id, patch, expected_version=expected_version, fence=fence).run

    def commit(
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
        """Apply a patch and append events as one atomic write: both happen or neither.

        This is the transition primitive: the run's version goes up by one and the events get
        consecutive seqs (returned in ``CommitResult.seqs``). Same guards as ``update``.

        ``operation_id`` makes retrying this exact commit safe after an outage that hid whether
        it was applied: a commit whose id was already applied (within 10 minutes) is not applied
        again; it returns the seqs it got then and the run as it is now.

        A mapping or model patch is validated (``InvalidInputError``, nothing written); a
        ``mpstate.patches.ValidPatch`` was validated when it was made and is taken as it is.

        ``base``: the run as read at ``expected_version`` (required with it). The store then
        builds the run it returns from ``base`` and the patch instead of reading it back after
        the write, which the version guard makes the same run; the returned run shares nested
        values with ``base``.
        """
        return self._drive(
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

    def cancel(self, run_id: str, reason: str, *, fence: int | None = None) -> PipelineRun:
        """Cancel a live run: status cancelled, error = reason, version + 1, log run-cancelled.

        Cancelling a cancelled run changes nothing; cancelling a completed or failed run raises
        ``InvalidTransitionError`` and changes nothing.
        """
        return self._drive(self._backend._plan_cancel(run_id, reason, fence))

    def append_event(
        self,
        run_id: str,
        event: PipelineEvent | Mapping[str, Any],
        *,
        fence: int | None = None,
    ) -> int:
        """Append one event to the run's log and return its seq (the run's version is unchanged).

        The event's ``runId`` must be ``run_id``; nothing may follow a terminal event.
        """
        return self._drive(self._backend._plan_append_event(run_id, event, fence))

    # -- webhook deliveries -------------------------------------------------------------------

    def claim_delivery(self, provider: str, delivery_id: str, ttl_s: float) -> bool:
        """Take a webhook delivery: True the first time within ``ttl_s``, False for a repeat.

        A provider retries a delivery it believes was lost (Standard Webhooks' ``webhook-id``,
        fal's request id), so a receiver handles it only when this returns True. Of concurrent
        claims of one (provider, delivery id), exactly one wins; the claim is forgotten after
        ``ttl_s`` (make it longer than the provider's retry window). Deliveries belong to no
        tenant: a tenant view refuses this (``InvalidInputError``), as the other delivery
        operations.
        """
        return self._drive(self._backend._plan_claim_delivery(provider, delivery_id, ttl_s))

    def release_delivery(self, provider: str, delivery_id: str) -> None:
        """Forget a claimed delivery: the receiver could not handle it (the store or the broker
        was down, it answered 503), so the provider's retry must be handled, not refused as a
        repeat."""
        self._drive(self._backend._plan_release_delivery(provider, delivery_id))

    def record_unmatched(self, callback: UnmatchedCallback | Mapping[str, Any]) -> None:
        """Keep a callback that can never match a run, for operators, and count it.

        The newest ``unmatched_kept`` (default 10,000) are kept for ``list_unmatched``; the
        counts by (provider, reason) cover every one recorded. On Redis both live as long as the
        run TTL after the last one recorded.
        """
        self._drive(self._backend._plan_record_unmatched(callback))

    def list_unmatched(
        self, *, provider: str | None = None, limit: int = 100
    ) -> list[UnmatchedCallback]:
        """The unmatched callbacks kept (of ``provider`` only, if given), newest first."""
        return self._drive(self._backend._plan_list_unmatched(provider, limit))

    def count_by_status(self, tenant_id: str | None = None) -> dict[PipelineRunStatus, int]:
        """How many runs are in each status (every status present, 0 included), of ``tenant_id``
        or of all tenants: one round trip on Redis, whatever the number of runs.

        Read from the status indexes, which are repaired on read (see ``list_runs``): right after
        a writer died between its two index writes a count can be one off until a listing
        repairs the entry. For dashboards and metrics, not for decisions.
        """
        return self._drive(self._backend._plan_count_by_status(tenant_id))

    def count_unmatched(self) -> dict[tuple[str, str], int]:
        """How many unmatched callbacks were recorded, by (provider, reason), for metrics."""
        return self._drive(self._backend._plan_count_unmatched())

    # -- locking ----------------------------------------------------------------------------

    def with_lock(
        self, run_id: str, fn: Callable[[PipelineRun], T], timeout_ms: int | None = None
    ) -> T:
        """Run ``fn(run)`` while holding the run's exclusive lock and return its result."""
        if not callable(fn):
            raise InvalidInputError("fn must be callable")
        with self.lock(run_id, timeout_ms=timeout_ms) as held:
            return fn(held.run)

    @contextmanager
    def lock(
        self, run_id: str, timeout_ms: int | None = None, *, auto_renew: bool = False
    ) -> Iterator[HeldLock]:
        """Hold the run's exclusive lock for the ``with`` block.

        Raises ``LockTimeoutError`` (a ``RunInProgressError``) when the lock is not granted within
        ``timeout_ms`` (default ``lock_acquire_timeout_ms``) and ``RunNotFoundError`` for a
        missing run. The lock expires after ``lock_ttl_seconds`` unless extended: with
        ``auto_renew`` a background thread extends it at a third of its TTL. When the lock was lost
        before the block ended (it expired and another holder took it), leaving the block raises
        ``LockNotOwnedError`` unless the block itself raised.
        """
        grant = self._drive(self._backend._plan_acquire(run_id, timeout_ms))
        held = HeldLock(grant.run_id, grant.token, grant.fence, grant.run, self._extend)
        renewer = _Renewer(held, self.options.lock_ttl_ms) if auto_renew else None
        body_failed = False
        try:
            yield held
        except BaseException:
            body_failed = True
            raise
        finally:
            if renewer is not None:
                renewer.stop()
            released = self._drive(self._backend._release_lock(run_id, held.token))
            if not released and not body_failed:
                raise LockNotOwnedError(run_id)
            if not released:
                log.warning("lock on run %r was lost before its holder finished", run_id)


class _Renewer:
    """Extends a held lock at a third of its TTL until stopped or the lock is lost."""

    def __init__(self, held: HeldLock, ttl_ms: int) -> None:
        self._held = held
        self._ttl_ms = ttl_ms
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"mpstate-lock-renew-{held.run_id[:32]}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._ttl_ms / 3000):
            try:
                self._held.extend(self._ttl_ms)
            except LockNotOwnedError:
                log.error("lock on run %r was lost; stopped renewing it", self._held.run_id)
                return
            except Exception:
                log.exception("renewing the lock on run %r failed; will retry", self._held.run_id)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
