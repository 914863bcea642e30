"""The step lifecycle as pure functions: given the run as stored, what one transition writes.

Each function returns a ``Transition`` (a patch and the events to commit with it, atomically, and
the steps to publish once it is committed) or ``None`` when the transition has already happened
or must not happen (a duplicate delivery, a late result for a finished run). No I/O here:
``mpstate.celery.lifecycle`` reads the run, calls one of these, and commits the result with
``expected_version``, retrying on a version conflict, so every transition is decided on the run
exactly as it was when committed.

A run is a graph of steps (``mpstate.graph``; a linear run is the simplest one). Every transition
that changes a step ends in ``_settle``, which decides the rest from the steps alone:

- **Fan-out.** The steps the change made ready are published, each by exactly this commit (the
  commit that made it ready), under a task id recorded on the step.
- **Run status.** Completed once every step is done (run-completed). Failed when a step failed for
  good: at once under ``fail-fast`` (running siblings are revoked, steps not started never start),
  or once nothing else can run under ``finish-branches`` (run-failed). Suspended when no step runs
  or is queued and at least one waits for a provider (run-suspended, with a fresh resume token).
  Running otherwise; a provider's callback that wakes a suspended run logs run-resumed first, and
  if the run still only waits on other providers it is suspended again (a fresh token).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
    StepWaiting,
)
from mpstate.fields import utc_now
from mpstate.graph import active_steps, first_open_index, newly_ready, ready_steps
from mpstate.models import (
    DONE_STEP_STATUSES,
    ExternalJob,
    FailurePolicy,
    PipelineRun,
    PipelineRunStatus,
    StepError,
    StepState,
    StepStatus,
)

__all__ = [
    "EXTERNAL_TIMEOUT",
    "WORKER_LOST",
    "Transition",
    "awaits_job",
    "complete_step",
    "fail_awaiting_step",
    "fail_step",
    "gate_step",
    "may_retry",
    "recover_steps",
    "resume_step",
    "start_run",
    "start_step",
    "suspend_step",
]

#: The code of the step-failed the reconciler logs for an attempt whose worker is gone.
WORKER_LOST = "worker-lost"
#: The code of the step-failed logged when a provider's answer did not come by the deadline.
EXTERNAL_TIMEOUT = "external-timeout"

#: Statuses in which nothing more happens to a step.
_CLOSED_STEP = frozenset(
    {StepStatus.COMPLETED, StepStatus.CACHED, StepStatus.FAILED, StepStatus.GATED}
)


@dataclass(frozen=True, slots=True)
class Transition:
    """What to commit (a run patch and the events logged with it) and what to do after."""

    patch: dict[str, Any]
    events: Sequence[PipelineEvent]
    #: Steps to publish once committed, each under the task id the patch records on it.
    enqueue: tuple[StepState, ...] = ()
    #: Celery task ids to revoke once committed (steps a failed run will not need).
    revoke: tuple[str, ...] = field(default=())


def _dump(steps: Sequence[StepState]) -> list[dict[str, Any]]:
    return [step.model_dump(mode="json", by_alias=True) for step in steps]


def _replaced(steps: Sequence[StepState], *updated: StepState) -> list[StepState]:
    by_id = {step.step_id: step for step in updated}
    return [by_id.get(step.step_id, step) for step in steps]


def _open_step(run: PipelineRun, step_id: str) -> StepState | None:
    """The step, unless the run is finished or the step is: nothing applies to it then."""
    if run.is_terminal:
        return None
    step = run.step(step_id)
    return None if step.status in _CLOSED_STEP else step


def _new_task_id() -> str:
    return uuid.uuid4().hex


def _settle(
    run: PipelineRun,
    steps: list[StepState],
    events: list[PipelineEvent],
    patch: dict[str, Any],
    *,
    now: datetime,
    resumed_from: str | None = None,
    requeue: Sequence[str] = (),
    meta: EventMeta | None = None,
) -> Transition:
    """Finish a transition that changed ``steps``: publish what it made ready (and ``requeue``,
    steps to publish again), and set the run's status from its steps (see the module doc).

    ``resumed_from``: the step whose provider callback this is; a suspended run logs run-resumed
    from it. ``meta`` goes on the run-resumed and run-suspended this logs.
    """
    publish = {step.step_id for step in newly_ready(run.steps, steps)} | set(requeue)
    steps = [
        step.model_copy(update={"task_id": _new_task_id()}) if step.step_id in publish else step
        for step in steps
    ]
    patch["steps"] = _dump(steps)
    patch["currentStepIndex"] = first_open_index(steps)
    lead: list[PipelineEvent] = []
    tail: list[PipelineEvent] = []
    suspended = run.status is PipelineRunStatus.SUSPENDED
    if suspended and resumed_from is not None:
        lead.append(RunResumed(run_id=run.run_id, from_step_id=resumed_from, meta=meta))
        patch.update(status=PipelineRunStatus.RUNNING, resumable=False)
    if all(step.status in DONE_STEP_STATUSES for step in steps):
        total = patch.get("costUsd", run.cost_usd)
        patch.update(status=PipelineRunStatus.COMPLETED, completedAt=now)
        tail.append(RunCompleted(run_id=run.run_id, total_cost_usd=total))
        return Transition(patch, [*lead, *events, *tail])
    active = active_steps(steps)
    failure = _run_failure(run, steps, active)
    if failure is not None:
        code, reason = failure
        patch.update(status=PipelineRunStatus.FAILED, error=reason, completedAt=now)
        tail.append(RunFailed(run_id=run.run_id, code=code, terminal_reason=reason))
        revoke = tuple(step.task_id for step in active if step.task_id)
        return Transition(patch, [*lead, *events, *tail], revoke=revoke)
    waiting = any(step.status is StepStatus.WAITING for step in steps)
    if active:
        if run.status is not PipelineRunStatus.RUNNING:
            patch.update(status=PipelineRunStatus.RUNNING, resumable=False)
            if run.status is PipelineRunStatus.PENDING:
                patch["startedAt"] = now
    elif waiting and (not suspended or lead):
        # Nothing runs or is queued, and a step waits for a provider.
        token = secrets.token_urlsafe(16)
        patch.update(status=PipelineRunStatus.SUSPENDED, resumeToken=token, resumable=True)
        tail.append(
            RunSuspended(run_id=run.run_id, reason="webhook", resume_token=token, meta=meta)
        )
    enqueue = tuple(step for step in steps if step.step_id in publish)
    return Transition(patch, [*lead, *events, *tail], enqueue=enqueue)


def _run_failure(
    run: PipelineRun, steps: Sequence[StepState], active: Sequence[StepState]
) -> tuple[str, str] | None:
    """(code, reason) when the run fails now: a step failed for good and, under
    ``finish-branches``, nothing else runs, is queued or waits."""
    failed = [step for step in steps if step.status is StepStatus.FAILED]
    if not failed:
        return None
    if run.failure_policy is FailurePolicy.FINISH_BRANCHES and (
        active or any(step.status is StepStatus.WAITING for step in steps)
    ):
        return None
    step = failed[0]
    error = step.last_error
    code = error.code if error is not None else "step-failed"
    message = error.message if error is not None else ""
    return code, f"step {step.step_id} failed: {code}" + (f": {message}" if message else "")


def start_run(
    run: PipelineRun,
    carried: Mapping[str, StepState] | None = None,
    *,
    meta: EventMeta | None = None,
) -> Transition | None:
    """pending -> running: run-started, and the steps with no dependencies are published.

    ``carried``: steps a re-run takes over from the run it re-runs, by id; each is logged as
    step-cached with its artifacts and outputs (and no cost) in the same commit.
    """
    if run.status is not PipelineRunStatus.PENDING:
        return None
    now = utc_now()
    events: list[PipelineEvent] = [RunStarted(run_id=run.run_id, meta=meta)]
    steps = list(run.steps)
    for step_id, source in (carried or {}).items():
        cache_key = f"rerun:{run.rerun_of}:{step_id}"
        step = run.step(step_id).model_copy(
            update={
                "status": StepStatus.CACHED,
                "artifact_ids": list(source.artifact_ids),
                "outputs": dict(source.outputs),
                "cache_key": cache_key,
                "completed_at": now,
            }
        )
        steps = _replaced(steps, step)
        events.append(
            StepCached(
                run_id=run.run_id,
                step_id=step_id,
                cache_key=cache_key,
                artifact_ids=list(source.artifact_ids),
            )
        )
    patch: dict[str, Any] = {"status": PipelineRunStatus.RUNNING, "startedAt": now}
    # Every step counts as newly ready: nothing was published for a pending run.
    pending = run.model_copy(update={"steps": []})
    return _settle(pending, steps, events, patch, now=now)


def start_step(
    run: PipelineRun, step_id: str, *, attempt: int, task_id: str, meta: EventMeta
) -> Transition | None:
    """A task began executing a step: step-started for this attempt.

    ``attempt`` counts from 0 across every message of the step (``identity.attempt_of``).
    ``None`` when the body must not run: the run is finished or suspended, the step is done,
    gated or waiting for a provider, a step it depends on is not done, or the message is of a
    superseded attempt. A redelivery of the same task id and attempt is logged again with
    ``redelivered`` in meta (a crashed worker's message came back); it never completes the step
    twice.
    """
    if run.is_terminal or run.status is PipelineRunStatus.SUSPENDED:
        return None
    step = run.step(step_id)
    if step.status in _CLOSED_STEP or step.status is StepStatus.WAITING:
        return None
    if step.status is StepStatus.PENDING and step not in ready_steps(run.steps):
        return None
    if _superseded(step, attempt, task_id):
        return None
    now = utc_now()
    updated = step.model_copy(
        update={
            "status": StepStatus.RUNNING,
            "attempts": max(step.attempts, attempt + 1),
            "started_at": step.started_at or now,
            "task_id": task_id,
        }
    )
    steps = _replaced(run.steps, updated)
    patch: dict[str, Any] = {"steps": _dump(steps), "currentStepIndex": first_open_index(steps)}
    if run.status is PipelineRunStatus.PENDING:
        patch["status"] = PipelineRunStatus.RUNNING
        patch["startedAt"] = now
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


def _complete(  # noqa: PLR0917 - private, the two callers pass the result as it came
    run: PipelineRun,
    step: StepState,
    artifact_ids: list[str],
    cost_usd: float,
    cache_key: str | None,
    outputs: Mapping[str, Any],
    meta: EventMeta,
) -> Transition:
    """The step done with its result (step-completed, or step-cached with a cache key), its cost
    added to the run's, then what that makes ready (run-resumed first if the run was
    suspended)."""
    now = utc_now()
    updated = step.model_copy(
        update={
            "status": StepStatus.CACHED if cache_key is not None else StepStatus.COMPLETED,
            "artifact_ids": artifact_ids,
            "cost_usd": cost_usd,
            "cache_key": cache_key,
            "outputs": dict(outputs),
            "completed_at": now,
            "error": None,
        }
    )
    event: PipelineEvent = (
        StepCached(
            run_id=run.run_id,
            step_id=step.step_id,
            cache_key=cache_key,
            artifact_ids=artifact_ids,
            meta=meta,
        )
        if cache_key is not None
        else StepCompleted(
            run_id=run.run_id,
            step_id=step.step_id,
            artifact_ids=artifact_ids,
            cost_usd=cost_usd,
            meta=meta,
        )
    )
    patch: dict[str, Any] = {"costUsd": round(run.cost_usd + cost_usd, 10)}
    steps = _replaced(run.steps, updated)
    return _settle(run, steps, [event], patch, now=now, resumed_from=step.step_id, meta=meta)


def complete_step(
    run: PipelineRun,
    step_id: str,
    *,
    artifact_ids: list[str],
    cost_usd: float,
    cache_key: str | None,
    meta: EventMeta,
    outputs: Mapping[str, Any] | None = None,
) -> Transition | None:
    """The step's task returned: step-completed (or step-cached), then advance the run.

    ``None`` for a finished run or a step already done or waiting for a provider: a duplicate or
    late result changes nothing and publishes nothing.
    """
    step = _open_step(run, step_id)
    if step is None or step.status is StepStatus.WAITING:
        return None
    return _complete(run, step, artifact_ids, cost_usd, cache_key, outputs or {}, meta)


def _failed_step(
    step: StepState, *, code: str, message: str, retryable: bool, now: datetime
) -> StepState:
    error = StepError(code=code, message=message, retryable=retryable, at=now)
    return step.model_copy(
        update={
            "status": StepStatus.RUNNING if retryable else StepStatus.FAILED,
            "last_error": error,
            "error": None if retryable else message or code,
            "completed_at": None if retryable else now,
        }
    )


def fail_step(
    run: PipelineRun,
    step_id: str,
    *,
    code: str,
    message: str,
    retryable: bool,
    meta: EventMeta,
) -> Transition | None:
    """The step's attempt failed: step-failed; when it will not be retried the run fails (at
    once, or under ``finish-branches`` once its other branches have ended)."""
    step = _open_step(run, step_id)
    if step is None:
        return None
    now = utc_now()
    updated = _failed_step(step, code=code, message=message, retryable=retryable, now=now)
    events: list[PipelineEvent] = [
        StepFailed(run_id=run.run_id, step_id=step_id, code=code, retryable=retryable, meta=meta)
    ]
    return _settle(run, _replaced(run.steps, updated), events, {}, now=now, meta=meta)


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
    steps = _replaced(run.steps, updated)
    events.append(RunFailed(run_id=run.run_id, code="gate-rejected", terminal_reason=reason))
    patch = {
        "steps": _dump(steps),
        "status": PipelineRunStatus.FAILED,
        "error": reason,
        "completedAt": now,
    }
    revoke = tuple(s.task_id for s in active_steps(steps) if s.task_id and s.step_id != step_id)
    return Transition(patch, events, revoke=revoke)


def suspend_step(
    run: PipelineRun,
    step_id: str,
    *,
    provider: str,
    job_id: str,
    meta: EventMeta,
    timeout_s: float | None = None,
) -> Transition | None:
    """The step handed its work to a provider: step-waiting, with the job recorded on the step
    (and in the run-level ``external_job_ids`` map, kept for compatibility). The run is
    suspended when no other step runs or is queued. ``timeout_s``: the wait's deadline, from
    now."""
    step = _open_step(run, step_id)
    if step is None or step.status is not StepStatus.RUNNING:
        return None
    now = utc_now()
    job = ExternalJob(
        provider=provider,
        job_id=job_id,
        attempt=max(step.attempts - 1, 0),
        since=now,
        deadline=None if timeout_s is None else now + timedelta(seconds=timeout_s),
    )
    updated = step.model_copy(
        update={"status": StepStatus.WAITING, "external_jobs": [*step.external_jobs, job]}
    )
    events: list[PipelineEvent] = [
        StepWaiting(run_id=run.run_id, step_id=step_id, provider=provider, job_id=job_id, meta=meta)
    ]
    patch: dict[str, Any] = {"externalJobIds": {**run.external_job_ids, provider: job_id}}
    return _settle(run, _replaced(run.steps, updated), events, patch, now=now, meta=meta)


def awaits_job(run: PipelineRun, step: StepState, provider: str, job_id: str) -> bool:
    """Whether ``step`` is waiting for exactly this job: a callback for an earlier attempt's job,
    or for a step that is no longer waiting, is late and changes nothing.

    A run suspended before steps recorded their jobs (a running step at ``current_step_index``
    and the job in the run-level map) is accepted too, so an upgrade does not strand it.
    """
    if run.is_terminal:
        return False
    awaited = step.awaited_job
    if awaited is not None:
        return awaited.provider == provider and awaited.job_id == job_id
    return (
        not step.external_jobs
        and step.status is StepStatus.RUNNING
        and run.status is PipelineRunStatus.SUSPENDED
        and run.current_step_index < len(run.steps)
        and run.steps[run.current_step_index].step_id == step.step_id
        and run.external_job_ids.get(provider) == job_id
    )


def resume_step(
    run: PipelineRun,
    step_id: str,
    *,
    provider: str,
    job_id: str,
    artifact_ids: list[str],
    cost_usd: float,
    meta: EventMeta,
    outputs: Mapping[str, Any] | None = None,
) -> Transition | None:
    """A provider called back with a waiting step's result: step-completed and what it makes
    ready, in one commit (run-resumed first when the run was suspended). ``None`` unless the step
    waits for this job, so a duplicate, late or superseded callback changes nothing."""
    step = run.step(step_id)
    if not awaits_job(run, step, provider, job_id):
        return None
    return _complete(run, step, artifact_ids, cost_usd, None, outputs or {}, meta)


def fail_awaiting_step(
    run: PipelineRun,
    step_id: str,
    *,
    provider: str,
    job_id: str,
    code: str,
    message: str,
    retryable: bool,
    default_max_retries: int | None,
    meta: EventMeta,
) -> Transition | None:
    """A provider reported a waiting step's job failed: step-failed, then either the step runs
    again (a retryable failure within its retry limit: published by the commit's winner) or it
    fails for good. ``None`` unless the step waits for this job, so of concurrent or repeated
    failure callbacks exactly one applies."""
    step = run.step(step_id)
    if not awaits_job(run, step, provider, job_id):
        return None
    retry = retryable and may_retry(step, step.attempts, default_max_retries)
    now = utc_now()
    updated = _failed_step(step, code=code, message=message, retryable=retry, now=now)
    events: list[PipelineEvent] = [
        StepFailed(run_id=run.run_id, step_id=step_id, code=code, retryable=retry, meta=meta)
    ]
    return _settle(
        run,
        _replaced(run.steps, updated),
        events,
        {},
        now=now,
        requeue=(step_id,) if retry else (),
    )


def recover_steps(
    run: PipelineRun,
    step_ids: Sequence[str],
    *,
    seen_version: int,
    requeue: bool,
    retry_limits: Mapping[str, int | None],
    meta: EventMeta,
) -> Transition | None:
    """The reconciler found these steps stalled at ``seen_version``: publish them again under new
    task ids, or fail them, in one commit.

    A running step lost its attempt (its worker died and the message is not coming back soon):
    step-failed ``worker-lost``, retryable when ``requeue`` and the step has retries left, then
    the step is published again; otherwise it fails for good (and the run with it). A ready
    pending step was never published (the process that made it ready died first): it is
    published, with no event (nothing ran). ``None`` if anything was written since the scan saw
    the run: it is not stalled then.
    """
    if run.version != seen_version or run.status is not PipelineRunStatus.RUNNING:
        return None
    ready = {step.step_id for step in ready_steps(run.steps)}
    steps = list(run.steps)
    events: list[PipelineEvent] = []
    republish: list[str] = []
    now = utc_now()
    for step_id in step_ids:
        step = run.step(step_id)
        if step.status is StepStatus.PENDING and step_id in ready:
            republish.append(step_id)
        elif step.status is StepStatus.RUNNING:
            retry = requeue and may_retry(step, step.attempts, retry_limits.get(step_id))
            message = "the step's attempt was lost: no event for longer than the reconciler allows"
            steps = _replaced(
                steps,
                _failed_step(step, code=WORKER_LOST, message=message, retryable=retry, now=now),
            )
            events.append(
                StepFailed(
                    run_id=run.run_id,
                    step_id=step_id,
                    code=WORKER_LOST,
                    retryable=retry,
                    meta=meta,
                )
            )
            if retry:
                republish.append(step_id)
    if not republish and not events:
        return None
    return _settle(run, steps, events, {}, now=now, requeue=republish)


def may_retry(step: StepState, attempts_made: int, default_max_retries: int | None) -> bool:
    """Whether a step that has made ``attempts_made`` attempts may make another.

    The limit is the step's ``max_retries``, else the task's default (Celery's 3); None: no limit.
    """
    limit = step.max_retries if step.max_retries is not None else default_max_retries
    return limit is None or attempts_made <= limit
