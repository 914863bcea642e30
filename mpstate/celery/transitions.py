"""The step lifecycle as pure functions: given the run as stored, what one transition writes.

Each function returns a ``Transition`` (a patch and the events to commit with it, atomically) or
``None`` when the transition has already happened or must not happen (a duplicate delivery, a late
result for a finished run). No I/O here: ``mpstate.celery.lifecycle`` reads the run, calls one of
these, and commits the result with ``expected_version``, retrying on a version conflict, so every
transition is decided on the run exactly as it was when committed.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpstate.events import (
    EventMeta,
    PipelineEvent,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    RunSuspended,
    StepCached,
    StepCompleted,
    StepFailed,
    StepGated,
    StepStarted,
)
from mpstate.fields import utc_now
from mpstate.models import PipelineRun, PipelineRunStatus, StepError, StepState, StepStatus

__all__ = [
    "Transition",
    "complete_step",
    "fail_awaiting_step",
    "fail_step",
    "gate_step",
    "may_retry",
    "recover_step",
    "resume_step",
    "start_run",
    "start_step",
    "suspend_step",
]

#: The code of the step-failed the reconciler logs for an attempt whose worker is gone.
WORKER_LOST = "worker-lost"

_DONE_STEP = frozenset({StepStatus.COMPLETED, StepStatus.CACHED, StepStatus.FAILED})


@dataclass(frozen=True, slots=True)
class Transition:
    """What to commit: a run patch and the events logged with it."""

    patch: dict[str, Any]
    events: Sequence[PipelineEvent]
    #: The step to enqueue once this transition is committed (advancement), if any.
    next_step: StepState | None = None
    #: The Celery task id to enqueue it under (recorded on the step), or a fresh one.
    next_task_id: str | None = None


def _replace_step(run: PipelineRun, step: StepState) -> list[dict[str, Any]]:
    return [
        (step if s.step_id == step.step_id else s).model_dump(mode="json", by_alias=True)
        for s in run.steps
    ]


def _open_step(run: PipelineRun, step_id: str) -> StepState | None:
    """The step, unless the run is finished or the step is done: nothing applies to it then."""
    if run.is_terminal:
        return None
    step = run.step(step_id)
    return None if step.status in _DONE_STEP else step


def _index_of(run: PipelineRun, step_id: str) -> int:
    for index, step in enumerate(run.steps):
        if step.step_id == step_id:
            return index
    raise KeyError(step_id)


def start_run(run: PipelineRun) -> Transition | None:
    """pending -> running, logging run-started (once)."""
    if run.status is not PipelineRunStatus.PENDING:
        return None
    return Transition(
        {"status": PipelineRunStatus.RUNNING, "startedAt": utc_now()},
        [RunStarted(run_id=run.run_id)],
    )


def start_step(
    run: PipelineRun, step_id: str, *, attempt: int, task_id: str, meta: EventMeta
) -> Transition | None:
    """A task began executing a step: step-started for this attempt.

    ``attempt`` counts from 0 across every message of the step (``identity.attempt_of``).
    ``None`` when the run is finished or suspended, or the step is done: the body
    must not run. A redelivery of the same task id and attempt is logged again with
    ``redelivered`` in meta (a crashed worker's message came back); it never completes the step
    twice.
    """
    if run.is_terminal or run.status is PipelineRunStatus.SUSPENDED:
        return None
    step = run.step(step_id)
    if step.status in _DONE_STEP or step.status is StepStatus.GATED:
        return None
    if _superseded(step, attempt, task_id):
        return None
    updated = step.model_copy(
        update={
            "status": StepStatus.RUNNING,
            "attempts": max(step.attempts, attempt + 1),
            "started_at": step.started_at or utc_now(),
            "task_id": task_id,
        }
    )
    patch: dict[str, Any] = {
        "steps": _replace_step(run, updated),
        "currentStepIndex": _index_of(run, step_id),
    }
    if run.status is PipelineRunStatus.PENDING:
        patch["status"] = PipelineRunStatus.RUNNING
        patch["startedAt"] = utc_now()
    return Transition(
        patch,
        [StepStarted(run_id=run.run_id, step_id=step_id, attempt=attempt, meta=meta)],
    )


def _superseded(step: StepState, attempt: int, task_id: str) -> bool:
    """Whether a message is of an attempt the step has moved past: an older attempt than the
    latest started, or the latest attempt under another task id (the reconciler replaced its
    lost message, and the original came back after all)."""
    latest = step.attempts - 1
    if attempt < latest:
        return True
    return attempt == latest and bool(step.task_id) and task_id != step.task_id


def complete_step(
    run: PipelineRun,
    step_id: str,
    *,
    artifact_ids: list[str],
    cost_usd: float,
    cache_key: str | None,
    meta: EventMeta,
) -> Transition | None:
    """The step's task returned: step-completed (or step-cached), then advance or complete the run.

    ``None`` for a finished run or a step already done: a duplicate or late result changes
    nothing and enqueues nothing.
    """
    step = _open_step(run, step_id)
    if step is None:
        return None
    now = utc_now()
    cached = cache_key is not None
    updated = step.model_copy(
        update={
            "status": StepStatus.CACHED if cached else StepStatus.COMPLETED,
            "artifact_ids": artifact_ids,
            "cost_usd": cost_usd,
            "cache_key": cache_key,
            "completed_at": now,
            "error": None,
        }
    )
    total = round(run.cost_usd + cost_usd, 10)
    event: PipelineEvent = (
        StepCached(
            run_id=run.run_id,
            step_id=step_id,
            cache_key=cache_key,
            artifact_ids=artifact_ids,
            meta=meta,
        )
        if cache_key is not None
        else StepCompleted(
            run_id=run.run_id,
            step_id=step_id,
            artifact_ids=artifact_ids,
            cost_usd=cost_usd,
            meta=meta,
        )
    )
    index = _index_of(run, step_id)
    patch: dict[str, Any] = {
        "steps": _replace_step(run, updated),
        "costUsd": total,
        "currentStepIndex": index + 1,
    }
    if index + 1 >= len(run.steps):
        patch.update(status=PipelineRunStatus.COMPLETED, completedAt=now)
        return Transition(patch, [event, RunCompleted(run_id=run.run_id, total_cost_usd=total)])
    if run.status is PipelineRunStatus.SUSPENDED:
        patch["status"] = PipelineRunStatus.RUNNING
    return Transition(patch, [event], next_step=run.steps[index + 1])


def fail_step(
    run: PipelineRun,
    step_id: str,
    *,
    code: str,
    message: str,
    retryable: bool,
    meta: EventMeta,
) -> Transition | None:
    """The step's attempt failed: step-failed; when it will not be retried, run-failed too."""
    step = _open_step(run, step_id)
    if step is None:
        return None
    now = utc_now()
    error = StepError(code=code, message=message, retryable=retryable, at=now)
    updated = step.model_copy(
        update={
            "status": StepStatus.RUNNING if retryable else StepStatus.FAILED,
            "last_error": error,
            "error": None if retryable else message or code,
            "completed_at": None if retryable else now,
        }
    )
    events: list[PipelineEvent] = [
        StepFailed(run_id=run.run_id, step_id=step_id, code=code, retryable=retryable, meta=meta)
    ]
    patch: dict[str, Any] = {"steps": _replace_step(run, updated)}
    if retryable and run.status is PipelineRunStatus.SUSPENDED:
        # The step runs again: a suspended run would refuse to start it.
        patch.update(status=PipelineRunStatus.RUNNING, resumable=False)
    if not retryable:
        reason = f"step {step_id} failed: {code}" + (f": {message}" if message else "")
        patch.update(status=PipelineRunStatus.FAILED, error=reason, completedAt=now)
        events.append(RunFailed(run_id=run.run_id, code=code, terminal_reason=reason))
    return Transition(patch, events)


def gate_step(
    run: PipelineRun, step_id: str, *, gate_type: str, verdict: str, passed: bool, meta: EventMeta
) -> Transition | None:
    """A gate decided on the step: step-gated; a rejection fails the run (``gate-rejected``)."""
    step = _open_step(run, step_id)
    if step is None:
        return None
    events: list[PipelineEvent] = [
        StepGated(
            run_id=run.run_id, step_id=step_id, gate_type=gate_type, verdict=verdict, meta=meta
        )
    ]
    if passed:
        return Transition({}, events)
    now = utc_now()
    reason = f"step {step_id} rejected by gate {gate_type}: {verdict}"
    updated = step.model_copy(
        update={"status": StepStatus.GATED, "error": reason, "completed_at": now}
    )
    events.append(RunFailed(run_id=run.run_id, code="gate-rejected", terminal_reason=reason))
    patch = {
        "steps": _replace_step(run, updated),
        "status": PipelineRunStatus.FAILED,
        "error": reason,
        "completedAt": now,
    }
    return Transition(patch, events)


def suspend_step(
    run: PipelineRun, step_id: str, *, provider: str, job_id: str, meta: EventMeta
) -> Transition | None:
    """The step handed work to an external provider: record the job and suspend the run."""
    step = _open_step(run, step_id)
    if step is None:
        return None
    token = secrets.token_urlsafe(16)
    jobs = {**run.external_job_ids, provider: job_id}
    return Transition(
        {
            "externalJobIds": jobs,
            "status": PipelineRunStatus.SUSPENDED,
            "resumeToken": token,
            "resumable": True,
        },
        [RunSuspended(run_id=run.run_id, reason="webhook", resume_token=token, meta=meta)],
    )


def resume_step(
    run: PipelineRun,
    step_id: str,
    *,
    artifact_ids: list[str],
    cost_usd: float,
    meta: EventMeta,
) -> Transition | None:
    """A provider called back with the suspended step's result: run-resumed, step-completed, and
    the next step (or run-completed), in one commit. ``None`` unless the run is suspended on that
    step, so a duplicate or late callback changes nothing."""
    if run.status is not PipelineRunStatus.SUSPENDED:
        return None
    index = run.current_step_index
    if index >= len(run.steps) or run.steps[index].step_id != step_id:
        return None  # suspended on another step
    completed = complete_step(
        run, step_id, artifact_ids=artifact_ids, cost_usd=cost_usd, cache_key=None, meta=meta
    )
    if completed is None:
        return None
    resumed = RunResumed(run_id=run.run_id, from_step_id=step_id, meta=meta)
    patch = {"status": PipelineRunStatus.RUNNING, "resumable": False, **completed.patch}
    return Transition(patch, [resumed, *completed.events], next_step=completed.next_step)


def recover_step(
    run: PipelineRun,
    step_id: str,
    *,
    seen_version: int,
    requeue: bool,
    task_id: str,
    default_max_retries: int | None,
    meta: EventMeta,
) -> Transition | None:
    """The reconciler found the run's current step stalled at ``seen_version``: re-enqueue it
    under ``task_id``, or fail it.

    A running step lost its attempt (its worker died and the message is not coming back soon):
    step-failed ``worker-lost``, retryable when ``requeue`` and the step has retries left, then
    the step is enqueued again; otherwise run-failed. A pending step was never enqueued (the
    process that advanced the run died before publishing): it is enqueued, with no event (nothing
    ran). ``None`` if anything was written since the scan saw the run: it is not stalled then.
    """
    if run.version != seen_version or run.status is not PipelineRunStatus.RUNNING:
        return None
    index = _index_of(run, step_id)
    step = run.steps[index]
    if index != run.current_step_index:
        return None
    if step.status is StepStatus.PENDING:
        updated = step.model_copy(update={"task_id": task_id})
        return Transition(
            {"steps": _replace_step(run, updated)}, [], next_step=updated, next_task_id=task_id
        )
    if step.status is not StepStatus.RUNNING:
        return None
    retry = requeue and may_retry(step, step.attempts, default_max_retries)
    failed = fail_step(
        run,
        step_id,
        code=WORKER_LOST,
        message="the step's attempt was lost: no event for longer than the reconciler allows",
        retryable=retry,
        meta=meta,
    )
    if failed is None or not retry:
        return failed
    steps = [
        {**dumped, "taskId": task_id} if dumped["stepId"] == step_id else dumped
        for dumped in failed.patch["steps"]
    ]
    return Transition(
        {**failed.patch, "steps": steps},
        failed.events,
        next_step=step.model_copy(update={"task_id": task_id}),
        next_task_id=task_id,
    )


def may_retry(step: StepState, attempts_made: int, default_max_retries: int | None) -> bool:
    """Whether a step that has made ``attempts_made`` attempts may make another.

    The limit is the step's ``max_retries``, else the task's default (Celery's 3); None: no limit.
    """
    limit = step.max_retries if step.max_retries is not None else default_max_retries
    return limit is None or attempts_made <= limit


def fail_awaiting_step(
    run: PipelineRun,
    step_id: str,
    *,
    code: str,
    message: str,
    retryable: bool,
    default_max_retries: int | None,
    meta: EventMeta,
) -> Transition | None:
    """A provider reported the suspended step's job failed: step-failed, then either the step
    runs again (a retryable failure within its retry limit: re-enqueued by the commit's winner)
    or run-failed. ``None`` unless the run is still suspended on that step, so of concurrent or
    repeated failure callbacks exactly one applies."""
    if run.status is not PipelineRunStatus.SUSPENDED:
        return None
    index = run.current_step_index
    if index >= len(run.steps) or run.steps[index].step_id != step_id:
        return None
    step = run.steps[index]
    retry = retryable and may_retry(step, step.attempts, default_max_retries)
    failed = fail_step(run, step_id, code=code, message=message, retryable=retry, meta=meta)
    if failed is None or not retry:
        return failed
    return Transition(failed.patch, failed.events, next_step=step)
