"""Pollers on a real worker: a provider that never calls back is polled until its job ends.

``mp.register_poller("veo", fn)`` makes every wait for a ``veo`` job publish ``mpstate.poll_job``
(first after ``mpstate_poll_interval_s``, then backing off up to ``mpstate_poll_max_interval_s``).
Each "running" answer is logged as step-progress (``via=poll``) and polled again; a terminal one
resumes or fails the step. A poller that never finishes is stopped by the wait's deadline (the
poll that finds it late expires it). A poll and a webhook answering the same job at the same time
complete the step once. Polls that went quiet are published again by the reconciler.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery_support import (
    DEADLINE,
    Harness,
    HarnessFactory,
    assert_never,
    events_of,
    kinds,
    step_events,
    wait_for,
)
from external_job_pipeline import (
    define_external_tasks,
    start_external_run,
    wait_awaiting,
    worker_until_exit,
)

from celery_app.embedded import bind_loopback, serving
from mpstate.celery import Reconciler, WebhookOutcome
from mpstate.celery.jobs import POLL_JOB
from mpstate.celery.transitions import EXTERNAL_TIMEOUT
from mpstate.models import PipelineRunStatus, StepStatus
from mpstate.webhooks import signed_headers, webhook_app

#: How long each racing poll waits, once its webhook is on the way, before it answers.
DELAYS = (0.0, 0.0, 0.005, 0.01, 0.02, 0.04)

POLLING = {"mpstate_poll_interval_s": 0.05, "mpstate_poll_max_interval_s": 0.2}
VEO_SECRET = "veo-webhook-secret-0123456789"

RUNNING = WebhookOutcome(status="running", progress_pct=40, message="rendering")
DONE = WebhookOutcome(
    status="succeeded", artifact_ids=["https://veo.example/v.mp4"], outputs={"seconds": 8}
)


@pytest.fixture
def h(make_harness: HarnessFactory) -> Harness:
    return make_harness(**POLLING)


@pytest.fixture
def used(h: Harness) -> list[dict[str, Any]]:
    used: list[dict[str, Any]] = []
    define_external_tasks(h, used)
    return used


def test_a_job_polled_running_twice_then_succeeded_completes_the_run_through_polls_alone(
    h: Harness, used: list[dict[str, Any]]
) -> None:
    asked: Counter[str] = Counter()

    def poll_veo(job_id: str) -> WebhookOutcome:
        asked[job_id] += 1
        return RUNNING if asked[job_id] <= 2 else DONE

    h.mp.register_poller("veo", poll_veo)
    h.start_worker(pool="threads", concurrency=2)
    run = start_external_run(h, "veo", "job")

    run = h.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "submit"),
        ("step-waiting", "submit"),
        ("run-suspended", None),
        ("step-progress", "submit"),
        ("step-progress", "submit"),
        ("run-resumed", None),
        ("step-completed", "submit"),
        ("step-started", "use"),
        ("step-completed", "use"),
        ("run-completed", None),
    ]
    progress = step_events(run, "submit", "step-progress")
    assert [(p.pct, p.message) for p in progress] == [(40.0, "rendering")] * 2
    assert all(p.meta is not None and p.meta["via"] == "poll" for p in progress)
    (completed,) = step_events(run, "submit", "step-completed")
    assert completed.meta is not None
    assert (completed.meta["via"], completed.meta["jobId"]) == ("poll", "job-0")
    assert completed.artifact_ids == ["https://veo.example/v.mp4"]
    assert asked == {"job-0": 3}
    polls = wait_for(lambda: len(h.finished_tasks(POLL_JOB)) == 3 and h.finished_tasks(POLL_JOB))
    assert [p.retval for p in polls] == ["progress", "progress", "resumed"]
    assert used == [
        {
            "artifacts": {"submit": ["https://veo.example/v.mp4"]},
            "outputs": {"submit": {"seconds": 8}},
        }
    ]


def test_a_poller_that_always_answers_running_is_stopped_by_the_waits_deadline(
    h: Harness, used: list[dict[str, Any]]
) -> None:
    asked: Counter[str] = Counter()

    def forever_running(job_id: str) -> WebhookOutcome:
        asked[job_id] += 1
        return RUNNING

    h.mp.register_poller("veo", forever_running)
    h.start_worker(pool="threads", concurrency=2)
    run = start_external_run(h, "veo", "job", timeout_s=1.2, max_retries=0)

    run = h.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.FAILED
    (failed,) = step_events(run, "submit", "step-failed")
    assert (failed.code, failed.meta and failed.meta["by"]) == (EXTERNAL_TIMEOUT, "deadline")
    assert events_of(run, "run-failed")[0].code == EXTERNAL_TIMEOUT
    assert asked["job-0"] >= 1  # polled (and told "running") while the wait lasted ...
    # ... and the poll that found it late expired it, with no reconciler anywhere.
    polls = wait_for(
        lambda: [p for p in h.finished_tasks(POLL_JOB) if p.retval == "failed"],
        what="the expiring poll",
    )
    assert len(polls) == 1
    settled = asked["job-0"]
    # Polling stopped: no further poll task, no further question to the provider.
    count = len(h.finished_tasks(POLL_JOB))
    assert_never(lambda: len(h.finished_tasks(POLL_JOB)) > count, 0.6, "another poll")
    assert asked["job-0"] == settled
    assert len(step_events(run, "submit", "step-progress")) == settled


@pytest.fixture
def veo_receiver(h: Harness) -> Iterator[str]:
    with serving(webhook_app(h.app, {"veo": VEO_SECRET}), bind_loopback()) as url:
        yield url


def test_a_poll_and_a_webhook_answering_one_job_at_once_complete_the_step_exactly_once(
    h: Harness, used: list[dict[str, Any]], veo_receiver: str
) -> None:
    http = httpx.Client(timeout=DEADLINE)  # made once: a client takes 0.1 s to build
    webhook_answers: dict[str, dict[str, Any]] = {}
    posts: list[threading.Thread] = []
    asked: Counter[str] = Counter()

    def post_webhook(job_id: str, barrier: threading.Barrier) -> None:
        callback = {**DONE.model_dump(by_alias=True, exclude_none=True), "jobId": job_id}
        content = json.dumps(callback).encode()
        headers = signed_headers(VEO_SECRET, content)
        barrier.wait(DEADLINE)
        response = http.post(f"{veo_receiver}/webhooks/veo", content=content, headers=headers)
        webhook_answers[job_id] = response.json()

    def poll_veo(job_id: str) -> WebhookOutcome:
        asked[job_id] += 1
        if asked[job_id] == 1:
            return RUNNING
        # The provider's webhook for the finished job goes out as this poll learns of it.
        barrier = threading.Barrier(2)
        thread = threading.Thread(target=post_webhook, args=(job_id, barrier))
        posts.append(thread)
        thread.start()
        barrier.wait(DEADLINE)
        # Staggered by job, so that some polls commit first and some webhooks do.
        time.sleep(DELAYS[int(job_id.removeprefix("job").partition("-")[0])])
        return DONE

    h.mp.register_poller("veo", poll_veo)
    h.start_worker(pool="threads", concurrency=4)
    runs = [start_external_run(h, "veo", f"job{n}") for n in range(len(DELAYS))]

    finished = [h.wait_terminal(run.run_id) for run in runs]
    for thread in posts:
        thread.join(DEADLINE)
    http.close()

    for run in finished:
        assert run.status is PipelineRunStatus.COMPLETED
        assert len(step_events(run, "submit", "step-completed")) == 1
        assert len(step_events(run, "use", "step-started")) == 1
        assert len(events_of(run, "run-completed")) == 1
    assert len(used) == len(runs)
    terminal_polls = wait_for(
        lambda: (
            (found := [p for p in h.finished_tasks(POLL_JOB) if p.retval in {"resumed", "ignored"}])
            and len(found) == len(runs)
            and found
        )
    )
    # For each job exactly one of the two answers applied; the other was ignored.
    assert len(webhook_answers) == len(runs)
    outcomes = Counter(a["outcome"] for a in webhook_answers.values())
    outcomes.update(p.retval for p in terminal_polls)
    assert outcomes == {"resumed": len(runs), "ignored": len(runs)}


def test_a_wait_whose_polls_went_quiet_is_polled_again_by_the_reconciler(
    h: Harness, used: list[dict[str, Any]]
) -> None:
    # The step starts waiting while this process has no poller: no poll is ever published
    # (as when the worker holding the next poll died with it).
    with worker_until_exit(h):
        run = start_external_run(h, "veo", "job")
        waiting = wait_awaiting(h, run.run_id, "job-0")
    assert h.client.llen(h.queue) == 0
    h.mp.register_poller("veo", lambda job_id: DONE)
    reconciler = Reconciler(h.mp, stale_after_s=0.1)
    # Quiet for twice the longest poll interval (0.2 s) before it counts as lost.
    report = wait_for(lambda: (r := reconciler.run_once()).repolled and r, what="a repoll")

    assert [(w.run.run_id, w.job.job_id) for w in report.repolled] == [(run.run_id, "job-0")]
    assert report.expired == []
    h.start_worker()
    done = h.wait_terminal(run.run_id)
    assert done.status is PipelineRunStatus.COMPLETED
    (completed,) = step_events(done, "submit", "step-completed")
    assert completed.meta is not None and completed.meta["via"] == "poll"
    assert waiting.step("submit").status is StepStatus.WAITING
