"""A receiver with an ``MpState`` applies each callback to its run before it answers.

Found by the chaos suite: a callback that was only a broker message was lost when the worker
that had just been handed it was SIGKILLed, and its run waited for a webhook forever. These tests
run no worker at all: whatever the run shows when the response arrives, the receiver wrote.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
from celery_support import Harness, harness
from webhook_support import SECRETS, SUCCEEDED, Serve, encode, signed

from mpstate.celery.transitions import start_run, start_step, suspend_step
from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus
from mpstate.testing import RedisServer
from mpstate.webhooks import webhook_app

STEPS = [
    {"stepId": "render", "operation": "video.render"},
    {"stepId": "publish", "operation": "video.publish"},
]


def commit(h: Harness, run: PipelineRun, decide: Any) -> PipelineRun:
    transition = decide(run)
    assert transition is not None
    return h.store.commit(
        run.run_id, transition.patch or None, transition.events, expected_version=run.version
    ).run


def started_render_step(h: Harness, run_id: str) -> PipelineRun:
    """A run whose render step is running (as a worker left it), job not submitted yet."""
    run = h.store.create({"runId": run_id, "pipelineId": "video", "steps": STEPS})
    run = commit(h, run, start_run)
    return commit(h, run, lambda r: start_step(r, "render", attempt=0, task_id="t-1", meta={}))


def suspend(h: Harness, run: PipelineRun, job_id: str = "job-1") -> PipelineRun:
    return commit(
        h, run, lambda r: suspend_step(r, "render", provider="video", job_id=job_id, meta={})
    )


def post(http: httpx.Client, url: str, payload: dict[str, Any]) -> httpx.Response:
    body = encode(payload)
    return http.post(f"{url}/webhooks/video", content=body, headers=signed(body))


def test_the_callback_is_in_the_run_when_the_receiver_answers(
    h: Harness, serve: Serve, http: httpx.Client, prefix: str
) -> None:
    run = suspend(h, started_render_step(h, f"{prefix}-run"))
    url = serve(webhook_app(h.app, SECRETS))

    response = post(http, url, SUCCEEDED)

    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "outcome": "resumed"}
    run = h.store.require(run.run_id)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.step("render").status is StepStatus.COMPLETED
    assert [e.kind for e in run.events][-2:] == ["run-resumed", "step-completed"]


def test_a_duplicate_is_answered_as_ignored_and_changes_nothing(
    h: Harness, serve: Serve, http: httpx.Client, prefix: str
) -> None:
    run = suspend(h, started_render_step(h, f"{prefix}-run"))
    url = serve(webhook_app(h.app, SECRETS))
    post(http, url, SUCCEEDED)
    before = h.store.require(run.run_id)

    response = post(http, url, SUCCEEDED)

    assert response.json() == {"status": "accepted", "outcome": "ignored"}
    after = h.store.require(run.run_id)
    assert (after.version, len(after.events)) == (before.version, len(before.events))


def test_a_callback_that_overtakes_its_job_id_is_applied_once_the_id_is_recorded(
    h: Harness, serve: Serve, http: httpx.Client, prefix: str
) -> None:
    run = started_render_step(h, f"{prefix}-run")
    url = serve(webhook_app(h.app, SECRETS, early_wait_s=5.0))
    recorded = threading.Timer(0.5, suspend, args=(h, run))
    recorded.start()

    response = post(http, url, SUCCEEDED)
    recorded.join()

    assert response.json() == {"status": "accepted", "outcome": "resumed"}
    assert h.store.require(run.run_id).step("render").status is StepStatus.COMPLETED


def test_a_callback_for_a_job_never_recorded_is_handed_to_the_retrying_task(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    url = serve(webhook_app(h.app, SECRETS, early_wait_s=0.2))

    response = post(http, url, {**SUCCEEDED, "jobId": "job-nobody-recorded"})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted" and body["taskId"]


def test_an_unavailable_store_is_answered_503_so_the_provider_retries(
    serve: Serve, http: httpx.Client, redis_url: str, prefix: str
) -> None:
    with RedisServer() as store_server, harness(redis_url, store_server.url, prefix) as h:
        url = serve(webhook_app(h.app, SECRETS))
        store_server.stop()
        try:
            response = post(http, url, SUCCEEDED)
        finally:
            store_server.start()

    assert response.status_code == 503
    assert response.headers["Retry-After"]
