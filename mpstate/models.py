"""The pipeline run record: statuses, the allowed status transitions, steps and the run itself."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from mpstate.events import PipelineEvent
from mpstate.fields import CamelModel, Identifier, UtcDatetime, utc_now

__all__ = [
    "ALLOWED_RUN_TRANSITIONS",
    "DONE_STEP_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "Approval",
    "ExternalJob",
    "FailurePolicy",
    "GateSpec",
    "GateTimeout",
    "PipelineRun",
    "PipelineRunStatus",
    "StepError",
    "StepState",
    "StepStatus",
    "SuspendReason",
]

NonNegativeCost = Annotated[float, Field(ge=0)]


def _unique_step_ids(steps: list[StepState]) -> list[StepState]:
    seen: set[str] = set()
    for step in steps:
        if step.step_id in seen:
            raise ValueError(f"duplicate step id {step.step_id!r}")
        seen.add(step.step_id)
    return steps


def _names_its_provider(value: str) -> str:
    provider, sep, job_id = value.partition(":")
    if not (provider and sep and job_id):
        raise ValueError('external_job_id must look like "provider:jobId"')
    return value


class PipelineRunStatus(StrEnum):
    """Where a run is in its life."""

    #: Created, not started yet.
    PENDING = "pending"
    #: A step is executing or queued.
    RUNNING = "running"
    #: Waiting for something outside mpstate: a webhook, a budget decision or a gate.
    SUSPENDED = "suspended"
    #: Every step finished; final.
    COMPLETED = "completed"
    #: A step failed for good; final.
    FAILED = "failed"
    #: Cancelled by a user or an operator; final.
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    """Where a step is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    #: Handed to an external provider (completes when its callback or a poll answers), or its
    #: result waits for a person's verdict (``StepState.approval``).
    WAITING = "waiting"
    #: Ready, but held back: starting it would cross the run's budget (``mpstate.budget``).
    HELD = "held"
    COMPLETED = "completed"
    FAILED = "failed"
    #: Stopped by a gate (for example a quality check).
    GATED = "gated"
    #: Satisfied from a cache instead of running.
    CACHED = "cached"
    CANCELLED = "cancelled"


class FailurePolicy(StrEnum):
    """What a step's final failure does to the rest of its run."""

    #: The run fails at once: steps not started never start, running ones are revoked.
    FAIL_FAST = "fail-fast"
    #: Branches that do not depend on the failed step run to their end; then the run fails.
    FINISH_BRANCHES = "finish-branches"


class SuspendReason(StrEnum):
    """Why a suspended run waits (``run-suspended``'s ``reason``)."""

    #: A step waits for a provider's callback (or poll); it resumes by itself.
    WEBHOOK = "webhook"
    #: A step is held back by the run's budget: ``MpState.resume`` (with a higher budget).
    BUDGET = "budget"
    #: A step's result waits for a person: ``MpState.approve`` or ``MpState.reject``.
    GATE = "gate"


class GateTimeout(StrEnum):
    """What an approval gate decides when nobody answered by its deadline."""

    REJECT = "reject"
    APPROVE = "approve"


#: Step statuses that satisfy the steps depending on it.
DONE_STEP_STATUSES = frozenset({StepStatus.COMPLETED, StepStatus.CACHED})

#: Statuses a run never leaves.
TERMINAL_RUN_STATUSES = frozenset(
    {PipelineRunStatus.COMPLETED, PipelineRunStatus.FAILED, PipelineRunStatus.CANCELLED}
)

#: For each status, the statuses a run may move to from it. Every backend enforces this table on
#: every write that changes ``status``; a terminal run keeps its status forever, so a late result
#: cannot revive a cancelled, failed or completed run.
ALLOWED_RUN_TRANSITIONS: dict[PipelineRunStatus, frozenset[PipelineRunStatus]] = {
    PipelineRunStatus.PENDING: frozenset(PipelineRunStatus),
    PipelineRunStatus.RUNNING: frozenset(PipelineRunStatus) - {PipelineRunStatus.PENDING},
    PipelineRunStatus.SUSPENDED: frozenset(PipelineRunStatus) - {PipelineRunStatus.PENDING},
    PipelineRunStatus.COMPLETED: frozenset({PipelineRunStatus.COMPLETED}),
    PipelineRunStatus.FAILED: frozenset({PipelineRunStatus.FAILED}),
    PipelineRunStatus.CANCELLED: frozenset({PipelineRunStatus.CANCELLED}),
}


#: ``ALLOWED_RUN_TRANSITIONS`` read backwards, once: every status change asks for it.
_MAY_BECOME: dict[PipelineRunStatus, frozenset[PipelineRunStatus]] = {
    target: frozenset(s for s, targets in ALLOWED_RUN_TRANSITIONS.items() if target in targets)
    for target in PipelineRunStatus
}


def statuses_that_may_become(target: PipelineRunStatus) -> frozenset[PipelineRunStatus]:
    """The statuses from which a run may move to ``target`` (the table, read backwards)."""
    return _MAY_BECOME[target]


class StepError(CamelModel):
    """The last error a step reported."""

    code: str
    message: str = ""
    retryable: bool = False
    at: UtcDatetime = Field(default_factory=utc_now)


class ExternalJob(CamelModel):
    """A provider job a step handed its work to (``PipelineTask.await_external``)."""

    provider: Identifier
    job_id: Identifier
    #: The step attempt that awaited it; a callback for an earlier attempt's job is superseded.
    attempt: int = Field(default=0, ge=0)
    since: UtcDatetime = Field(default_factory=utc_now)
    #: When the step stops waiting: with no answer by then it fails with ``external-timeout``.
    deadline: UtcDatetime | None = None


class GateSpec(CamelModel):
    """An approval gate declared in a step's definition: the step's result waits for a person.

    ``{"type": "approval", "timeoutS": 86400, "onTimeout": "reject"}``. Without ``timeout_s``
    the wait has no deadline.
    """

    type: Identifier = "approval"
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    on_timeout: GateTimeout = GateTimeout.REJECT


class Approval(CamelModel):
    """A step's wait for a verdict (``MpState.approve`` / ``reject``), with the result it holds.

    The token is the wait's own: unguessable, and single-use (the verdict clears the wait).
    """

    gate_type: Identifier
    token: str = Field(min_length=16)
    since: UtcDatetime = Field(default_factory=utc_now)
    deadline: UtcDatetime | None = None
    on_timeout: GateTimeout = GateTimeout.REJECT
    #: What the person looks at (free-form, small: it is stored on the run).
    details: dict[str, Any] = Field(default_factory=dict)
    #: The step's result, applied when the gate approves: artifacts, cost, outputs, cache key.
    artifact_ids: list[str] = Field(default_factory=list)
    cost_usd: NonNegativeCost = 0.0
    outputs: dict[str, Any] = Field(default_factory=dict)
    cache_key: str | None = None


class StepState(CamelModel):
    """One step of a run: what it runs (``operation``), with what, and how it went."""

    step_id: Identifier
    operation: Identifier
    inputs: dict[str, Any] = Field(default_factory=dict)
    status: StepStatus = StepStatus.PENDING
    attempts: int = Field(default=0, ge=0)
    max_retries: int | None = Field(default=None, ge=0)
    artifact_ids: list[str] = Field(default_factory=list)
    cost_usd: NonNegativeCost = 0.0
    error: str | None = None
    started_at: UtcDatetime | None = None
    completed_at: UtcDatetime | None = None
    cache_key: str | None = None
    last_error: StepError | None = None
    #: The Celery task id of the step's latest attempt (set by mpstate.celery).
    task_id: str | None = None
    #: When mpstate.celery last published the step's task (its queue wait starts here).
    queued_at: UtcDatetime | None = None
    #: Ids of the steps this one waits for. When no step of a run sets it, each step waits for
    #: the one before it (a linear run); once any step sets it, the graph is explicit and a step
    #: without it starts at once (see ``mpstate.graph``).
    depends_on: list[Identifier] | None = None
    #: What the step's task returned besides artifacts and cost (``StepResult.outputs``), for
    #: the steps that depend on it.
    outputs: dict[str, Any] = Field(default_factory=dict)
    #: Every provider job the step awaited, oldest first; the last is the one it waits for
    #: while ``status`` is ``waiting``.
    external_jobs: list[ExternalJob] = Field(default_factory=list)
    #: What one attempt of the step is expected to cost (its definition, else the task's
    #: ``estimated_cost_usd``): the budget reserves it while the step is in flight.
    estimated_cost_usd: NonNegativeCost | None = None
    #: The highest ``costUsdAccrued`` the step reported in step-progress while in flight.
    accrued_cost_usd: NonNegativeCost = 0.0
    #: An approval gate from the step's definition: its result waits for a person.
    gate: GateSpec | None = None
    #: The verdict the step waits for, while ``status`` is ``waiting`` on a gate.
    approval: Approval | None = None

    @property
    def awaited_job(self) -> ExternalJob | None:
        """The provider job the step waits for now (None unless it waits for a provider)."""
        if (
            self.status is not StepStatus.WAITING
            or self.approval is not None
            or not self.external_jobs
        ):
            return None
        return self.external_jobs[-1]


class PipelineRun(CamelModel):
    """A pipeline run: its steps, status, cost and version.

    ``version`` is owned by the store: ``create`` stores version 1 and every update adds one.
    ``events`` is filled by ``get``; writes return the record without its log (read it with
    ``list_events``), so a write costs the same however long the log is.
    """

    run_id: Identifier
    pipeline_id: Identifier
    status: PipelineRunStatus = PipelineRunStatus.PENDING
    tenant_id: Identifier | None = None
    pipeline_def_hash: str = ""
    idempotency_key: Identifier | None = None
    external_job_id: Annotated[str, AfterValidator(_names_its_provider)] | None = None
    external_job_ids: dict[Identifier, Identifier] = Field(default_factory=dict)
    current_step_index: int = Field(default=0, ge=0)
    steps: Annotated[list[StepState], AfterValidator(_unique_step_ids)] = Field(
        default_factory=list
    )
    events: list[PipelineEvent] = Field(default_factory=list)
    error: str | None = None
    budget: dict[str, Any] | None = None
    failure_policy: FailurePolicy = FailurePolicy.FAIL_FAST
    #: The token of the run's latest suspension; ``resumable`` while it is live (single-use).
    resume_token: str | None = None
    resumable: bool = False
    #: Why the run is suspended (None unless it is).
    suspend_reason: SuspendReason | None = None
    started_at: UtcDatetime | None = None
    cost_usd: NonNegativeCost = 0.0
    version: int = Field(default=0, ge=0)
    created_at: UtcDatetime = Field(default_factory=utc_now)
    updated_at: UtcDatetime = Field(default_factory=utc_now)
    completed_at: UtcDatetime | None = None
    #: The run this one re-runs (``MpState.rerun``), if it is a re-run.
    rerun_of: Identifier | None = None
    #: The re-runs of this run, oldest first (written on the original, which stays final).
    reruns: list[Identifier] = Field(default_factory=list)
    #: The run's OpenTelemetry trace context (W3C ``traceparent``), when tracing is on
    #: (``mpstate.tracing``): every step's span joins this trace.
    trace_context: dict[str, str] | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the run is completed, failed or cancelled."""
        return self.status in TERMINAL_RUN_STATUSES

    def external_jobs(self) -> set[tuple[str, str]]:
        """Every (provider, job id) this run answers to: each step's jobs, the run-level map and
        the legacy single id."""
        jobs = set(self.external_job_ids.items())
        jobs.update((job.provider, job.job_id) for step in self.steps for job in step.external_jobs)
        if self.external_job_id is not None:
            provider, _, job_id = self.external_job_id.partition(":")
            jobs.add((provider, job_id))
        return jobs

    def step_of_job(self, provider: str, job_id: str) -> StepState | None:
        """The step that awaited this provider job (at any attempt), or None."""
        for step in self.steps:
            if any(j.provider == provider and j.job_id == job_id for j in step.external_jobs):
                return step
        return None

    def step(self, step_id: str) -> StepState:
        """The step with this id (``KeyError`` when the run has none)."""
        for step in self.steps:
            if step.step_id == step_id:
                return step
        raise KeyError(step_id)
