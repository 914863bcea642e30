"""Which steps a re-run of a failed or cancelled run carries over, and which it runs again.

``MpState.rerun`` creates a new run (the original stays final, its log untouched) with the same
definition. It runs again ``from_step`` (by default the first step, in definition order, that did
not succeed), every step that depends on it, and every step that did not succeed; it carries over
every other succeeded step, logged as step-cached with its artifacts and outputs and no cost.
"""

from __future__ import annotations

from mpstate.errors import InvalidInputError, InvalidTransitionError
from mpstate.graph import dependents
from mpstate.models import DONE_STEP_STATUSES, PipelineRun, PipelineRunStatus, StepState

__all__ = ["RERUNNABLE_STATUSES", "carried_steps", "rerun_id"]

#: A run may be re-run once it failed (a gate rejection included) or was cancelled.
RERUNNABLE_STATUSES = frozenset({PipelineRunStatus.FAILED, PipelineRunStatus.CANCELLED})


def carried_steps(original: PipelineRun, from_step: str | None = None) -> dict[str, StepState]:
    """The original's succeeded steps a re-run from ``from_step`` takes over, by id.

    Raises ``InvalidTransitionError`` unless the original failed or was cancelled, and
    ``InvalidInputError`` for an unknown ``from_step`` or a run whose every step succeeded.
    """
    if original.status not in RERUNNABLE_STATUSES:
        raise InvalidTransitionError(
            f"run {original.run_id!r} is {original.status}: only a failed or cancelled run can "
            "be re-run",
            run_id=original.run_id,
            status=str(original.status),
        )
    if from_step is None:
        open_steps = [s for s in original.steps if s.status not in DONE_STEP_STATUSES]
        if not open_steps:
            raise InvalidInputError(
                f"every step of run {original.run_id!r} succeeded: name the step to re-run from"
            )
        from_step = open_steps[0].step_id
    elif from_step not in {step.step_id for step in original.steps}:
        raise InvalidInputError(f"run {original.run_id!r} has no step {from_step!r}")
    again = {from_step} | {step.step_id for step in dependents(original.steps, from_step)}
    return {
        step.step_id: step
        for step in original.steps
        if step.status in DONE_STEP_STATUSES and step.step_id not in again
    }


def rerun_id(original: PipelineRun, number: int) -> str:
    """The id of the original's ``number``-th re-run (1-based).

    Derived, not random: callers racing to re-run one run create the same id, so exactly one
    creates it and every caller gets that run.
    """
    return f"{original.run_id}-rerun{number}"
