"""The reducer: a run's state rebuilt from its definition and its event log, by one pure function.

``replay_run(run, events)`` keeps what the log does not describe (ids, steps' operations and
inputs, tenant, budget, timestamps) from ``run`` and recomputes every field the log does describe,
event by event. A run written only through transitions (``mpstate.celery``, ``store.cancel``)
equals its replay on those fields; ``LOG_FIELDS`` and ``log_state`` say which fields they are.

What each event means, in the order the log applies it:

=================  ==============================================================================
run-created        nothing (the definition is the starting point: pending, no step begun)
run-started        the run is running
step-started       the step is running, ``attempts`` at least ``attempt + 1``; the run is running
step-waiting       the step waits for a provider's job
step-progress      nothing (progress is not state)
step-completed     the step is completed with its artifacts and cost; the run's cost grows by it
                   (a suspended run is running again: logs written before graphs existed have no
                   run-resumed there)
step-cached        like step-completed, with the cache key and no cost
step-failed        the step's last error; a retryable failure leaves it running (a suspended run
                   is running again: its step is enqueued once more), a final one fails it
step-gated         by its verdict: ``over-budget`` holds the step (held), ``within-budget``
                   releases it (pending), ``awaiting-approval`` makes it wait for a verdict
                   (waiting); any other verdict changes nothing by itself, and a
                   ``gate-rejected`` run-failed right after it (the same commit) marks that step
                   gated
run-suspended      the run is suspended with its reason, its resume token and resumable
run-resumed        the run is running and no longer resumable
run-completed      the run is completed and no longer resumable
run-failed         the run is failed with the terminal reason as its error, no longer resumable
run-cancelled      the run is cancelled with the reason as its error, no longer resumable
=================  ==============================================================================

``current_step_index`` is the first step, in definition order, not completed or cached
(``mpstate.graph.first_open_index``), after every event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mpstate.events import (
    AWAITING_APPROVAL,
    GATE_REJECTED,
    OVER_BUDGET,
    WITHIN_BUDGET,
    PipelineEvent,
    RunCancelled,
    RunFailed,
    RunResumed,
    RunStarted,
    RunSuspended,
    StepCached,
    StepCompleted,
    StepFailed,
    StepGated,
    StepStarted,
    StepWaiting,
)
from mpstate.graph import first_open_index
from mpstate.models import (
    PipelineRun,
    PipelineRunStatus,
    StepError,
    StepState,
    StepStatus,
    SuspendReason,
)

__all__ = ["LOG_FIELDS", "STEP_LOG_FIELDS", "log_state", "replay_run"]

#: Run fields the event log determines (compared by ``log_state``).
LOG_FIELDS = ("status", "current_step_index", "cost_usd", "error", "resume_token", "resumable")
#: Step fields the event log determines. ``last_error`` is compared by its code and retryable
#: flag: the log does not keep the message.
STEP_LOG_FIELDS = ("status", "attempts", "artifact_ids", "cost_usd", "cache_key", "last_error")

#: Cost sums are rounded like the transitions round them, so float noise is not a difference.
_COST_DIGITS = 10

#: step-gated verdicts that set the step's status (``mpstate.celery.transitions`` writes them).
_VERDICT_STATUS = {
    OVER_BUDGET: StepStatus.HELD,
    WITHIN_BUDGET: StepStatus.PENDING,
    AWAITING_APPROVAL: StepStatus.WAITING,
}


def replay_run(run: PipelineRun, events: Iterable[PipelineEvent]) -> PipelineRun:
    """``run`` with every log-determined field recomputed from ``events`` (in seq order).

    Pure: nothing is read or written, ``run`` is not modified. The events are the run's whole
    log; the result has no ``events`` of its own.
    """
    state = _Replay(run)
    for event in events:
        state.apply(event)
    return state.result()


def log_state(run: PipelineRun) -> dict[str, Any]:
    """The log-determined part of ``run`` as plain data, for comparing a run with its replay."""
    state: dict[str, Any] = {name: getattr(run, name) for name in LOG_FIELDS}
    state["cost_usd"] = round(run.cost_usd, _COST_DIGITS)
    state["status"] = str(run.status)
    state["steps"] = {step.step_id: _step_log_state(step) for step in run.steps}
    return state


def _step_log_state(step: StepState) -> dict[str, Any]:
    state: dict[str, Any] = {name: getattr(step, name) for name in STEP_LOG_FIELDS}
    state["status"] = str(step.status)
    state["cost_usd"] = round(step.cost_usd, _COST_DIGITS)
    error = step.last_error
    state["last_error"] = None if error is None else (error.code, error.retryable)
    return state


class _Replay:
    """The fold's accumulator: the run being rebuilt, mutated by one event at a time."""

    def __init__(self, run: PipelineRun) -> None:
        self.run = run.model_copy(
            update={
                "status": PipelineRunStatus.PENDING,
                "current_step_index": 0,
                "cost_usd": 0.0,
                "error": None,
                "resume_token": None,
                "resumable": False,
                "suspend_reason": None,
                "events": [],
            }
        )
        self.steps = [
            step.model_copy(
                update={
                    "status": StepStatus.PENDING,
                    "attempts": 0,
                    "artifact_ids": [],
                    "cost_usd": 0.0,
                    "cache_key": None,
                    "last_error": None,
                }
            )
            for step in run.steps
        ]
        self.index = {step.step_id: position for position, step in enumerate(self.steps)}
        self.previous: PipelineEvent | None = None

    def result(self) -> PipelineRun:
        return self.run.model_copy(update={"steps": self.steps})

    def _step(self, step_id: str) -> StepState:
        return self.steps[self.index[step_id]]

    def _set_step(self, step_id: str, **fields: Any) -> None:
        position = self.index[step_id]
        self.steps[position] = self.steps[position].model_copy(update=fields)

    def _set_run(self, **fields: Any) -> None:
        self.run = self.run.model_copy(update=fields)

    def apply(self, event: PipelineEvent) -> None:
        previous, self.previous = self.previous, event
        step_id = getattr(event, "step_id", None)
        if step_id is not None and step_id not in self.index:
            return  # an event about a step the run does not have changes no step
        if isinstance(event, RunStarted):
            self._set_run(status=PipelineRunStatus.RUNNING)
        elif isinstance(event, StepStarted):
            self._started(event)
        elif isinstance(event, StepCompleted):
            self._finished(event.step_id, StepStatus.COMPLETED, event.artifact_ids, event.cost_usd)
        elif isinstance(event, StepCached):
            self._finished(event.step_id, StepStatus.CACHED, event.artifact_ids, 0.0)
            self._set_step(event.step_id, cache_key=event.cache_key)
        elif isinstance(event, StepFailed):
            self._failed(event)
        elif isinstance(event, StepWaiting):
            self._set_step(event.step_id, status=StepStatus.WAITING)
        elif isinstance(event, StepGated):
            status = _VERDICT_STATUS.get(event.verdict)
            if status is not None:
                self._set_step(event.step_id, status=status)
        elif isinstance(event, RunSuspended):
            self._set_run(
                status=PipelineRunStatus.SUSPENDED,
                resume_token=event.resume_token,
                resumable=True,
                suspend_reason=SuspendReason(event.reason),
            )
        elif isinstance(event, RunResumed):
            self._set_run(status=PipelineRunStatus.RUNNING, resumable=False, suspend_reason=None)
        elif event.kind == "run-completed":
            self._set_run(status=PipelineRunStatus.COMPLETED, resumable=False, suspend_reason=None)
        elif isinstance(event, RunFailed):
            if (
                event.code == GATE_REJECTED
                and isinstance(previous, StepGated)
                and previous.step_id in self.index
            ):
                self._set_step(previous.step_id, status=StepStatus.GATED)
            self._set_run(
                status=PipelineRunStatus.FAILED,
                error=event.terminal_reason,
                resumable=False,
                suspend_reason=None,
            )
        elif isinstance(event, RunCancelled):
            self._set_run(
                status=PipelineRunStatus.CANCELLED,
                error=event.reason,
                resumable=False,
                suspend_reason=None,
            )

    def _started(self, event: StepStarted) -> None:
        step = self._step(event.step_id)
        self._set_step(
            event.step_id, status=StepStatus.RUNNING, attempts=max(step.attempts, event.attempt + 1)
        )
        self._set_run(
            status=PipelineRunStatus.RUNNING, current_step_index=first_open_index(self.steps)
        )

    def _finished(
        self, step_id: str, status: StepStatus, artifact_ids: list[str], cost_usd: float
    ) -> None:
        self._set_step(step_id, status=status, artifact_ids=list(artifact_ids), cost_usd=cost_usd)
        run_status = self.run.status
        if run_status is PipelineRunStatus.SUSPENDED:
            run_status = PipelineRunStatus.RUNNING
        self._set_run(
            status=run_status,
            cost_usd=round(self.run.cost_usd + cost_usd, _COST_DIGITS),
            current_step_index=first_open_index(self.steps),
        )

    def _failed(self, event: StepFailed) -> None:
        error = StepError(code=event.code, retryable=event.retryable)
        status = StepStatus.RUNNING if event.retryable else StepStatus.FAILED
        self._set_step(event.step_id, status=status, last_error=error)
        if event.retryable and self.run.status is PipelineRunStatus.SUSPENDED:
            self._set_run(status=PipelineRunStatus.RUNNING, resumable=False, suspend_reason=None)
