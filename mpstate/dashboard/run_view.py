"""What the pages say about a run beyond its fields: its duration, the steps it is at, how to
answer its suspension, and each step's webhook deliveries.

Deliveries: the store keeps no record per delivery. What it has is the log: each callback (or
poll) applied to a step is an event whose ``meta`` names the provider and job (accepted
deliveries), a poll's event says ``via: poll``, and callbacks that could never match a run are
kept by ``record_unmatched``. A callback refused for its signature, a duplicate, or one for a
superseded attempt leaves no trace the dashboard can read, and the page says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from mpstate.budget import max_usd
from mpstate.cli.flower import task_link
from mpstate.dashboard.timeline import format_span
from mpstate.deliveries import UnmatchedCallback
from mpstate.events import PipelineEvent
from mpstate.graph import active_steps
from mpstate.models import PipelineRun, StepState, StepStatus, SuspendReason

__all__ = [
    "Delivery",
    "StepDeliveries",
    "current_steps",
    "duration",
    "run_budget",
    "step_deliveries",
    "suspension_help",
    "task_url",
]

#: Step statuses shown as "where the run is" besides those in flight.
_WAITING = frozenset({StepStatus.WAITING, StepStatus.HELD})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One callback or poll the log shows for a step."""

    at: int
    seq: int | None
    kind: str
    via: str
    provider: str
    job_id: str
    outcome: str


@dataclass(slots=True)
class StepDeliveries:
    accepted: list[Delivery] = field(default_factory=list)
    unmatched: list[UnmatchedCallback] = field(default_factory=list)


def duration(run: PipelineRun, now: datetime) -> str:
    """From start (or creation) to completion, or to now while the run is live."""
    begin = run.started_at or run.created_at
    end = run.completed_at or (run.updated_at if run.is_terminal else now)
    return format_span(max((end - begin).total_seconds() * 1000, 0))


def current_steps(run: PipelineRun) -> list[StepState]:
    """Steps in flight or waiting (for a provider, a verdict or the budget); none for a finished
    run (a step a cancel interrupted still says running in the store)."""
    if run.is_terminal:
        return []
    active = {step.step_id for step in active_steps(run.steps)}
    return [s for s in run.steps if s.step_id in active or s.status in _WAITING]


def run_budget(run: PipelineRun) -> float | None:
    """The run's ``maxUsd``, if it has one."""
    return max_usd(run.budget)


def suspension_help(run: PipelineRun) -> str | None:
    """How an operator answers the run's suspension, or None when it is not suspended."""
    reason = run.suspend_reason
    if reason is SuspendReason.GATE:
        return "A step's result waits for a person: approve or reject it."
    if reason is SuspendReason.BUDGET:
        return "A step is held back by the budget: raise maxUsd and resume."
    if reason is SuspendReason.WEBHOOK:
        return (
            "A step waits for its provider's callback (or a poll); it resumes by itself. "
            "Re-poll the job if a callback seems lost."
        )
    return None


def task_url(flower_url: str | None, step: StepState) -> str | None:
    """Flower's page of the step's latest task, when Flower is configured."""
    if flower_url and step.task_id:
        return task_link(flower_url, step.task_id)
    return None


def step_deliveries(
    run: PipelineRun, unmatched: list[UnmatchedCallback]
) -> dict[str, StepDeliveries]:
    """Each step's applied deliveries (from the log), and the unmatched callbacks naming one of
    its job ids (under any provider name: a misnamed provider is the usual cause)."""
    found = {step.step_id: StepDeliveries() for step in run.steps}
    for event in run.events:
        delivery = _delivery(event)
        step_id = getattr(event, "step_id", None)
        if delivery is not None and step_id in found:
            found[step_id].accepted.append(delivery)
    for callback in unmatched:
        for step in run.steps:
            if any(job.job_id == callback.job_id for job in step.external_jobs):
                found[step.step_id].unmatched.append(callback)
                break
    return found


def _delivery(event: PipelineEvent) -> Delivery | None:
    meta = event.meta or {}
    provider, job_id = meta.get("provider"), meta.get("jobId")
    if not (provider and job_id) and meta.get("via") != "poll":
        return None
    outcome = {
        "step-completed": "completed",
        "step-failed": "failed",
        "step-progress": "progress",
    }.get(event.kind, event.kind)
    return Delivery(
        at=event.at,
        seq=event.seq,
        kind=event.kind,
        via=str(meta.get("via") or "webhook"),
        provider=str(provider or "-"),
        job_id=str(job_id or "-"),
        outcome=outcome,
    )
