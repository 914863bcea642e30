"""Runs that stop and wait for someone: budgets too small for the video, and approval gates.

Some planned runs get a budget below the video's estimate: they must be held before the video
and suspended (``budget``). The operator (a thread of the driver) first tries to resume one
without raising the budget, which must be refused, then raises it. Other runs get an approval
gate on the quality step: the operator approves or rejects at a random moment, or lets the gate
time out (the reconciler then decides by the gate's ``onTimeout``). Cancels (``Load``) race all
of it. ``suspension_violations`` then checks each such run against what was done to it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field

from chaos.config import ChaosConfig
from chaos.load import TRANSIENT, PlannedRun, ride_out
from mpstate import (
    BudgetExceededError,
    InvalidTransitionError,
    PipelineRun,
    PipelineRunStatus,
    RunFailed,
    StepGated,
    StepStatus,
    SuspendReason,
)
from mpstate.budget import max_usd
from mpstate.celery import MpState

__all__ = ["Operator", "SuspensionPlan", "plan_suspensions", "suspension_violations"]

log = logging.getLogger("chaos.suspensions")

#: The budget of a budget-limited run: enough for the image and the voice-over, not the video.
LOW_BUDGET_USD = 0.30
#: What the operator raises it to.
RAISED_BUDGET_USD = 2.00
#: How often the operator looks at the runs it answers.
LOOK_EVERY_S = 0.25


@dataclass
class SuspensionPlan:
    """What waits in one run, and what the operator will answer."""

    #: ``budget`` or ``gate``.
    kind: str
    #: Seconds after the wait is first seen that the operator answers.
    answer_after_s: float
    #: For a gate: ``approve``, ``reject`` or ``timeout`` (no answer: the deadline decides).
    verdict: str = "approve"
    timeout_s: float = 0.0
    on_timeout: str = "reject"
    #: For a budget: the run's ``maxUsd`` at start.
    budget_usd: float | None = None
    #: What happened: the verdict or resume that was applied, and refusals seen.
    applied: str | None = None
    budget_refused: bool = False
    too_late: bool = False
    first_seen: float | None = field(default=None, repr=False)


def plan_suspensions(config: ChaosConfig, runs: list[PlannedRun], rng: random.Random) -> None:
    """Give some runs a budget or a gate (never a doomed run: its automatic gate decides)."""
    for planned in runs:
        if planned.doomed:
            continue
        draw = rng.random()
        if draw < config.budget_rate:
            planned.suspension = SuspensionPlan(
                "budget", answer_after_s=rng.uniform(0.2, 4.0), budget_usd=LOW_BUDGET_USD
            )
        elif draw < config.budget_rate + config.gate_rate:
            planned.suspension = SuspensionPlan(
                "gate",
                answer_after_s=rng.uniform(0.0, 4.0),
                verdict=rng.choice(["approve", "approve", "reject", "timeout"]),
                timeout_s=rng.uniform(2.0, 6.0),
                on_timeout=rng.choice(["approve", "reject"]),
            )


class Operator:
    """Answers the planned suspensions until stopped, as an operator with the CLI would."""

    def __init__(self, mp: MpState, runs: list[PlannedRun]) -> None:
        self.mp = mp
        self.runs = [p for p in runs if p.suspension is not None]
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def answer_until_stopped(self) -> None:
        while not self._stop.wait(LOOK_EVERY_S):
            for planned in self.runs:
                with suppress(*TRANSIENT):
                    self._look(planned)

    def _look(self, planned: PlannedRun) -> None:
        plan = planned.suspension
        if plan is None or planned.run_id is None or plan.applied or plan.too_late:
            return
        run = self.mp.store.get(planned.run_id, include_events=False)
        if run is None or run.is_terminal:
            return
        token = _token_for(run, plan)
        if token is None:
            return
        plan.first_seen = plan.first_seen or time.monotonic()
        if time.monotonic() - plan.first_seen < plan.answer_after_s:
            return
        try:
            if plan.kind == "budget":
                self._resume(run, token, plan)
            elif plan.verdict in ("approve", "reject"):
                answer = self.mp.approve if plan.verdict == "approve" else self.mp.reject
                ride_out(lambda: answer(run.run_id, token, by="chaos-operator"))
                plan.applied = plan.verdict
        except InvalidTransitionError as exc:  # cancelled, or the deadline decided first
            log.info("run %s: %s", run.run_id, exc)
            plan.too_late = True

    def _resume(self, run: PipelineRun, token: str, plan: SuspensionPlan) -> None:
        try:
            self.mp.resume(run.run_id, token, by="chaos-operator")
        except BudgetExceededError:
            plan.budget_refused = True
        else:
            plan.applied = "resumed-without-raise"
            return
        raised = {"maxUsd": RAISED_BUDGET_USD}
        ride_out(lambda: self.mp.resume(run.run_id, token, budget=raised, by="chaos-operator"))
        plan.applied = "resumed"


def _token_for(run: PipelineRun, plan: SuspensionPlan) -> str | None:
    if plan.kind == "budget":
        if run.suspend_reason is SuspendReason.BUDGET and run.resumable:
            return run.resume_token
        return None
    for step in run.steps:
        if step.approval is not None and step.status is StepStatus.WAITING:
            return step.approval.token
    return None


def suspension_violations(run: PipelineRun, planned: PlannedRun) -> list[tuple[str, str]]:
    """(rule, detail) for each way the run broke its budget or its gate's promise."""
    plan = planned.suspension
    if plan is None or run.status is PipelineRunStatus.CANCELLED:
        return []
    failure = next((e for e in run.events if isinstance(e, RunFailed)), None)
    if plan.kind == "budget":
        return _budget_violations(run, plan)
    verdicts = [
        e for e in run.events if isinstance(e, StepGated) and e.verdict in ("approved", "rejected")
    ]
    rejected = failure is not None and failure.code == "gate-rejected"
    found: list[tuple[str, str]] = []
    if len(verdicts) > 1:
        found.append(("gate", f"{len(verdicts)} verdicts on one wait"))
    if plan.applied == "approve" and rejected:
        found.append(("gate", "approved, yet failed gate-rejected"))
    if plan.applied == "reject" and not rejected:
        found.append(("gate", f"rejected, yet {run.status}"))
    timed_out = [e for e in verdicts if (e.meta or {}).get("timedOut")]
    if (
        plan.verdict == "timeout"
        and run.status is PipelineRunStatus.COMPLETED
        and (not timed_out or plan.on_timeout != "approve")
    ):
        found.append(("gate", "completed without a timed-out approval"))
    if timed_out and (timed_out[0].verdict == "approved") != (plan.on_timeout == "approve"):
        found.append(("gate", f"timed out as {timed_out[0].verdict}, onTimeout {plan.on_timeout}"))
    return found


def _budget_violations(run: PipelineRun, plan: SuspensionPlan) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if plan.applied == "resumed-without-raise":
        found.append(("budget", "resumed without a higher budget while over it"))
    limit = max_usd(run.budget)
    if limit is not None and run.cost_usd > limit + 1e-9:
        found.append(("budget", f"spent ${run.cost_usd:.4f} of a ${limit:.2f} budget"))
    released = next(
        (e.seq for e in run.events if isinstance(e, StepGated) and e.verdict == "within-budget"),
        None,
    )
    video_started = next(
        (
            e.seq
            for e in run.events
            if e.kind == "step-started" and getattr(e, "step_id", None) == "video"
        ),
        None,
    )
    if video_started is not None and (released is None or video_started < released):
        found.append(("budget", "the video started before its budget was raised"))
    if run.status is PipelineRunStatus.COMPLETED and not plan.budget_refused:
        found.append(("budget", "completed, but no resume was ever refused for its budget"))
    return found
