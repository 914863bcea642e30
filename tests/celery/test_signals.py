"""Plain tasks (not PipelineTask) run as steps get their events through Celery's signals."""

from __future__ import annotations

from typing import Any

import pytest
from celery_support import Harness, assert_seqs_contiguous, events_of, kinds, step_events

from mpstate.models import PipelineRunStatus, StepStatus

pytestmark = pytest.mark.parametrize("store_backend", ["redis", "cluster"], indirect=True)


def define_plain_tasks(h: Harness, ran: list[tuple[str, int]]) -> None:
    @h.app.task(shared=False, name="plain.prepare")
    def prepare(**kwargs: Any) -> dict[str, Any]:
        ran.append(("prepare", 0))
        return {"artifactIds": ["doc-1"], "costUsd": 0.03}

    @h.app.task(shared=False, name="plain.explode")
    def explode(**kwargs: Any) -> None:
        ran.append(("explode", 0))
        raise ValueError("cannot parse the document")

    @h.app.task(shared=False, bind=True, name="plain.flaky", max_retries=3)
    def flaky(self: Any, **kwargs: Any) -> dict[str, Any]:
        ran.append(("flaky", self.request.retries))
        if self.request.retries == 0:
            raise self.retry(exc=ConnectionError("try again"), countdown=0.05)
        return {"artifactIds": ["doc-2"], "costUsd": 0.02}

    @h.app.task(shared=False, name="plain.summary")
    def summary(**kwargs: Any) -> str:
        ran.append(("summary", 0))
        return "not a step result, and that is fine for a plain task"


def test_a_plain_step_that_raises_logs_step_failed_and_run_failed(h: Harness) -> None:
    ran: list[tuple[str, int]] = []
    define_plain_tasks(h, ran)
    h.start_worker()
    run = h.mp.start_run(
        "docs",
        [
            {"stepId": "prepare", "operation": "plain.prepare"},
            {"stepId": "explode", "operation": "plain.explode"},
            {"stepId": "summary", "operation": "plain.summary"},
        ],
    )
    run = h.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "prepare"),
        ("step-completed", "prepare"),
        ("step-started", "explode"),
        ("step-failed", "explode"),
        ("run-failed", None),
    ]
    assert_seqs_contiguous(run)
    (failed,) = events_of(run, "step-failed")
    assert (failed.code, failed.retryable) == ("ValueError", False)
    assert events_of(run, "run-failed")[0].code == "ValueError"
    for step_id in ("prepare", "explode"):
        step = run.step(step_id)
        assert step.task_id
        assert {e.meta["taskId"] for e in step_events(run, step_id)} == {step.task_id}
    assert run.step("explode").status is StepStatus.FAILED
    assert run.step("summary").status is StepStatus.PENDING
    assert ("summary", 0) not in ran


def test_a_plain_step_retried_by_celery_logs_each_attempt_and_completes(h: Harness) -> None:
    ran: list[tuple[str, int]] = []
    define_plain_tasks(h, ran)
    h.start_worker()
    run = h.mp.start_run(
        "docs",
        [
            {"stepId": "flaky", "operation": "plain.flaky"},
            {"stepId": "summary", "operation": "plain.summary"},
        ],
    )
    run = h.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "flaky"),
        ("step-failed", "flaky"),
        ("step-started", "flaky"),
        ("step-completed", "flaky"),
        ("step-started", "summary"),
        ("step-completed", "summary"),
        ("run-completed", None),
    ]
    assert_seqs_contiguous(run)
    assert [e.attempt for e in events_of(run, "step-started")] == [0, 1, 0]
    (failed,) = events_of(run, "step-failed")
    assert (failed.code, failed.retryable) == ("ConnectionError", True)
    flaky = run.step("flaky")
    assert (flaky.status, flaky.attempts, flaky.artifact_ids) == (
        StepStatus.COMPLETED,
        2,
        ["doc-2"],
    )
    # A return value that is not a step result completes a plain step with nothing.
    summary = run.step("summary")
    assert (summary.status, summary.artifact_ids, summary.cost_usd) == (
        StepStatus.COMPLETED,
        [],
        0.0,
    )
    assert events_of(run, "run-completed")[0].total_cost_usd == 0.02
    assert ran == [("flaky", 0), ("flaky", 1), ("summary", 0)]
