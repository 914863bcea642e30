"""The pure step transitions of ``mpstate.celery.transitions`` (no Celery, no I/O).

Each transition is decided on a run and, to chain them, committed to an in-memory store: the
store only carries the state from one decision to the next.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mpstate import InMemoryPipelineStateStore, PipelineRun, RunSuspended, audit_run
from mpstate.celery.identity import (
    ATTEMPT_BASE,
    ROLE,
    RUN_ID,
    STEP_ID,
    StepIdentity,
    attempt_of,
    identity_of,
)
from mpstate.celery.transitions import (
    Transition,
    complete_step,
    fail_awaiting_step,
    fail_step,
    gate_step,
    resume_step,
    start_run,
    start_step,
    suspend_step,
)
from mpstate.models import PipelineRunStatus, StepStatus

META = {"taskId": "t-1"}


class Runs:
    """A run in an in-memory store, moved along by committing transitions."""

    def __init__(self, steps: tuple[str, ...] = ("a", "b", "c")) -> None:
        self.store = InMemoryPipelineStateStore()
        self.run_id = "r1"
        self.store.create(
            {
                "runId": self.run_id,
                "pipelineId": "p",
                "steps": [{"stepId": s, "operation": f"op.{s}"} for s in steps],
            }
        )

    @property
    def run(self) -> PipelineRun:
        return self.store.require(self.run_id)

    def apply(self, transition: Transition | None) -> PipelineRun:
        assert transition is not None
        self.store.commit(self.run_id, transition.patch or None, transition.events)
        return self.run

    def started(self) -> PipelineRun:
        return self.apply(start_run(self.run))

    def start(self, step: str, attempt: int = 0, task_id: str = "t-1") -> PipelineRun:
        return self.apply(
            start_step(self.run, step, attempt=attempt, task_id=task_id, meta={"taskId": task_id})
        )

    def complete(self, step: str, cost: float = 0.0, artifacts: list[str] | None = None) -> Any:
        return complete_step(
            self.run,
            step,
            artifact_ids=artifacts or [f"{step}-1"],
            cost_usd=cost,
            cache_key=None,
            meta=META,
        )

    def run_through(self, *steps: str, cost: float = 0.1) -> PipelineRun:
        for step in steps:
            self.start(step)
            self.apply(self.complete(step, cost))
        return self.run


def kinds_of(transition: Transition | None) -> list[str]:
    assert transition is not None
    return [event.kind for event in transition.events]


def enqueued(transition: Transition | None) -> list[str]:
    """The ids of the steps ``transition`` publishes, each checked to carry the task id the
    transition's patch records on that step."""
    assert transition is not None
    recorded = {step.step_id: step.task_id for step in transition.patch.get("steps", [])}
    for step in transition.enqueue:
        assert step.task_id, f"step {step.step_id} is published without a task id"
        assert recorded[step.step_id] == step.task_id
    return [step.step_id for step in transition.enqueue]


# -- start_run / start_step ------------------------------------------------------------------------


def test_start_run_moves_a_pending_run_to_running_once_and_publishes_its_first_step() -> None:
    runs = Runs()
    transition = start_run(runs.run)
    assert kinds_of(transition) == ["run-started"]
    assert enqueued(transition) == ["a"]
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.started_at is not None
    assert run.step("a").task_id == transition.enqueue[0].task_id
    assert [run.step(s).task_id for s in ("b", "c")] == [None, None]
    assert start_run(run) is None


def test_start_step_refuses_a_step_whose_predecessor_is_not_done() -> None:
    runs = Runs()
    runs.started()
    assert start_step(runs.run, "b", attempt=0, task_id="t-2", meta=META) is None
    runs.start("a")
    assert start_step(runs.run, "b", attempt=0, task_id="t-2", meta=META) is None
    runs.apply(runs.complete("a"))
    assert kinds_of(start_step(runs.run, "b", attempt=0, task_id="t-2", meta=META)) == [
        "step-started"
    ]


def test_start_step_marks_the_step_running_with_its_task_and_logs_the_attempt() -> None:
    runs = Runs()
    runs.started()
    transition = start_step(runs.run, "a", attempt=0, task_id="t-1", meta=META)
    assert kinds_of(transition) == ["step-started"]
    assert transition.events[0].attempt == 0
    assert transition.events[0].meta == META
    run = runs.apply(transition)
    step = run.step("a")
    assert (step.status, step.attempts, step.task_id) == (StepStatus.RUNNING, 1, "t-1")
    assert step.started_at is not None
    assert run.current_step_index == 0


def test_a_retry_of_the_same_task_counts_one_more_attempt() -> None:
    runs = Runs()
    runs.started()
    runs.start("a", attempt=0)
    run = runs.start("a", attempt=1)
    assert run.step("a").attempts == 2
    assert [e.attempt for e in run.events if e.kind == "step-started"] == [0, 1]


def test_a_redelivery_of_the_same_attempt_is_logged_again_but_counts_no_new_attempt() -> None:
    runs = Runs()
    runs.started()
    runs.start("a", attempt=0, task_id="t-1")
    run = runs.start("a", attempt=0, task_id="t-1")
    assert run.step("a").attempts == 1
    assert [e.attempt for e in run.events if e.kind == "step-started"] == [0, 0]


def test_start_step_records_the_attempt_it_is_given_and_the_latest_task_id() -> None:
    runs = Runs()
    runs.started()
    runs.start("a", attempt=0, task_id="t-1")
    run = runs.start("a", attempt=1, task_id="t-2")  # enqueued again: attempt 1 (see attempt_of)
    assert run.step("a").attempts == 2
    assert run.step("a").task_id == "t-2"
    assert [e.attempt for e in run.events if e.kind == "step-started"] == [0, 1]


def test_the_attempt_counts_the_attempts_before_the_message_plus_its_celery_retries() -> None:
    # A step enqueued again (a provider's retryable failure) carries the attempts it already made
    # in a header; Celery's retry count restarts at 0 for the new message and survives in it.
    first = SimpleNamespace(headers={}, retries=0)
    re_enqueued = SimpleNamespace(headers={ATTEMPT_BASE: 1}, retries=0)
    its_retry = SimpleNamespace(headers={ATTEMPT_BASE: 1}, retries=1)
    assert [attempt_of(r) for r in (first, re_enqueued, its_retry)] == [0, 1, 2]


def test_start_step_returns_none_for_a_finished_run() -> None:
    runs = Runs()
    runs.started()
    runs.store.cancel(runs.run_id, "stop")
    assert start_step(runs.run, "a", attempt=0, task_id="t-1", meta=META) is None


def test_start_step_returns_none_for_a_suspended_run() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    runs.apply(suspend_step(runs.run, "a", provider="vid", job_id="j1", meta=META))
    assert start_step(runs.run, "b", attempt=0, task_id="t-2", meta=META) is None


@pytest.mark.parametrize("how", ["completed", "failed", "gated"])
def test_start_step_returns_none_for_a_step_that_is_done(how: str) -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    if how == "completed":
        runs.apply(runs.complete("a"))
        run = runs.run
    else:
        decided = (
            fail_step(runs.run, "a", code="E", message="", retryable=False, meta=META)
            if how == "failed"
            else gate_step(runs.run, "a", gate_type="q", verdict="no", passed=False, meta=META)
        )
        run = runs.apply(decided)
        # Decide on the done step as if the run were still live.
        run = run.model_copy(update={"status": PipelineRunStatus.RUNNING})
    assert start_step(run, "a", attempt=1, task_id="t-1", meta=META) is None


# -- complete_step ---------------------------------------------------------------------------------


def test_completing_a_middle_step_advances_to_the_next_step_and_adds_its_cost() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    transition = runs.complete("a", cost=0.25, artifacts=["img-1"])
    assert kinds_of(transition) == ["step-completed"]
    assert enqueued(transition) == ["b"]
    run = runs.apply(transition)
    assert run.step("b").task_id == transition.enqueue[0].task_id
    step = run.step("a")
    assert (step.status, step.artifact_ids, step.cost_usd) == (
        StepStatus.COMPLETED,
        ["img-1"],
        0.25,
    )
    assert step.completed_at is not None
    assert run.cost_usd == 0.25
    assert run.current_step_index == 1
    assert run.status is PipelineRunStatus.RUNNING


def test_completing_the_last_step_completes_the_run_with_the_total_cost() -> None:
    runs = Runs()
    runs.started()
    runs.run_through("a", "b", cost=0.1)
    runs.start("c")
    transition = runs.complete("c", cost=0.2)
    assert kinds_of(transition) == ["step-completed", "run-completed"]
    assert enqueued(transition) == []
    assert transition.events[1].total_cost_usd == pytest.approx(0.4)
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.COMPLETED
    assert run.completed_at is not None
    assert run.cost_usd == pytest.approx(0.4)


def test_a_cached_result_logs_step_cached_and_marks_the_step_cached() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    transition = complete_step(
        runs.run, "a", artifact_ids=["c-1"], cost_usd=0.0, cache_key="k", meta=META
    )
    assert kinds_of(transition) == ["step-cached"]
    assert (transition.events[0].cache_key, transition.events[0].artifact_ids) == ("k", ["c-1"])
    assert enqueued(transition) == ["b"]  # a cached step satisfies the step after it
    run = runs.apply(transition)
    assert (run.step("a").status, run.step("a").cache_key) == (StepStatus.CACHED, "k")


def test_a_duplicate_completion_returns_none() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    assert enqueued(runs.complete("a", cost=0.1)) == ["b"]
    runs.apply(runs.complete("a", cost=0.1))
    assert runs.complete("a", cost=0.1) is None  # so b is not published a second time


def test_a_late_completion_for_a_finished_run_returns_none() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    runs.store.cancel(runs.run_id, "stop")
    assert runs.complete("a") is None


# -- fail_step -------------------------------------------------------------------------------------


def test_a_retryable_failure_logs_step_failed_only_and_keeps_the_step_running() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    transition = fail_step(runs.run, "a", code="Busy", message="later", retryable=True, meta=META)
    assert kinds_of(transition) == ["step-failed"]
    assert transition.events[0].retryable is True
    assert enqueued(transition) == []  # Celery's own retry runs it again
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING
    step = run.step("a")
    assert step.status is StepStatus.RUNNING
    assert step.last_error is not None
    assert (step.last_error.code, step.last_error.retryable) == ("Busy", True)
    assert step.error is None


def test_a_final_failure_fails_the_step_and_the_run_with_the_reason() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    transition = fail_step(runs.run, "a", code="Bad", message="no", retryable=False, meta=META)
    assert kinds_of(transition) == ["step-failed", "run-failed"]
    assert transition.events[1].code == "Bad"
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.FAILED
    assert run.error == "step a failed: Bad: no"
    assert run.step("a").status is StepStatus.FAILED
    assert run.step("a").error == "no"
    assert enqueued(transition) == []
    assert fail_step(run, "a", code="Bad", message="", retryable=False, meta=META) is None


def test_a_failure_after_the_step_completed_returns_none() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    runs.apply(runs.complete("a"))
    assert fail_step(runs.run, "a", code="E", message="", retryable=False, meta=META) is None


# -- gates -----------------------------------------------------------------------------------------


def test_a_passed_gate_logs_step_gated_and_changes_nothing_else() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    transition = gate_step(runs.run, "a", gate_type="q", verdict="ok", passed=True, meta=META)
    assert kinds_of(transition) == ["step-gated"]
    assert transition.patch == {}
    assert runs.apply(transition).step("a").status is StepStatus.RUNNING


def test_a_rejecting_gate_fails_the_run_as_gate_rejected() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    transition = gate_step(runs.run, "a", gate_type="q", verdict="blurry", passed=False, meta=META)
    assert kinds_of(transition) == ["step-gated", "run-failed"]
    assert transition.events[1].code == "gate-rejected"
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.FAILED
    assert run.step("a").status is StepStatus.GATED
    assert gate_step(run, "a", gate_type="q", verdict="x", passed=True, meta=META) is None


# -- suspend / resume ------------------------------------------------------------------------------


def suspended_on_b(job_id: str = "j1") -> Runs:
    runs = Runs()
    runs.started()
    runs.run_through("a", cost=0.1)
    runs.start("b")
    runs.apply(suspend_step(runs.run, "b", provider="vid", job_id=job_id, meta=META))
    return runs


def resume(runs: Runs, step: str = "b", job_id: str = "j1", provider: str = "vid") -> Any:
    return resume_step(
        runs.run,
        step,
        provider=provider,
        job_id=job_id,
        artifact_ids=["v-1"],
        cost_usd=0.5,
        meta=META,
    )


def test_suspending_the_only_running_step_logs_step_waiting_then_suspends_the_run() -> None:
    runs = Runs()
    runs.started()
    runs.run_through("a", cost=0.1)
    runs.start("b")
    transition = suspend_step(runs.run, "b", provider="vid", job_id="j1", meta=META)
    assert kinds_of(transition) == ["step-waiting", "run-suspended"]
    waiting = transition.events[0]
    assert (waiting.step_id, waiting.provider, waiting.job_id) == ("b", "vid", "j1")
    assert enqueued(transition) == []
    run = runs.apply(transition)
    assert [e.kind for e in run.events] == [
        "run-created",
        "run-started",
        "step-started",
        "step-completed",
        "step-started",
        "step-waiting",
        "run-suspended",
    ]
    step = run.step("b")
    assert step.status is StepStatus.WAITING
    assert [(j.provider, j.job_id, j.attempt) for j in step.external_jobs] == [("vid", "j1", 0)]
    assert step.awaited_job is not None and step.awaited_job.job_id == "j1"


def test_suspending_records_the_job_and_a_resume_token() -> None:
    runs = suspended_on_b()
    run = runs.run
    assert run.status is PipelineRunStatus.SUSPENDED
    assert run.external_job_ids == {"vid": "j1"}
    assert run.resumable is True
    (event,) = [e for e in run.events if e.kind == "run-suspended"]
    assert event.reason == "webhook"
    assert event.resume_token == run.resume_token


def test_resuming_completes_the_step_and_advances_in_one_transition() -> None:
    runs = suspended_on_b()
    transition = resume(runs)
    assert kinds_of(transition) == ["run-resumed", "step-completed"]
    assert transition.events[0].from_step_id == "b"
    assert enqueued(transition) == ["c"]
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.resumable is False
    assert run.step("b").status is StepStatus.COMPLETED
    assert run.step("b").artifact_ids == ["v-1"]
    assert run.step("c").task_id == transition.enqueue[0].task_id
    assert run.cost_usd == pytest.approx(0.6)


def test_resuming_the_last_step_completes_the_run() -> None:
    runs = Runs(steps=("a", "b"))
    runs.started()
    runs.run_through("a", cost=0.1)
    runs.start("b")
    runs.apply(suspend_step(runs.run, "b", provider="vid", job_id="j1", meta=META))
    transition = resume(runs)
    assert kinds_of(transition) == ["run-resumed", "step-completed", "run-completed"]
    assert enqueued(transition) == []
    assert transition.events[2].total_cost_usd == pytest.approx(0.6)
    assert runs.apply(transition).status is PipelineRunStatus.COMPLETED


def test_a_duplicate_resume_returns_none() -> None:
    runs = suspended_on_b()
    runs.apply(resume(runs))
    assert resume(runs) is None


def test_resume_returns_none_unless_the_step_waits_for_that_very_job() -> None:
    runs = suspended_on_b()
    assert resume(runs, step="c") is None  # c waits for nothing
    assert resume(runs, step="a") is None  # a is done
    assert resume(runs, job_id="j0") is None  # another job
    assert resume(runs, provider="other") is None  # the same job id from another provider
    assert kinds_of(resume(runs)) == ["run-resumed", "step-completed"]


def test_a_callback_for_the_job_of_an_earlier_attempt_is_ignored() -> None:
    runs = suspended_on_b(job_id="j1")
    runs.apply(
        fail_awaiting_step(
            runs.run,
            "b",
            provider="vid",
            job_id="j1",
            code="PROVIDER_TIMEOUT",
            message="",
            retryable=True,
            default_max_retries=3,
            meta=META,
        )
    )
    runs.start("b", attempt=1)
    runs.apply(suspend_step(runs.run, "b", provider="vid", job_id="j2", meta=META))
    assert [(j.job_id, j.attempt) for j in runs.run.step("b").external_jobs] == [
        ("j1", 0),
        ("j2", 1),
    ]
    assert resume(runs, job_id="j1") is None
    assert kinds_of(resume(runs, job_id="j2")) == ["run-resumed", "step-completed"]


def test_complete_step_returns_none_for_a_step_waiting_for_its_provider() -> None:
    runs = suspended_on_b()
    assert runs.complete("b") is None


def test_suspend_returns_none_for_a_finished_run_or_a_done_step() -> None:
    runs = Runs()
    runs.started()
    runs.start("a")
    runs.apply(runs.complete("a"))
    assert suspend_step(runs.run, "a", provider="vid", job_id="j", meta=META) is None
    runs.store.cancel(runs.run_id, "stop")
    assert suspend_step(runs.run, "b", provider="vid", job_id="j", meta=META) is None


def test_suspend_returns_none_for_a_step_that_is_not_running() -> None:
    runs = suspended_on_b()
    assert suspend_step(runs.run, "b", provider="vid", job_id="j2", meta=META) is None  # waits
    assert suspend_step(runs.run, "c", provider="vid", job_id="j2", meta=META) is None  # pending


def test_a_provider_failure_applies_once_however_often_it_is_delivered() -> None:
    # Concurrent deliveries each read the suspended run; after the first commit the run is
    # running again, and deciding on it must give nothing (no second step-failed, no re-enqueue).
    runs = Runs()
    runs.started()
    runs.start("a")
    runs.apply(suspend_step(runs.run, "a", provider="vid", job_id="j1", meta=META))
    suspended = runs.run

    def failure(run: PipelineRun) -> Any:
        return fail_awaiting_step(
            run,
            "a",
            provider="vid",
            job_id="j1",
            code="PROVIDER_TIMEOUT",
            message="",
            retryable=True,
            default_max_retries=3,
            meta=META,
        )

    first = failure(suspended)
    assert kinds_of(first) == ["step-failed"]
    assert enqueued(first) == ["a"]
    assert first.enqueue[0].task_id != suspended.step("a").task_id  # a new message
    run = runs.apply(first)
    assert (run.status, run.resumable) == (PipelineRunStatus.RUNNING, False)
    assert run.step("a").status is StepStatus.RUNNING
    assert failure(runs.run) is None
    assert [e.kind for e in runs.run.events].count("step-failed") == 1


def test_a_final_provider_failure_fails_the_step_and_the_run() -> None:
    runs = suspended_on_b()
    transition = fail_awaiting_step(
        runs.run,
        "b",
        provider="vid",
        job_id="j1",
        code="PROVIDER_REJECTED",
        message="bad prompt",
        retryable=False,
        default_max_retries=3,
        meta=META,
    )
    assert kinds_of(transition) == ["step-failed", "run-failed"]
    assert enqueued(transition) == []
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.FAILED
    assert run.error == "step b failed: PROVIDER_REJECTED: bad prompt"
    assert (run.step("b").status, run.step("b").error) == (StepStatus.FAILED, "bad prompt")


def test_a_retryable_provider_failure_past_the_retry_limit_fails_the_run() -> None:
    runs = suspended_on_b()
    transition = fail_awaiting_step(
        runs.run,
        "b",
        provider="vid",
        job_id="j1",
        code="PROVIDER_TIMEOUT",
        message="",
        retryable=True,
        default_max_retries=0,
        meta=META,
    )
    assert kinds_of(transition) == ["step-failed", "run-failed"]
    assert transition.events[0].retryable is False
    assert enqueued(transition) == []


def legacy_suspended_on_a() -> Runs:
    """A run suspended before steps recorded their jobs: its step is running, the job is only in
    the run-level map, and the log has no step-waiting."""
    runs = Runs(steps=("a", "b"))
    runs.started()
    runs.start("a")
    runs.store.commit(
        runs.run_id,
        {
            "status": "suspended",
            "resumeToken": "tok-old",
            "resumable": True,
            "externalJobIds": {"vid": "j1"},
        },
        [RunSuspended(run_id=runs.run_id, reason="webhook", resume_token="tok-old")],
    )
    run = runs.run
    assert (run.step("a").status, run.step("a").external_jobs) == (StepStatus.RUNNING, [])
    return runs


def test_a_run_suspended_before_steps_recorded_their_jobs_is_resumed_by_its_job() -> None:
    runs = legacy_suspended_on_a()
    assert resume(runs, step="a", job_id="j0") is None
    assert resume(runs, step="b", job_id="j1") is None
    transition = resume(runs, step="a", job_id="j1")
    assert kinds_of(transition) == ["run-resumed", "step-completed"]
    assert enqueued(transition) == ["b"]
    run = runs.apply(transition)
    assert (run.status, run.resumable) == (PipelineRunStatus.RUNNING, False)
    assert audit_run(run) == []
    assert resume(runs, step="a", job_id="j1") is None


def test_a_run_suspended_before_steps_recorded_their_jobs_takes_its_jobs_failure() -> None:
    runs = legacy_suspended_on_a()
    transition = fail_awaiting_step(
        runs.run,
        "a",
        provider="vid",
        job_id="j1",
        code="PROVIDER_TIMEOUT",
        message="",
        retryable=True,
        default_max_retries=3,
        meta=META,
    )
    assert kinds_of(transition) == ["step-failed"]
    assert enqueued(transition) == ["a"]
    run = runs.apply(transition)
    assert (run.status, run.resumable) == (PipelineRunStatus.RUNNING, False)
    assert audit_run(run) == []


def test_a_worker_request_is_read_for_its_identity_from_the_message_headers() -> None:
    # task_received hands over the worker's Request: the message headers are in request_dict.
    request = SimpleNamespace(
        request_dict={"id": "t1", RUN_ID: "r1", STEP_ID: "s1", ROLE: "step", ATTEMPT_BASE: 2},
        retries=1,
    )
    assert identity_of(request) == StepIdentity("r1", "s1", is_step=True)
    assert attempt_of(request) == 3
