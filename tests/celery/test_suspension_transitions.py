"""Budgets and approval gates in the step transitions (pure functions, no Celery).

As in ``test_dag_transitions.py``, every decision is committed to an in-memory store with
``expected_version``, which only carries the state from one decision to the next. Every run is
audited at the end, and its replay must give the step statuses the transitions stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from transition_support import CommittedRun

from mpstate import (
    BudgetExceededError,
    InvalidInputError,
    InvalidResumeTokenError,
    InvalidTransitionError,
    PipelineRun,
    RunResumed,
    RunSuspended,
    StepCompleted,
    StepGated,
    StepProgress,
    VersionConflictError,
    audit_run,
    replay_run,
)
from mpstate.celery.transitions import (
    APPROVED,
    AWAITING_APPROVAL,
    BUDGET_GATE,
    OVER_BUDGET,
    REJECTED,
    WITHIN_BUDGET,
    Transition,
    await_approval,
    complete_step,
    decide_gate,
    expire_gate,
    fail_awaiting_step,
    fail_step,
    gate_step,
    progress_step,
    release_held,
    resume_step,
    start_run,
    start_step,
    suspend_step,
)
from mpstate.definitions import new_run
from mpstate.events import EventMeta
from mpstate.models import (
    FailurePolicy,
    GateTimeout,
    PipelineRunStatus,
    StepStatus,
    SuspendReason,
)

META: EventMeta = {"taskId": "t"}
VERDICT: EventMeta = {"by": "ana", "note": "ok"}
GATE_REJECT = {"type": "approval", "timeoutS": 60, "onTimeout": "reject"}
GATE_APPROVE = {"type": "approval", "timeoutS": 60, "onTimeout": "approve"}


def step(
    step_id: str,
    *needs: str,
    est: float | None = None,
    gate: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"stepId": step_id, "operation": f"op.{step_id}", "dependsOn": [*needs]}
    if est is not None:
        spec["estimatedCostUsd"] = est
    if gate is not None:
        spec["gate"] = dict(gate)
    return spec


def diamond(
    *,
    a: float | None = None,
    b: float | None = None,
    c: float | None = None,
    b_gate: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """a -> (b, c) -> d, with the given estimates (and a gate on b)."""
    return [
        step("a", est=a),
        step("b", "a", est=b, gate=b_gate),
        step("c", "a", est=c),
        step("d", "b", "c"),
    ]


class Runs(CommittedRun):
    """A run in an in-memory store, moved along by committing transitions."""

    def __init__(
        self,
        steps: Sequence[Mapping[str, Any]],
        *,
        budget: Mapping[str, Any] | None = None,
        policy: FailurePolicy = FailurePolicy.FAIL_FAST,
        started: bool = True,
    ) -> None:
        run = new_run("p", steps, run_id="r1", budget=budget, failure_policy=policy)
        super().__init__(run, started=started)

    def decide_start(self, step_id: str, attempt: int = 0) -> Transition | None:
        return start_step(self.run, step_id, attempt=attempt, task_id=f"t-{step_id}", meta=META)

    def start(self, *step_ids: str) -> PipelineRun:
        for step_id in step_ids:
            transition = self.decide_start(step_id)
            assert transition is not None
            assert [e.kind for e in transition.events] == ["step-started"]
            self.apply(transition)
        return self.run

    def complete(self, step_id: str, cost: float = 0.1) -> Transition | None:
        return complete_step(
            self.run,
            step_id,
            artifact_ids=[f"{step_id}-1"],
            cost_usd=cost,
            cache_key=None,
            meta=META,
            outputs={"from": step_id},
        )

    def finish(self, step_id: str, cost: float = 0.1) -> PipelineRun:
        """Start and complete the step, committing both."""
        self.start(step_id)
        return self.apply(self.complete(step_id, cost))

    def progress(self, step_id: str, accrued: float) -> Transition | None:
        event = StepProgress(run_id=self.run_id, step_id=step_id, pct=50, cost_usd_accrued=accrued)
        return progress_step(self.run, step_id, event)

    def decide(self, token: str, *, approved: bool = True) -> Transition:
        return decide_gate(self.run, token, approved=approved, meta=dict(VERDICT))

    def release(self, token: str, budget: Mapping[str, Any] | None = None) -> Transition:
        return release_held(self.run, token, budget=budget, meta={"by": "ops"})

    def audited(self) -> PipelineRun:
        run = self.run
        assert audit_run(run) == []
        replayed = replay_run(run, run.events)
        assert statuses(replayed) == statuses(run)
        return run


def statuses(run: PipelineRun) -> dict[str, StepStatus]:
    return {s.step_id: s.status for s in run.steps}


def kinds_of(transition: Transition | None) -> list[str]:
    assert transition is not None
    return [event.kind for event in transition.events]


def enqueued(transition: Transition | None) -> list[str]:
    assert transition is not None
    return [s.step_id for s in transition.enqueue]


def gated(transition: Transition | None) -> list[tuple[str, str, str]]:
    """(step, gate type, verdict) of each step-gated the transition logs."""
    assert transition is not None
    return [
        (e.step_id, e.gate_type, e.verdict) for e in transition.events if isinstance(e, StepGated)
    ]


def suspension(transition: Transition | None) -> RunSuspended:
    assert transition is not None
    found = [e for e in transition.events if isinstance(e, RunSuspended)]
    assert len(found) == 1
    return found[0]


def a_done(runs: Runs, cost: float = 0.1) -> Transition | None:
    """Start a; the transition that completes it (not committed)."""
    runs.start("a")
    return runs.complete("a", cost)


def budget_suspended() -> tuple[Runs, str]:
    """Diamond with maxUsd 1: a (0.2) done, b published, c (0.9) held; b done (0.3): the run is
    suspended for its budget. Returns the runs and the resume token."""
    runs = Runs(diamond(b=0.3, c=0.9), budget={"maxUsd": 1.0, "owner": "team-a"})
    runs.apply(a_done(runs, 0.2))
    runs.start("b")
    transition = runs.complete("b", 0.3)
    token = suspension(transition).resume_token
    runs.apply(transition)
    return runs, token


def gate_suspended(gate: Mapping[str, Any] = GATE_REJECT) -> tuple[Runs, str]:
    """Linear a (gated) -> b: a's result waits for a verdict and the run is suspended."""
    runs = Runs([step("a", gate=gate), step("b", "a")])
    runs.start("a")
    runs.apply(runs.complete("a", 0.4))
    approval = runs.run.step("a").approval
    assert approval is not None
    return runs, approval.token


# -- budgets: holding ready steps -----------------------------------------------------------------


def test_a_first_step_over_the_budget_is_held_and_the_run_suspended_for_its_budget() -> None:
    runs = Runs([step("a", est=2.0), step("b", "a")], budget={"maxUsd": 1.0}, started=False)
    transition = start_run(runs.run)
    assert kinds_of(transition) == ["run-started", "step-gated", "run-suspended"]
    assert gated(transition) == [("a", BUDGET_GATE, OVER_BUDGET)]
    assert enqueued(transition) == []
    event = suspension(transition)
    assert event.reason == "budget"
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.SUSPENDED
    assert run.suspend_reason is SuspendReason.BUDGET
    assert run.resumable is True
    assert run.resume_token == event.resume_token
    assert run.resume_token
    assert run.step("a").status is StepStatus.HELD
    assert run.step("a").task_id is None
    assert runs.audited().step("a").status is StepStatus.HELD


def test_two_branches_ready_at_once_with_budget_for_one_publish_one_and_hold_the_other() -> None:
    runs = Runs(diamond(b=0.5, c=0.5), budget={"maxUsd": 1.0})
    transition = a_done(runs, 0.2)  # 0.2 + 0.5 fits, + 0.5 more does not
    assert kinds_of(transition) == ["step-completed", "step-gated"]
    assert gated(transition) == [("c", BUDGET_GATE, OVER_BUDGET)]
    assert enqueued(transition) == ["b"]
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING  # b is queued: nothing to suspend for
    assert run.resumable is False
    assert run.step("b").status is StepStatus.PENDING
    assert run.step("b").task_id is not None
    assert run.step("c").status is StepStatus.HELD
    assert run.step("c").task_id is None
    assert runs.decide_start("c") is None  # a held step never starts from an old message
    assert runs.complete("c") is None
    runs.audited()


def test_the_held_branch_suspends_the_run_once_nothing_else_is_in_flight() -> None:
    runs = Runs(diamond(b=0.5, c=0.5), budget={"maxUsd": 1.0})
    runs.apply(a_done(runs, 0.2))
    runs.start("b")
    transition = runs.complete("b", 0.4)
    assert kinds_of(transition) == ["step-completed", "run-suspended"]
    assert suspension(transition).reason == "budget"
    assert enqueued(transition) == []
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.SUSPENDED
    assert run.suspend_reason is SuspendReason.BUDGET
    assert run.cost_usd == pytest.approx(0.6)
    assert statuses(runs.audited()) == {
        "a": StepStatus.COMPLETED,
        "b": StepStatus.COMPLETED,
        "c": StepStatus.HELD,
        "d": StepStatus.PENDING,
    }


def test_branches_that_exactly_fill_the_budget_are_both_published() -> None:
    runs = Runs(diamond(b=0.25, c=0.25), budget={"maxUsd": 1.0})
    transition = a_done(runs, 0.5)
    assert enqueued(transition) == ["b", "c"]
    assert gated(transition) == []
    runs.apply(transition)
    runs.start("b", "c")  # each start is decided again: both still fit
    assert runs.run.status is PipelineRunStatus.RUNNING
    runs.audited()


def test_once_the_run_spent_its_budget_even_steps_without_an_estimate_are_held() -> None:
    runs = Runs(diamond(), budget={"maxUsd": 1.0})
    transition = a_done(runs, 1.0)
    assert gated(transition) == [("b", BUDGET_GATE, OVER_BUDGET), ("c", BUDGET_GATE, OVER_BUDGET)]
    assert suspension(transition).reason == "budget"
    run = runs.apply(transition)
    assert run.step("b").status is StepStatus.HELD
    assert run.step("c").status is StepStatus.HELD
    runs.audited()


def test_a_run_without_a_limit_holds_nothing() -> None:
    runs = Runs(diamond(b=100.0, c=100.0), budget={"owner": "team-a"})
    transition = a_done(runs, 50.0)
    assert enqueued(transition) == ["b", "c"]
    assert gated(transition) == []
    runs.apply(transition)
    runs.audited()


# -- budgets: what a start sees -------------------------------------------------------------------


def test_cost_accrued_by_one_branch_holds_the_start_of_the_other() -> None:
    runs = Runs(diamond(b=0.3, c=0.3), budget={"maxUsd": 1.0})
    published = a_done(runs, 0.1)
    assert enqueued(published) == ["b", "c"]  # 0.1 + 0.3 + 0.3 fits
    runs.apply(published)
    runs.start("b")
    runs.apply(runs.progress("b", 0.8))
    assert runs.run.step("b").accrued_cost_usd == 0.8
    # c was published when it fitted; its start is decided on the run as it is now:
    # 0.1 spent + b's 0.8 accrued + c's 0.3 estimate > 1.0.
    transition = runs.decide_start("c")
    assert kinds_of(transition) == ["step-gated"]
    assert gated(transition) == [("c", BUDGET_GATE, OVER_BUDGET)]
    assert transition is not None
    assert transition.events[0].meta == META
    run = runs.apply(transition)
    assert run.step("c").status is StepStatus.HELD
    assert run.step("c").task_id is None
    assert run.step("c").attempts == 0
    assert run.status is PipelineRunStatus.RUNNING  # b still runs
    # b completes: nothing in flight, c held: the run waits for its budget.
    after_b = runs.complete("b", 0.8)
    assert suspension(after_b).reason == "budget"
    assert runs.apply(after_b).suspend_reason is SuspendReason.BUDGET
    runs.audited()


def test_progress_keeps_the_highest_accrued_cost_and_ignores_steps_not_in_flight() -> None:
    runs = Runs(diamond(b=0.3, c=0.3), budget={"maxUsd": 10.0})
    runs.apply(a_done(runs))
    assert runs.progress("b", 0.5) is None  # b is queued, not started
    runs.start("b")
    raised = runs.progress("b", 0.5)
    assert raised is not None
    assert kinds_of(raised) == ["step-progress"]
    assert "steps" in raised.patch
    runs.apply(raised)
    lower = runs.progress("b", 0.2)
    assert lower is not None
    assert lower.patch == {}
    assert kinds_of(lower) == ["step-progress"]
    runs.apply(lower)
    assert runs.run.step("b").accrued_cost_usd == 0.5
    runs.audited()


def test_a_redelivery_of_the_latest_attempt_is_not_checked_against_the_budget() -> None:
    runs = Runs(diamond(b=0.2, c=0.2), budget={"maxUsd": 1.0})
    runs.apply(a_done(runs, 0.1))
    runs.start("b", "c")
    runs.apply(runs.progress("c", 0.9))  # 0.1 + 0.9 + b's 0.2: over the budget now
    again = runs.decide_start("b", attempt=0)  # same task id and attempt: b's message came back
    assert kinds_of(again) == ["step-started"]
    assert runs.apply(again).step("b").status is StepStatus.RUNNING
    # A new attempt of b (its retry) is checked, and held.
    runs.apply(fail_step(runs.run, "b", code="Flaky", message="", retryable=True, meta=META))
    retry = runs.decide_start("b", attempt=1)
    assert gated(retry) == [("b", BUDGET_GATE, OVER_BUDGET)]
    run = runs.apply(retry)
    assert run.step("b").status is StepStatus.HELD
    assert run.step("b").attempts == 1
    assert run.status is PipelineRunStatus.RUNNING  # c still runs
    runs.audited()


def test_a_result_waiting_for_approval_counts_against_the_budget() -> None:
    runs = Runs(diamond(b=0.1, c=0.3, b_gate=GATE_REJECT), budget={"maxUsd": 1.0})
    runs.apply(a_done(runs, 0.0))
    runs.start("b")
    runs.apply(runs.complete("b", 0.9))  # b waits for a verdict holding a 0.9 result
    assert runs.run.step("b").status is StepStatus.WAITING
    assert runs.run.cost_usd == 0.0
    transition = runs.decide_start("c")  # 0.9 reserved by b + c's 0.3 > 1.0
    assert gated(transition) == [("c", BUDGET_GATE, OVER_BUDGET)]
    assert suspension(transition).reason == "gate"  # the verdict comes first
    run = runs.apply(transition)
    approval = run.step("b").approval
    assert approval is not None
    assert run.resume_token == approval.token
    runs.audited()


# -- budgets: resuming ----------------------------------------------------------------------------


def test_a_resume_with_a_wrong_token_is_refused_and_changes_nothing() -> None:
    runs, _token = budget_suspended()
    version = runs.run.version
    with pytest.raises(InvalidResumeTokenError):
        runs.release("not-the-token", {"maxUsd": 5.0})
    assert runs.run.version == version
    runs.audited()


def test_a_resume_the_budget_still_refuses_raises_and_changes_nothing() -> None:
    runs, token = budget_suspended()
    version = runs.run.version
    with pytest.raises(BudgetExceededError) as refused:
        runs.release(token)  # 0.5 spent + c's 0.9 > 1.0
    assert refused.value.spent_usd == pytest.approx(0.5)
    assert refused.value.max_usd == 1.0
    assert refused.value.needed_usd == 0.9
    with pytest.raises(BudgetExceededError):
        runs.release(token, {"maxUsd": 1.3})
    run = runs.run
    assert run.version == version
    assert run.resumable is True
    assert run.budget == {"maxUsd": 1.0, "owner": "team-a"}
    runs.audited()


def test_a_resume_with_a_higher_budget_releases_and_publishes_the_held_step() -> None:
    runs, token = budget_suspended()
    transition = runs.release(token, {"maxUsd": 2.0})
    assert kinds_of(transition) == ["run-resumed", "step-gated"]
    resumed = transition.events[0]
    assert isinstance(resumed, RunResumed)
    assert resumed.from_step_id == "c"
    assert gated(transition) == [("c", BUDGET_GATE, WITHIN_BUDGET)]
    assert transition.events[1].meta == {"by": "ops"}
    assert enqueued(transition) == ["c"]
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.resumable is False
    assert run.suspend_reason is None
    assert run.budget == {"maxUsd": 2.0, "owner": "team-a"}  # merged, free-form keys kept
    assert run.step("c").status is StepStatus.PENDING
    assert statuses(runs.audited())["c"] is StepStatus.PENDING
    with pytest.raises(InvalidResumeTokenError):  # single use
        runs.release(token, {"maxUsd": 3.0})
    runs.finish("c", 0.9)
    assert runs.published == ["a", "b", "c", "d"]
    runs.finish("d", 0.1)
    run = runs.audited()
    assert run.status is PipelineRunStatus.COMPLETED
    assert run.cost_usd == pytest.approx(1.5)


def test_a_resume_releases_only_the_held_steps_that_fit_then_suspends_again() -> None:
    runs = Runs(diamond(b=0.5, c=0.5), budget={"maxUsd": 1.0})
    transition = a_done(runs, 1.0)
    token = suspension(transition).resume_token
    runs.apply(transition)
    release = runs.release(token, {"maxUsd": 1.6})  # room for b (0.5), not for c as well
    assert gated(release) == [("b", BUDGET_GATE, WITHIN_BUDGET)]
    assert enqueued(release) == ["b"]
    run = runs.apply(release)
    assert run.step("b").status is StepStatus.PENDING
    assert run.step("c").status is StepStatus.HELD
    assert run.status is PipelineRunStatus.RUNNING
    runs.start("b")
    after_b = runs.complete("b", 0.5)
    fresh = suspension(after_b)
    assert fresh.reason == "budget"
    assert fresh.resume_token != token
    run = runs.apply(after_b)
    assert run.resume_token == fresh.resume_token
    with pytest.raises(InvalidResumeTokenError):  # the first suspension's token is stale
        runs.release(token, {"maxUsd": 5.0})
    runs.apply(runs.release(fresh.resume_token, {"maxUsd": 2.0}))
    assert runs.audited().step("c").status is StepStatus.PENDING


def test_a_budget_resume_of_a_run_waiting_for_a_verdict_is_refused() -> None:
    runs, token = gate_suspended()
    with pytest.raises(InvalidTransitionError) as refused:
        runs.release(token, {"maxUsd": 10.0})  # the live token, but the run waits for a verdict
    assert not isinstance(refused.value, InvalidResumeTokenError)
    assert runs.run.suspend_reason is SuspendReason.GATE
    runs.audited()


def test_a_budget_resume_of_a_cancelled_run_is_refused() -> None:
    runs, token = budget_suspended()
    run = runs.store.cancel(runs.run_id, "stop")
    assert run.resumable is False
    with pytest.raises(InvalidTransitionError):
        runs.release(token, {"maxUsd": 10.0})
    runs.audited()


# -- gates: waiting for a verdict -----------------------------------------------------------------


def test_a_gated_step_waits_with_its_result_and_suspends_the_run_for_the_gate() -> None:
    runs = Runs([step("a", gate=GATE_REJECT), step("b", "a")])
    runs.start("a")
    transition = runs.complete("a", 0.4)
    assert kinds_of(transition) == ["step-gated", "run-suspended"]
    assert gated(transition) == [("a", "approval", AWAITING_APPROVAL)]
    assert enqueued(transition) == []
    event = suspension(transition)
    assert event.reason == "gate"
    run = runs.apply(transition)
    a = run.step("a")
    assert a.status is StepStatus.WAITING
    assert a.approval is not None
    assert a.approval.artifact_ids == ["a-1"]
    assert a.approval.cost_usd == 0.4
    assert a.approval.outputs == {"from": "a"}
    assert a.approval.on_timeout is GateTimeout.REJECT
    assert a.approval.deadline is not None
    assert a.approval.deadline - a.approval.since == timedelta(seconds=60)
    assert a.cost_usd == 0.0  # the result applies only once approved
    assert a.artifact_ids == []
    assert run.cost_usd == 0.0
    assert run.status is PipelineRunStatus.SUSPENDED
    assert run.suspend_reason is SuspendReason.GATE
    assert run.resume_token == a.approval.token == event.resume_token
    assert runs.complete("a", 0.4) is None  # a duplicate result does not decide again
    assert statuses(runs.audited())["a"] is StepStatus.WAITING


def test_a_gated_step_does_not_suspend_a_run_with_another_branch_in_flight() -> None:
    runs = Runs(diamond(b_gate=GATE_REJECT))
    runs.apply(a_done(runs))
    runs.start("b", "c")
    waiting = runs.complete("b", 0.2)
    assert kinds_of(waiting) == ["step-gated"]
    run = runs.apply(waiting)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.step("b").status is StepStatus.WAITING
    last = runs.complete("c", 0.2)  # d needs b: nothing left in flight
    assert kinds_of(last) == ["step-completed", "run-suspended"]
    run = runs.apply(last)
    approval = run.step("b").approval
    assert approval is not None
    assert run.suspend_reason is SuspendReason.GATE
    assert run.resume_token == approval.token
    runs.audited()


def test_approving_completes_the_step_with_its_result_and_publishes_what_follows() -> None:
    runs, token = gate_suspended()
    transition = runs.decide(token, approved=True)
    assert kinds_of(transition) == ["step-gated", "run-resumed", "step-completed"]
    assert gated(transition) == [("a", "approval", APPROVED)]
    assert transition.events[0].meta == VERDICT
    completed = transition.events[2]
    assert isinstance(completed, StepCompleted)
    assert completed.artifact_ids == ["a-1"]
    assert completed.cost_usd == 0.4
    assert enqueued(transition) == ["b"]
    run = runs.apply(transition)
    a = run.step("a")
    assert a.status is StepStatus.COMPLETED
    assert a.approval is None
    assert a.artifact_ids == ["a-1"]
    assert a.outputs == {"from": "a"}
    assert a.cost_usd == 0.4
    assert run.cost_usd == 0.4
    assert run.status is PipelineRunStatus.RUNNING
    assert run.resumable is False
    assert run.suspend_reason is None
    with pytest.raises(InvalidResumeTokenError):  # the token is used
        runs.decide(token)
    runs.finish("b", 0.1)
    run = runs.audited()
    assert run.status is PipelineRunStatus.COMPLETED
    assert run.cost_usd == pytest.approx(0.5)


def test_rejecting_gates_the_step_and_fails_the_run() -> None:
    runs, token = gate_suspended()
    transition = runs.decide(token, approved=False)
    assert kinds_of(transition) == ["step-gated", "run-failed"]
    assert gated(transition) == [("a", "approval", REJECTED)]
    assert transition.events[0].meta == VERDICT
    assert getattr(transition.events[1], "code", None) == "gate-rejected"
    assert enqueued(transition) == []
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.FAILED
    assert run.resumable is False
    assert run.step("a").status is StepStatus.GATED
    assert run.step("a").approval is None
    assert run.cost_usd == 0.0  # a rejected result costs the run nothing
    assert statuses(runs.audited())["a"] is StepStatus.GATED
    with pytest.raises(InvalidTransitionError):  # a finished run takes no verdict
        runs.decide(token)


def test_rejecting_a_gate_revokes_the_other_branch_in_flight() -> None:
    runs = Runs(diamond(b_gate=GATE_REJECT))
    runs.apply(a_done(runs))
    runs.start("b", "c")
    runs.apply(runs.complete("b", 0.2))
    approval = runs.run.step("b").approval
    assert approval is not None
    transition = runs.decide(approval.token, approved=False)
    assert transition.revoke == ("t-c",)
    assert runs.apply(transition).status is PipelineRunStatus.FAILED
    runs.audited()


def test_a_wrong_token_is_refused() -> None:
    runs, token = gate_suspended()
    with pytest.raises(InvalidResumeTokenError):
        runs.decide(token[:-1] + ("x" if token[-1] != "x" else "y"))
    with pytest.raises(InvalidResumeTokenError):
        runs.decide("")
    assert runs.run.step("a").status is StepStatus.WAITING
    runs.audited()


def test_two_concurrent_approvals_with_one_token_apply_once() -> None:
    runs, token = gate_suspended()
    seen = runs.run
    first = decide_gate(seen, token, approved=True, meta={"by": "ana"})
    second = decide_gate(seen, token, approved=True, meta={"by": "bob"})
    runs.apply(first)
    with pytest.raises(VersionConflictError):
        runs.store.commit(runs.run_id, second.patch, second.events, expected_version=seen.version)
    with pytest.raises(InvalidResumeTokenError):  # decided again on the run as it is now
        decide_gate(runs.run, token, approved=True, meta={"by": "bob"})
    run = runs.audited()
    assert [e.meta for e in run.events if isinstance(e, StepGated) and e.verdict == APPROVED] == [
        {"by": "ana"}
    ]


def test_a_verdict_on_a_cancelled_run_is_refused() -> None:
    runs, token = gate_suspended()
    cancelled = runs.store.cancel(runs.run_id, "stop")
    assert cancelled.status is PipelineRunStatus.CANCELLED
    assert cancelled.resumable is False
    with pytest.raises(InvalidTransitionError):
        runs.decide(token)
    runs.audited()


def test_await_approval_from_a_running_step_waits_with_the_given_result() -> None:
    runs = Runs([step("a"), step("b", "a")])
    assert (
        await_approval(
            runs.run,
            "a",
            gate_type="review",
            details={"preview": "x"},
            artifact_ids=[],
            cost_usd=0.0,
            outputs={},
            timeout_s=None,
            on_timeout=GateTimeout.REJECT,
            meta=META,
        )
        is None
    )  # a is queued, not running
    runs.start("a")
    transition = await_approval(
        runs.run,
        "a",
        gate_type="review",
        details={"preview": "https://x/1.png"},
        artifact_ids=["img-1"],
        cost_usd=0.3,
        outputs={"score": 0.7},
        timeout_s=None,
        on_timeout=GateTimeout.APPROVE,
        meta=META,
    )
    assert gated(transition) == [("a", "review", AWAITING_APPROVAL)]
    assert suspension(transition).reason == "gate"
    run = runs.apply(transition)
    approval = run.step("a").approval
    assert approval is not None
    assert approval.details == {"preview": "https://x/1.png"}
    assert approval.deadline is None
    assert run.resume_token == approval.token
    approved = runs.decide(approval.token)
    assert gated(approved) == [("a", "review", APPROVED)]
    run = runs.apply(approved)
    assert run.step("a").artifact_ids == ["img-1"]
    assert run.step("a").outputs == {"score": 0.7}
    assert run.cost_usd == 0.3
    assert runs.published == ["a", "b"]
    runs.audited()


def test_a_provider_result_of_a_gated_step_waits_for_a_verdict() -> None:
    runs = Runs([step("a", gate=GATE_REJECT), step("b", "a")])
    runs.start("a")
    runs.apply(suspend_step(runs.run, "a", provider="vid", job_id="j1", meta=META))
    assert runs.run.suspend_reason is SuspendReason.WEBHOOK
    webhook_token = runs.run.resume_token
    callback = resume_step(
        runs.run,
        "a",
        provider="vid",
        job_id="j1",
        artifact_ids=["a-video"],
        cost_usd=0.5,
        meta=META,
    )
    assert kinds_of(callback) == ["run-resumed", "step-gated", "run-suspended"]
    assert suspension(callback).reason == "gate"
    run = runs.apply(callback)
    approval = run.step("a").approval
    assert approval is not None
    assert approval.artifact_ids == ["a-video"]
    assert run.resume_token == approval.token != webhook_token
    # The same callback again is late: the step waits for a verdict, not for the job.
    assert (
        resume_step(run, "a", provider="vid", job_id="j1", artifact_ids=[], cost_usd=0.0, meta=META)
        is None
    )
    runs.apply(runs.decide(approval.token))
    assert runs.audited().step("a").artifact_ids == ["a-video"]


# -- gates: deadlines -----------------------------------------------------------------------------


def test_a_gate_does_not_expire_before_its_deadline_or_for_another_token() -> None:
    runs, token = gate_suspended()
    approval = runs.run.step("a").approval
    assert approval is not None and approval.deadline is not None
    before = approval.deadline - timedelta(seconds=1)
    after = approval.deadline + timedelta(seconds=1)
    assert expire_gate(runs.run, "a", token=token, now=before, meta=META) is None
    assert expire_gate(runs.run, "a", token="x" * 22, now=after, meta=META) is None
    assert expire_gate(runs.run, "b", token=token, now=after, meta=META) is None
    runs.audited()


def test_an_expired_gate_that_rejects_on_timeout_fails_the_run() -> None:
    runs, token = gate_suspended(GATE_REJECT)
    approval = runs.run.step("a").approval
    assert approval is not None and approval.deadline is not None
    transition = expire_gate(
        runs.run, "a", token=token, now=approval.deadline + timedelta(seconds=1), meta=META
    )
    assert kinds_of(transition) == ["step-gated", "run-failed"]
    assert gated(transition) == [("a", "approval", REJECTED)]
    assert transition is not None
    assert transition.events[0].meta == {**META, "timedOut": True}
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.FAILED
    assert run.step("a").status is StepStatus.GATED
    runs.audited()


def test_an_expired_gate_that_approves_on_timeout_completes_the_step() -> None:
    runs, token = gate_suspended(GATE_APPROVE)
    approval = runs.run.step("a").approval
    assert approval is not None and approval.deadline is not None
    transition = expire_gate(
        runs.run, "a", token=token, now=approval.deadline + timedelta(seconds=1), meta=META
    )
    assert kinds_of(transition) == ["step-gated", "run-resumed", "step-completed"]
    assert gated(transition) == [("a", "approval", APPROVED)]
    assert transition is not None
    assert transition.events[0].meta == {**META, "timedOut": True}
    assert enqueued(transition) == ["b"]
    run = runs.apply(transition)
    assert run.step("a").status is StepStatus.COMPLETED
    assert run.cost_usd == 0.4
    # The deadline's check comes again later: the verdict already given wins.
    later = approval.deadline + timedelta(minutes=5)
    assert expire_gate(runs.run, "a", token=token, now=later, meta=META) is None
    runs.audited()


def test_a_verdict_given_first_wins_over_the_deadline() -> None:
    runs, token = gate_suspended(GATE_REJECT)
    approval = runs.run.step("a").approval
    assert approval is not None and approval.deadline is not None
    runs.apply(runs.decide(token, approved=True))
    late = approval.deadline + timedelta(seconds=1)
    assert expire_gate(runs.run, "a", token=token, now=late, meta=META) is None
    assert runs.audited().status is PipelineRunStatus.RUNNING


# -- budgets and gates together -------------------------------------------------------------------


def test_a_run_with_a_held_and_a_gated_step_waits_for_the_verdict_then_the_budget() -> None:
    runs = Runs(diamond(b=0.2, c=0.9, b_gate=GATE_REJECT), budget={"maxUsd": 1.0})
    transition = a_done(runs, 0.1)
    assert enqueued(transition) == ["b"]
    assert gated(transition) == [("c", BUDGET_GATE, OVER_BUDGET)]
    runs.apply(transition)
    runs.start("b")
    waiting = runs.complete("b", 0.2)
    assert suspension(waiting).reason == "gate"
    run = runs.apply(waiting)
    approval = run.step("b").approval
    assert approval is not None
    gate_token = approval.token
    assert run.suspend_reason is SuspendReason.GATE
    assert run.resume_token == gate_token
    approved = runs.decide(gate_token)
    assert kinds_of(approved) == ["step-gated", "run-resumed", "step-completed", "run-suspended"]
    budget_event = suspension(approved)
    assert budget_event.reason == "budget"
    assert budget_event.resume_token != gate_token
    run = runs.apply(approved)
    assert run.status is PipelineRunStatus.SUSPENDED
    assert run.suspend_reason is SuspendReason.BUDGET
    assert run.resume_token == budget_event.resume_token
    assert run.step("c").status is StepStatus.HELD
    with pytest.raises(InvalidResumeTokenError):  # the gate's token is stale now
        runs.release(gate_token, {"maxUsd": 5.0})
    with pytest.raises(InvalidResumeTokenError):
        runs.decide(gate_token)
    runs.apply(runs.release(budget_event.resume_token, {"maxUsd": 5.0}))
    runs.finish("c", 0.9)
    runs.finish("d", 0.1)
    run = runs.audited()
    assert run.status is PipelineRunStatus.COMPLETED
    assert run.cost_usd == pytest.approx(1.3)


def test_the_replay_agrees_with_the_stored_statuses_at_every_commit() -> None:
    runs = Runs(diamond(b=0.2, c=0.9, b_gate=GATE_REJECT), budget={"maxUsd": 1.0})
    seen: list[dict[str, StepStatus]] = []

    def check() -> None:
        run = runs.run
        assert statuses(replay_run(run, run.events)) == statuses(run)
        assert replay_run(run, run.events).status == run.status
        assert replay_run(run, run.events).resume_token == run.resume_token
        seen.append(statuses(run))

    check()
    runs.apply(a_done(runs, 0.1))
    check()
    runs.start("b")
    runs.apply(runs.complete("b", 0.2))
    check()
    token = runs.run.resume_token
    assert token is not None
    runs.apply(runs.decide(token))
    check()
    token = runs.run.resume_token
    assert token is not None
    runs.apply(runs.release(token, {"maxUsd": 2.0}))
    check()
    # The run went through held, waiting and released (pending) steps on the way.
    assert {"c": StepStatus.HELD}.items() <= seen[1].items()
    assert seen[2]["b"] is StepStatus.WAITING
    assert seen[4]["c"] is StepStatus.PENDING
    runs.audited()


# -- regressions found while writing these tests ---------------------------------------------------


def test_a_held_retry_of_a_suspended_run_suspends_it_for_its_budget() -> None:
    runs = Runs([step("a", est=0.5), step("b", "a")], budget={"maxUsd": 1.0})
    runs.start("a")
    runs.apply(runs.progress("a", 1.2))  # a running step is never stopped, even over budget
    runs.apply(suspend_step(runs.run, "a", provider="vid", job_id="j1", meta=META))
    webhook_token = runs.run.resume_token
    assert runs.run.suspend_reason is SuspendReason.WEBHOOK
    failed = fail_awaiting_step(
        runs.run,
        "a",
        provider="vid",
        job_id="j1",
        code="PROVIDER_DOWN",
        message="try later",
        retryable=True,
        default_max_retries=3,
        meta=META,
    )
    assert kinds_of(failed)[:2] == ["step-failed", "step-gated"]
    assert gated(failed) == [("a", BUDGET_GATE, OVER_BUDGET)]  # the retry is held: as designed
    run = runs.apply(failed)
    assert run.step("a").status is StepStatus.HELD
    # Nothing is in flight and a step is held: the run must wait for its budget.
    assert run.suspend_reason is SuspendReason.BUDGET  # fails: stays SuspendReason.WEBHOOK
    assert run.resume_token != webhook_token
    assert audit_run(run) == []  # fails: status stored suspended != replayed running, resumable
    assert run.resume_token is not None
    runs.apply(runs.release(run.resume_token, {"maxUsd": 5.0}))
    runs.audited()


@pytest.mark.parametrize("verdict", [OVER_BUDGET, WITHIN_BUDGET, AWAITING_APPROVAL])
def test_an_automatic_gate_may_not_use_a_verdict_the_log_gives_state(verdict: str) -> None:
    runs = Runs([step("a"), step("b", "a")])
    runs.start("a")
    before = runs.run
    with pytest.raises(InvalidInputError, match="mpstate's own"):
        gate_step(runs.run, "a", gate_type="quality", verdict=verdict, passed=True, meta=META)
    assert runs.run == before
    assert audit_run(runs.run) == []


def test_a_step_that_cost_less_than_its_estimate_frees_room_for_a_held_branch() -> None:
    # a -> (b, c): b and c each reserve 0.5 of 0.8; c is held while b is in flight.
    runs = Runs(
        [step("a"), step("b", "a", est=0.5), step("c", "a", est=0.5)], budget={"maxUsd": 0.8}
    )
    runs.finish("a", cost=0.0)
    assert statuses(runs.run)["c"] is StepStatus.HELD
    runs.start("b")

    transition = runs.complete("b", cost=0.2)  # 0.2 spent: c's 0.5 fits now

    assert gated(transition) == [("c", BUDGET_GATE, WITHIN_BUDGET)]
    assert enqueued(transition) == ["c"]
    run = runs.apply(transition)
    assert run.step("c").status is StepStatus.PENDING
    assert run.status is PipelineRunStatus.RUNNING
    runs.audited()


def test_room_freed_while_suspended_for_the_budget_resumes_the_run_from_the_released_step() -> None:
    # b awaits a provider while c is held; the run is suspended for its budget (gate order:
    # nothing else in flight, a held step). b's answer costs less than its estimate.
    runs = Runs(
        [step("a"), step("b", "a", est=0.5), step("c", "a", est=0.5)], budget={"maxUsd": 0.8}
    )
    runs.finish("a", cost=0.0)
    runs.start("b")
    runs.apply(suspend_step(runs.run, "b", provider="vid", job_id="j1", meta=META))
    assert runs.run.suspend_reason is SuspendReason.BUDGET

    transition = resume_step(
        runs.run, "b", provider="vid", job_id="j1", artifact_ids=["v"], cost_usd=0.1, meta=META
    )

    assert kinds_of(transition)[:3] == ["run-resumed", "step-completed", "step-gated"]
    assert enqueued(transition) == ["c"]
    run = runs.apply(transition)
    assert (run.status, run.suspend_reason, run.resumable) == (
        PipelineRunStatus.RUNNING,
        None,
        False,
    )
    runs.audited()
