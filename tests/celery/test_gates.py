"""Approval gates on a real worker, a real Redis broker and a real store (also on a Redis Cluster).

A step whose definition has ``gate={"type": "approval", ...}``, or whose body returns
``self.await_approval(...)``, waits with its result for a person: step-gated
``awaiting-approval``, and the run suspended (reason ``gate``) with the approval's token as its
resume token. ``MpState.approve`` completes the step with that result and the run goes on;
``reject`` fails the run with ``gate-rejected``; a deadline is decided by the gate's
``on_timeout`` in a reconciler pass, from the store alone. Tokens are single-use: a wrong, stale or
used one is refused and changes nothing, and of racing answers exactly one applies. Every run
must pass ``audit_run``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery
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
from external_job_pipeline import worker_until_exit

from mpstate import RedisPipelineStateStore, audit_run
from mpstate.celery import MpState, PipelineTask
from mpstate.errors import InvalidResumeTokenError, InvalidTransitionError
from mpstate.fields import utc_now
from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus, SuspendReason

pytestmark = pytest.mark.parametrize("store_backend", STORE_BACKENDS, indirect=True)

#: A gate deadline short enough to wait for, in seconds.
TIMEOUT_S = 0.5


class Bodies:
    """``gt.work`` (returns artifact ``<step>-1``, ``cost``, outputs ``{"by": <step>}``; waits
    for latch ``<hold>-<run>`` first when given ``hold``) and ``gt.ask`` (asks for approval of
    such a result from its body, with ``timeout_s`` and ``on_timeout``). ``seen`` keeps, per
    body that ran, (run, step, the upstream artifacts and outputs it saw)."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.seen: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
        bodies = self

        @h.app.task(base=PipelineTask, bind=True, shared=False, name="gt.work")
        def work(self: Any, cost: float = 0.0, hold: str | None = None) -> dict[str, Any]:
            bodies.record(self)
            if hold is not None:
                assert h.latch(f"{hold}-{self.run_id}").wait(DEADLINE)
            return bodies.result(self.step_id, cost)

        @h.app.task(base=PipelineTask, bind=True, shared=False, name="gt.ask")
        def ask(
            self: Any,
            cost: float = 0.0,
            timeout_s: float | None = None,
            on_timeout: str = "reject",
        ) -> Any:
            bodies.record(self)
            return self.await_approval(
                "qa",
                details={"score": 0.7, "preview": f"{self.step_id}.png"},
                result=bodies.result(self.step_id, cost),
                timeout_s=timeout_s,
                on_timeout=on_timeout,
            )

    def record(self, task: Any) -> None:
        self.seen.append((task.run_id, task.step_id, task.artifacts, task.outputs))

    @staticmethod
    def result(step_id: str, cost: float) -> dict[str, Any]:
        return {"artifactIds": [f"{step_id}-1"], "costUsd": cost, "outputs": {"by": step_id}}

    def of(self, run_id: str) -> list[str]:
        return [step for run, step, _, _ in list(self.seen) if run == run_id]

    def saw(self, run_id: str, step_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        (found,) = [
            (a, o) for run, step, a, o in list(self.seen) if (run, step) == (run_id, step_id)
        ]
        return found


@pytest.fixture
def bodies(h: Harness) -> Bodies:
    return Bodies(h)


def gate(timeout_s: float | None = None, on_timeout: str = "reject") -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "approval", "onTimeout": on_timeout}
    if timeout_s is not None:
        spec["timeoutS"] = timeout_s
    return spec


def gated_pipeline(**spec: Any) -> list[dict[str, Any]]:
    """``a`` -> ``review`` (gated by its definition) -> ``c``."""
    return [
        {"stepId": "a", "operation": "gt.work", "inputs": {"cost": 0.1}},
        {"stepId": "review", "operation": "gt.work", "inputs": {"cost": 0.2}, "gate": gate(**spec)},
        {"stepId": "c", "operation": "gt.work", "inputs": {"cost": 0.3}},
    ]


def start(h: Harness, steps: list[Mapping[str, Any]]) -> str:
    return h.mp.start_run("gates", steps).run_id


def wait_gated(h: Harness, run_id: str, step_id: str) -> PipelineRun:
    """The run once ``step_id`` waits for a verdict and nothing else is in flight."""

    def found() -> PipelineRun | None:
        run = h.run(run_id)
        waiting = run.step(step_id).approval is not None
        return run if waiting and run.status == "suspended" else None

    run = wait_for(found, what=f"{step_id} of run {run_id} to wait for a verdict")
    assert run.suspend_reason is SuspendReason.GATE
    approval = run.step(step_id).approval
    assert approval is not None
    assert run.step(step_id).status is StepStatus.WAITING
    assert (run.resume_token, run.resumable) == (approval.token, True)
    return run


def token_of(run: PipelineRun, step_id: str) -> str:
    approval = run.step(step_id).approval
    assert approval is not None
    return approval.token


def verdicts(run: PipelineRun) -> list[tuple[str, str, str]]:
    return [(e.step_id, e.gate_type, e.verdict) for e in events_of(run, "step-gated")]


GATED_PREFIX = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "a"),
    ("step-completed", "a"),
    ("step-started", "review"),
    ("step-gated", "review"),
    ("run-suspended", None),
]


# -- approved -----------------------------------------------------------------------------------


def test_a_definition_gate_waits_for_approval_and_the_steps_after_it_run_once_approved(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, gated_pipeline())
    waiting = wait_gated(h, run_id, "review")

    assert kinds(waiting) == GATED_PREFIX
    assert verdicts(waiting) == [("review", "approval", "awaiting-approval")]
    (suspended,) = events_of(waiting, "run-suspended")
    assert (suspended.reason, suspended.resume_token) == ("gate", token_of(waiting, "review"))
    # The result waits with the approval; the step has not completed, nor does it count yet.
    approval = waiting.step("review").approval
    assert approval is not None
    assert (approval.artifact_ids, approval.cost_usd, approval.deadline) == (
        ["review-1"],
        0.2,
        None,
    )
    assert waiting.step("review").artifact_ids == []
    assert waiting.cost_usd == pytest.approx(0.1)
    assert_never(lambda: "c" in bodies.of(run_id), 0.3, "c's body to run before the verdict")

    approved = h.mp.approve(run_id, token_of(waiting, "review"), by="alice", note="looks good")

    assert approved.status in {PipelineRunStatus.RUNNING, PipelineRunStatus.COMPLETED}
    run = h.wait_terminal(run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert bodies.of(run_id) == ["a", "review", "c"]
    assert kinds(run) == [
        *GATED_PREFIX,
        ("step-gated", "review"),
        ("run-resumed", None),
        ("step-completed", "review"),
        ("step-started", "c"),
        ("step-completed", "c"),
        ("run-completed", None),
    ]
    verdict = step_events(run, "review", "step-gated")[-1]
    assert (verdict.verdict, verdict.meta) == ("approved", {"by": "alice", "note": "looks good"})
    (resumed,) = events_of(run, "run-resumed")
    assert resumed.from_step_id == "review"
    review = run.step("review")
    assert (review.status, review.artifact_ids, review.cost_usd) == (
        StepStatus.COMPLETED,
        ["review-1"],
        0.2,
    )
    assert review.approval is None
    assert run.cost_usd == pytest.approx(0.6)
    assert bodies.saw(run_id, "c")[0] == {"a": ["a-1"], "review": ["review-1"]}
    assert (run.resumable, run.suspend_reason) == (False, None)
    assert audit_run(run) == []


def test_a_body_asking_for_approval_completes_with_the_result_it_passed_once_approved(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(
        h,
        [
            {"stepId": "draft", "operation": "gt.ask", "inputs": {"cost": 0.25}},
            {"stepId": "publish", "operation": "gt.work", "dependsOn": ["draft"]},
        ],
    )
    waiting = wait_gated(h, run_id, "draft")

    approval = waiting.step("draft").approval
    assert approval is not None
    assert approval.gate_type == "qa"
    assert approval.details == {"score": 0.7, "preview": "draft.png"}
    assert (approval.artifact_ids, approval.cost_usd, approval.outputs) == (
        ["draft-1"],
        0.25,
        {"by": "draft"},
    )
    assert waiting.step("draft").artifact_ids == []
    assert waiting.cost_usd == 0.0
    assert verdicts(waiting) == [("draft", "qa", "awaiting-approval")]
    assert step_events(waiting, "draft", "step-completed") == []

    h.mp.approve(run_id, token_of(waiting, "draft"), by="bob")

    run = h.wait_terminal(run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    draft = run.step("draft")
    assert (draft.status, draft.artifact_ids, draft.cost_usd, draft.outputs) == (
        StepStatus.COMPLETED,
        ["draft-1"],
        0.25,
        {"by": "draft"},
    )
    (completed,) = step_events(run, "draft", "step-completed")
    assert (completed.artifact_ids, completed.cost_usd) == (["draft-1"], 0.25)
    assert run.cost_usd == pytest.approx(0.25)
    assert bodies.saw(run_id, "publish") == ({"draft": ["draft-1"]}, {"draft": {"by": "draft"}})
    assert verdicts(run)[-1] == ("draft", "qa", "approved")
    assert audit_run(run) == []


# -- rejected -----------------------------------------------------------------------------------


def test_a_rejected_gate_fails_the_run_with_gate_rejected_and_later_steps_never_run(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, gated_pipeline())
    waiting = wait_gated(h, run_id, "review")
    token = token_of(waiting, "review")

    rejected = h.mp.reject(run_id, token, by="carol", note="wrong colour")

    assert rejected.status is PipelineRunStatus.FAILED
    run = h.wait_terminal(run_id)
    assert kinds(run) == [*GATED_PREFIX, ("step-gated", "review"), ("run-failed", None)]
    verdict = step_events(run, "review", "step-gated")[-1]
    assert (verdict.verdict, verdict.meta) == ("rejected", {"by": "carol", "note": "wrong colour"})
    (failed,) = events_of(run, "run-failed")
    assert failed.code == "gate-rejected"
    assert run.step("review").status is StepStatus.GATED
    assert run.step("review").artifact_ids == []
    assert run.cost_usd == pytest.approx(0.1)  # the rejected result never counted
    assert (run.resumable, run.suspend_reason, run.error) == (False, None, failed.terminal_reason)
    assert_never(lambda: "c" in bodies.of(run_id), 0.3, "c's body to run")
    assert bodies.of(run_id) == ["a", "review"]
    with pytest.raises(InvalidTransitionError):  # finished: the token answers nothing now
        h.mp.approve(run_id, token)
    assert h.run(run_id).version == run.version
    assert audit_run(run) == []


# -- deadlines ----------------------------------------------------------------------------------


@contextmanager
def fresh_mpstate(h: Harness, store_url: str) -> Iterator[MpState]:
    """An ``MpState`` sharing nothing with the harness but the store's data and the broker: what
    a separate ``mpstate reconcile`` process has."""
    app = Celery(f"{h.app.main}-reconciler", broker=h.broker_url, set_as_current=False)
    app.conf.update(task_default_queue=h.queue, broker_connection_retry_on_startup=True)
    store = RedisPipelineStateStore.from_url(store_url, prefix=h.prefix)
    mp = MpState(app, store)
    try:
        yield mp
    finally:
        mp.close()
        store.close()
        app.close()


def wait_past_deadline(run: PipelineRun, step_id: str) -> None:
    approval = run.step(step_id).approval
    assert approval is not None and approval.deadline is not None
    wait_for(lambda: utc_now() > approval.deadline, what="the gate's deadline to pass")


def test_a_reconciler_pass_before_the_deadline_leaves_the_gate_alone(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, gated_pipeline(timeout_s=60))
    waiting = wait_gated(h, run_id, "review")

    report = h.mp.reconcile(stale_after_s=600)

    assert report.timed_out == []
    after = h.run(run_id)
    assert (after.version, len(after.events)) == (waiting.version, len(waiting.events))


def test_a_gate_past_its_deadline_with_on_timeout_reject_fails_the_run(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, gated_pipeline(timeout_s=TIMEOUT_S, on_timeout="reject"))
    waiting = wait_gated(h, run_id, "review")
    wait_past_deadline(waiting, "review")

    report = h.mp.reconcile(stale_after_s=600)

    assert [(g.run_id, g.step_id, g.on_timeout) for g in report.timed_out] == [
        (run_id, "review", "reject")
    ]
    run = h.wait_terminal(run_id)
    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run)[len(waiting.events) :] == [("step-gated", "review"), ("run-failed", None)]
    verdict = step_events(run, "review", "step-gated")[-1]
    assert (verdict.verdict, verdict.meta) == ("rejected", {"by": "deadline", "timedOut": True})
    assert events_of(run, "run-failed")[0].code == "gate-rejected"
    assert bodies.of(run_id) == ["a", "review"]
    # A second pass finds nothing left to decide; a late verdict is refused.
    assert h.mp.reconcile(stale_after_s=600).timed_out == []
    with pytest.raises(InvalidTransitionError):
        h.mp.approve(run_id, token_of(waiting, "review"))
    assert audit_run(h.run(run_id)) == []


def test_a_body_gate_past_its_deadline_with_on_timeout_approve_completes_the_run(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(
        h,
        [
            {
                "stepId": "draft",
                "operation": "gt.ask",
                "inputs": {"cost": 0.25, "timeout_s": TIMEOUT_S, "on_timeout": "approve"},
            },
            {"stepId": "publish", "operation": "gt.work", "dependsOn": ["draft"]},
        ],
    )
    waiting = wait_gated(h, run_id, "draft")
    wait_past_deadline(waiting, "draft")

    report = h.mp.reconcile(stale_after_s=600)

    assert [(g.step_id, g.gate_type, g.on_timeout) for g in report.timed_out] == [
        ("draft", "qa", "approve")
    ]
    run = h.wait_terminal(run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    verdict = step_events(run, "draft", "step-gated")[-1]
    assert (verdict.verdict, verdict.meta) == ("approved", {"by": "deadline", "timedOut": True})
    assert run.step("draft").artifact_ids == ["draft-1"]
    assert bodies.of(run_id) == ["draft", "publish"]
    assert audit_run(run) == []


def test_a_deadline_is_enforced_from_the_store_after_the_worker_restarted(
    h: Harness, bodies: Bodies, store_url: str
) -> None:
    """The worker that ran the gated step stops; past the deadline a reconciler in a fresh
    ``MpState`` approves (``on_timeout`` approve) and publishes ``c``, which a new worker runs."""
    with worker_until_exit(h, concurrency=2):
        run_id = start(h, gated_pipeline(timeout_s=TIMEOUT_S, on_timeout="approve"))
        waiting = wait_gated(h, run_id, "review")
    wait_past_deadline(waiting, "review")

    with fresh_mpstate(h, store_url) as mp:
        report = mp.reconcile(stale_after_s=600)

    assert [(g.run_id, g.step_id) for g in report.timed_out] == [(run_id, "review")]
    approved = h.run(run_id)
    assert approved.step("review").status is StepStatus.COMPLETED
    assert approved.status is PipelineRunStatus.RUNNING
    assert h.client.llen(h.queue) == 1  # c, waiting for a worker
    assert "c" not in bodies.of(run_id)

    h.start_worker(pool="threads", concurrency=2)
    run = h.wait_terminal(run_id)

    assert run.status is PipelineRunStatus.COMPLETED
    assert bodies.of(run_id) == ["a", "review", "c"]
    assert kinds(run)[len(waiting.events) :] == [
        ("step-gated", "review"),
        ("run-resumed", None),
        ("step-completed", "review"),
        ("step-started", "c"),
        ("step-completed", "c"),
        ("run-completed", None),
    ]
    assert step_events(run, "review", "step-gated")[-1].meta == {
        "by": "deadline",
        "timedOut": True,
    }
    assert audit_run(run) == []


# -- tokens -------------------------------------------------------------------------------------


def two_gates() -> list[dict[str, Any]]:
    """``first`` (gated) -> ``second`` (gated): two suspensions one after the other."""
    return [
        {"stepId": "first", "operation": "gt.work", "gate": gate()},
        {"stepId": "second", "operation": "gt.work", "dependsOn": ["first"], "gate": gate()},
    ]


def test_a_wrong_stale_or_used_token_is_refused_and_changes_nothing(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(h, two_gates())
    first = wait_gated(h, run_id, "first")
    token = token_of(first, "first")

    for wrong in (token + "x", "not-a-token-of-this-run", token.upper()):
        with pytest.raises(InvalidResumeTokenError):
            h.mp.approve(run_id, wrong)
        with pytest.raises(InvalidResumeTokenError):
            h.mp.reject(run_id, wrong)
    # A gate is not the budget: resume refuses it (and it is no token error).
    with pytest.raises(InvalidTransitionError) as not_budget:
        h.mp.resume(run_id, token, budget={"maxUsd": 9.0})
    assert not isinstance(not_budget.value, InvalidResumeTokenError)
    after = h.run(run_id)
    assert (after.version, len(after.events)) == (first.version, len(first.events))

    h.mp.approve(run_id, token, by="alice")
    with pytest.raises(InvalidResumeTokenError):  # used
        h.mp.approve(run_id, token, by="alice")

    second = wait_gated(h, run_id, "second")
    assert token_of(second, "second") != token
    for answer in (h.mp.approve, h.mp.reject):  # of the earlier suspension
        with pytest.raises(InvalidResumeTokenError):
            answer(run_id, token)
    assert h.run(run_id).version == second.version

    h.mp.approve(run_id, token_of(second, "second"))

    run = h.wait_terminal(run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert [v for _, _, v in verdicts(run)] == [
        "awaiting-approval",
        "approved",
        "awaiting-approval",
        "approved",
    ]
    assert [e.meta for e in events_of(run, "step-gated") if e.verdict == "approved"] == [
        {"by": "alice"},
        {},
    ]
    assert audit_run(run) == []


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` at once on threads; each one's return value or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = [None] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
        barrier.wait(DEADLINE)
        try:
            outcomes[index] = call()
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    return outcomes


def test_of_two_operators_approving_at_once_exactly_one_succeeds(
    h: Harness, bodies: Bodies
) -> None:
    h.start_worker(pool="threads", concurrency=2)
    for _ in range(3):
        run_id = start(h, gated_pipeline())
        token = token_of(wait_gated(h, run_id, "review"), "review")

        outcomes = race(
            lambda run_id=run_id, token=token: h.mp.approve(run_id, token, by="alice"),
            lambda run_id=run_id, token=token: h.mp.approve(run_id, token, by="bob"),
        )

        won = [o for o in outcomes if isinstance(o, PipelineRun)]
        lost = [o for o in outcomes if isinstance(o, Exception)]
        assert (len(won), len(lost)) == (1, 1), outcomes
        # The token was spent: refused as such, or, when the winner's verdict and the steps
        # after it ended the run first, as a verdict on a finished run (the same family).
        loser = lost[0]
        assert isinstance(loser, InvalidTransitionError), outcomes
        assert isinstance(loser, InvalidResumeTokenError) or loser.status == "completed", loser
        run = h.wait_terminal(run_id)
        assert run.status is PipelineRunStatus.COMPLETED
        approvals = [e for e in events_of(run, "step-gated") if e.verdict == "approved"]
        assert len(approvals) == 1
        assert approvals[0].meta is not None and approvals[0].meta["by"] in {"alice", "bob"}
        assert len(step_events(run, "review", "step-completed")) == 1
        assert len(events_of(run, "run-resumed")) == 1
        assert bodies.of(run_id) == ["a", "review", "c"]
        assert audit_run(run) == []


#: How an approval and a cancel meet: at once (three times, whoever wins), or one strictly after
#: the other has committed (so each outcome is seen at least once).
ORDERS = ["race", "approve-first", "cancel-first"]


def approval_and_cancel(h: Harness, run: PipelineRun, order: str) -> tuple[Any, Any]:
    """Approve ``run``'s review and cancel it, in ``order``: what each returned or raised."""
    run_id = run.run_id

    def approved_meanwhile() -> bool:
        return any(v == "approved" for _, _, v in verdicts(h.run(run_id)))

    def approve() -> PipelineRun:
        if order == "cancel-first":
            wait_for(lambda: h.run(run_id).status == "cancelled", what="the cancel")
        return h.mp.approve(run_id, token_of(run, "review"), by="alice")

    def cancel() -> PipelineRun:
        if order == "approve-first":
            wait_for(approved_meanwhile, what="the approval")
        return h.mp.cancel_run(run_id, "operator cancelled")

    approved, cancelled = race(approve, cancel)
    return approved, cancelled


@pytest.mark.parametrize("order", ORDERS)
def test_an_approval_racing_a_cancel_shows_in_the_log_which_came_first(
    h: Harness, bodies: Bodies, order: str
) -> None:
    """``c`` after the gate holds until the test lets it go, so the run cannot complete between
    the two. Either the approval lands first (the log has its events, then run-cancelled) or the
    cancel does (the approval is refused and the log has none of its events)."""
    h.start_worker(pool="threads", concurrency=2)
    steps = gated_pipeline()
    steps[2]["inputs"]["hold"] = "c"
    for _ in range(3 if order == "race" else 1):
        run_id = start(h, steps)
        waiting = wait_gated(h, run_id, "review")

        approved, cancelled = approval_and_cancel(h, waiting, order)
        h.latch(f"c-{run_id}").set()

        assert isinstance(cancelled, PipelineRun), cancelled
        assert cancelled.status is PipelineRunStatus.CANCELLED
        run = h.wait_terminal(run_id)
        assert run.status is PipelineRunStatus.CANCELLED
        assert kinds(run)[-1] == ("run-cancelled", None)
        later = kinds(run)[len(waiting.events) :]
        if isinstance(approved, PipelineRun):  # the approval won
            assert order != "cancel-first"
            assert later[:3] == [
                ("step-gated", "review"),
                ("run-resumed", None),
                ("step-completed", "review"),
            ]
            assert verdicts(run)[-1] == ("review", "approval", "approved")
            assert run.step("review").status is StepStatus.COMPLETED
            assert step_events(run, "c", "step-completed") == []
        else:  # the cancel won
            assert order != "approve-first"
            assert isinstance(approved, InvalidTransitionError), approved
            assert later == [("run-cancelled", None)]
            assert run.step("review").status is StepStatus.WAITING
            assert "c" not in bodies.of(run_id)
        assert audit_run(run) == []


@pytest.mark.parametrize("order", ORDERS)
def test_of_an_approval_of_the_last_step_and_a_cancel_exactly_one_wins(
    h: Harness, bodies: Bodies, order: str
) -> None:
    """The gated step is the last: an approval completes the run (a cancel after it is refused),
    a cancel ends it (an approval after it is refused)."""
    h.start_worker(pool="threads", concurrency=2)
    for _ in range(3 if order == "race" else 1):
        run_id = start(h, gated_pipeline()[:2])
        waiting = wait_gated(h, run_id, "review")

        approved, cancelled = approval_and_cancel(h, waiting, order)

        outcomes = [approved, cancelled]
        won = [o for o in outcomes if isinstance(o, PipelineRun)]
        lost = [o for o in outcomes if isinstance(o, Exception)]
        assert (len(won), len(lost)) == (1, 1), outcomes
        assert isinstance(lost[0], InvalidTransitionError)
        run = h.run(run_id)
        later = kinds(run)[len(waiting.events) :]
        if isinstance(approved, PipelineRun):
            assert order != "cancel-first"
            assert run.status is PipelineRunStatus.COMPLETED
            assert later == [
                ("step-gated", "review"),
                ("run-resumed", None),
                ("step-completed", "review"),
                ("run-completed", None),
            ]
        else:
            assert order != "approve-first"
            assert run.status is PipelineRunStatus.CANCELLED
            assert later == [("run-cancelled", None)]
        assert audit_run(run) == []


def test_a_gate_approved_while_another_branch_runs_completes_the_step_without_a_resume(
    h: Harness, bodies: Bodies
) -> None:
    """``review`` (gated) waits while ``slow`` still runs: the run is not suspended, so the
    approval (with the step's own token) logs no run-resumed, and ``end`` runs after both."""
    h.start_worker(pool="threads", concurrency=2)
    run_id = start(
        h,
        [
            {"stepId": "slow", "operation": "gt.work", "inputs": {"hold": "slow"}},
            {"stepId": "review", "operation": "gt.work", "gate": gate()},
            {"stepId": "end", "operation": "gt.work", "dependsOn": ["slow", "review"]},
        ],
    )
    waiting = wait_for(
        lambda: (run := h.run(run_id)).step("review").approval is not None and run,
        what="review to wait for a verdict",
    )
    assert waiting.status is PipelineRunStatus.RUNNING
    assert waiting.suspend_reason is None
    assert events_of(waiting, "run-suspended") == []

    approved = h.mp.approve(run_id, token_of(waiting, "review"), by="alice")

    assert approved.status is PipelineRunStatus.RUNNING
    assert approved.step("review").status is StepStatus.COMPLETED
    assert "end" not in bodies.of(run_id)  # it waits for slow too
    h.latch(f"slow-{run_id}").set()
    run = h.wait_terminal(run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert events_of(run, "run-resumed") == []
    assert kinds(run)[len(waiting.events) : len(waiting.events) + 2] == [
        ("step-gated", "review"),
        ("step-completed", "review"),
    ]
    assert bodies.of(run_id)[-1] == "end"
    assert audit_run(run) == []
