"""Webhook resume through the ``mpstate.resolve_webhook`` task, on a real worker.

Provider callbacks are delivered the way providers deliver them: more than once, concurrently,
before the step has recorded the job, after the run is over, or for a job nobody knows.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from celery_support import (
    DEADLINE,
    Harness,
    HarnessFactory,
    assert_seqs_contiguous,
    events_of,
    kinds,
    step_events,
    wait_for,
)
from video_pipeline import RESUMED_LOG, define_video_tasks, start_video_run

from mpstate import InvalidInputError
from mpstate.celery import RESOLVE_WEBHOOK, WebhookOutcome
from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus

pytestmark = pytest.mark.parametrize("store_backend", ["redis", "cluster"], indirect=True)

SUCCEEDED = {"status": "succeeded", "artifactIds": ["vid-1", "vid-2"], "costUsd": 0.5}


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:10]}"


def deliver_before_the_job_is_recorded(
    h: Harness, seen: list[dict[str, Any]], *, concurrency: int
) -> tuple[PipelineRun, str, Any]:
    """Start a video run whose render step holds before recording its job, and deliver the
    job's success callback while it holds: the callback is retried (its job is unknown yet).
    Returns the run, the job id and the early delivery's result."""
    define_video_tasks(h, seen)
    h.start_worker(pool="threads", concurrency=concurrency)
    job_id = new_job_id()
    run = start_video_run(h, job_id, hold=True)
    h.wait_event(run.run_id, "step-started", "render")
    early = h.mp.resolve_webhook.delay("vidgen", job_id, SUCCEEDED)
    h.wait_finished(early.id, states=["RETRY"])
    return run, job_id, early


def test_a_webhook_delivered_five_times_at_once_and_once_early_resumes_the_run_exactly_once(
    h: Harness,
) -> None:
    seen: list[dict[str, Any]] = []
    run, job_id, early = deliver_before_the_job_is_recorded(h, seen, concurrency=4)
    assert h.run(run.run_id).status is PipelineRunStatus.RUNNING

    h.latch("render").set()
    h.wait_status(run.run_id, "suspended")
    barrier = threading.Barrier(5)
    ids: list[str] = []

    def deliver() -> None:
        barrier.wait(timeout=DEADLINE)
        ids.append(h.mp.resolve_webhook.delay("vidgen", job_id, SUCCEEDED).id)

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert len(ids) == 5

    run = h.wait_terminal(run.run_id)
    outcomes = sorted(
        h.wait_finished(task_id, states=["SUCCESS"]).retval for task_id in [early.id, *ids]
    )

    assert outcomes == ["ignored"] * 5 + ["resumed"]
    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == RESUMED_LOG
    assert_seqs_contiguous(run)
    assert events_of(run, "run-resumed")[0].from_step_id == "render"
    (completed,) = step_events(run, "render", "step-completed")
    assert (completed.artifact_ids, completed.cost_usd) == (["vid-1", "vid-2"], 0.5)
    assert events_of(run, "run-completed")[0].total_cost_usd == pytest.approx(0.51)
    assert run.step("render").artifact_ids == ["vid-1", "vid-2"]
    assert run.step("render").status is StepStatus.COMPLETED
    assert run.external_job_ids == {"vidgen": job_id}
    # The next step was enqueued once, and saw the provider's artifacts.
    assert [s for s in seen if s["step"] == "publish"] == [
        {"step": "publish", "artifacts": {"render": ["vid-1", "vid-2"]}}
    ]
    assert len(h.finished_tasks("video.publish")) == 1


def test_a_webhook_that_arrives_before_the_job_is_recorded_is_retried_until_it_resumes_the_run(
    h: Harness,
) -> None:
    seen: list[dict[str, Any]] = []
    run, _, early = deliver_before_the_job_is_recorded(h, seen, concurrency=2)
    h.latch("render").set()
    run = h.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == RESUMED_LOG
    assert_seqs_contiguous(run)
    states = [f.state for f in h.finished_tasks(task_id=early.id)]
    assert states[-1] == "SUCCESS" and set(states[:-1]) == {"RETRY"}
    assert h.finished_tasks(task_id=early.id)[-1].retval == "resumed"


def test_a_late_duplicate_webhook_after_the_run_completed_changes_nothing(h: Harness) -> None:
    seen: list[dict[str, Any]] = []
    define_video_tasks(h, seen)
    h.start_worker()
    job_id = new_job_id()
    run = start_video_run(h, job_id)
    h.wait_status(run.run_id, "suspended")
    h.mp.resolve_webhook.delay("vidgen", job_id, SUCCEEDED)
    before = h.wait_terminal(run.run_id)

    late = h.mp.resolve_webhook.delay(
        "vidgen", job_id, {"status": "succeeded", "artifactIds": ["other"], "costUsd": 9.0}
    )
    assert h.wait_finished(late.id).retval == "ignored"
    after = h.run(run.run_id)

    assert kinds(after) == RESUMED_LOG
    assert after.events == before.events
    assert after.version == before.version
    assert after.cost_usd == pytest.approx(0.51)
    assert len(h.finished_tasks("video.publish")) == 1


def test_a_provider_failure_fails_the_step_and_the_run(h: Harness) -> None:
    seen: list[dict[str, Any]] = []
    define_video_tasks(h, seen)
    h.start_worker()
    job_id = new_job_id()
    run = start_video_run(h, job_id)
    h.wait_status(run.run_id, "suspended")

    failure = {"status": "failed", "error": {"code": "X", "retryable": False}}
    task = h.mp.resolve_webhook.delay("vidgen", job_id, failure)
    run = h.wait_terminal(run.run_id)

    assert h.wait_finished(task.id).retval == "failed"
    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "render"),
        ("step-waiting", "render"),
        ("run-suspended", None),
        ("step-failed", "render"),
        ("run-failed", None),
    ]
    assert_seqs_contiguous(run)
    (failed,) = events_of(run, "step-failed")
    assert (failed.code, failed.retryable) == ("X", False)
    assert events_of(run, "run-failed")[0].code == "X"
    assert run.step("render").status is StepStatus.FAILED
    assert run.step("publish").status is StepStatus.PENDING
    assert not h.finished_tasks("video.publish")


def test_a_retryable_provider_failure_reruns_the_step_until_its_max_retries_then_fails(
    h: Harness,
) -> None:
    seen: list[dict[str, Any]] = []
    define_video_tasks(h, seen)
    h.start_worker()
    job_id = new_job_id()
    run = start_video_run(h, job_id, max_retries=1)
    failure = {"status": "failed", "error": {"code": "BUSY", "retryable": True}}

    # Answer every job the step submits with a retryable failure; at most three of them.
    for delivery in range(3):
        job = job_id if delivery == 0 else f"{job_id}-{delivery}"
        current = wait_for(
            lambda job=job: (
                (
                    (r := h.run(run.run_id)).is_terminal
                    or (r.status == "suspended" and r.external_job_ids.get("vidgen") == job)
                )
                and r
            ),
            what=f"the step to submit job {job} or the run to end",
        )
        if current.is_terminal:
            break
        h.wait_finished(h.mp.resolve_webhook.delay("vidgen", job, failure).id)
    run = h.wait_terminal(run.run_id, timeout=2)

    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "render"),
        ("step-waiting", "render"),
        ("run-suspended", None),
        ("step-failed", "render"),
        ("step-started", "render"),
        ("step-waiting", "render"),
        ("run-suspended", None),
        ("step-failed", "render"),
        ("run-failed", None),
    ]
    assert [e.retryable for e in events_of(run, "step-failed")] == [True, False]
    assert [e.attempt for e in events_of(run, "step-started")] == [0, 1]
    assert run.step("render").attempts == 2


def test_a_webhook_for_an_unknown_job_is_dropped_after_the_window_without_error(
    make_harness: HarnessFactory,
) -> None:
    h = make_harness(mpstate_webhook_unknown_window_s=0.5)
    h.start_worker()

    task = h.mp.resolve_webhook.delay("vidgen", "job-nobody-knows", SUCCEEDED)
    final = h.wait_finished(task.id)

    assert (final.state, final.retval) == ("SUCCESS", "dropped")
    # Retried every 0.2 s while the window (0.5 s) lasted: after 0, 0.2 and 0.4 s of waiting.
    assert [f.state for f in h.finished_tasks(task_id=task.id)] == ["RETRY"] * 3 + ["SUCCESS"]
    assert {f.name for f in h.finished} == {RESOLVE_WEBHOOK}


def test_the_step_event_a_webhook_logs_names_a_celery_task(h: Harness) -> None:
    seen: list[dict[str, Any]] = []
    define_video_tasks(h, seen)
    h.start_worker()
    job_id = new_job_id()
    run = start_video_run(h, job_id)
    h.wait_status(run.run_id, "suspended")
    webhook = h.mp.resolve_webhook.delay("vidgen", job_id, SUCCEEDED)
    run = h.wait_terminal(run.run_id)

    (completed,) = step_events(run, "render", "step-completed")
    assert completed.meta is not None
    assert (completed.meta.get("provider"), completed.meta.get("jobId")) == ("vidgen", job_id)
    # Like every other step event, it names a Celery task: the step's, or the webhook's.
    assert completed.meta.get("taskId") in {run.step("render").task_id, webhook.id}


def test_a_registered_adapter_reads_its_providers_own_payload_shape(h: Harness) -> None:
    def vidgen_adapter(payload: Any) -> WebhookOutcome:
        if payload.get("state") != "done":
            raise InvalidInputError(f"vidgen payload without a final state: {payload!r}")
        video = payload["video"]
        return WebhookOutcome(status="succeeded", artifact_ids=[video["id"]], cost_usd=video["usd"])

    h.mp.register_adapter("vidgen", vidgen_adapter)
    define_video_tasks(h, [])
    h.start_worker()
    job_id = new_job_id()
    run = start_video_run(h, job_id)
    h.wait_status(run.run_id, "suspended")

    # A payload its adapter refuses fails the webhook task and leaves the run as it was.
    refused = h.mp.resolve_webhook.delay("vidgen", job_id, {"state": "rendering"})
    assert h.wait_finished(refused.id).state == "FAILURE"
    assert h.run(run.run_id).status is PipelineRunStatus.SUSPENDED

    h.mp.resolve_webhook.delay("vidgen", job_id, {"state": "done", "video": {"id": "v9", "usd": 2}})
    run = h.wait_terminal(run.run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    [completed] = step_events(run, "render", "step-completed")
    assert (completed.artifact_ids, completed.cost_usd) == (["v9"], 2.0)
