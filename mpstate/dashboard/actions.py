"""The operator actions: which apply to a run, what each asks for, and carrying one out.

Each action names what it needs (a step, a note, a new budget) and when it applies; the
confirmation page shows only what applies, and ``perform`` checks again on the run as it is now,
so a stale page cannot act on a run that moved on. Form input is validated before anything is
called: bad input changes nothing (``InvalidInputError``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpstate.errors import InvalidInputError, InvalidTransitionError
from mpstate.models import PipelineRun, PipelineRunStatus, StepState, SuspendReason

if TYPE_CHECKING:
    from mpstate.celery.binding import MpState

__all__ = ["ACTIONS", "Action", "Outcome", "applicable", "check_applies", "perform", "step_for"]

MAX_NOTE_LENGTH = 1000
_RERUNNABLE = frozenset({PipelineRunStatus.FAILED, PipelineRunStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    #: The link's text, and the confirmation's question.
    label: str
    question: str
    #: Whether it acts on one step (approve, reject, re-poll): the form names it.
    on_step: bool = False
    fields: tuple[str, ...] = ()


ACTIONS: dict[str, Action] = {
    action.name: action
    for action in (
        Action("cancel", "Cancel", "Cancel this run? Its steps stop; this cannot be undone."),
        Action(
            "rerun",
            "Re-run",
            "Start a new run that re-runs this one from a step?",
            fields=("from_step",),
        ),
        Action(
            "repoll",
            "Re-poll",
            "Ask the provider now for the job this step waits for?",
            on_step=True,
        ),
        Action("approve", "Approve", "Approve this step's result?", on_step=True, fields=("note",)),
        Action(
            "reject",
            "Reject",
            "Reject this step's result? The run fails.",
            on_step=True,
            fields=("note",),
        ),
        Action(
            "resume",
            "Raise budget and resume",
            "Raise the run's budget and start the held steps?",
            fields=("max_usd",),
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did: the flash message, and the run to show next."""

    message: str
    run_id: str


def _steps_for(run: PipelineRun, name: str, mp: MpState | None) -> list[StepState]:
    if name in ("approve", "reject"):
        return [s for s in run.steps if s.approval is not None and not run.is_terminal]
    if name == "repoll":
        return [
            s
            for s in run.steps
            if (job := s.awaited_job) is not None
            and not run.is_terminal
            and (mp is None or mp.jobs.has_poller(job.provider))
        ]
    return []


def applicable(run: PipelineRun, mp: MpState | None = None) -> list[tuple[str, str | None]]:
    """(action, step id or None) for each action that applies to ``run`` now."""
    found: list[tuple[str, str | None]] = []
    if not run.is_terminal:
        found.append(("cancel", None))
    if run.status in _RERUNNABLE:
        found.append(("rerun", None))
    if run.status is PipelineRunStatus.SUSPENDED and run.suspend_reason is SuspendReason.BUDGET:
        found.append(("resume", None))
    for name in ("approve", "reject", "repoll"):
        found.extend((name, step.step_id) for step in _steps_for(run, name, mp))
    return found


def step_for(run: PipelineRun, name: str, step_id: str | None, mp: MpState | None) -> StepState:
    """The step a step action acts on; ``InvalidTransitionError`` when it does not apply now."""
    candidates = _steps_for(run, name, mp)
    for step in candidates:
        if step_id in (None, "", step.step_id):
            return step
    what = {"repoll": "waits for a provider job", "approve": "waits for a verdict"}.get(
        name, "waits for a verdict"
    )
    named = f"step {step_id!r}" if step_id else "no step"
    raise InvalidTransitionError(
        f"{named} of run {run.run_id!r} {what} now", run.run_id, run.status.value
    )


def check_applies(run: PipelineRun, name: str, step_id: str | None, mp: MpState | None) -> None:
    """Raise ``InvalidTransitionError`` unless ``name`` applies to ``run`` now."""
    action = ACTIONS[name]
    if action.on_step:
        step_for(run, name, step_id, mp)
    elif (name, None) not in applicable(run, mp):
        raise InvalidTransitionError(
            f"cannot {action.label.lower()} run {run.run_id!r}: it is {run.status.value}"
            + (f" ({run.suspend_reason.value})" if run.suspend_reason else ""),
            run.run_id,
            run.status.value,
        )


def perform(
    mp: MpState, run: PipelineRun, name: str, form: Mapping[str, str], user: str
) -> Outcome:
    """Carry out action ``name`` on ``run`` (read just before) for ``user``."""
    step_id = form.get("step_id") or None
    note = _note(form.get("note", ""))
    check_applies(run, name, step_id, mp)
    run_id = run.run_id
    if name == "cancel":
        mp.cancel_run(run_id, f"cancelled from the dashboard by {user}")
        return Outcome("Run cancelled.", run_id)
    if name == "rerun":
        from_step = form.get("from_step") or None
        if from_step is not None and from_step not in {s.step_id for s in run.steps}:
            raise InvalidInputError(f"run {run_id!r} has no step {from_step!r}")
        new = mp.rerun(run_id, from_step=from_step, reason=f"dashboard: {user}")
        return Outcome(f"Re-run {new.run_id} started (re-runs {run_id}).", new.run_id)
    if name == "resume":
        raised = _max_usd(form.get("max_usd", ""))
        if run.resume_token is None:
            raise InvalidTransitionError(
                f"run {run_id!r} has no live resume token", run_id, run.status.value
            )
        mp.resume(run_id, run.resume_token, budget={"maxUsd": raised}, by=user)
        return Outcome(f"Budget raised to ${raised:g}; the run resumes.", run_id)
    step = step_for(run, name, step_id, mp)
    if name == "repoll":
        job = step.awaited_job
        assert job is not None  # step_for picked a step that waits for a job
        mp.jobs.schedule_poll(run_id, step.step_id, job.provider, job.job_id, polls=0)
        return Outcome(f"Poll of {job.provider}:{job.job_id} scheduled.", run_id)
    assert step.approval is not None  # step_for picked a step waiting for a verdict
    verdict = mp.approve if name == "approve" else mp.reject
    verdict(run_id, step.approval.token, by=user, note=note or None)
    return Outcome(f"Step {step.step_id} {name}d.", run_id)


def _note(text: str) -> str:
    if len(text) > MAX_NOTE_LENGTH:
        raise InvalidInputError(f"the note is longer than {MAX_NOTE_LENGTH} characters")
    return text.strip()


def _max_usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(f"max_usd must be a number of dollars, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"max_usd must be more than zero, not {text!r}")
    return value
