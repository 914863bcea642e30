"""The run event log's 14 event kinds, as one union discriminated on ``kind``.

The 12 kinds of the TypeScript original keep their exact fields; ``run-cancelled`` is added so
a cancellation is in the log too, and ``step-waiting`` so a step that hands its work to a
provider is in the log even while other branches keep the run running. ``seq`` is assigned by the
store when the event is appended (1-based, contiguous per run) and is ``None`` on an event not yet
appended. ``at`` is epoch milliseconds.

Every event may carry ``meta``: a small flat mapping for who produced it (the Celery layer records
``taskId``, ``worker`` and ``redelivered`` there). It is optional; the store never interprets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from mpstate.errors import InvalidInputError
from mpstate.fields import CamelModel, Identifier, now_ms

__all__ = [
    "EVENT_TYPES",
    "TERMINAL_EVENT_KINDS",
    "EventMeta",
    "PipelineEvent",
    "RunCancelled",
    "RunCompleted",
    "RunCreated",
    "RunFailed",
    "RunResumed",
    "RunStarted",
    "RunSuspended",
    "StepCached",
    "StepCompleted",
    "StepFailed",
    "StepGated",
    "StepProgress",
    "StepStarted",
    "StepWaiting",
    "parse_event",
]

#: Free-form producer metadata: string keys, scalar values.
EventMeta = dict[str, str | int | float | bool | None]

Cost = Annotated[float, Field(ge=0)]


class _Event(CamelModel):
    run_id: Identifier
    at: int = Field(default_factory=now_ms, ge=0)
    seq: int | None = Field(default=None, ge=1)
    meta: EventMeta | None = None


class _StepEvent(_Event):
    step_id: Identifier


class RunCreated(_Event):
    """A run was created: always its event 1, written by ``create``."""

    kind: Literal["run-created"] = "run-created"
    pipeline_def_hash: str


class RunStarted(_Event):
    """The run started (``MpState.start_run``)."""

    kind: Literal["run-started"] = "run-started"


class StepStarted(_StepEvent):
    """A step attempt began, before its body runs (``attempt`` 0, then 1 after a retry, ...)."""

    kind: Literal["step-started"] = "step-started"
    attempt: int = Field(ge=0)


class StepProgress(_StepEvent):
    """A step in flight reported progress (``self.progress()``, a provider's callback or poll)."""

    kind: Literal["step-progress"] = "step-progress"
    pct: float = Field(ge=0, le=100)
    eta_ms: int | None = Field(default=None, ge=0)
    message: str | None = None
    cost_usd_accrued: Cost | None = None


class StepCached(_StepEvent):
    """A step's result came from the cache, or was carried over by a re-run."""

    kind: Literal["step-cached"] = "step-cached"
    cache_key: str
    artifact_ids: list[str]


class StepCompleted(_StepEvent):
    """A step finished with its artifacts and cost."""

    kind: Literal["step-completed"] = "step-completed"
    artifact_ids: list[str]
    cost_usd: Cost


class StepFailed(_StepEvent):
    """A step attempt failed: ``retryable`` when the step runs again."""

    kind: Literal["step-failed"] = "step-failed"
    code: str
    retryable: bool


class StepGated(_StepEvent):
    """A gate's decision on a step. Verdicts are free-form, except those mpstate writes itself
    (``RESERVED_VERDICTS``), which set the step's status when the log is replayed."""

    kind: Literal["step-gated"] = "step-gated"
    gate_type: str
    verdict: str


#: The gate type of the step-gated that holds a step back for the run's budget, and releases it.
BUDGET_GATE = "budget"
#: A step held back by the budget (its status becomes ``held``).
OVER_BUDGET = "over-budget"
#: A held step the budget lets start (``pending`` again).
WITHIN_BUDGET = "within-budget"
#: A step whose result waits for a person's verdict (``waiting``).
AWAITING_APPROVAL = "awaiting-approval"
#: The verdicts of step-gated that carry state; an automatic gate may not use them.
RESERVED_VERDICTS = frozenset({OVER_BUDGET, WITHIN_BUDGET, AWAITING_APPROVAL})
#: The verdicts a person (or a gate's deadline) gives.
APPROVED = "approved"
REJECTED = "rejected"
#: The run-failed code of a rejected gate (automatic or by a person).
GATE_REJECTED = "gate-rejected"


class StepWaiting(_StepEvent):
    """The step handed its work to a provider and waits for its callback (or a poll)."""

    kind: Literal["step-waiting"] = "step-waiting"
    provider: Identifier
    job_id: Identifier


class RunSuspended(_Event):
    """The run waits (for a webhook, its budget or a gate) with a fresh resume token."""

    kind: Literal["run-suspended"] = "run-suspended"
    reason: Literal["webhook", "budget", "gate"]
    resume_token: str


class RunResumed(_Event):
    """An answer woke a suspended run, from ``from_step_id``."""

    kind: Literal["run-resumed"] = "run-resumed"
    from_step_id: Identifier


class RunCompleted(_Event):
    """Every step is done: a terminal event, always the log's last."""

    kind: Literal["run-completed"] = "run-completed"
    total_cost_usd: Cost


class RunFailed(_Event):
    """The run failed for good: a terminal event, always the log's last."""

    kind: Literal["run-failed"] = "run-failed"
    code: str
    terminal_reason: str


class RunCancelled(_Event):
    """The run was cancelled (``cancel``): a terminal event, always the log's last."""

    kind: Literal["run-cancelled"] = "run-cancelled"
    reason: str


PipelineEvent = Annotated[
    RunCreated
    | RunStarted
    | StepStarted
    | StepProgress
    | StepCached
    | StepCompleted
    | StepFailed
    | StepGated
    | StepWaiting
    | RunSuspended
    | RunResumed
    | RunCompleted
    | RunFailed
    | RunCancelled,
    Field(discriminator="kind"),
]

#: The event classes, one per kind (read off the union, so the list is written once).
EVENT_TYPES: tuple[type[CamelModel], ...] = get_args(get_args(PipelineEvent)[0])

#: Kinds that end a run's log: nothing may be appended after one of them.
TERMINAL_EVENT_KINDS = frozenset({"run-completed", "run-failed", "run-cancelled"})

_EVENT_ADAPTER: TypeAdapter[PipelineEvent] = TypeAdapter(PipelineEvent)


def parse_event(event: PipelineEvent | Mapping[str, Any]) -> PipelineEvent:
    """Validate an event given as a model or a mapping (camelCase or snake_case keys).

    Raises ``InvalidInputError`` (a ``ValueError``) naming what is wrong; an unknown ``kind`` is
    rejected.
    """
    try:
        if isinstance(event, CamelModel):
            return _EVENT_ADAPTER.validate_python(event.model_dump())
        if not isinstance(event, Mapping):
            raise InvalidInputError(f"an event must be a model or a mapping, not {event!r}")
        return _EVENT_ADAPTER.validate_python(dict(event))
    except PydanticValidationError as exc:
        raise InvalidInputError(f"invalid event: {exc}") from exc


def parse_stored_event(document: str | bytes, seq: int) -> PipelineEvent:
    """Rebuild an event read back from a backend, with its seq."""
    event = _EVENT_ADAPTER.validate_json(document)
    event.seq = seq
    return event


def event_document(event: PipelineEvent) -> str:
    """The JSON a backend stores for an event (camelCase, without its seq)."""
    return event.model_dump_json(by_alias=True, exclude={"seq"}, exclude_none=True)
