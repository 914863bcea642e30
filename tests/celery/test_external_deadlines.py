"""Every wait for a provider has a deadline, enforced from the store alone.

A step awaits a job with ``timeout_s`` and no answer ever comes. The worker that ran it is
stopped; after the deadline a reconciler pass made by a fresh ``MpState`` (another app, another
store client: what a separate ``mpstate reconcile`` process has) fails the step with
``external-timeout``, retryable: with retries left the step runs again (a new attempt awaiting a
new job, which can still complete the run), with none left the run fails with that code. A pass
before the deadline leaves the wait alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from celery_support import Harness, HarnessFactory, events_of, kinds, step_events, wait_for
from external_job_pipeline import (
    awaited,
    define_external_tasks,
    start_external_run,
    wait_awaiting,
    worker_until_exit,
)

from mpstate import RedisPipelineStateStore
from mpstate.celery import MpState, Reconciler, ReconcileReport, WebhookOutcome
from mpstate.celery.transitions import EXTERNAL_TIMEOUT
from mpstate.fields import utc_now
from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus

#: The deadline of every wait in these tests, in seconds.
TIMEOUT_S = 0.3


@contextmanager
def fresh_mpstate(h: Harness, redis_url: str) -> Iterator[MpState]:
    """An ``MpState`` sharing nothing with the harness but the store's data and the broker."""
    app = Celery(f"{h.app.main}-reconciler", broker=h.broker_url, set_as_current=False)
    app.conf.update(task_default_queue=h.queue, broker_connection_retry_on_startup=True)
    store = RedisPipelineStateStore.from_url(redis_url, prefix=h.prefix)
    mp = MpState(app, store)
    try:
        yield mp
    finally:
        mp.close()
        store.close()
        app.close()


def reconcile_from_the_store(h: Harness, redis_url: str) -> ReconcileReport:
    with fresh_mpstate(h, redis_url) as mp:
        return Reconciler(mp, stale_after_s=600).run_once()


def wait_past_deadline(run: PipelineRun) -> None:
    job = awaited(run)
    assert job is not None and job.deadline is not None
    wait_for(lambda: utc_now() > job.deadline, what="the wait's deadline to pass")


def suspended_without_a_worker(h: Harness, job_id: str, max_retries: int) -> PipelineRun:
    """Run the step on a worker until it waits (deadline ``TIMEOUT_S``), then stop the worker."""
    with worker_until_exit(h):
        run = start_external_run(h, "veo", job_id, timeout_s=TIMEOUT_S, max_retries=max_retries)
        waiting = wait_awaiting(h, run.run_id, f"{job_id}-0")
    job = awaited(waiting)
    assert job is not None and job.deadline is not None
    assert job.deadline - job.since == timedelta(seconds=TIMEOUT_S)
    return waiting


@pytest.fixture
def used(h: Harness) -> list[dict[str, Any]]:
    used: list[dict[str, Any]] = []
    define_external_tasks(h, used)
    return used


def test_a_wait_past_its_deadline_is_failed_from_the_store_alone_and_the_step_runs_again(
    h: Harness, used: list[dict[str, Any]], redis_url: str
) -> None:
    waiting = suspended_without_a_worker(h, "job", max_retries=1)
    wait_past_deadline(waiting)

    report = reconcile_from_the_store(h, redis_url)

    assert [(w.run.run_id, w.step.step_id, w.job.job_id) for w in report.expired] == [
        (waiting.run_id, "submit", "job-0")
    ]
    run = h.run(waiting.run_id)
    (failed,) = step_events(run, "submit", "step-failed")
    assert (failed.code, failed.retryable) == (EXTERNAL_TIMEOUT, True)
    assert failed.meta is not None
    assert (failed.meta["by"], failed.meta["jobId"]) == ("deadline", "job-0")
    assert run.status is PipelineRunStatus.RUNNING
    # Enqueued again under a new task id (a step is "running" from its publish on).
    assert run.step("submit").status is StepStatus.RUNNING
    assert run.step("submit").task_id not in {None, waiting.step("submit").task_id}
    # The fresh reconciler published the step again: its one message waits in the queue ...
    assert h.client.llen(h.queue) == 1
    # ... for any worker (none of them knew about the wait) to run it.
    h.start_worker()
    retried = wait_awaiting(h, waiting.run_id, "job-1")
    assert [e.attempt for e in step_events(retried, "submit", "step-started")] == [0, 1]
    # The new attempt's job can still complete the run; the expired one cannot.
    assert h.mp.resolve_outcome("veo", "job-0", WebhookOutcome(status="succeeded")) == "ignored"
    answer = WebhookOutcome(status="succeeded", artifact_ids=["veo-1"])
    assert h.mp.resolve_outcome("veo", "job-1", answer) == "resumed"
    done = h.wait_terminal(waiting.run_id)
    assert done.status is PipelineRunStatus.COMPLETED
    assert used == [{"artifacts": {"submit": ["veo-1"]}, "outputs": {"submit": {}}}]


def test_a_wait_past_its_deadline_with_no_retry_left_fails_the_run_with_external_timeout(
    h: Harness, used: list[dict[str, Any]], redis_url: str
) -> None:
    waiting = suspended_without_a_worker(h, "job", max_retries=0)
    wait_past_deadline(waiting)

    report = reconcile_from_the_store(h, redis_url)

    assert [w.job.job_id for w in report.expired] == ["job-0"]
    run = h.run(waiting.run_id)
    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run)[-2:] == [("step-failed", "submit"), ("run-failed", None)]
    (failed,) = step_events(run, "submit", "step-failed")
    assert (failed.code, failed.retryable) == (EXTERNAL_TIMEOUT, False)
    assert events_of(run, "run-failed")[0].code == EXTERNAL_TIMEOUT
    assert run.step("submit").status is StepStatus.FAILED
    assert used == []
    # A second pass finds nothing left to expire.
    assert reconcile_from_the_store(h, redis_url).expired == []


def test_a_pass_before_the_deadline_leaves_the_wait_alone(
    h: Harness, used: list[dict[str, Any]], redis_url: str
) -> None:
    with worker_until_exit(h):
        run = start_external_run(h, "veo", "job", timeout_s=60, max_retries=0)
        waiting = wait_awaiting(h, run.run_id, "job-0")

    report = reconcile_from_the_store(h, redis_url)

    assert report.expired == []
    after = h.run(run.run_id)
    assert (after.version, len(after.events)) == (waiting.version, len(waiting.events))
    assert after.status is PipelineRunStatus.SUSPENDED


def test_the_providers_default_deadline_applies_when_the_step_gives_none(
    make_harness: HarnessFactory, redis_url: str
) -> None:
    h = make_harness(mpstate_external_timeouts={"veo": TIMEOUT_S}, mpstate_external_timeout_s=60)
    define_external_tasks(h, [])
    with worker_until_exit(h):
        run = start_external_run(h, "veo", "job", max_retries=0)
        waiting = wait_awaiting(h, run.run_id, "job-0")
    job = awaited(waiting)
    assert job is not None and job.deadline is not None
    assert job.deadline - job.since == timedelta(seconds=TIMEOUT_S)
    wait_past_deadline(waiting)

    report = reconcile_from_the_store(h, redis_url)

    assert [w.job.job_id for w in report.expired] == ["job-0"]
    assert h.run(run.run_id).status is PipelineRunStatus.FAILED
