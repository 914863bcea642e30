"""mpstate: durable, correct run state for Celery pipelines.

The store (``InMemoryPipelineStateStore``, ``RedisPipelineStateStore``) keeps a pipeline run's
record and its append-only event log; see the README for the contract and its guarantees.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import TYPE_CHECKING, Any

from mpstate.audit import AuditFinding, audit_run
from mpstate.changes import CommitResult
from mpstate.deliveries import UnmatchedCallback, UnmatchedReason
from mpstate.errors import (
    BudgetExceededError,
    IdempotencyKeyInUseError,
    InvalidInputError,
    InvalidPipelineError,
    InvalidResumeTokenError,
    InvalidTransitionError,
    LockLostError,
    LockNotOwnedError,
    LockTimeoutError,
    MpStateError,
    NotInRunError,
    RunAlreadyExistsError,
    RunInProgressError,
    RunNotFoundError,
    StaleFenceError,
    StateStoreUnavailableError,
    VersionConflictError,
    WebhookSignatureError,
    WriteNotReplicatedError,
)
from mpstate.events import (
    PipelineEvent,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunResumed,
    RunStarted,
    RunSuspended,
    StepCached,
    StepCompleted,
    StepFailed,
    StepGated,
    StepProgress,
    StepStarted,
    StepWaiting,
    parse_event,
)
from mpstate.filters import RunFilter
from mpstate.memory import InMemoryPipelineStateStore
from mpstate.models import (
    ALLOWED_RUN_TRANSITIONS,
    TERMINAL_RUN_STATUSES,
    Approval,
    ExternalJob,
    FailurePolicy,
    GateSpec,
    GateTimeout,
    PipelineRun,
    PipelineRunStatus,
    StepError,
    StepState,
    StepStatus,
    SuspendReason,
)
from mpstate.options import StoreOptions
from mpstate.replay import log_state, replay_run
from mpstate.store import HeldLock, PipelineStateStore

if TYPE_CHECKING:
    from mpstate.redis import RedisPipelineStateStore

# A library logs; the application decides where it goes (nothing reaches stderr unconfigured).
logging.getLogger("mpstate").addHandler(logging.NullHandler())

try:
    #: The installed distribution's version: pyproject.toml's ``version`` is its one source.
    __version__ = importlib.metadata.version("mpstate")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "ALLOWED_RUN_TRANSITIONS",
    "TERMINAL_RUN_STATUSES",
    "Approval",
    "AuditFinding",
    "BudgetExceededError",
    "CommitResult",
    "ExternalJob",
    "FailurePolicy",
    "GateSpec",
    "GateTimeout",
    "HeldLock",
    "IdempotencyKeyInUseError",
    "InMemoryPipelineStateStore",
    "InvalidInputError",
    "InvalidPipelineError",
    "InvalidResumeTokenError",
    "InvalidTransitionError",
    "LockLostError",
    "LockNotOwnedError",
    "LockTimeoutError",
    "MpStateError",
    "NotInRunError",
    "PipelineEvent",
    "PipelineRun",
    "PipelineRunStatus",
    "PipelineStateStore",
    "RedisPipelineStateStore",
    "RunAlreadyExistsError",
    "RunCancelled",
    "RunCompleted",
    "RunCreated",
    "RunFailed",
    "RunFilter",
    "RunInProgressError",
    "RunNotFoundError",
    "RunResumed",
    "RunStarted",
    "RunSuspended",
    "StaleFenceError",
    "StateStoreUnavailableError",
    "StepCached",
    "StepCompleted",
    "StepError",
    "StepFailed",
    "StepGated",
    "StepProgress",
    "StepStarted",
    "StepState",
    "StepStatus",
    "StepWaiting",
    "StoreOptions",
    "SuspendReason",
    "UnmatchedCallback",
    "UnmatchedReason",
    "VersionConflictError",
    "WebhookSignatureError",
    "WriteNotReplicatedError",
    "audit_run",
    "log_state",
    "parse_event",
    "replay_run",
]


def __getattr__(name: str) -> Any:
    # The Redis backend is imported on first use so in-memory users need no redis package.
    if name == "RedisPipelineStateStore":
        try:
            from mpstate.redis import RedisPipelineStateStore  # noqa: PLC0415 - lazy on purpose
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "RedisPipelineStateStore needs the redis package: pip install 'mpstate[redis]'"
            ) from exc
        return RedisPipelineStateStore
    raise AttributeError(f"module 'mpstate' has no attribute {name!r}")
