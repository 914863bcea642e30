"""The reconciler's transition, ``recover_steps``, and the superseded-attempt rule of
``start_step`` (pure functions: no Celery, no I/O).

As in ``test_transitions.py``, decisions are chained by committing them to an in-memory store,
which only carries the state from one decision to the next.
"""

from __future__ import annotations

from typing import Any

import pytest

from mpstate import InMemoryPipelineStateStore, PipelineRun, audit_run
from mpstate.celery.transitions import (
    WORKER_LOST,
    Transition,
    complete_step,
    fail_step,
    recover_steps,
    start_run,
    start_step,
    suspend_step,
)
from mpstate.models import PipelineRunStatus, StepStatus

META = {"by": "reconciler", "idleS": 12.5}


class Runs:
    """A run in an in-memory store, moved along by committing transitions."""

    def __init__(
        self,
        steps: tuple[str, ...] = ("a", "b"),
        max_retries: int | None = None,
        *,
        started: bool = True,
        depends_on: dict[str, list[str]] | None = None,
    ) -> None:
        self.store = InMemoryPipelineStateStore()
        self.run_id = "r1"
        self.store.create(
            {
                "runId": self.run_id,
                "pipelineId": "p",
                "steps": [
                    {
                        "stepId": s,
                        "operation": f"op.{s}",
                        "maxRetries": max_retries,
                        "dependsOn": None if depends_on is None else depends_on.get(s, []),
                    }
                    for s in steps
                ],
            }
        )
        if started:
            self.apply(start_run(self.run))

    @property
    def run(self) -> PipelineRun:
        return self.store.require(self.run_id)

    def apply(self, transition: Transition | None) -> PipelineRun:
        assert transition is not None
        run = self.run
        self.store.commit(
            self.run_id, transition.patch or None, transition.events, expected_version=run.version
        )
        return self.run

    def start(self, step: str, attempt: int = 0, task_id: str = "t-1") -> PipelineRun:
        return self.apply(self.decide_start(step, attempt, task_id))

    def decide_start(self, step: str, attempt: int, task_id: str) -> Transition | None:
        return start_step(
            self.run, step, attempt=attempt, task_id=task_id, meta={"taskId": task_id}
        )

    def fail_retryably(self, step: str) -> PipelineRun:
        return self.apply(
            fail_step(self.run, step, code="Busy", message="", retryable=True, meta={})
        )

    def decide_complete(self, step: str) -> Transition | None:
        return complete_step(
            self.run, step, artifact_ids=[f"{step}-1"], cost_usd=0.1, cache_key=None, meta={}
        )

    def complete(self, step: str) -> PipelineRun:
        return self.apply(self.decide_complete(step))

    def recover(
        self,
        *steps: str,
        requeue: bool = True,
        default_max_retries: int | None = 3,
        seen_version: int | None = None,
        retry_limits: dict[str, int | None] | None = None,
    ) -> Transition | None:
        run = self.run
        return recover_steps(
            run,
            steps,
            seen_version=run.version if seen_version is None else seen_version,
            requeue=requeue,
            retry_limits=(
                retry_limits
                if retry_limits is not None
                else dict.fromkeys(steps, default_max_retries)
            ),
            meta=META,
        )


def lost_on_a(attempts: int = 1, max_retries: int | None = None) -> Runs:
    """Step a started ``attempts`` times under task t-1 (retried in between), then went silent."""
    runs = Runs(max_retries=max_retries)
    for attempt in range(attempts):
        if attempt:
            runs.fail_retryably("a")
        runs.start("a", attempt=attempt, task_id="t-1")
    return runs


def kinds_of(transition: Transition | None) -> list[str]:
    assert transition is not None
    return [event.kind for event in transition.events]


def step_doc(transition: Transition, step_id: str) -> dict[str, Any]:
    """The step as the patch stores it (its JSON form)."""
    (step,) = [s for s in transition.patch["steps"] if s.step_id == step_id]
    return dict(step.model_dump(mode="json", by_alias=True))


def enqueued(transition: Transition | None) -> list[str]:
    """The ids of the steps ``transition`` publishes, each checked to carry the task id the
    transition's patch records on that step."""
    assert transition is not None
    for step in transition.enqueue:
        assert step.task_id and step_doc(transition, step.step_id)["taskId"] == step.task_id
    return [step.step_id for step in transition.enqueue]


def task_of(transition: Transition | None, step_id: str) -> str:
    assert transition is not None
    (task_id,) = [s.task_id for s in transition.enqueue if s.step_id == step_id]
    assert task_id is not None
    return task_id


# -- recover_steps: when it does nothing -------------------------------------------------------


def test_recovery_returns_none_when_the_run_moved_since_the_scan_saw_it() -> None:
    runs = lost_on_a()
    seen = runs.run.version
    runs.store.update(runs.run_id, {"budget": {"maxUsd": 1}})  # any write after the scan
    assert runs.recover("a", seen_version=seen) is None
    assert runs.recover("a", seen_version=runs.run.version) is not None


def test_recovery_returns_none_for_a_pending_step_that_is_not_ready() -> None:
    runs = lost_on_a()
    assert runs.recover("b") is None  # b is pending, but it waits for a


def test_recovery_returns_none_for_no_steps() -> None:
    runs = lost_on_a()
    assert runs.recover() is None


def test_recovery_returns_none_for_a_step_the_run_has_moved_past() -> None:
    runs = lost_on_a()
    runs.complete("a")
    assert runs.recover("a") is None


@pytest.mark.parametrize("status", ["suspended", "cancelled", "pending"])
def test_recovery_returns_none_unless_the_run_is_running(status: str) -> None:
    if status == "pending":
        runs = Runs(started=False)
    else:
        runs = lost_on_a()
        if status == "suspended":
            runs.apply(suspend_step(runs.run, "a", provider="vid", job_id="j1", meta={}))
        else:
            runs.store.cancel(runs.run_id, "stop")
    assert runs.run.status == status
    assert runs.recover("a") is None
    assert runs.recover("a", requeue=False) is None


def test_recovery_returns_none_for_a_step_waiting_for_its_provider() -> None:
    runs = Runs(("a", "b", "c"), depends_on={"c": ["a", "b"]})
    runs.start("a")
    runs.start("b", task_id="t-2")
    runs.apply(suspend_step(runs.run, "a", provider="vid", job_id="j1", meta={}))
    assert runs.run.status is PipelineRunStatus.RUNNING  # b still runs
    assert runs.recover("a") is None
    assert runs.recover("a", requeue=False) is None
    transition = runs.recover("a", "b")  # only b is repaired
    assert kinds_of(transition) == ["step-failed"]
    assert transition is not None and transition.events[0].step_id == "b"
    assert enqueued(transition) == ["b"]
    assert step_doc(transition, "a")["status"] == "waiting"


# -- recover_steps: a pending step whose enqueue was lost --------------------------------------


@pytest.mark.parametrize("requeue", [True, False], ids=["requeue", "fail"])
def test_a_pending_step_is_enqueued_under_a_new_task_id_with_no_event(requeue: bool) -> None:
    runs = Runs()
    runs.start("a")
    advanced = runs.decide_complete("a")
    lost_task = task_of(advanced, "b")
    runs.apply(advanced)  # the process that committed this died before publishing b

    transition = runs.recover("b", requeue=requeue)

    assert transition is not None
    assert transition.events == []
    assert enqueued(transition) == ["b"]
    new_task = task_of(transition, "b")
    assert new_task != lost_task
    assert transition.enqueue[0].attempts == 0
    assert set(transition.patch) == {"steps", "currentStepIndex"}
    assert transition.patch["currentStepIndex"] == 1
    doc = step_doc(transition, "b")
    assert (doc["status"], doc["taskId"], doc["attempts"]) == ("pending", new_task, 0)
    assert step_doc(transition, "a")["status"] == "completed"  # the other steps are untouched
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.current_step_index == 1
    assert audit_run(run) == []


# -- recover_steps: a running step whose attempt was lost --------------------------------------


def test_a_lost_attempt_with_retries_left_is_failed_retryably_and_enqueued_again() -> None:
    runs = lost_on_a()

    transition = runs.recover("a")

    assert kinds_of(transition) == ["step-failed"]
    failed = transition.events[0]
    assert (failed.step_id, failed.code, failed.retryable) == ("a", WORKER_LOST, True)
    assert failed.meta == META
    assert enqueued(transition) == ["a"]
    new_task = task_of(transition, "a")
    assert new_task != "t-1"
    # The new message carries the attempts made so far: it runs as attempt 1.
    assert transition.enqueue[0].attempts == 1
    run = runs.apply(transition)
    step = run.step("a")
    assert (step.status, step.task_id, step.attempts) == (StepStatus.RUNNING, new_task, 1)
    assert step.last_error is not None
    assert (step.last_error.code, step.last_error.retryable) == (WORKER_LOST, True)
    assert step.error is None
    assert run.status is PipelineRunStatus.RUNNING
    assert audit_run(run) == []


@pytest.mark.parametrize(
    ("attempts", "max_retries", "default_max_retries"),
    [
        (1, 0, 3),  # the step allows no retry
        (1, None, 0),  # the task allows no retry
        (2, 1, 3),  # its one retry is spent
        (4, None, 3),  # Celery's default of 3 is spent
    ],
)
def test_a_lost_attempt_with_no_retries_left_fails_the_run(
    attempts: int, max_retries: int | None, default_max_retries: int
) -> None:
    runs = lost_on_a(attempts, max_retries=max_retries)

    transition = runs.recover("a", default_max_retries=default_max_retries)

    assert kinds_of(transition) == ["step-failed", "run-failed"]
    assert enqueued(transition) == []
    assert transition.events[0].retryable is False
    assert transition.events[1].code == WORKER_LOST
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.FAILED
    assert run.step("a").status is StepStatus.FAILED
    assert run.error is not None and run.error.startswith("step a failed: worker-lost")
    assert audit_run(run) == []


@pytest.mark.parametrize(
    ("attempts", "max_retries", "default_max_retries"),
    [(1, 1, 0), (3, None, 3), (9, None, None)],
    ids=["the-steps-own-limit-wins", "celery-default-not-yet-spent", "no-limit"],
)
def test_a_lost_attempt_within_its_retry_limit_is_requeued(
    attempts: int, max_retries: int | None, default_max_retries: int | None
) -> None:
    runs = lost_on_a(attempts, max_retries=max_retries)
    transition = runs.recover("a", default_max_retries=default_max_retries)
    assert kinds_of(transition) == ["step-failed"]
    assert enqueued(transition) == ["a"]


def test_policy_fail_fails_a_lost_attempt_even_with_retries_left() -> None:
    runs = lost_on_a()
    transition = runs.recover("a", requeue=False, default_max_retries=None)
    assert kinds_of(transition) == ["step-failed", "run-failed"]
    assert enqueued(transition) == []
    assert runs.apply(transition).status is PipelineRunStatus.FAILED


# -- start_step: a superseded attempt is refused -----------------------------------------------


def test_a_start_for_an_attempt_older_than_the_latest_started_is_refused() -> None:
    runs = Runs()
    runs.start("a", attempt=0, task_id="t-1")
    runs.fail_retryably("a")
    runs.start("a", attempt=1, task_id="t-1")  # Celery's retry keeps the task id
    assert runs.decide_start("a", 0, "t-1") is None
    assert runs.decide_start("a", 0, "t-other") is None


def test_a_start_for_the_latest_attempt_under_another_task_id_is_refused() -> None:
    runs = Runs()
    runs.start("a", attempt=0, task_id="t-1")
    assert runs.decide_start("a", 0, "t-2") is None


def test_a_redelivery_of_the_latest_attempt_under_its_own_task_id_is_accepted() -> None:
    runs = Runs()
    runs.start("a", attempt=0, task_id="t-1")
    transition = runs.decide_start("a", 0, "t-1")
    assert kinds_of(transition) == ["step-started"]
    assert runs.apply(transition).step("a").attempts == 1


@pytest.mark.parametrize("task_id", ["t-1", "t-other"])
def test_a_start_for_a_newer_attempt_is_accepted_under_any_task_id(task_id: str) -> None:
    runs = Runs()
    runs.start("a", attempt=0, task_id="t-1")
    transition = runs.decide_start("a", 1, task_id)
    assert kinds_of(transition) == ["step-started"]
    step = runs.apply(transition).step("a")
    assert (step.attempts, step.task_id) == (2, task_id)


def test_the_first_start_of_a_step_is_accepted_whatever_task_id_it_was_recorded_under() -> None:
    # A pending step the reconciler enqueued again records the new task id before any start; the
    # original message, if it was merely late, may still be the one that runs it.
    runs = Runs()
    runs.start("a")
    original = task_of(runs.decide_complete("a"), "b")
    runs.complete("a")
    recovered = runs.recover("b")
    new_task = task_of(recovered, "b")
    runs.apply(recovered)
    assert runs.run.step("b").task_id == new_task
    assert kinds_of(runs.decide_start("b", 0, original)) == ["step-started"]
    assert kinds_of(runs.decide_start("b", 0, new_task)) == ["step-started"]


def test_after_a_recovery_the_lost_message_is_refused_and_its_replacement_accepted() -> None:
    runs = lost_on_a()
    transition = runs.recover("a")
    assert enqueued(transition) == ["a"]
    new_task = task_of(transition, "a")
    runs.apply(transition)
    replacement_attempt = transition.enqueue[0].attempts  # its mpstate_attempt_base header

    # The original comes back before the replacement starts: the same attempt, another task id.
    assert runs.decide_start("a", 0, "t-1") is None
    runs.start("a", attempt=replacement_attempt, task_id=new_task)
    # ... or after it started: an older attempt.
    assert runs.decide_start("a", 0, "t-1") is None
    # The replacement's own redelivery is still accepted.
    assert runs.decide_start("a", replacement_attempt, new_task) is not None
    run = runs.complete("a")
    assert [e.attempt for e in run.events if e.kind == "step-started"] == [0, 1]
    assert audit_run(runs.store.require(runs.run_id)) == []


def test_of_a_lost_pending_steps_two_messages_only_the_first_to_start_runs() -> None:
    for new_first in (False, True):
        runs = Runs()
        runs.start("a")
        original = task_of(runs.decide_complete("a"), "b")
        runs.complete("a")
        recovered = runs.recover("b")
        new_task = task_of(recovered, "b")
        runs.apply(recovered)
        first, second = (new_task, original) if new_first else (original, new_task)
        runs.start("b", attempt=0, task_id=first)
        assert runs.decide_start("b", 0, second) is None, (first, second)
        assert runs.run.step("b").task_id == first


# -- recover_steps: several stalled steps of one run, in one commit ----------------------------


def parallel(max_retries: int | None = None) -> Runs:
    """Steps a and b run in parallel (started under t-a and t-b), c waits for both."""
    runs = Runs(("a", "b", "c"), max_retries, depends_on={"c": ["a", "b"]})
    runs.start("a", task_id="t-a")
    runs.start("b", task_id="t-b")
    return runs


def test_two_lost_attempts_of_one_run_are_failed_and_enqueued_again_in_one_commit() -> None:
    runs = parallel()
    version = runs.run.version

    transition = runs.recover("a", "b")

    assert kinds_of(transition) == ["step-failed", "step-failed"]
    assert transition is not None
    assert [(e.step_id, e.code, e.retryable) for e in transition.events] == [
        ("a", WORKER_LOST, True),
        ("b", WORKER_LOST, True),
    ]
    assert enqueued(transition) == ["a", "b"]
    new_tasks = {s.step_id: s.task_id for s in transition.enqueue}
    assert set(new_tasks.values()).isdisjoint({"t-a", "t-b"})
    assert len(set(new_tasks.values())) == 2
    run = runs.apply(transition)
    assert run.version == version + 1
    assert {s: run.step(s).task_id for s in ("a", "b")} == new_tasks
    assert run.step("c").status is StepStatus.PENDING
    assert audit_run(run) == []


def test_each_stalled_step_is_held_to_its_own_retry_limit() -> None:
    runs = parallel()

    transition = runs.recover("a", "b", retry_limits={"a": 3, "b": 0})

    assert transition is not None
    assert [(e.step_id, e.retryable) for e in transition.events[:2]] == [
        ("a", True),
        ("b", False),
    ]
    # b failed for good: under fail-fast the run fails at once, a is not published again.
    assert kinds_of(transition)[2:] == ["run-failed"]
    assert enqueued(transition) == []
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.FAILED
    assert run.error is not None and run.error.startswith("step b failed: worker-lost")
    assert audit_run(run) == []


def test_a_stalled_step_with_no_limit_given_may_retry_forever() -> None:
    runs = parallel()
    transition = runs.recover("a", retry_limits={})
    assert kinds_of(transition) == ["step-failed"]
    assert enqueued(transition) == ["a"]


def test_a_lost_attempt_and_a_lost_publish_of_one_run_are_repaired_together() -> None:
    runs = Runs(("a", "b", "c"), depends_on={"c": ["a"]})
    runs.start("a", task_id="t-a")
    runs.start("b", task_id="t-b")
    runs.complete("a")  # published c, but that publish was lost; b's worker died

    transition = runs.recover("b", "c")

    assert kinds_of(transition) == ["step-failed"]
    assert transition is not None and transition.events[0].step_id == "b"
    assert enqueued(transition) == ["b", "c"]
    run = runs.apply(transition)
    assert (run.step("b").status, run.step("c").status) == (
        StepStatus.RUNNING,
        StepStatus.PENDING,
    )
    assert audit_run(run) == []
