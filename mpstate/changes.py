"""A write to one run, the guards every backend checks before applying it, and their errors.

Every single-run write (update, commit, cancel, append_event) is a ``RunChange``. A backend applies
it atomically or refuses it with one of the ``Refusal`` codes below, checked in this order:

1. ``NOT_FOUND``           the run is missing, or outside the tenant the store is scoped to;
2. ``STALE_FENCE``         the change carries a lock fence older than the newest grant;
3. (unchanged)             the run is in one of ``unchanged_if``: return it as it is (cancel twice);
4. ``VERSION_CONFLICT``    ``expected_version`` differs from the stored version;
5. ``INVALID_TRANSITION``  the patch moves ``status`` somewhere the transition table forbids;
6. ``LOG_ENDED``           the change appends events after the log's terminal event.

The Redis backend checks the same list in Lua (``scripts/commit_run-3-19.lua``); the codes and the
errors they become live here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

from mpstate.errors import (
    IdempotencyKeyInUseError,
    InvalidTransitionError,
    MpStateError,
    RunAlreadyExistsError,
    RunNotFoundError,
    StaleFenceError,
    VersionConflictError,
)
from mpstate.events import TERMINAL_EVENT_KINDS, PipelineEvent
from mpstate.fields import utc_now
from mpstate.models import PipelineRun, PipelineRunStatus, statuses_that_may_become
from mpstate.patches import ValidPatch

__all__ = ["Applied", "CommitResult", "Refusal", "RunChange", "Written", "refusal_error"]


class Written(IntEnum):
    """What a write script answers when it refused nothing. Values are what the Lua scripts
    return (their headers name them), as ``Refusal``'s are."""

    #: Left as it was: cancelling a cancelled run.
    UNCHANGED = 0
    #: Applied now.
    APPLIED = 1
    #: Applied before, by this very operation (a client retry after a lost reply): not again.
    REPLAYED = 2


class Refusal(IntEnum):
    """Why a backend refused a write. Values are what the Lua scripts return."""

    NOT_FOUND = -1
    ALREADY_EXISTS = -2
    IDEMPOTENCY_KEY_IN_USE = -3
    VERSION_CONFLICT = -4
    STALE_FENCE = -5
    INVALID_TRANSITION = -6
    LOG_ENDED = -7
    #: Internal to the Redis backend: the status index keys were built for another tenant; the
    #: store rebuilds them and tries again, so this never reaches a caller.
    WRONG_TENANT_KEYS = -8
    #: Internal to the Redis backend: the create's claim on its idempotency key was voided by a
    #: caller that found the run missing; the store claims again, so this never reaches a caller.
    CLAIM_VOIDED = -9


#: A patch document's status (its JSON value) -> the status.
_STATUSES = {status.value: status for status in PipelineRunStatus}


@dataclass(frozen=True, slots=True)
class RunChange:
    """A validated, atomic write to one run: a patch and/or events, under optional guards."""

    run_id: str
    patch: ValidPatch | None = None
    events: tuple[PipelineEvent, ...] = ()
    expected_version: int | None = None
    fence: int | None = None
    #: The tenant the store is scoped to; a run of another tenant is "not found".
    tenant: str | None = None
    #: Leave a run in one of these statuses untouched and return it (no error, no version bump).
    unchanged_if: frozenset[PipelineRunStatus] = frozenset()
    #: Whether the run's version and ``updated_at`` change (``append_event`` alone does not).
    bump_version: bool = True
    #: Whether the caller needs the run back from the backend (``append_event`` only needs the
    #: seq; a commit whose caller gave the run it expects builds it itself: ``after``).
    returns_run: bool = True
    #: The run this change makes, built by the caller from the run at ``expected_version`` and
    #: the patch (``commit(..., base=)``): what a backend uses instead of reading the run back.
    after: PipelineRun | None = None
    #: The ``updated_at`` the write stamps when it bumps the version (chosen here, so a run
    #: built by the caller holds the same time as the stored one).
    updated_at: datetime = field(default_factory=utc_now)
    #: A caller-chosen id that makes retrying this exact change safe (see ``commit``).
    operation_id: str | None = None

    @property
    def document(self) -> dict[str, Any]:
        """The patch's ``{camelCase field: JSON value}`` (empty without a patch)."""
        return self.patch.document if self.patch is not None else {}

    @property
    def encoded(self) -> dict[str, bytes]:
        """The patch's ``{camelCase field: JSON text}`` (empty without a patch)."""
        return self.patch.encoded if self.patch is not None else {}

    @property
    def new_status(self) -> PipelineRunStatus | None:
        """The status the patch sets, if it sets one."""
        status = self.document.get("status")
        return _STATUSES[status] if status is not None else None

    def external_jobs(self) -> list[tuple[str, str]]:
        """(provider, job id) pairs the patch records, to index them with the write."""
        document = self.document
        if "externalJobIds" not in document and "externalJobId" not in document:
            return []  # most writes: nothing to index
        jobs = set((document.get("externalJobIds") or {}).items())
        legacy = document.get("externalJobId")
        if legacy:
            provider, _, job_id = legacy.partition(":")
            jobs.add((provider, job_id))
        return sorted(jobs)

    @property
    def allowed_from(self) -> frozenset[PipelineRunStatus] | None:
        """Statuses the run may be in for the patch's status change (None: no status change)."""
        status = self.new_status
        return None if status is None else statuses_that_may_become(status)

    @property
    def ends_log(self) -> bool:
        """Whether one of the change's events is terminal."""
        return any(event.kind in TERMINAL_EVENT_KINDS for event in self.events)


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What a commit wrote: the run after it and the seqs its events received."""

    run: PipelineRun
    seqs: tuple[int, ...]
    changed: bool = True


@dataclass(frozen=True, slots=True)
class Applied:
    """What a backend reports for a change: the run (when ``returns_run``) and the new seqs."""

    run: PipelineRun | None
    seqs: tuple[int, ...]
    changed: bool = True


def refusal_error(
    refusal: Refusal,
    run_id: str,
    *,
    expected_version: int | None = None,
    actual_version: int | None = None,
    fence: int | None = None,
    current_fence: int | None = None,
    status: str | None = None,
    new_status: str | None = None,
    idempotency_key: str | None = None,
    existing_run_id: str | None = None,
) -> MpStateError:
    """The error a refusal is reported as, identical for every backend."""
    if refusal is Refusal.NOT_FOUND:
        return RunNotFoundError(run_id)
    if refusal is Refusal.ALREADY_EXISTS:
        return RunAlreadyExistsError(run_id)
    if refusal is Refusal.IDEMPOTENCY_KEY_IN_USE:
        return IdempotencyKeyInUseError(
            run_id, idempotency_key=str(idempotency_key), existing_run_id=str(existing_run_id)
        )
    if refusal is Refusal.VERSION_CONFLICT:
        return VersionConflictError(
            run_id, expected=int(expected_version or 0), actual=int(actual_version or 0)
        )
    if refusal is Refusal.STALE_FENCE:
        return StaleFenceError(run_id, fence=int(fence or 0), current=int(current_fence or 0))
    if refusal is Refusal.INVALID_TRANSITION:
        return InvalidTransitionError(
            f"run {run_id!r} is {status}: it cannot become {new_status}",
            run_id=run_id,
            status=str(status),
        )
    if refusal is Refusal.LOG_ENDED:
        return InvalidTransitionError(
            f"run {run_id!r} has ended its event log: nothing can be appended after its "
            "terminal event",
            run_id=run_id,
            status=str(status),
        )
    # An internal code reaching a caller is a bug, never a refusal to guess at.
    return MpStateError(f"unexpected refusal {refusal.name} for run {run_id!r}")
