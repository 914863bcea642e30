"""Every error mpstate raises, in one hierarchy.

The right column says whether retrying the very same call may succeed (each class's
``retryable``): a retryable error reports contention or an outage that passes; a permanent one
reports something that stays true until someone changes the call or the run.

::

    MpStateError                                                        retryable
    ├── InvalidInputError (also ValueError)      bad ids, events, patches, filters, options   no
    │   └── InvalidPipelineError                 a step graph with unknown ids or a cycle,    no
    │                                            or a canvas that cannot become a run
    ├── RunNotFoundError (also LookupError)      no such run (or not in this tenant)          no
    ├── RunInProgressError                       the run is busy or changed under you         yes
    │   ├── RunAlreadyExistsError                create() of an existing run id               no
    │   ├── IdempotencyKeyInUseError             the key belongs to another live run          no
    │   ├── VersionConflictError                 expected_version did not match               yes
    │   ├── LockTimeoutError                     the run's lock was not granted in time       yes
    │   └── StaleFenceError (also LockLostError) a write carried an outdated lock fence       no
    ├── LockLostError                            you no longer hold the run's lock            no
    │   ├── StaleFenceError                      (above) the lock was granted to another since
    │   └── LockNotOwnedError                    release/extend of a lock you no longer hold  no
    ├── InvalidTransitionError                   e.g. cancelling a completed run              no
    │   ├── InvalidResumeTokenError              a resume token that is wrong, stale or used  no
    │   └── BudgetExceededError                  a resume that the budget still refuses       no
    ├── StateStoreUnavailableError               Redis refused, reset or timed out (cause     yes
    │   │                                        chained)
    │   └── WriteNotReplicatedError              applied, but too few replicas confirmed it   yes
    ├── WebhookSignatureError                    a callback's signature is missing, wrong or  no
    │                                            stale
    └── NotInRunError (also RuntimeError)        a run-only task helper called outside a run  no

Callers that only care whether "something about mpstate" failed catch ``MpStateError``; code
that retries checks ``error.retryable`` (a version conflict: read the run again first; an outage:
back off first), or catches ``StateStoreUnavailableError`` for outages alone. Code that held a
lock catches ``LockLostError`` for "another holder took it": a stale fenced write and a failed
release or extend alike. ``RunAlreadyExistsError``, ``IdempotencyKeyInUseError`` and
``StaleFenceError`` stay ``RunInProgressError`` for the callers that caught them that way, but are
not retryable: retrying the same create or the same fenced write is refused again. Logic errors
are never reported as unavailability.
"""

from __future__ import annotations

__all__ = [
    "BudgetExceededError",
    "IdempotencyKeyInUseError",
    "InvalidInputError",
    "InvalidPipelineError",
    "InvalidResumeTokenError",
    "InvalidTransitionError",
    "LockLostError",
    "LockNotOwnedError",
    "LockTimeoutError",
    "MpStateError",
    "NotInRunError",
    "RunAlreadyExistsError",
    "RunInProgressError",
    "RunNotFoundError",
    "StaleFenceError",
    "StateStoreUnavailableError",
    "VersionConflictError",
    "WebhookSignatureError",
    "WriteNotReplicatedError",
]


class MpStateError(Exception):
    """Base class of every error raised by mpstate.

    An error with structured fields keeps its constructor's arguments as ``args`` (and its
    message apart), so ``cls(*error.args)`` rebuilds it: pickling, and Celery's result backends
    (which rebuild a task's exception that way), hand the caller the same error, not a stand-in.
    """

    #: Whether retrying the same call may succeed (contention or an outage that passes), as
    #: opposed to an error that stays true until the call or the run changes.
    retryable: bool = False
    _message: str | None = None

    def _keep(self, message: str, *arguments: object) -> None:
        """Set the message, and ``args`` to the constructor's own arguments."""
        self._message = message
        self.args = arguments

    def __str__(self) -> str:
        return self._message if self._message is not None else super().__str__()


class InvalidInputError(MpStateError, ValueError):
    """An argument was rejected before anything was written."""


class InvalidPipelineError(InvalidInputError):
    """A run's steps cannot form a pipeline; ``step_ids`` names the offending steps."""

    def __init__(self, message: str, step_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self._keep(message, message, tuple(step_ids))
        self.step_ids = tuple(step_ids)


class RunNotFoundError(MpStateError, LookupError):
    """The run does not exist, has expired, or belongs to another tenant."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self._keep(f"run {run_id!r} not found", run_id)
        self.run_id = run_id


class RunInProgressError(MpStateError):
    """The run is being changed by someone else (retryable), or a create or fenced write
    conflicts with what is stored (the subclasses that are not ``retryable``)."""

    retryable = True

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self._keep(message, message, run_id)
        self.run_id = run_id


class RunAlreadyExistsError(RunInProgressError):
    """``create()`` was called with a run id that is already stored."""

    retryable = False

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} already exists", run_id=run_id)
        self.args = (run_id,)


class IdempotencyKeyInUseError(RunInProgressError):
    """The idempotency key is held by another live run, named by ``existing_run_id``.

    Not retryable: the key stays held for the store's idempotency TTL; ``create_or_get``
    returns the holder instead."""

    retryable = False

    def __init__(self, run_id: str, idempotency_key: str, existing_run_id: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} is held by run {existing_run_id!r}",
            run_id=run_id,
        )
        self.args = (run_id, idempotency_key, existing_run_id)
        self.idempotency_key = idempotency_key
        self.existing_run_id = existing_run_id


class VersionConflictError(RunInProgressError):
    """A compare-and-set update found another version than the one expected; read the run
    again and retry with its version."""

    retryable = True

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"run {run_id!r} is at version {actual}, expected {expected}", run_id=run_id
        )
        self.args = (run_id, expected, actual)
        self.expected = expected
        self.actual = actual


class LockTimeoutError(RunInProgressError):
    """The run's exclusive lock could not be acquired within the timeout."""

    retryable = True

    def __init__(self, run_id: str, timeout_ms: int) -> None:
        super().__init__(
            f"lock on run {run_id!r} not acquired within {timeout_ms} ms", run_id=run_id
        )
        self.args = (run_id, timeout_ms)
        self.timeout_ms = timeout_ms


class LockLostError(MpStateError):
    """The caller no longer holds the run's lock: it expired and another holder may have it.

    Not retryable: take the lock again (and read the run again) instead.
    """

    retryable = False

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self._keep(f"lock on run {run_id!r} is no longer held by this holder", run_id)
        self.run_id = run_id


class StaleFenceError(LockLostError, RunInProgressError):
    """A write made under a lock carried a fence older than the newest grant.

    A ``LockLostError``, and a ``RunInProgressError`` too for the callers that caught it so.
    """

    retryable = False

    def __init__(self, run_id: str, fence: int, current: int) -> None:
        message = (
            f"write to run {run_id!r} carried fence {fence}, the lock was since granted "
            f"with fence {current}"
        )
        MpStateError.__init__(self, message)
        self._keep(message, run_id, fence, current)
        self.run_id = run_id
        self.fence = fence
        self.current = current


class LockNotOwnedError(LockLostError):
    """The lock expired or passed to another holder before it was released or extended."""


class InvalidTransitionError(MpStateError):
    """The requested change is not allowed from the run's current status."""

    def __init__(self, message: str, run_id: str, status: str) -> None:
        super().__init__(message)
        self._keep(message, message, run_id, status)
        self.run_id = run_id
        self.status = status


class InvalidResumeTokenError(InvalidTransitionError):
    """A resume, approve or reject named a token that is not the run's live one: wrong, of an
    earlier suspension, or used already. Nothing changed."""

    def __init__(self, run_id: str, status: str) -> None:
        message = f"run {run_id!r}: the token is not a live resume token (wrong, stale or used)"
        super().__init__(message, run_id, status)
        self.args = (run_id, status)


class BudgetExceededError(InvalidTransitionError):
    """A resume without a higher budget while no held step fits the budget. Nothing changed."""

    def __init__(self, run_id: str, spent_usd: float, max_usd: float, needed_usd: float) -> None:
        message = (
            f"run {run_id!r} is still over its budget: ${spent_usd:.4f} spent or reserved of "
            f"${max_usd:.4f}, the next held step needs ${needed_usd:.4f}; resume with a higher "
            "maxUsd"
        )
        super().__init__(message, run_id, "suspended")
        self.args = (run_id, spent_usd, max_usd, needed_usd)
        self.spent_usd = spent_usd
        self.max_usd = max_usd
        self.needed_usd = needed_usd


class StateStoreUnavailableError(MpStateError):
    """The backing store could not be reached; the operation may be retried."""

    retryable = True


class WriteNotReplicatedError(StateStoreUnavailableError):
    """A write reached the primary, but fewer replicas than asked confirmed it in time.

    A failover now could undo it (Redis replicates asynchronously), so it is reported as failed:
    retrying the same commit with its ``operation_id`` is safe, and a versioned retry is refused
    if the write did survive.
    """

    def __init__(self, wanted: int, acknowledged: int, timeout_ms: int) -> None:
        super().__init__(
            f"only {acknowledged} of {wanted} replicas confirmed the write within {timeout_ms} ms"
        )
        self._keep(str(self.args[0]), wanted, acknowledged, timeout_ms)
        self.wanted = wanted
        self.acknowledged = acknowledged


class WebhookSignatureError(MpStateError):
    """A provider callback is not signed with a current secret, or its timestamp is stale."""


class NotInRunError(MpStateError, RuntimeError):
    """A task helper that needs a run (``await_external``, ``gate``) ran outside one.

    A ``PipelineTask`` called with ``.delay()`` or in a plain Celery chain runs as an ordinary
    task; only the helpers that record something on a run raise this.
    """

    def __init__(self, task_name: str, helper: str) -> None:
        super().__init__(task_name, helper)
        self._keep(
            f"{helper} needs a pipeline run, but task {task_name} was called outside one "
            "(start it with MpState.start_run)",
            task_name,
            helper,
        )
        self.task_name = task_name
        self.helper = helper
