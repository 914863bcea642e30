"""``StoreCore``: the store contract's logic, written once as plans (``mpstate.plans``).

Every public operation validates its input, builds the write and maps refusals to errors here, as
a generator that yields the I/O it needs; a backend supplies only primitives, themselves plans
(``_insert``, ``_apply``, ``_load``, ...). A backend is a ``StoreCore``; a store pairs one with an
executor that carries out the requests, sync (``PipelineStateStore``) or asyncio (``mpstate.aio``),
so every backend and both flavours accept, refuse and report exactly the same things.
"""

from __future__ import annotations

import copy
import math
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticSerializationError

from mpstate._checks import check_id, check_int, check_positive
from mpstate.changes import Applied, CommitResult, Refusal, RunChange, refusal_error
from mpstate.deliveries import UnmatchedCallback, unmatched_callback
from mpstate.errors import InvalidInputError, LockTimeoutError, RunNotFoundError
from mpstate.events import EVENT_TYPES as _EVENT_TYPES
from mpstate.events import (
    TERMINAL_EVENT_KINDS,
    PipelineEvent,
    RunCancelled,
    RunCreated,
    parse_event,
)
from mpstate.fields import MAX_SAFE_INTEGER, ensure_storable, now_ms, utc_now
from mpstate.filters import RunFilter, build_filter
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.options import StoreOptions
from mpstate.patches import ValidPatch, trusted_patch, validate_patch
from mpstate.plans import Plan

__all__ = [
    "MAX_EVENTS_PER_COMMIT",
    "FollowCursor",
    "LockAttempt",
    "LockGrant",
    "StoreCore",
]

#: Longest one backend wait of ``follow_events``; the run's existence is checked between waits.
FOLLOW_WAIT_S = 1.0

#: Most events one commit may append.
MAX_EVENTS_PER_COMMIT = 100


@dataclass(frozen=True, slots=True)
class LockAttempt:
    """One try at a run's lock: the fence and the run when granted, else the holder's time left."""

    fence: int | None
    holder_ttl_ms: int = 0
    run: PipelineRun | None = None


@dataclass(frozen=True, slots=True)
class LockGrant:
    """A granted lock as the plans see it; each store wraps it in its own held-lock handle."""

    run_id: str
    token: str
    fence: int
    run: PipelineRun


class FollowCursor:
    """Where a ``follow_events`` feed is: the last seq seen, its deadline, whether it ended.

    The sync and asyncio feeds are the same loop around this cursor: ``next_plan`` gives the
    plan that reads the next events (None when the feed is over), ``emit`` the events to yield.
    """

    def __init__(self, store: StoreCore, run_id: str, since_seq: int, timeout_s: float | None):
        check_id(run_id, "run_id")
        check_int(since_seq, "since_seq", minimum=0)
        if timeout_s is not None:
            check_positive(timeout_s, "timeout_s", zero_ok=True)
        self._store = store
        self.run_id = run_id
        self.since_seq = since_seq
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._started = False
        self._ended = False

    def next_plan(self) -> Plan[list[PipelineEvent]] | None:
        if self._ended:
            return None
        if not self._started:
            self._started = True
            return self._store._plan_list_events(self.run_id, self.since_seq, None)
        remaining = FOLLOW_WAIT_S if self._deadline is None else self._deadline - time.monotonic()
        if remaining <= 0:
            return None
        return self._wait(min(remaining, FOLLOW_WAIT_S))

    def _wait(self, wait_s: float) -> Plan[list[PipelineEvent]]:
        events = yield from self._store._wait_for_events(self.run_id, self.since_seq, wait_s)
        if not events:  # a quiet wait: make sure the run is still there
            events = yield from self._store._plan_list_events(self.run_id, self.since_seq, None)
        return events

    def emit(self, events: list[PipelineEvent]) -> list[PipelineEvent]:
        """The events to hand out, up to and including a terminal one (which ends the feed)."""
        out: list[PipelineEvent] = []
        for event in events:
            out.append(event)
            self.since_seq = event.seq or self.since_seq
            if event.kind in TERMINAL_EVENT_KINDS:
                self._ended = True
                break
        return out


class StoreCore(ABC):
    """Validation, guards and the shape of every operation: a backend, driven by a store."""

    def __init__(self, options: StoreOptions) -> None:
        self.options = options
        self._tenant: str | None = None

    # -- tenancy --------------------------------------------------------------------------

    @property
    def tenant_id(self) -> str | None:
        """The tenant this store is scoped to (None: the unscoped store)."""
        return self._tenant

    def for_tenant(self, tenant_id: str) -> Self:
        """A copy of this backend scoped to ``tenant_id``, sharing its state (the stores'
        ``for_tenant``)."""
        check_id(tenant_id, "tenant_id")
        if self._tenant is not None and self._tenant != tenant_id:
            raise InvalidInputError(
                f"this store is scoped to tenant {self._tenant!r}; it cannot see {tenant_id!r}"
            )
        view = copy.copy(self)
        view._tenant = tenant_id
        return view

    def _visible(self, run: PipelineRun | None) -> PipelineRun | None:
        if run is None or (self._tenant is not None and run.tenant_id != self._tenant):
            return None
        return run

    # -- creating ---------------------------------------------------------------------------

    def _plan_create(
        self,
        run: PipelineRun | Mapping[str, Any],
        *,
        return_existing: bool,
        events: Sequence[PipelineEvent | Mapping[str, Any]] = (),
    ) -> Plan[tuple[PipelineRun, bool]]:
        new_run = self._new_run(run)
        then = self._own_events(new_run.run_id, events)
        if any(isinstance(event, RunCreated) for event in then):
            raise InvalidInputError("create() logs run-created itself: it cannot be given one")
        created_event = RunCreated(
            run_id=new_run.run_id,
            pipeline_def_hash=new_run.pipeline_def_hash,
            # No later than the events logged after it (made before this call), so times
            # follow seqs.
            at=min([now_ms(), *(event.at for event in then)]),
        )
        stored, created = yield from self._insert(
            new_run, (created_event, *then), return_existing=return_existing
        )
        if not created and self._visible(stored) is None:
            raise refusal_error(Refusal.ALREADY_EXISTS, new_run.run_id)
        return stored, created

    def _new_run(self, run: PipelineRun | Mapping[str, Any]) -> PipelineRun:
        if not isinstance(run, PipelineRun | Mapping):
            raise InvalidInputError(f"a run must be a PipelineRun or a mapping, not {run!r}")
        try:
            if isinstance(run, Mapping):
                run = PipelineRun.model_validate(dict(run))
            ensure_storable(run.model_dump(), "the run")
            # Through JSON and back, so every backend stores exactly the document form.
            run = PipelineRun.model_validate_json(run.model_dump_json())
        except (PydanticValidationError, PydanticSerializationError, ValueError, TypeError) as exc:
            raise InvalidInputError(f"invalid run: {exc}") from exc
        if run.events:
            raise InvalidInputError("a new run has no events: create() logs run-created itself")
        if self._tenant is not None:
            if run.tenant_id is None:
                run.tenant_id = self._tenant
            elif run.tenant_id != self._tenant:
                raise InvalidInputError(
                    f"this store is scoped to tenant {self._tenant!r}; "
                    f"it cannot create a run for {run.tenant_id!r}"
                )
        run.version = 1
        run.updated_at = utc_now()
        return run

    # -- reading ----------------------------------------------------------------------------

    def _plan_get(self, run_id: str, include_events: bool) -> Plan[PipelineRun | None]:
        check_id(run_id, "run_id")
        run = yield from self._load(run_id, include_events=include_events)
        return self._visible(run)

    def _plan_require(self, run_id: str, include_events: bool) -> Plan[PipelineRun]:
        run = yield from self._plan_get(run_id, include_events)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    def _plan_list_events(
        self, run_id: str, since_seq: int, limit: int | None
    ) -> Plan[list[PipelineEvent]]:
        check_id(run_id, "run_id")
        check_int(since_seq, "since_seq", minimum=0)
        if limit is not None:
            check_int(limit, "limit", minimum=1)
        if self._tenant is not None:
            yield from self._plan_require(run_id, False)
        events = yield from self._read_events(run_id, since_seq, limit)
        if events is None:
            raise RunNotFoundError(run_id)
        return events

    def _plan_last_event(self, run_id: str) -> Plan[PipelineEvent | None]:
        check_id(run_id, "run_id")
        if self._tenant is not None:
            yield from self._plan_require(run_id, False)
        newest = yield from self._read_last_event(run_id)
        if newest is None:
            raise RunNotFoundError(run_id)
        return newest[-1] if newest else None

    def _plan_list_runs(
        self, filter: RunFilter | Mapping[str, Any] | None, fields: Mapping[str, Any]
    ) -> Plan[list[PipelineRun]]:
        run_filter = build_filter(filter, dict(fields))
        if self._tenant is not None:
            if run_filter.tenant_id not in (None, self._tenant):
                raise InvalidInputError(
                    f"this store is scoped to tenant {self._tenant!r}; "
                    f"it cannot list tenant {run_filter.tenant_id!r}"
                )
            run_filter = run_filter.model_copy(update={"tenant_id": self._tenant})
        return (yield from self._select(run_filter))

    def _plan_find_job(self, provider: str, job_id: str) -> Plan[PipelineRun | None]:
        check_id(provider, "provider")
        check_id(job_id, "job_id")
        found = yield from self._find_job(provider, job_id)
        run = self._visible(found)
        if run is None or (provider, job_id) not in run.external_jobs():
            return None
        return run

    def _plan_find_job_providers(self, job_id: str) -> Plan[list[str]]:
        # Refused on a tenant view rather than filtered: its caller (a webhook receiver) has not
        # matched the callback to a tenant yet, and filtering would load a run per provider.
        self._untenanted("find_job_providers")
        check_id(job_id, "job_id")
        return sorted((yield from self._job_providers(job_id)))

    # -- writing ----------------------------------------------------------------------------

    def _plan_commit(
        self,
        run_id: str,
        patch: Mapping[str, Any] | BaseModel | ValidPatch | None,
        events: Sequence[PipelineEvent | Mapping[str, Any]],
        *,
        expected_version: int | None,
        fence: int | None,
        operation_id: str | None,
        base: PipelineRun | None = None,
    ) -> Plan[CommitResult]:
        check_id(run_id, "run_id")
        validated_patch = (
            patch
            if isinstance(patch, ValidPatch) or patch is None
            else validate_patch(patch)  # every mapping and model is the caller's: validated
        )
        validated_events = self._own_events(run_id, events)
        if validated_patch is None and not validated_events:
            raise InvalidInputError("commit needs a patch, events, or both")
        expected_version = self._check_version(expected_version)
        updated_at = utc_now()
        after = (
            None
            if base is None
            else _run_after(base, run_id, expected_version, validated_patch, updated_at)
        )
        change = RunChange(
            run_id=run_id,
            patch=validated_patch,
            events=validated_events,
            expected_version=expected_version,
            fence=self._check_fence(fence),
            tenant=self._tenant,
            operation_id=None if operation_id is None else check_id(operation_id, "operation_id"),
            returns_run=after is None,
            after=after,
            updated_at=updated_at,
        )
        applied = yield from self._apply(change)
        run = applied.run if applied.run is not None else after  # a replay reads the run
        assert run is not None
        return CommitResult(run, applied.seqs, applied.changed)

    def _plan_cancel(self, run_id: str, reason: str, fence: int | None) -> Plan[PipelineRun]:
        check_id(run_id, "run_id")
        if not isinstance(reason, str):
            raise InvalidInputError(f"reason must be a string, not {reason!r}")
        now = utc_now()
        change = RunChange(
            run_id=run_id,
            patch=trusted_patch(
                {
                    "status": PipelineRunStatus.CANCELLED,
                    "error": reason,
                    "completedAt": now,
                    "resumable": False,
                    "suspendReason": None,
                }
            ),
            events=(RunCancelled(run_id=run_id, reason=reason),),
            fence=self._check_fence(fence),
            tenant=self._tenant,
            unchanged_if=frozenset({PipelineRunStatus.CANCELLED}),
        )
        applied = yield from self._apply(change)
        assert applied.run is not None
        return applied.run

    def _plan_append_event(
        self, run_id: str, event: PipelineEvent | Mapping[str, Any], fence: int | None
    ) -> Plan[int]:
        check_id(run_id, "run_id")
        change = RunChange(
            run_id=run_id,
            events=self._own_events(run_id, [event]),
            fence=self._check_fence(fence),
            tenant=self._tenant,
            bump_version=False,
            returns_run=False,
        )
        applied = yield from self._apply(change)
        return applied.seqs[0]

    @staticmethod
    def _own_events(
        run_id: str, events: Sequence[PipelineEvent | Mapping[str, Any]]
    ) -> tuple[PipelineEvent, ...]:
        if isinstance(events, str | bytes | Mapping) or not isinstance(events, Sequence):
            raise InvalidInputError("events must be a sequence of events")
        if len(events) > MAX_EVENTS_PER_COMMIT:
            raise InvalidInputError(f"at most {MAX_EVENTS_PER_COMMIT} events per commit")
        parsed = tuple(
            # A model instance is valid already: every assignment to one is validated.
            event.model_copy() if isinstance(event, _EVENT_TYPES) else parse_event(event)
            for event in events
        )
        for position, event in enumerate(parsed, start=1):
            try:
                ensure_storable(event.model_dump(), f"the {event.kind} event")
            except ValueError as exc:
                raise InvalidInputError(f"invalid {event.kind} event: {exc}") from exc
            if event.run_id != run_id:
                raise InvalidInputError(
                    f"event for run {event.run_id!r} cannot be appended to run {run_id!r}"
                )
            if event.kind in TERMINAL_EVENT_KINDS and position != len(parsed):
                raise InvalidInputError(f"{event.kind} ends the log: it must be the last event")
        return parsed

    @staticmethod
    def _check_version(expected_version: int | None) -> int | None:
        if expected_version is None:
            return None
        return check_int(expected_version, "expected_version", minimum=1)

    @staticmethod
    def _check_fence(fence: int | None) -> int | None:
        if fence is None:
            return None
        return check_int(fence, "fence", minimum=1)

    # -- locking ----------------------------------------------------------------------------

    def _plan_acquire(self, run_id: str, timeout_ms: int | None) -> Plan[LockGrant]:
        """Try the lock until granted or ``timeout_ms`` passes, waiting for releases between."""
        check_id(run_id, "run_id")
        timeout = self.options.lock_acquire_timeout_ms if timeout_ms is None else timeout_ms
        check_int(timeout, "timeout_ms", minimum=0)
        token = secrets.token_hex(16)
        deadline = time.monotonic() + timeout / 1000
        while True:
            # Raises RunNotFoundError for a missing run; a grant carries the run as it is now.
            attempt = yield from self._try_lock(run_id, token, self.options.lock_ttl_ms)
            if attempt.fence is not None:
                run = self._visible(attempt.run)
                if run is None:
                    yield from self._release_lock(run_id, token)
                    raise RunNotFoundError(run_id)
                return LockGrant(run_id, token, attempt.fence, run)
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                raise LockTimeoutError(run_id, timeout_ms=timeout)
            wait_ms = min(remaining_ms, self.options.lock_poll_interval_ms)
            if attempt.holder_ttl_ms > 0:
                wait_ms = min(wait_ms, attempt.holder_ttl_ms)
            yield from self._wait_for_release(run_id, max(1.0, wait_ms))

    def _plan_extend(self, run_id: str, token: str, ttl_ms: int | None) -> Plan[bool]:
        ttl = self.options.lock_ttl_ms if ttl_ms is None else ttl_ms
        check_int(ttl, "ttl_ms", minimum=1)
        return (yield from self._extend_lock(run_id, token, ttl))

    # -- webhook deliveries (``mpstate.deliveries``) ----------------------------------------

    def _untenanted(self, operation: str) -> None:
        """Refuse a delivery operation on a tenant view: deliveries belong to no tenant.

        A delivery is claimed before it is matched to a run, and an unmatched callback has no
        run; listing them through a tenant's view could show another tenant's job ids. Likewise
        ``find_job_providers``: it would tell a tenant that another tenant's run recorded a job.
        """
        if self._tenant is not None:
            raise InvalidInputError(
                f"{operation} is not scoped to a tenant: call it on the unscoped store, "
                f"not on tenant {self._tenant!r}'s view"
            )

    def _plan_claim_delivery(self, provider: str, delivery_id: str, ttl_s: float) -> Plan[bool]:
        self._untenanted("claim_delivery")
        check_id(provider, "provider")
        check_id(delivery_id, "delivery_id")
        ttl_ms = math.ceil(check_positive(ttl_s, "ttl_s") * 1000)
        if ttl_ms > MAX_SAFE_INTEGER:
            raise InvalidInputError(f"ttl_s must be at most {MAX_SAFE_INTEGER // 1000} seconds")
        return (yield from self._claim_delivery(provider, delivery_id, ttl_ms))

    def _plan_release_delivery(self, provider: str, delivery_id: str) -> Plan[None]:
        self._untenanted("release_delivery")
        check_id(provider, "provider")
        check_id(delivery_id, "delivery_id")
        yield from self._release_delivery(provider, delivery_id)

    def _plan_record_unmatched(self, callback: UnmatchedCallback | Mapping[str, Any]) -> Plan[None]:
        self._untenanted("record_unmatched")
        yield from self._record_unmatched(unmatched_callback(callback))

    def _plan_list_unmatched(
        self, provider: str | None, limit: int
    ) -> Plan[list[UnmatchedCallback]]:
        self._untenanted("list_unmatched")
        if provider is not None:
            check_id(provider, "provider")
        check_int(limit, "limit", minimum=1)
        return (yield from self._list_unmatched(provider, min(limit, self.options.unmatched_kept)))

    def _plan_count_by_status(self, tenant_id: str | None) -> Plan[dict[PipelineRunStatus, int]]:
        if tenant_id is not None:
            check_id(tenant_id, "tenant_id")
        if self._tenant is not None:
            if tenant_id not in (None, self._tenant):
                raise InvalidInputError(
                    f"this store is scoped to tenant {self._tenant!r}; "
                    f"it cannot count tenant {tenant_id!r}"
                )
            tenant_id = self._tenant
        counts = yield from self._count_by_status(tenant_id)
        return {status: counts.get(status, 0) for status in PipelineRunStatus}

    def _plan_count_unmatched(self) -> Plan[dict[tuple[str, str], int]]:
        self._untenanted("count_unmatched")
        return (yield from self._count_unmatched())

    # -- primitives a backend supplies (each a plan) ----------------------------------------

    @abstractmethod
    def _insert(
        self, run: PipelineRun, events: tuple[PipelineEvent, ...], *, return_existing: bool
    ) -> Plan[tuple[PipelineRun, bool]]:
        """Store ``run`` with ``events`` (run-created first) as seqs 1.., atomically; see
        ``create``."""

    @abstractmethod
    def _apply(self, change: RunChange) -> Plan[Applied]:
        """Check the change's guards (``mpstate.changes``) and apply it atomically."""

    @abstractmethod
    def _load(self, run_id: str, *, include_events: bool) -> Plan[PipelineRun | None]:
        """The stored run (any tenant), or None."""

    @abstractmethod
    def _read_events(
        self, run_id: str, since_seq: int, limit: int | None
    ) -> Plan[list[PipelineEvent] | None]:
        """Events after ``since_seq``; None when the run does not exist."""

    def _read_last_event(self, run_id: str) -> Plan[list[PipelineEvent] | None]:
        """The newest event, in a list (empty for an empty log); None when the run does not exist.

        This default reads the whole log; a backend overrides it with one short read.
        """
        events = yield from self._read_events(run_id, 0, None)
        return None if events is None else events[-1:]

    @abstractmethod
    def _wait_for_events(
        self, run_id: str, since_seq: int, wait_s: float
    ) -> Plan[list[PipelineEvent]]:
        """Block until an event after ``since_seq`` exists or ``wait_s`` passes; return new ones.

        May return early with nothing (the caller checks and waits again).
        """

    @abstractmethod
    def _select(self, run_filter: RunFilter) -> Plan[list[PipelineRun]]:
        """Runs matching the filter, sorted and paged."""

    @abstractmethod
    def _find_job(self, provider: str, job_id: str) -> Plan[PipelineRun | None]:
        """The run indexed under this job (the caller verifies it still names the job)."""

    @abstractmethod
    def _job_providers(self, job_id: str) -> Plan[set[str]]:
        """Providers with a job pointer for ``job_id`` (a hint: some may point at nothing now)."""

    @abstractmethod
    def _try_lock(self, run_id: str, token: str, ttl_ms: int) -> Plan[LockAttempt]:
        """One atomic try to take the lock with ``token``; on a grant, also return the run.

        Raises ``RunNotFoundError`` when the run does not exist.
        """

    @abstractmethod
    def _wait_for_release(self, run_id: str, wait_ms: float) -> Plan[None]:
        """Block until the lock is released or ``wait_ms`` passes (spurious wake-ups are fine)."""

    @abstractmethod
    def _release_lock(self, run_id: str, token: str) -> Plan[bool]:
        """Release the lock if ``token`` holds it; False when it did not."""

    @abstractmethod
    def _extend_lock(self, run_id: str, token: str, ttl_ms: int) -> Plan[bool]:
        """Reset the lock's TTL if ``token`` holds it; False when it does not."""

    @abstractmethod
    def _claim_delivery(self, provider: str, delivery_id: str, ttl_ms: int) -> Plan[bool]:
        """Atomically mark the delivery taken for ``ttl_ms``; False when it already was."""

    @abstractmethod
    def _release_delivery(self, provider: str, delivery_id: str) -> Plan[None]:
        """Forget a claim, so the delivery is taken again (it was not handled after all)."""

    @abstractmethod
    def _record_unmatched(self, callback: UnmatchedCallback) -> Plan[None]:
        """Keep the callback (dropping the oldest beyond ``unmatched_kept``) and count it."""

    @abstractmethod
    def _list_unmatched(self, provider: str | None, limit: int) -> Plan[list[UnmatchedCallback]]:
        """Up to ``limit`` of the newest ``unmatched_kept`` callbacks (of ``provider``), newest
        first."""

    @abstractmethod
    def _count_by_status(self, tenant_id: str | None) -> Plan[dict[PipelineRunStatus, int]]:
        """How many runs (of the tenant) are in each status, from the status indexes."""

    @abstractmethod
    def _count_unmatched(self) -> Plan[dict[tuple[str, str], int]]:
        """Callbacks recorded per (provider, reason), including those no longer kept."""


def _run_after(
    base: PipelineRun,
    run_id: str,
    expected_version: int | None,
    patch: ValidPatch | None,
    updated_at: datetime,
) -> PipelineRun:
    """The run a commit guarded on ``expected_version`` makes of ``base`` (the run at that
    version): its fields with the patch's, the next version and the write's ``updated_at``, no
    events (as a run read back without them). The write's version guard is what makes it the
    stored run: a commit applied to anything else is refused."""
    if not isinstance(base, PipelineRun):
        raise InvalidInputError(f"base must be a PipelineRun, not {base!r}")
    if base.run_id != run_id or expected_version is None or base.version != expected_version:
        raise InvalidInputError(
            "base must be the run the commit expects: the same run id, and expected_version set "
            f"to its version (run {base.run_id!r} at version {base.version}, commit of "
            f"{run_id!r} expecting {expected_version})"
        )
    values = patch.values if patch is not None else {}
    update = {**values, "version": base.version + 1, "updated_at": updated_at, "events": []}
    return base.model_copy(update=update)
