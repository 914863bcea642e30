"""Budgets on a real worker, a real Redis broker and a real store (also on a Redis Cluster).

A run with ``budget={"maxUsd": X}`` counts what its steps cost and what its steps in flight
reserve (accrued cost reported in progress, estimates). A step that would cross the budget is
held: never published, its body never runs, and once nothing else is in flight the run is
suspended (reason ``budget``) with a fresh resume token. ``MpState.resume`` with that token (and a
higher budget) releases the held steps. Bodies hold on latches, never on sleeps; every finished
run must pass ``audit_run`` (the stored state is what its log replays to).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from celery_support import (
    DEADLINE,
    STORE_BACKENDS,
    Harness,
    assert_never,
    events_of,
    kinds,
    step_events,
    wait_for,
)

from mpstate import audit_run
from mpstate.celery import PipelineTask
from mpstate.errors import BudgetExceededError, InvalidResumeTokenError, InvalidTransitionError
from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus, SuspendReason

pytestmark = pytest.mark.parametrize("store_backend", STORE_BACKENDS, indirect=True)

#: What the class attribute of ``bud.pricey`` estimates one attempt to cost.
PRICEY_ESTIMATE = 0.8


class Bodies:
    """The step tasks ``bud.work`` and ``bud.pricey`` (``estimated_cost_usd`` 0.8), and the
    bodies they ran as (run id, step id).

    A body's inputs: ``cost`` (what it returns as ``costUsd``), ``accrue`` (reported first as
    ``cost_usd_accrued`` in progress; the body then says so on latch ``accrued-<run>-<step>``)
    and ``hold`` (a latch name: the body waits for ``<hold>-<run>`` before returning).
    """

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.ran: list[tuple[str, str]] = []
        self._define("bud.work")
        self._define("bud.pricey", estimated_cost_usd=PRICEY_ESTIMATE)

    def _define(self, name: str, **attributes: Any) -> None:
        bodies = self

        @self.h.app.task(base=PipelineTask, bind=True, shared=False, name=name, **attributes)
        def body(
            self: Any, cost: float = 0.0, accrue: float | None = None, hold: str | None = None
        ) -> dict[str, Any]:
            return bodies.execute(self, cost, accrue, hold)

    def execute(
        self, task: Any, cost: float, accrue: float | None, hold: str | None
    ) -> dict[str, Any]:
        self.ran.append((task.run_id, task.step_id))
        if accrue is not None:
            task.progress(50, message="spending", cost_usd_accrued=accrue)
            self.h.latch(f"accrued-{task.run_id}-{task.step_id}").set()
        if hold is not None:
            assert self.h.latch(f"{hold}-{task.run_id}").wait(DEADLINE)
        return {"artifactIds": [f"{task.step_id}-1"], "costUsd": cost}

    def of(self, run_id: str) -> list[str]:
        """The steps whose bodies ran for ``run_id``, in order."""
        return [step for run, step in list(self.ran) if run == run_id]


@pytest.fixture
def bodies(h: Harness) -> Bodies:
    return Bodies(h)


def step(step_id: str, *, after: tuple[str, ...] = (), op: str = "bud.work", **inputs: Any) -> Any:
    definition: dict[str, Any] = {
        "stepId": step_id,
        "operation": op,
        "dependsOn": list(after),
        "inputs": {k: v for k, v in inputs.items() if k != "estimate"},
    }
    if "estimate" in inputs:
        definition["estimatedCostUsd"] = inputs["estimate"]
    return definition


def start(h: Harness, steps: list[Mapping[str, Any]], max_usd: float) -> str:
    return h.mp.start_run("budgets", steps, budget={"maxUsd": max_usd}).run_id


def wait_suspended(h: Harness, run_id: str) -> PipelineRun:
    run = h.wait_status(run_id, "suspended")
    assert run.suspend_reason is SuspendReason.BUDGET
    assert run.resumable is True
    assert run.resume_token
    return run


def over_budget(run: PipelineRun) -> list[str]:
    """The steps the log says were held back by the budget, in order."""
    return [
        e.step_id
        for e in events_of(run, "step-gated")
        if (e.gate_type, e.verdict) == ("budget", "over-budget")
    ]


def assert_held_and_never_ran(h: Harness, bodies: Bodies, run: PipelineRun, step_id: str) -> None:
    held = run.step(step_id)
    assert (held.status, held.task_id) == (StepStatus.HELD, None)
    assert step_events(run, step_id, "step-started") == []
    assert h.client.llen(h.queue) == 0  # nothing was published for it
    assert_never(lambda: step_id in bodies.of(run.run_id), 0.3, f"{step_id}'s body to run")


LINEAR_TO_BUDGET = [
    step("a", cost=0.4),
    step("b", after=("a",), cost=0.6),
    step("c", after=("b",), cost=0.3, estimate=0.3),
]


# -- held by what completed steps cost --------------------------------------------------------


def test_once_completed_steps_spent_the_budget_the_next_step_is_held_and_the_run_suspended(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, LINEAR_TO_BUDGET, max_usd=1.0)

    run = wait_suspended(h, run_id)

    assert run.cost_usd == pytest.approx(1.0)  # exactly the budget: nothing more may start
    assert bodies.of(run_id) == ["a", "b"]
    assert_held_and_never_ran(h, bodies, run, "c")
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "a"),
        ("step-completed", "a"),
        ("step-started", "b"),
        ("step-completed", "b"),
        ("step-gated", "c"),
        ("run-suspended", None),
    ]
    assert over_budget(run) == ["c"]
    (suspended,) = events_of(run, "run-suspended")
    assert (suspended.reason, suspended.resume_token) == ("budget", run.resume_token)
    assert audit_run(run) == []


def test_a_budget_without_room_for_a_single_step_estimate_holds_the_first_step_at_start(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, [step("only", op="bud.pricey", cost=0.1)], max_usd=0.5)

    run = wait_suspended(h, run_id)

    assert run.step("only").estimated_cost_usd == PRICEY_ESTIMATE
    assert_held_and_never_ran(h, bodies, run, "only")
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-gated", "only"),
        ("run-suspended", None),
    ]
    assert audit_run(run) == []


# -- held by cost reported in progress ----------------------------------------------------------


def test_cost_a_running_branch_reported_in_progress_holds_a_step_another_branch_makes_ready(
    h: Harness, bodies: Bodies
) -> None:
    """``spender`` and ``first`` run side by side; ``spender`` reports $0.90 accrued and keeps
    running; then ``first`` completes ($0.20) and makes ``second`` ready: $1.10 is counted
    against $1.00, so ``second`` is held. The run is suspended only once ``spender`` ends."""
    h.start_worker(pool="threads", concurrency=3)
    run_id = start(
        h,
        [
            step("spender", cost=0.9, accrue=0.9, hold="spender"),
            step("first", cost=0.2, hold="first"),
            step("second", after=("first",), cost=0.1),
        ],
        max_usd=1.0,
    )
    assert h.latch(f"accrued-{run_id}-spender").wait(DEADLINE)
    wait_for(
        lambda: h.run(run_id).step("spender").accrued_cost_usd == 0.9,
        what="spender's accrued cost to be committed",
    )

    h.latch(f"first-{run_id}").set()
    held = wait_for(
        lambda: (run := h.run(run_id)).step("second").status is StepStatus.HELD and run,
        what="second to be held",
    )

    # spender is still in flight: the run runs on, nothing is suspended yet.
    assert held.status is PipelineRunStatus.RUNNING
    assert held.step("spender").status is StepStatus.RUNNING
    assert held.cost_usd == pytest.approx(0.2)
    assert over_budget(held) == ["second"]
    (progress,) = step_events(held, "spender", "step-progress")
    assert progress.cost_usd_accrued == 0.9
    assert_never(lambda: "second" in bodies.of(run_id), 0.3, "second's body to run")

    h.latch(f"spender-{run_id}").set()
    run = wait_suspended(h, run_id)

    assert run.cost_usd == pytest.approx(1.1)
    assert sorted(bodies.of(run_id)) == ["first", "spender"]
    assert_held_and_never_ran(h, bodies, run, "second")
    assert kinds(run)[-2:] == [("step-completed", "spender"), ("run-suspended", None)]
    assert audit_run(run) == []


# -- held by an estimate ------------------------------------------------------------------------


def test_an_estimate_holds_a_step_whose_estimate_would_cross_the_budget(
    h: Harness, bodies: Bodies
) -> None:
    """After ``a`` ($0.30), ``cheap`` and ``dear`` are ready, both ``bud.pricey``: ``cheap``'s
    definition estimates $0.10 (over the task's $0.80) and starts; ``dear`` takes the task's
    $0.80, which would cross $1.00: held."""
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(
        h,
        [
            step("a", cost=0.3),
            step("cheap", after=("a",), op="bud.pricey", cost=0.05, estimate=0.1),
            step("dear", after=("a",), op="bud.pricey", cost=0.05),
        ],
        max_usd=1.0,
    )

    run = wait_suspended(h, run_id)

    assert run.step("cheap").estimated_cost_usd == 0.1  # the definition wins over the task's
    assert run.step("dear").estimated_cost_usd == PRICEY_ESTIMATE
    assert run.step("cheap").status is StepStatus.COMPLETED
    assert run.cost_usd == pytest.approx(0.35)  # well below the budget: the estimate held dear
    assert bodies.of(run_id) == ["a", "cheap"]
    assert_held_and_never_ran(h, bodies, run, "dear")
    assert over_budget(run) == ["dear"]
    assert audit_run(run) == []


# -- two branches racing for the last dollar ----------------------------------------------------


@pytest.mark.parametrize("attempt", range(3))
def test_of_two_branches_made_ready_by_racing_commits_exactly_one_gets_the_last_dollar(
    h: Harness, bodies: Bodies, attempt: int
) -> None:
    """``p`` and ``q`` complete at once (both wait on one latch), each making its racer ready in
    its own commit. Each racer estimates $0.60 of the $1.00: exactly one may start."""
    h.start_worker(pool="threads", concurrency=4)
    run_id = start(
        h,
        [
            step("p", hold="go"),
            step("q", hold="go"),
            step("x", after=("p",), cost=0.5, estimate=0.6),
            step("y", after=("q",), cost=0.5, estimate=0.6),
        ],
        max_usd=1.0,
    )
    wait_for(
        lambda: {"p", "q"} <= set(bodies.of(run_id)), what="p and q to be running side by side"
    )

    h.latch(f"go-{run_id}").set()
    run = wait_suspended(h, run_id)

    (held,) = over_budget(run)
    (winner,) = {"x", "y"} - {held}
    assert bodies.of(run_id).count(winner) == 1
    assert run.step(winner).status is StepStatus.COMPLETED
    assert_held_and_never_ran(h, bodies, run, held)
    assert [e.step_id for e in events_of(run, "step-started")].count(winner) == 1
    assert run.cost_usd == pytest.approx(0.5)
    assert audit_run(run) == []


# -- resuming ---------------------------------------------------------------------------------


def test_resume_with_a_raised_budget_releases_the_held_step_and_the_run_completes(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, LINEAR_TO_BUDGET, max_usd=1.0)
    suspended = wait_suspended(h, run_id)

    resumed = h.mp.resume(run_id, suspended.resume_token or "", budget={"maxUsd": 2.0}, by="ops")

    assert resumed.budget == {"maxUsd": 2.0}
    assert resumed.suspend_reason is None and resumed.resumable is False
    run = h.wait_terminal(run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert run.cost_usd == pytest.approx(1.3)
    assert bodies.of(run_id) == ["a", "b", "c"]
    assert kinds(run)[len(suspended.events) :] == [
        ("run-resumed", None),
        ("step-gated", "c"),
        ("step-started", "c"),
        ("step-completed", "c"),
        ("run-completed", None),
    ]
    (resumed_event,) = events_of(run, "run-resumed")
    assert resumed_event.from_step_id == "c"
    assert resumed_event.meta == {"by": "ops", "maxUsd": 2.0}
    released = step_events(run, "c", "step-gated")[-1]
    assert (released.gate_type, released.verdict) == ("budget", "within-budget")
    assert audit_run(run) == []


def test_resume_without_a_raised_budget_is_refused_and_changes_nothing(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, LINEAR_TO_BUDGET, max_usd=1.0)
    before = wait_suspended(h, run_id)
    token = before.resume_token or ""

    with pytest.raises(BudgetExceededError) as refused:
        h.mp.resume(run_id, token)
    with pytest.raises(BudgetExceededError):
        h.mp.resume(run_id, token, budget={"maxUsd": 1.0})  # not raised: the same limit
    with pytest.raises(BudgetExceededError):
        h.mp.resume(run_id, token, budget={"maxUsd": 1.2})  # raised, not by c's $0.30

    assert isinstance(refused.value, InvalidTransitionError)
    assert refused.value.spent_usd == pytest.approx(1.0)
    assert (refused.value.max_usd, refused.value.needed_usd) == (1.0, 0.3)
    after = h.run(run_id)
    assert (after.version, len(after.events)) == (before.version, len(before.events))
    assert (after.status, after.resume_token, after.budget) == (
        PipelineRunStatus.SUSPENDED,
        token,
        {"maxUsd": 1.0},
    )
    assert_held_and_never_ran(h, bodies, after, "c")
    assert audit_run(after) == []


def test_a_wrong_or_stale_resume_token_is_refused_and_the_live_one_resumes(
    h: Harness, bodies: Bodies
) -> None:
    """Suspended twice: after b, then after c (each $0.60 of a budget raised to $1.50); the
    first suspension's token is stale at the second."""
    h.start_worker(pool="threads", concurrency=2)
    steps = [
        step("a", cost=0.6),
        step("b", after=("a",), cost=0.6),
        step("c", after=("b",), cost=0.6),
        step("d", after=("c",), cost=0.1),
    ]
    run_id = start(h, steps, max_usd=1.0)
    first = wait_suspended(h, run_id)
    stale = first.resume_token or ""

    with pytest.raises(InvalidResumeTokenError):
        h.mp.resume(run_id, stale + "x", budget={"maxUsd": 5.0})
    assert h.run(run_id).version == first.version
    h.mp.resume(run_id, stale, budget={"maxUsd": 1.5})
    with pytest.raises(InvalidResumeTokenError):  # used already
        h.mp.resume(run_id, stale, budget={"maxUsd": 5.0})
    second = wait_for(
        lambda: (
            (run := h.run(run_id)).step("d").status is StepStatus.HELD
            and run.status == "suspended"
            and run
        ),
        what="d to be held and the run suspended again",
    )
    assert second.resume_token not in {None, stale}
    with pytest.raises(InvalidResumeTokenError):  # of the earlier suspension
        h.mp.resume(run_id, stale, budget={"maxUsd": 5.0})
    assert h.run(run_id).version == second.version

    h.mp.resume(run_id, second.resume_token or "", budget={"maxUsd": 5.0})

    run = h.wait_terminal(run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert bodies.of(run_id) == ["a", "b", "c", "d"]
    assert [e.from_step_id for e in events_of(run, "run-resumed")] == ["c", "d"]
    assert [e.reason for e in events_of(run, "run-suspended")] == ["budget", "budget"]
    with pytest.raises(InvalidTransitionError):  # finished: nothing to resume
        h.mp.resume(run_id, second.resume_token or "", budget={"maxUsd": 9.0})
    assert audit_run(run) == []


# -- cancelling ---------------------------------------------------------------------------------


def test_cancelling_a_budget_suspended_run_ends_it_and_its_token_resumes_nothing(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, LINEAR_TO_BUDGET, max_usd=1.0)
    suspended = wait_suspended(h, run_id)

    cancelled = h.mp.cancel_run(run_id, "over budget, not worth it")

    assert cancelled.status is PipelineRunStatus.CANCELLED
    assert (cancelled.resumable, cancelled.suspend_reason) == (False, None)
    with pytest.raises(InvalidTransitionError):
        h.mp.resume(run_id, suspended.resume_token or "", budget={"maxUsd": 9.0})
    run = h.run(run_id)
    assert run.status is PipelineRunStatus.CANCELLED
    assert kinds(run)[-1] == ("run-cancelled", None)
    assert len(run.events) == len(suspended.events) + 1
    assert_held_and_never_ran(h, bodies, run, "c")
    assert audit_run(run) == []


def test_a_resume_with_room_for_one_of_two_held_steps_releases_that_one_only(
    h: Harness, bodies: Bodies
) -> None:
    """``a`` spends the $1.00; ``x`` and ``y`` (estimated $0.50 each) are held. Raised to $1.60,
    only ``x`` fits: it runs, ``y`` stays held, and once ``x`` is done the run is suspended
    again (a new token); raised to $2.50, ``y`` runs too."""
    h.start_worker(pool="threads", concurrency=2)
    steps = [
        step("a", cost=1.0),
        step("x", after=("a",), cost=0.5, estimate=0.5),
        step("y", after=("a",), cost=0.5, estimate=0.5),
    ]
    run_id = start(h, steps, max_usd=1.0)
    first = wait_suspended(h, run_id)
    assert over_budget(first) == ["x", "y"]

    h.mp.resume(run_id, first.resume_token or "", budget={"maxUsd": 1.6})
    second = wait_for(
        lambda: (
            (run := h.run(run_id)).status == "suspended"
            and run.step("x").status is StepStatus.COMPLETED
            and run
        ),
        what="x to complete and the run to be suspended again",
    )

    assert second.suspend_reason is SuspendReason.BUDGET
    assert second.resume_token not in {None, first.resume_token}
    assert_held_and_never_ran(h, bodies, second, "y")
    assert bodies.of(run_id) == ["a", "x"]
    releases = [e.step_id for e in events_of(second, "step-gated") if e.verdict == "within-budget"]
    assert releases == ["x"]
    assert audit_run(second) == []

    h.mp.resume(run_id, second.resume_token or "", budget={"maxUsd": 2.5})
    run = h.wait_terminal(run_id)

    assert run.status is PipelineRunStatus.COMPLETED
    assert bodies.of(run_id) == ["a", "x", "y"]
    assert run.cost_usd == pytest.approx(2.0)
    assert [e.from_step_id for e in events_of(run, "run-resumed")] == ["x", "y"]
    assert audit_run(run) == []


def test_a_gate_answered_while_a_step_is_held_leaves_the_run_suspended_for_its_budget(
    h: Harness, bodies: Bodies
) -> None:
    """``a`` spends most of the budget (``b`` held) while ``g`` runs; ``g``'s result then waits
    for a verdict: the run is suspended for the gate first (an operator must answer it), and
    once it is approved, for the budget, with a token of its own."""
    h.start_worker(pool="threads", concurrency=2)
    gated = {**step("g", cost=0.0, hold="g"), "gate": {"type": "approval"}}
    # a leaves $0.10, too little for b's $0.20 but enough for g (no estimate) to start whenever.
    steps = [step("a", cost=0.9), step("b", after=("a",), estimate=0.2), gated]
    run_id = start(h, steps, max_usd=1.0)
    wait_for(
        lambda: h.run(run_id).step("b").status is StepStatus.HELD, what="b to be held while g runs"
    )
    assert h.run(run_id).status is PipelineRunStatus.RUNNING

    h.latch(f"g-{run_id}").set()
    waiting = wait_for(
        lambda: (run := h.run(run_id)).status == "suspended" and run, what="the gate to suspend"
    )

    approval = waiting.step("g").approval
    assert approval is not None
    assert (waiting.suspend_reason, waiting.resume_token) == (SuspendReason.GATE, approval.token)
    with pytest.raises(InvalidTransitionError):  # not for its budget (yet): answer the gate
        h.mp.resume(run_id, approval.token, budget={"maxUsd": 9.0})

    after = h.mp.approve(run_id, approval.token, by="ops")

    assert (after.status, after.suspend_reason) == ("suspended", SuspendReason.BUDGET)
    assert after.resume_token not in {None, approval.token}
    run = h.run(run_id)
    assert kinds(run)[len(waiting.events) :] == [
        ("step-gated", "g"),
        ("run-resumed", None),
        ("step-completed", "g"),
        ("run-suspended", None),
    ]
    assert [e.reason for e in events_of(run, "run-suspended")] == ["gate", "budget"]
    assert_held_and_never_ran(h, bodies, run, "b")
    assert audit_run(run) == []

    h.mp.resume(run_id, after.resume_token or "", budget={"maxUsd": 2.0})
    done = h.wait_terminal(run_id)
    assert done.status is PipelineRunStatus.COMPLETED
    assert sorted(bodies.of(run_id)) == ["a", "b", "g"]
    assert audit_run(done) == []


def test_a_step_published_within_the_budget_is_held_when_it_starts_after_the_budget_is_spent(
    h: Harness, bodies: Bodies
) -> None:
    """``a`` and ``g`` are both published at the start; a solo worker runs ``a`` first, which
    spends the whole budget, so when ``g``'s message is taken the step is held there and its body
    does not run. Resumed with a higher budget, ``g`` runs under a new task id."""
    h.start_worker()  # solo: a's message first, then g's
    begun = h.mp.start_run(
        "budgets", [step("a", cost=1.0), step("g", cost=0.1)], budget={"maxUsd": 1.0}
    )
    run_id, published = begun.run_id, begun.step("g").task_id
    assert published is not None

    run = wait_suspended(h, run_id)

    assert kinds(run)[2:] == [
        ("step-started", "a"),
        ("step-completed", "a"),
        ("step-gated", "g"),
        ("run-suspended", None),
    ]
    assert over_budget(run) == ["g"]
    assert_held_and_never_ran(h, bodies, run, "g")
    h.wait_finished(published, states=("IGNORED",))

    h.mp.resume(run_id, run.resume_token or "", budget={"maxUsd": 1.5})
    done = h.wait_terminal(run_id)

    assert done.status is PipelineRunStatus.COMPLETED
    assert bodies.of(run_id) == ["a", "g"]
    assert done.step("g").task_id not in {None, published}
    assert audit_run(done) == []
