"""``PipelineStateStore``: the public contract, written once.

Every public method validates its input, builds the write and maps refusals to errors here; a
backend supplies only primitives (``_insert``, ``_apply``, ``_load``, ...). The in-memory and Redis
stores therefore accept, refuse and report exactly the same things.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticSerializationError

from mpstate.changes import Applied, CommitResult, Refusal, RunChange, refusal_error
from mpstate.errors import (
    InvalidInputError,
    LockNotOwnedError,
    LockTimeoutError,
    RunNotFoundError,
)
from mpstate.events import (
    EVENT_TYPES as _EVENT_TYPES,
)
from mpstate.events import (
    TERMINAL_EVENT_KINDS,
    PipelineEvent,
    RunCancelled,
    RunCreated,
    parse_event,
)
from mpstate.fields import MAX_ID_LENGTH, MAX_SAFE_INTEGER, ensure_storable, utc_now
from mpstate.filters import RunFilter, build_filter
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.patches import validate_patch

__all__ = ["HeldLock", "LockAttempt", "PipelineStateStore", "StoreOptions"]

log = logging.getLogger("mpstate.store")

T = TypeVar("T")

#: Longest one backend wait of ``follow_events``; the run's existence is checked between waits.
_FOLLOW_WAIT_S = 1.0

#: Most events one commit may append.
MAX_EVENTS_PER_COMMIT = 100


def check_id(value: object, what: str) -> str:
    """Validate an id argument: a non-empty string of at most ``MAX_ID_LENGTH`` characters."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} must be a non-empty string, not {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInputError(f"{what} is longer than {MAX_ID_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} is not valid unicode text") from exc
    return value


def _check_int(value: object, what: str, *, minimum: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not minimum <= value <= MAX_SAFE_INTEGER
    ):
        raise InvalidInputError(
            f"{what} must be an integer from {minimum} to {MAX_SAFE_INTEGER}, not {value!r}"
        )
    return value


def check_positive(value: object, what: str, *, zero_ok: bool = False) -> float:
    """Validate a duration or size argument: a finite number above 0 (or 0 with ``zero_ok``)."""
    least = ">= 0" if zero_ok else "> 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{what} must be a finite number {least}, not {value!r}")
    lowest_ok = value >= 0 if zero_ok else value > 0
    if not (lowest_ok and value < math.inf):  # NaN fails both comparisons
        raise InvalidInputError(f"{what} must be a finite number {least}, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Lifetimes and lock timings shared by every backend (seconds and milliseconds)."""

    run_ttl_seconds: float = 30 * 86400
    lock_ttl_seconds: float = 60
    idempotency_ttl_seconds: float = 86400
    external_job_ttl_seconds: float = 7 * 86400
    lock_acquire_timeout_ms: int = 5000
    lock_poll_interval_ms: int = 100

    def __post_init__(self) -> None:
        for name in (
            "run_ttl_seconds",
            "lock_ttl_seconds",
            "idempotency_ttl_seconds",
            "external_job_ttl_seconds",
        ):
            check_positive(getattr(self, name), name)
        _check_int(self.lock_acquire_timeout_ms, "lock_acquire_timeout_ms", minimum=0)
        _check_int(self.lock_poll_interval_ms, "lock_poll_interval_ms", minimum=1)

    @property
    def lock_ttl_ms(self) -> int:
        return max(1, int(self.lock_ttl_seconds * 1000))


@dataclass(frozen=True, slots=True)
class LockAttempt:
    """One try at a run's lock: the fence and the run when granted, else the holder's time left."""

    fence: int | None
    holder_ttl_ms: int = 0
    run: PipelineRun | None = None


@dataclass(slots=True)
class HeldLock:
    """A granted run lock. Pass ``fence`` to writes made under it so a stale holder is refused."""

    run_id: str
    token: str
    fence: int
    run: PipelineRun
    _store: PipelineStateStore = field(repr=False)
    _lost: bool = field(default=False, repr=False)

    def extend(self, ttl_ms: int | None = None) -> None:
        """Reset the lock's time to live; ``LockNotOwnedError`` if it was lost meanwhile."""
        ttl = self._store.options.lock_ttl_ms if ttl_ms is None else ttl_ms
        _check_int(ttl, "ttl_ms", minimum=1)
        if not self._store._extend_lock(self.run_id, self.token, ttl):
            self._lost = True
            raise LockNotOwnedError(self.run_id)


class PipelineStateStore(ABC):
    """The store contract. Construct a backend; ``for_tenant`` gives a tenant-scoped view."""

    def __init__(self, options: StoreOptions) -> None:
        self.options = options
        self._tenant: str | None = None

    # -- tenancy --------------------------------------------------------------------------

    @property
    def tenant_id(self) -> str | None:
        """The tenant this store is scoped to (None: the unscoped store)."""
        return self._tenant

    def for_tenant(self, tenant_id: str) -> Self:
        """A view of this store that sees and creates only ``tenant_id``'s runs.

        Another tenant's run is "not found" through the view; creating one is refused. The view
        shares connections and state with this store.
        """
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

    def create(self, run: PipelineRun | Mapping[str, Any]) -> PipelineRun:
        """Store a new run (version 1) and log ``run-created`` as its event 1.

        Raises ``RunAlreadyExistsError`` when the run id exists and ``IdempotencyKeyInUseError``
        (naming the holder) when the run's idempotency key belongs to another live run; both are
        ``RunInProgressError``. Of concurrent creates of one id or one key, exactly one succeeds.
        """
        stored, _ = self._create(run, return_existing=False)
        return stored

    def create_or_get(self, run: PipelineRun | Mapping[str, Any]) -> tuple[PipelineRun, bool]:
        """Like ``create``, but return ``(existing run, False)`` instead of raising."""
        return self._create(run, return_existing=True)

    def _create(
        self, run: PipelineRun | Mapping[str, Any], *, return_existing: bool
    ) -> tuple[PipelineRun, bool]:
        new_run = self._new_run(run)
        created_event = RunCreated(
            run_id=new_run.run_id, pipeline_def_hash=new_run.pipeline_def_hash
        )
        stored, created = self._insert(new_run, created_event, return_existing=return_existing)
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

    def get(self, run_id: str, *, include_events: bool = True) -> PipelineRun | None:
        """The run with its event log (or without, with ``include_events=False``), or None."""
        check_id(run_id, "run_id")
        return self._visible(self._load(run_id, include_events=include_events))

    def require(self, run_id: str, *, include_events: bool = True) -> PipelineRun:
        """Like ``get``, but raise ``RunNotFoundError`` instead of returning None."""
        run = self.get(run_id, include_events=include_events)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    def list_events(
        self, run_id: str, since_seq: int = 0, limit: int | None = None
    ) -> list[PipelineEvent]:
        """Events with ``seq > since_seq`` in seq order (at most ``limit``).

        Raises ``RunNotFoundError`` for a missing run.
        """
        check_id(run_id, "run_id")
        _check_int(since_seq, "since_seq", minimum=0)
        if limit is not None:
            _check_int(limit, "limit", minimum=1)
        if self._tenant is not None:
            self.require(run_id, include_events=False)
        events = self._read_events(run_id, since_seq, limit)
        if events is None:
            raise RunNotFoundError(run_id)
        return events

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
        check_id(run_id, "run_id")
        _check_int(since_seq, "since_seq", minimum=0)
        if timeout_s is not None:
            check_positive(timeout_s, "timeout_s", zero_ok=True)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        events = self.list_events(run_id, since_seq)
        while True:
            for event in events:
                yield event
                if event.kind in TERMINAL_EVENT_KINDS:
                    return
                since_seq = event.seq or since_seq
            remaining = _FOLLOW_WAIT_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return
            events = self._wait_for_events(run_id, since_seq, min(remaining, _FOLLOW_WAIT_S))
            if not events:  # a quiet wait: make sure the run is still there
                events = self.list_events(run_id, since_seq)

    def list_runs(
        self,
        filter: RunFilter | Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> list[PipelineRun]:
        """Runs matching the filter, by ``created_at`` then ``run_id``, without their events."""
        run_filter = build_filter(filter, fields)
        if self._tenant is not None:
            if run_filter.tenant_id not in (None, self._tenant):
                raise InvalidInputError(
                    f"this store is scoped to tenant {self._tenant!r}; "
                    f"it cannot list tenant {run_filter.tenant_id!r}"
                )
            run_filter = run_filter.model_copy(update={"tenant_id": self._tenant})
        return self._select(run_filter)

    def find_by_external_job_id(self, provider: str, job_id: str) -> PipelineRun | None:
        """The run that recorded this provider job (``external_job_ids`` or the legacy field)."""
        check_id(provider, "provider")
        check_id(job_id, "job_id")
        run = self._visible(self._find_job(provider, job_id))
        if run is None or (provider, job_id) not in run.external_jobs():
            return None
        return run

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
        patch: Mapping[str, Any] | BaseModel | None = None,
        events: Sequence[PipelineEvent | Mapping[str, Any]] = (),
        *,
        expected_version: int | None = None,
        fence: int | None = None,
        operation_id: str | None = None,
    ) -> CommitResult:
        """Apply a patch and append events as one atomic write: both happen or neither.

        This is the transition primitive: the run's version goes up by one and the events get
        consecutive seqs (returned in ``CommitResult.seqs``). Same guards as ``update``.

        ``operation_id`` makes retrying this exact commit safe after an outage that hid whether
        it was applied: a commit whose id was already applied (within 10 minutes) is not applied
        again; it returns the seqs it got then and the run as it is now.
        """
        check_id(run_id, "run_id")
        validated_patch = validate_patch(patch) if patch is not None else None
        validated_events = self._own_events(run_id, events)
        if validated_patch is None and not validated_events:
            raise InvalidInputError("commit needs a patch, events, or both")
        change = RunChange(
            run_id=run_id,
            patch=validated_patch,
            events=validated_events,
            expected_version=self._check_version(expected_version),
            fence=self._check_fence(fence),
            tenant=self._tenant,
            operation_id=None if operation_id is None else check_id(operation_id, "operation_id"),
        )
        applied = self._apply(change)
        assert applied.run is not None
        return CommitResult(applied.run, applied.seqs, applied.changed)

    def cancel(self, run_id: str, reason: str, *, fence: int | None = None) -> PipelineRun:
        """Cancel a live run: status cancelled, error = reason, version + 1, log run-cancelled.

        Cancelling a cancelled run changes nothing; cancelling a completed or failed run raises
        ``InvalidTransitionError`` and changes nothing.
        """
        check_id(run_id, "run_id")
        if not isinstance(reason, str):
            raise InvalidInputError(f"reason must be a string, not {reason!r}")
        now = utc_now()
        change = RunChange(
            run_id=run_id,
            patch=validate_patch(
                {"status": PipelineRunStatus.CANCELLED, "error": reason, "completed_at": now}
            ),
            events=(RunCancelled(run_id=run_id, reason=reason),),
            fence=self._check_fence(fence),
            tenant=self._tenant,
            unchanged_if=frozenset({PipelineRunStatus.CANCELLED}),
        )
        run = self._apply(change).run
        assert run is not None
        return run

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
        check_id(run_id, "run_id")
        change = RunChange(
            run_id=run_id,
            events=self._own_events(run_id, [event]),
            fence=self._check_fence(fence),
            tenant=self._tenant,
            bump_version=False,
            returns_run=False,
        )
        return self._apply(change).seqs[0]

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
        return _check_int(expected_version, "expected_version", minimum=1)

    @staticmethod
    def _check_fence(fence: int | None) -> int | None:
        if fence is None:
            return None
        return _check_int(fence, "fence", minimum=1)

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
        held = self._acquire(run_id, timeout_ms)
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
            released = self._release_lock(run_id, held.token)
            if not released and not body_failed:
                raise LockNotOwnedError(run_id)
            if not released:
                log.warning("lock on run %r was lost before its holder finished", run_id)

    def _acquire(self, run_id: str, timeout_ms: int | None) -> HeldLock:
        check_id(run_id, "run_id")
        timeout = self.options.lock_acquire_timeout_ms if timeout_ms is None else timeout_ms
        _check_int(timeout, "timeout_ms", minimum=0)
        token = secrets.token_hex(16)
        deadline = time.monotonic() + timeout / 1000
        while True:
            # Raises RunNotFoundError for a missing run; a grant carries the run as it is now.
            attempt = self._try_lock(run_id, token, self.options.lock_ttl_ms)
            if attempt.fence is not None:
                run = self._visible(attempt.run)
                if run is None:
                    self._release_lock(run_id, token)
                    raise RunNotFoundError(run_id)
                return HeldLock(run_id, token, attempt.fence, run, self)
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                raise LockTimeoutError(run_id, timeout_ms=timeout)
            wait_ms = min(remaining_ms, self.options.lock_poll_interval_ms)
            if attempt.holder_ttl_ms > 0:
                wait_ms = min(wait_ms, attempt.holder_ttl_ms)
            self._wait_for_release(run_id, max(1.0, wait_ms))

    # -- primitives a backend supplies --------------------------------------------------------

    @abstractmethod
    def _insert(
        self, run: PipelineRun, created_event: RunCreated, *, return_existing: bool
    ) -> tuple[PipelineRun, bool]:
        """Store ``run`` with ``created_event`` as seq 1, atomically; see ``create``."""

    @abstractmethod
    def _apply(self, change: RunChange) -> Applied:
        """Check the change's guards (``mpstate.changes``) and apply it atomically."""

    @abstractmethod
    def _load(self, run_id: str, *, include_events: bool) -> PipelineRun | None:
        """The stored run (any tenant), or None."""

    @abstractmethod
    def _read_events(
        self, run_id: str, since_seq: int, limit: int | None
    ) -> list[PipelineEvent] | None:
        """Events after ``since_seq``; None when the run does not exist."""

    @abstractmethod
    def _wait_for_events(self, run_id: str, since_seq: int, wait_s: float) -> list[PipelineEvent]:
        """Block until an event after ``since_seq`` exists or ``wait_s`` passes; return new ones.

        May return early with nothing (the caller checks and waits again).
        """

    @abstractmethod
    def _select(self, run_filter: RunFilter) -> list[PipelineRun]:
        """Runs matching the filter, sorted and paged."""

    @abstractmethod
    def _find_job(self, provider: str, job_id: str) -> PipelineRun | None:
        """The run indexed under this job (the caller verifies it still names the job)."""

    @abstractmethod
    def _try_lock(self, run_id: str, token: str, ttl_ms: int) -> LockAttempt:
        """One atomic try to take the lock with ``token``; on a grant, also return the run.

        Raises ``RunNotFoundError`` when the run does not exist.
        """

    @abstractmethod
    def _wait_for_release(self, run_id: str, wait_ms: float) -> None:
        """Block until the lock is released or ``wait_ms`` passes (spurious wake-ups are fine)."""

    @abstractmethod
    def _release_lock(self, run_id: str, token: str) -> bool:
        """Release the lock if ``token`` holds it; False when it did not."""

    @abstractmethod
    def _extend_lock(self, run_id: str, token: str, ttl_ms: int) -> bool:
        """Reset the lock's TTL if ``token`` holds it; False when it does not."""


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
