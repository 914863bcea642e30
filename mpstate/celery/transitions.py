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
- **Budget.** Of the steps it would publish (and the steps held earlier), only those that fit the
  run's ``maxUsd`` are published; the rest are held (step-gated ``budget`` / ``over-budget``) until
  room is made or ``release_held`` raises the budget (``within-budget``). See ``mpstate.budget``.
- **Run status.** Completed once every step is done (run-completed). Failed when a step failed for
  good: at once under ``fail-fast`` (running siblings are revoked, steps not started never start),
  or once nothing else can run under ``finish-branches`` (run-failed). Suspended when no step runs
  or is queued and something waits: a person's verdict (reason ``gate``: the token is the waiting
  step's approval token), the budget (``budget``) or a provider (``webhook``), with a resume token.
  Running otherwise; a callback, a verdict or a release that wakes a suspended run logs run-resumed
  first, and if the run still waits it is suspended again (a fresh token).

Verdicts and resumes (``decide_gate``, ``release_held``) are decided here too, and raise typed
errors for a finished run or a token that is not live, so a refused answer commits nothing.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mpstate.budget import admit, max_usd
from mpstate.errors import (
    BudgetExceededError,
    InvalidInputError,
    InvalidResumeTokenError,
    InvalidTransitionError,
)
from mpstate.events import (
    APPROVED,
    AWAITING_APPROVAL,
    BUDGET_GATE,
    GATE_REJECTED,
    OVER_BUDGET,
    REJECTED,
    RESERVED_VERDICTS,
    WITHIN_BUDGET,
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
    StepProgress,
    StepStarted,
    StepWaiting,
)
from mpstate.fields import utc_now
from mpstate.graph import active_steps, first_open_index, newly_ready, ready_steps
from mpstate.models import (
    DONE_STEP_STATUSES,
    Approval,
    ExternalJob,
    FailurePolicy,
    GateTimeout,
    PipelineRun,
    PipelineRunStatus,
    StepError,
    StepState,
    StepStatus,
    SuspendReason,
)

__all__ = [
    "AWAITING_APPROVAL",
    "BUDGET_GATE",
    "EXTERNAL_TIMEOUT",
    "OVER_BUDGET",
    "RESERVED_VERDICTS",
    "WITHIN_BUDGET",
    "WORKER_LOST",
    "Transition",
    "await_approval",
    "awaits_job",
    "complete_step",
    "decide_gate",
    "expire_gate",
    "fail_awaiting_step",
    "fail_step",
    "gate_step",
    "may_retry",
    "progress_step",
    "recover_steps",
    "release_held",
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


def _replaced(steps: Sequence[StepState], *updated: StepState) -> list[StepState]:
    by_id = {step.step_id: step for step in updated}
    return [by_id.get(step.step_id, step) for step in steps]


def _open_step(run: PipelineRun, step_id: str) -> StepState | None:
    """The step, unless the run is finished or the step is, or it is held back by the budget
    (only ``release_held`` applies to it then): nothing applies to it."""
    if run.is_terminal:
        return None
    step = run.step(step_id)
    return None if step.status in _CLOSED_STEP or step.status is StepStatus.HELD else step


def _new_task_id() -> str:
    return uuid.uuid4().hex


def _published(step: StepState, now: datetime) -> StepState:
    """The step as a commit publishes it: a new task id, queued from now."""
    return step.model_copy(update={"task_id": _new_task_id(), "queued_at": now})


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
    before: Sequence[PipelineEvent] = (),
) -> Transition:
    """Finish a transition that changed ``steps``: publish what it made ready (and ``requeue``,
    steps to publish again) as far as the budget allows, holding back the rest, and set the
    run's status from its steps (see the module doc).

    ``resumed_from``: the step whose callback or verdict this is; a suspended run logs
    run-resumed from it, after ``before`` (a verdict). ``meta`` goes on the run-resumed and
    run-suspended this logs.
    """
    steps, publish, budgeted = _admit(run, steps, requeue, patch, meta=meta, now=now)
    events = [*events, *budgeted]
    patch["steps"] = list(steps)
    patch["currentStepIndex"] = first_open_index(steps)
    lead: list[PipelineEvent] = list(before)
    tail: list[PipelineEvent] = []
    suspended = run.status is PipelineRunStatus.SUSPENDED
    released = [e.step_id for e in budgeted if e.verdict == WITHIN_BUDGET]
    if suspended and resumed_from is None and released:
        resumed_from = released[0]  # room in the budget wakes the run
    resumed = suspended and resumed_from is not None
    if resumed:
        assert resumed_from is not None
        lead.append(RunResumed(run_id=run.run_id, from_step_id=resumed_from, meta=meta))
        patch.update(status=PipelineRunStatus.RUNNING, resumable=False, suspendReason=None)
    if all(step.status in DONE_STEP_STATUSES for step in steps):
        total = patch.get("costUsd", run.cost_usd)
        patch.update(
            status=PipelineRunStatus.COMPLETED, completedAt=now, resumable=False, suspendReason=None
        )
        tail.append(RunCompleted(run_id=run.run_id, total_cost_usd=total))
        return Transition(patch, [*lead, *events, *tail])
    active = active_steps(steps)
    failure = _run_failure(run, steps, active)
    if failure is not None:
        code, reason = failure
        patch.update(
            status=PipelineRunStatus.FAILED,
            error=reason,
            completedAt=now,
            resumable=False,
            suspendReason=None,
        )
        tail.append(RunFailed(run_id=run.run_id, code=code, terminal_reason=reason))
        revoke = tuple(step.task_id for step in active if step.task_id)
        return Transition(patch, [*lead, *events, *tail], revoke=revoke)
    if active:
        if run.status is not PipelineRunStatus.RUNNING:
            patch.update(status=PipelineRunStatus.RUNNING, resumable=False, suspendReason=None)
            if run.status is PipelineRunStatus.PENDING:
                patch["startedAt"] = now
    elif not suspended or resumed or any(step.step_id in requeue for step in _held_in(steps)):
        # (A suspended run whose retry was just held waits for its budget now.)
        suspension = _suspension(steps)
        if suspension is not None:
            reason, token = suspension
            patch.update(
                status=PipelineRunStatus.SUSPENDED,
                resumeToken=token,
                resumable=True,
                suspendReason=reason,
            )
            tail.append(
                RunSuspended(run_id=run.run_id, reason=reason.value, resume_token=token, meta=meta)
            )
    enqueue = tuple(step for step in steps if step.step_id in publish)
    return Transition(patch, [*lead, *events, *tail], enqueue=enqueue)


def _admit(
    run: PipelineRun,
    steps: list[StepState],
    requeue: Sequence[str],
    patch: Mapping[str, Any],
    *,
    meta: EventMeta | None,
    now: datetime,
) -> tuple[list[StepState], set[str], list[StepGated]]:
    """Which steps this commit publishes: those it made ready, ``requeue`` and the steps held
    back earlier, in definition order, as far as the run's budget allows (``mpstate.budget``).
    Returns the steps (published ones with a new task id, held ones without), the ids to
    publish, and a step-gated for each step newly held (``over-budget``) or released
    (``within-budget``)."""
    ready = {step.step_id for step in newly_ready(run.steps, steps)}
    limit = max_usd(patch.get("budget", run.budget))
    if limit is None:  # no budget, nothing held: publish what is ready
        publish = ready | set(requeue)
        steps = [_published(step, now) if step.step_id in publish else step for step in steps]
        return steps, publish, []
    candidates = ready | set(requeue) | {step.step_id for step in _held_in(steps)}
    admission = admit(
        patch.get("costUsd", run.cost_usd),
        steps,
        [step.step_id for step in steps if step.step_id in candidates],
        limit,
    )
    publish = set(admission.admitted)
    budgeted: list[StepGated] = []
    updated = []
    for step in steps:
        if step.step_id in publish:
            if step.status is StepStatus.HELD:
                budgeted.append(_gated(run, step.step_id, BUDGET_GATE, WITHIN_BUDGET, meta))
                step = step.model_copy(update={"status": StepStatus.PENDING})  # noqa: PLW2901
            step = _published(step, now)  # noqa: PLW2901
        elif step.step_id in admission.held and step.status is not StepStatus.HELD:
            budgeted.append(_gated(run, step.step_id, BUDGET_GATE, OVER_BUDGET, meta))
            step = _held(step)  # noqa: PLW2901
        updated.append(step)
    return updated, publish, budgeted


def _held_in(steps: Sequence[StepState]) -> list[StepState]:
    return [step for step in steps if step.status is StepStatus.HELD]


def _suspension(steps: Sequence[StepState]) -> tuple[SuspendReason, str] | None:
    """Why a run with nothing in flight waits, and its resume token; None if nothing waits.

    The reason an operator must act on comes first: a verdict (the token is the waiting step's
    own), then the budget, then a provider (which needs nobody).
    """
    for step in steps:
        if step.approval is not None and step.status is StepStatus.WAITING:
            return SuspendReason.GATE, step.approval.token
    if any(step.status is StepStatus.HELD for step in steps):
        return SuspendReason.BUDGET, _new_token()
    if any(step.status is StepStatus.WAITING for step in steps):
        return SuspendReason.WEBHOOK, _new_token()
    return None


def _new_token() -> str:
    return secrets.token_urlsafe(16)


def _held(step: StepState) -> StepState:
    """The step held back by the budget: no task, nothing queued."""
    return step.model_copy(update={"status": StepStatus.HELD, "task_id": None})


def _gated(
    run: PipelineRun, step_id: str, gate_type: str, verdict: str, meta: EventMeta | None
) -> StepGated:
    return StepGated(
        run_id=run.run_id, step_id=step_id, gate_type=gate_type, verdict=verdict, meta=meta
    )


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
    gated, held or waiting, a step it depends on is not done, or the message is of a
    superseded attempt. A new attempt that would cross the run's budget is held instead
    (step-gated ``budget`` / ``over-budget``; the run is suspended once nothing else is in
    flight): the transition returned then leaves the step ``held``, and the body must not run.
    A redelivery of the same task id and attempt is logged again with ``redelivered`` in meta
    (a crashed worker's message came back); it never completes the step twice.
    """
    if run.is_terminal or run.status is PipelineRunStatus.SUSPENDED:
        return None
    step = _open_step(run, step_id)
    if step is None or step.status is StepStatus.WAITING:
        return None
    if step.status is StepStatus.PENDING and step not in ready_steps(run.steps):
        return None
    if _superseded(step, attempt, task_id):
        return None
    now = utc_now()
    # A new attempt (not a redelivery of the latest) starts only within the run's budget.
    limit = max_usd(run.budget)
    if (
        limit is not None
        and attempt >= step.attempts
        and admit(run.cost_usd, run.steps, [step_id], limit).held
    ):
        events: list[PipelineEvent] = [_gated(run, step_id, BUDGET_GATE, OVER_BUDGET, meta)]
        return _settle(run, _replaced(run.steps, _held(step)), events, {}, now=now, meta=meta)
    updated = step.model_copy(
        update={
            "status": StepStatus.RUNNING,
            "attempts": max(step.attempts, attempt + 1),
            "started_at": step.started_at or now,
            "task_id": task_id,
        }
    )
    steps = _replaced(run.steps, updated)
    patch: dict[str, Any] = {"steps": steps, "currentStepIndex": first_open_index(steps)}
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


def _complete(  # noqa: PLR0917 - private, the callers pass the result as it came
    run: PipelineRun,
    step: StepState,
    artifact_ids: list[str],
    cost_usd: float,
    cache_key: str | None,
    outputs: Mapping[str, Any],
    meta: EventMeta,
    *,
    gated: bool = True,
    before: Sequence[PipelineEvent] = (),
) -> Transition:
    """The step done with its result (step-completed, or step-cached with a cache key), its cost
    added to the run's, then what that makes ready (run-resumed first if the run was
    suspended). A step whose definition has a gate (``gated``: not approved yet) waits for a
    verdict with the result instead (``_await_verdict``)."""
    now = utc_now()
    if gated and step.gate is not None:
        approval = Approval(
            gate_type=step.gate.type,
            token=_new_token(),
            since=now,
            deadline=_deadline(now, step.gate.timeout_s),
            on_timeout=step.gate.on_timeout,
            artifact_ids=artifact_ids,
            cost_usd=cost_usd,
            outputs=dict(outputs),
            cache_key=cache_key,
        )
        return _await_verdict(run, step, approval, meta, now=now)
    updated = step.model_copy(
        update={
            "status": StepStatus.CACHED if cache_key is not None else StepStatus.COMPLETED,
            "artifact_ids": artifact_ids,
            "cost_usd": cost_usd,
            "cache_key": cache_key,
            "outputs": dict(outputs),
            "completed_at": now,
            "error": None,
            "approval": None,
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
    return _settle(
        run, steps, [event], patch, now=now, resumed_from=step.step_id, meta=meta, before=before
    )


def _deadline(now: datetime, timeout_s: float | None) -> datetime | None:
    return None if timeout_s is None else now + timedelta(seconds=timeout_s)


def _await_verdict(
    run: PipelineRun, step: StepState, approval: Approval, meta: EventMeta, *, now: datetime
) -> Transition:
    """The step's result waits for a person: step-gated ``awaiting-approval``, the step waiting
    with its ``approval`` (and the result in it); the run is suspended (``gate``) once nothing
    else is in flight."""
    updated = step.model_copy(update={"status": StepStatus.WAITING, "approval": approval})
    events: list[PipelineEvent] = [
        _gated(run, step.step_id, approval.gate_type, AWAITING_APPROVAL, meta)
    ]
    return _settle(
        run,
        _replaced(run.steps, updated),
        events,
        {},
        now=now,
        resumed_from=step.step_id,
        meta=meta,
    )


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
    """A gate decided on the step: step-gated; a rejection fails the run (``gate-rejected``).

    Raises ``InvalidInputError`` for a verdict mpstate writes itself (``RESERVED_VERDICTS``):
    the log gives those a meaning an automatic gate must not borrow.
    """
    if verdict in RESERVED_VERDICTS:
        raise InvalidInputError(f"verdict {verdict!r} is mpstate's own; use await_approval()")
    step = _open_step(run, step_id)
    if step is None:
        return None
    if not passed:
        return _reject(run, step, gate_type=gate_type, verdict=verdict, meta=meta)
    return Transition({}, [_gated(run, step_id, gate_type, verdict, meta)])


def _reject(
    run: PipelineRun, step: StepState, *, gate_type: str, verdict: str, meta: EventMeta | None
) -> Transition:
    """step-gated with the verdict, the step gated, and the run failed (``gate-rejected``); the
    tasks of its other steps in flight are revoked."""
    now = utc_now()
    reason = f"step {step.step_id} rejected by gate {gate_type}: {verdict}"
    updated = step.model_copy(
        update={"status": StepStatus.GATED, "error": reason, "completed_at": now, "approval": None}
    )
    steps = _replaced(run.steps, updated)
    events: list[PipelineEvent] = [
        _gated(run, step.step_id, gate_type, verdict, meta),
        RunFailed(run_id=run.run_id, code=GATE_REJECTED, terminal_reason=reason),
    ]
    patch = {
        "steps": steps,
        "status": PipelineRunStatus.FAILED,
        "error": reason,
        "completedAt": now,
        "resumable": False,
        "suspendReason": None,
    }
    revoke = tuple(
        s.task_id for s in active_steps(steps) if s.task_id and s.step_id != step.step_id
    )
    return Transition(patch, events, revoke=revoke)


def await_approval(
    run: PipelineRun,
    step_id: str,
    *,
    gate_type: str,
    details: Mapping[str, Any],
    artifact_ids: list[str],
    cost_usd: float,
    outputs: Mapping[str, Any],
    timeout_s: float | None,
    on_timeout: GateTimeout,
    meta: EventMeta,
) -> Transition | None:
    """A step's body asks a person to approve what it produced (``await_approval``): the step
    waits with that result, which applies when approved. ``None`` unless the step is running."""
    step = _open_step(run, step_id)
    if step is None or step.status is not StepStatus.RUNNING:
        return None
    now = utc_now()
    approval = Approval(
        gate_type=gate_type,
        token=_new_token(),
        since=now,
        deadline=_deadline(now, timeout_s),
        on_timeout=on_timeout,
        details=dict(details),
        artifact_ids=artifact_ids,
        cost_usd=cost_usd,
        outputs=dict(outputs),
    )
    return _await_verdict(run, step, approval, meta, now=now)


def _live(run: PipelineRun) -> None:
    """Refuse a verdict or a resume for a finished run."""
    if run.is_terminal:
        raise InvalidTransitionError(
            f"run {run.run_id!r} is {run.status}: nothing to resume", run.run_id, run.status
        )


def _tokens_match(given: str, live: str | None) -> bool:
    return live is not None and secrets.compare_digest(given.encode(), live.encode())


def decide_gate(run: PipelineRun, token: str, *, approved: bool, meta: EventMeta) -> Transition:
    """A person's verdict on the step whose approval token is ``token``.

    Approved: step-gated ``approved``, then run-resumed (if the run was suspended), then the
    step completes with the result it waited with, and the run advances. Rejected: step-gated
    ``rejected`` and the run fails with ``gate-rejected``. ``meta`` (``by``, ``note``) goes on
    the step-gated. Raises ``InvalidTransitionError`` for a finished run and
    ``InvalidResumeTokenError`` when no step waits with that token (wrong, or used already).
    """
    _live(run)
    for step in run.steps:
        approval = step.approval
        if (
            approval is not None
            and step.status is StepStatus.WAITING
            and _tokens_match(token, approval.token)
        ):
            return _verdict(run, step, approval, approved=approved, meta=meta)
    raise InvalidResumeTokenError(run.run_id, run.status)


def _verdict(
    run: PipelineRun, step: StepState, approval: Approval, *, approved: bool, meta: EventMeta
) -> Transition:
    if not approved:
        return _reject(run, step, gate_type=approval.gate_type, verdict=REJECTED, meta=meta)
    verdict = _gated(run, step.step_id, approval.gate_type, APPROVED, meta)
    return _complete(
        run,
        step,
        list(approval.artifact_ids),
        approval.cost_usd,
        approval.cache_key,
        approval.outputs,
        meta,
        gated=False,
        before=[verdict],
    )


def expire_gate(
    run: PipelineRun, step_id: str, *, token: str, now: datetime, meta: EventMeta
) -> Transition | None:
    """The step's approval reached its deadline with no verdict: its ``on_timeout`` decides
    (meta records ``timedOut``). ``None`` unless the step still waits with ``token`` and the
    deadline has passed: a verdict that came first wins."""
    if run.is_terminal:
        return None
    step = run.step(step_id)
    approval = step.approval
    if (
        approval is None
        or step.status is not StepStatus.WAITING
        or approval.token != token
        or approval.deadline is None
        or approval.deadline > now
    ):
        return None
    approved = approval.on_timeout is GateTimeout.APPROVE
    return _verdict(run, step, approval, approved=approved, meta={**meta, "timedOut": True})


def release_held(
    run: PipelineRun,
    token: str,
    *,
    budget: Mapping[str, Any] | None,
    meta: EventMeta,
) -> Transition:
    """Resume a run suspended by its budget (``MpState.resume``): the held steps that fit the
    budget (raised by ``budget``'s keys, if given) are released (step-gated ``within-budget``)
    and published, after run-resumed from the first of them; the others stay held.

    Raises ``InvalidTransitionError`` for a finished run or one suspended for another reason,
    ``InvalidResumeTokenError`` unless ``token`` is the run's live resume token, and
    ``BudgetExceededError`` when no held step fits: nothing changes then.
    """
    _live(run)
    if not (run.resumable and _tokens_match(token, run.resume_token)):
        raise InvalidResumeTokenError(run.run_id, run.status)
    if run.suspend_reason is not SuspendReason.BUDGET:
        how = "approve or reject it" if run.suspend_reason is SuspendReason.GATE else "it resumes"
        raise InvalidTransitionError(
            f"run {run.run_id!r} waits for a {run.suspend_reason} answer, not its budget: {how}",
            run.run_id,
            run.status,
        )
    new_budget = {**(run.budget or {}), **(budget or {})}
    held = [step.step_id for step in _held_in(run.steps)]
    admission = admit(run.cost_usd, run.steps, held, max_usd(new_budget))
    if not admission.admitted:
        raise BudgetExceededError(
            run.run_id, admission.spent_usd, max_usd(new_budget) or 0.0, admission.needed_usd
        )
    patch: dict[str, Any] = {"budget": new_budget} if budget else {}
    # _settle re-admits held steps: those that fit now are released and published.
    return _settle(
        run,
        list(run.steps),
        [],
        patch,
        now=utc_now(),
        resumed_from=admission.admitted[0],
        meta=meta,
    )


def progress_step(run: PipelineRun, step_id: str, event: StepProgress) -> Transition | None:
    """step-progress that reports ``costUsdAccrued``: logged with the step's accrued cost raised
    to it, in one commit, so the budget counts it before any other step starts. ``None`` for a
    step no longer in flight."""
    step = _open_step(run, step_id)
    if step is None or step.status is StepStatus.PENDING:
        return None
    accrued = event.cost_usd_accrued or 0.0
    if accrued <= step.accrued_cost_usd:
        return Transition({}, [event])
    steps = _replaced(run.steps, step.model_copy(update={"accrued_cost_usd": accrued}))
    return Transition({"steps": steps}, [event])


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
