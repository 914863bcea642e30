"""The in-memory backend: the contract in one process, for development and tests.

``MemoryBackend`` holds the primitives (no I/O, so each is an ``immediate`` plan; only the waits
block, as ``Blocking`` requests); ``MemoryExecutor`` runs those waits in the calling thread.
``InMemoryPipelineStateStore`` pairs the two; ``mpstate.aio.AsyncInMemoryPipelineStateStore``
pairs the backend with an asyncio executor.

Thread-safe (one re-entrant lock guards all state, and lock waiters sleep on a condition), returns
copies so callers never alias stored state, and expires locks and delivery claims with a real
TTL. Run, idempotency and external job TTLs are not enforced: nothing here outlives the process
anyway.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Unpack

from mpstate.changes import Applied, Refusal, RunChange, refusal_error
from mpstate.core import LockAttempt, StoreCore
from mpstate.deliveries import UnmatchedCallback
from mpstate.events import TERMINAL_EVENT_KINDS, PipelineEvent
from mpstate.filters import RunFilter
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.options import StoreOptionFields, StoreOptions
from mpstate.plans import Blocking, Plan, immediate
from mpstate.store import PipelineStateStore

__all__ = ["InMemoryPipelineStateStore", "MemoryBackend", "MemoryExecutor"]

#: Operation ids remembered for retried commits (the newest ones).
_OPERATIONS_KEPT = 10_000


@dataclass(slots=True)
class _StoredRun:
    run: PipelineRun
    events: list[PipelineEvent] = field(default_factory=list)
    fence: int = 0
    lock_token: str | None = None
    lock_expires_at: float = 0.0

    @property
    def log_ended(self) -> bool:
        return bool(self.events) and self.events[-1].kind in TERMINAL_EVENT_KINDS


@dataclass(slots=True)
class _State:
    """Everything one store (and its tenant views) share."""

    mutex: threading.RLock = field(default_factory=threading.RLock)
    released: threading.Condition = field(init=False)
    #: Notified whenever an event is appended, for ``follow_events``.
    appended: threading.Condition = field(init=False)
    runs: dict[str, _StoredRun] = field(default_factory=dict)
    idempotency: dict[tuple[str | None, str], str] = field(default_factory=dict)
    jobs: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Job id -> the providers it was recorded under (``jobs`` by job id alone).
    job_providers: dict[str, set[str]] = field(default_factory=dict)
    #: (run id, operation id) -> seqs of commits made with an operation id, newest last.
    operations: OrderedDict[tuple[str, str], tuple[int, ...]] = field(default_factory=OrderedDict)
    #: (provider, delivery id) -> when its claim expires (``time.monotonic``).
    deliveries: dict[tuple[str, str], float] = field(default_factory=dict)
    #: Size of ``deliveries`` at which expired claims are next swept out.
    deliveries_sweep_at: int = 1024
    #: Unmatched callbacks kept, oldest first (bounded: ``unmatched_kept``).
    unmatched: deque[UnmatchedCallback] = field(default_factory=deque)
    #: Unmatched callbacks recorded by (provider, reason), kept or not.
    unmatched_counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.released = threading.Condition(self.mutex)
        self.appended = threading.Condition(self.mutex)


class MemoryBackend(StoreCore):
    """The primitives on process memory, shared by the sync and asyncio stores."""

    def __init__(self, options: StoreOptions | None = None) -> None:
        super().__init__(options or StoreOptions())
        self._state = _State(unmatched=deque(maxlen=self.options.unmatched_kept))

    # -- primitives ---------------------------------------------------------------------------

    @immediate
    def _insert(
        self, run: PipelineRun, events: tuple[PipelineEvent, ...], *, return_existing: bool
    ) -> tuple[PipelineRun, bool]:
        state = self._state
        with state.mutex:
            existing = state.runs.get(run.run_id)
            if existing is not None:
                if return_existing:
                    return existing.run.model_copy(deep=True), False
                raise refusal_error(Refusal.ALREADY_EXISTS, run.run_id)
            if run.idempotency_key is not None:
                idem = (run.tenant_id, run.idempotency_key)
                holder = state.idempotency.get(idem)
                if holder is not None and holder in state.runs:
                    if return_existing:
                        return state.runs[holder].run.model_copy(deep=True), False
                    raise refusal_error(
                        Refusal.IDEMPOTENCY_KEY_IN_USE,
                        run.run_id,
                        idempotency_key=run.idempotency_key,
                        existing_run_id=holder,
                    )
                state.idempotency[idem] = run.run_id
            stored = _StoredRun(run.model_copy(deep=True))
            stored.events += [e.model_copy(update={"seq": n}) for n, e in enumerate(events, 1)]
            state.runs[run.run_id] = stored
            self._point_jobs(run)
            return run.model_copy(deep=True), True

    @immediate
    def _apply(self, change: RunChange) -> Applied:
        state = self._state
        with state.mutex:
            stored = state.runs.get(change.run_id)
            run = stored.run if stored is not None else None
            if (
                stored is None
                or run is None
                or (change.tenant is not None and run.tenant_id != change.tenant)
            ):
                raise refusal_error(Refusal.NOT_FOUND, change.run_id)
            operation = (change.run_id, change.operation_id) if change.operation_id else None
            if operation is not None and operation in state.operations:
                return Applied(run.model_copy(deep=True), state.operations[operation])
            if change.fence is not None and change.fence != stored.fence:
                raise refusal_error(
                    Refusal.STALE_FENCE,
                    change.run_id,
                    fence=change.fence,
                    current_fence=stored.fence,
                )
            if run.status in change.unchanged_if:
                return Applied(run.model_copy(deep=True), (), changed=False)
            if change.expected_version is not None and change.expected_version != run.version:
                raise refusal_error(
                    Refusal.VERSION_CONFLICT,
                    change.run_id,
                    expected_version=change.expected_version,
                    actual_version=run.version,
                )
            allowed_from = change.allowed_from
            if allowed_from is not None and run.status not in allowed_from:
                raise refusal_error(
                    Refusal.INVALID_TRANSITION,
                    change.run_id,
                    status=run.status,
                    new_status=change.new_status,
                )
            if change.events and stored.log_ended:
                raise refusal_error(Refusal.LOG_ENDED, change.run_id, status=run.status)
            applied = self._write(stored, change)
            if operation is not None:
                state.operations[operation] = applied.seqs
                while len(state.operations) > _OPERATIONS_KEPT:
                    state.operations.popitem(last=False)
            return applied

    def _write(self, stored: _StoredRun, change: RunChange) -> Applied:
        run = stored.run
        if change.patch is not None:
            run = run.model_copy(update=change.patch.values, deep=True)
        if change.bump_version:
            run = run.model_copy(
                update={"version": run.version + 1, "updated_at": change.updated_at}
            )
        stored.run = run
        seqs = []
        for event in change.events:
            seq = len(stored.events) + 1
            stored.events.append(event.model_copy(update={"seq": seq}))
            seqs.append(seq)
        if seqs:
            self._state.appended.notify_all()
        self._point_jobs(run)
        return Applied(run.model_copy(deep=True) if change.returns_run else None, tuple(seqs))

    def _point_jobs(self, run: PipelineRun) -> None:
        """Index the run's jobs by (provider, job id) and by job id (the caller holds the lock).

        Never removed, like a Redis pointer: a hint the readers confirm against the run.
        """
        for provider, job_id in run.external_jobs():
            self._state.jobs[(provider, job_id)] = run.run_id
            self._state.job_providers.setdefault(job_id, set()).add(provider)

    @immediate
    def _load(self, run_id: str, *, include_events: bool) -> PipelineRun | None:
        return self._copy_of(run_id, include_events=include_events)

    def _copy_of(self, run_id: str, *, include_events: bool) -> PipelineRun | None:
        with self._state.mutex:
            stored = self._state.runs.get(run_id)
            if stored is None:
                return None
            events = list(stored.events) if include_events else []
            return stored.run.model_copy(update={"events": events}, deep=True)

    @immediate
    def _read_events(
        self, run_id: str, since_seq: int, limit: int | None
    ) -> list[PipelineEvent] | None:
        return self._events_after(run_id, since_seq, limit)

    @immediate
    def _read_last_event(self, run_id: str) -> list[PipelineEvent] | None:
        with self._state.mutex:
            stored = self._state.runs.get(run_id)
            if stored is None:
                return None
            return [event.model_copy() for event in stored.events[-1:]]

    def _events_after(
        self, run_id: str, since_seq: int, limit: int | None
    ) -> list[PipelineEvent] | None:
        with self._state.mutex:
            stored = self._state.runs.get(run_id)
            if stored is None:
                return None
            end = None if limit is None else since_seq + limit
            return [event.model_copy() for event in stored.events[since_seq:end]]

    def _wait_for_events(
        self, run_id: str, since_seq: int, wait_s: float
    ) -> Plan[list[PipelineEvent]]:
        def wait() -> list[PipelineEvent]:
            with self._state.mutex:
                events = self._events_after(run_id, since_seq, None)
                if not events:
                    self._state.appended.wait(wait_s)
                    events = self._events_after(run_id, since_seq, None)
                return events or []

        events: list[PipelineEvent] = yield Blocking(wait)
        return events

    @immediate
    def _select(self, run_filter: RunFilter) -> list[PipelineRun]:
        with self._state.mutex:
            matched = [s.run for s in self._state.runs.values() if run_filter.matches(s.run)]
            run_filter.sort(matched)
            return [run.model_copy(deep=True) for run in run_filter.page(matched)]

    @immediate
    def _find_job(self, provider: str, job_id: str) -> PipelineRun | None:
        with self._state.mutex:
            run_id = self._state.jobs.get((provider, job_id))
            return None if run_id is None else self._copy_of(run_id, include_events=False)

    @immediate
    def _job_providers(self, job_id: str) -> set[str]:
        with self._state.mutex:
            return set(self._state.job_providers.get(job_id, ()))

    # -- delivery primitives ------------------------------------------------------------------

    @immediate
    def _claim_delivery(self, provider: str, delivery_id: str, ttl_ms: int) -> bool:
        state = self._state
        key = (provider, delivery_id)
        with state.mutex:
            now = time.monotonic()
            if state.deliveries.get(key, 0.0) > now:
                return False
            state.deliveries[key] = now + ttl_ms / 1000
            if len(state.deliveries) >= state.deliveries_sweep_at:
                # Sweep expired claims when the dict doubles: amortised O(1) per claim.
                state.deliveries = {k: t for k, t in state.deliveries.items() if t > now}
                state.deliveries_sweep_at = max(1024, 2 * len(state.deliveries))
            return True

    @immediate
    def _release_delivery(self, provider: str, delivery_id: str) -> None:
        with self._state.mutex:
            self._state.deliveries.pop((provider, delivery_id), None)

    @immediate
    def _record_unmatched(self, callback: UnmatchedCallback) -> None:
        with self._state.mutex:
            self._state.unmatched.append(callback)  # the deque drops the oldest beyond its cap
            self._state.unmatched_counts[(callback.provider, callback.reason)] += 1

    @immediate
    def _list_unmatched(self, provider: str | None, limit: int) -> list[UnmatchedCallback]:
        with self._state.mutex:
            newest_first = reversed(self._state.unmatched)
            matching = (c for c in newest_first if provider is None or c.provider == provider)
            return list(islice(matching, limit))

    @immediate
    def _count_by_status(self, tenant_id: str | None) -> dict[PipelineRunStatus, int]:
        with self._state.mutex:
            return dict(
                Counter(
                    s.run.status
                    for s in self._state.runs.values()
                    if tenant_id is None or s.run.tenant_id == tenant_id
                )
            )

    @immediate
    def _count_unmatched(self) -> dict[tuple[str, str], int]:
        with self._state.mutex:
            return dict(self._state.unmatched_counts)

    # -- lock primitives --------------------------------------------------------------------

    def _live_holder(self, stored: _StoredRun) -> str | None:
        if stored.lock_token is not None and stored.lock_expires_at <= time.monotonic():
            stored.lock_token = None
        return stored.lock_token

    @immediate
    def _try_lock(self, run_id: str, token: str, ttl_ms: int) -> LockAttempt:
        with self._state.mutex:
            stored = self._state.runs.get(run_id)
            if stored is None or self._visible(stored.run) is None:
                raise refusal_error(Refusal.NOT_FOUND, run_id)
            if self._live_holder(stored) is not None:
                remaining = (stored.lock_expires_at - time.monotonic()) * 1000
                return LockAttempt(None, max(1, int(remaining)))
            stored.lock_token = token
            stored.lock_expires_at = time.monotonic() + ttl_ms / 1000
            stored.fence += 1
            return LockAttempt(stored.fence, run=stored.run.model_copy(deep=True))

    def _wait_for_release(self, run_id: str, wait_ms: float) -> Plan[None]:
        def wait() -> None:
            with self._state.released:
                stored = self._state.runs.get(run_id)
                if stored is not None and self._live_holder(stored) is not None:
                    self._state.released.wait(wait_ms / 1000)

        yield Blocking(wait)

    @immediate
    def _release_lock(self, run_id: str, token: str) -> bool:
        with self._state.mutex:
            stored = self._state.runs.get(run_id)
            if stored is None or self._live_holder(stored) != token:
                return False
            stored.lock_token = None
            self._state.released.notify_all()
            return True

    @immediate
    def _extend_lock(self, run_id: str, token: str, ttl_ms: int) -> bool:
        with self._state.mutex:
            stored = self._state.runs.get(run_id)
            if stored is None or self._live_holder(stored) != token:
                return False
            stored.lock_expires_at = time.monotonic() + ttl_ms / 1000
            return True


class MemoryExecutor:
    """Carries out the in-memory plans' only requests, their waits, in the calling thread."""

    def __call__(self, request: Any) -> Any:
        assert isinstance(request, Blocking), request
        return request.wait()

    def close(self) -> None:
        """Nothing to close."""

    def reset_connections(self) -> None:
        """No connections to forget."""


class InMemoryPipelineStateStore(PipelineStateStore):
    """The whole contract in process memory. Not shared between processes.

    Takes every ``StoreOptions`` field (``options=`` and keyword overrides); the run,
    idempotency and external job TTLs are not enforced here.
    """

    def __init__(
        self, options: StoreOptions | None = None, **overrides: Unpack[StoreOptionFields]
    ) -> None:
        super().__init__(MemoryBackend(StoreOptions.merged(options, overrides)), MemoryExecutor())
