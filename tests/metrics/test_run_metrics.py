"""Run metrics counted from the lifecycle's transitions, in the process that commits them, and
scraped over HTTP: a real worker, a real receiver, the suite's Redis."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from celery_support import Harness
from metrics_support import assert_no_id_in_labels, scrape
from prometheus_client import CollectorRegistry

from mpstate import RedisPipelineStateStore
from mpstate.celery import PipelineTask
from mpstate.metrics import instrument, metrics_app
from mpstate.metrics.labels import BoundedValues
from mpstate.webhooks import signed_headers, webhook_app

SECRET = "whsec-vidgen"

MEDIA = [
    {"stepId": "prepare", "operation": "m.prepare"},
    {"stepId": "render", "operation": "m.render", "inputs": {"job_id": "job-1"}},
    {"stepId": "publish", "operation": "m.publish"},
]


class TransientError(Exception):
    """A failure worth retrying."""


class BadInputError(Exception):
    code = "bad-input"


def define_tasks(h: Harness) -> None:
    tries: list[int] = []

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="m.prepare", max_retries=3)
    def prepare(self: Any) -> dict[str, Any]:
        tries.append(1)
        if len(tries) == 1:
            raise self.retry(exc=TransientError("gpu busy"), countdown=0.05)
        return {"artifactIds": ["p-1"], "costUsd": 0.25}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="m.render")
    def render(self: Any, job_id: str) -> Any:
        return self.await_external("vidgen", job_id)

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="m.publish")
    def publish(self: Any) -> dict[str, Any]:
        return {"artifactIds": ["post-1"], "costUsd": 0.5}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="m.broken")
    def broken(self: Any) -> None:
        raise BadInputError("no such asset")


def post_callback(http: httpx.Client, url: str, payload: dict[str, Any]) -> httpx.Response:
    body = httpx.Request("POST", url, json=payload).content
    return http.post(f"{url}/webhooks/vidgen", content=body, headers=signed_headers(SECRET, body))


def test_runs_steps_retries_cost_and_provider_waits_are_counted_by_label_and_never_by_run(
    h: Harness, registry: CollectorRegistry, serve: Any, http: httpx.Client
) -> None:
    define_tasks(h)
    instrument(h.mp, registry)
    h.start_worker()
    metrics_url = serve(metrics_app(store=h.store, registry=registry))
    receiver_url = serve(webhook_app(h.app, {"vidgen": SECRET}, early_wait_s=0.0, metrics=True))

    media = h.mp.start_run("media", MEDIA, tenant_id="acme")
    h.wait_event(media.run_id, "step-waiting", "render")
    time.sleep(0.2)  # the provider takes its time
    callback = {"jobId": "job-1", "status": "succeeded", "artifactIds": ["v-1"], "costUsd": 1.0}
    assert post_callback(http, receiver_url, callback).json()["outcome"] == "resumed"
    assert h.wait_terminal(media.run_id).status == "completed"
    checks = h.mp.start_run("checks", [{"stepId": "check", "operation": "m.broken"}])
    assert h.wait_terminal(checks.run_id).status == "failed"
    # Cancelled while it waits for its provider (no step task left to race the cancel).
    held = h.mp.start_run("media", MEDIA[1:], tenant_id="acme")
    h.wait_event(held.run_id, "step-waiting", "render")
    h.mp.cancel_run(held.run_id, "operator")
    h.mp.cancel_run(held.run_id, "operator again")  # a no-op: not counted twice

    found = scrape(http, metrics_url)
    media_acme = {"pipeline": "media", "tenant": "acme"}
    assert found.get("mpstate_runs_started_total", **media_acme) == 2
    assert found.get("mpstate_runs_started_total", pipeline="checks", tenant="") == 1
    assert found.get("mpstate_runs_completed_total", **media_acme) == 1
    assert found.get("mpstate_runs_cancelled_total", **media_acme) == 1
    assert (
        found.get("mpstate_runs_failed_total", pipeline="checks", tenant="", code="bad-input") == 1
    )
    assert found.get("mpstate_run_cost_usd_total", **media_acme) == pytest.approx(1.75)
    assert found.get("mpstate_step_retries_total", operation="m.prepare") == 1
    for operation, outcome in [
        ("m.prepare", "completed"),
        ("m.render", "completed"),
        ("m.publish", "completed"),
        ("m.broken", "failed"),
    ]:
        count = "mpstate_step_duration_seconds_count"
        assert found.get(count, operation=operation, outcome=outcome) == 1, operation
    # One queue wait per publish by mpstate: Celery's own retry of prepare is not one.
    for operation, starts in [("m.prepare", 1), ("m.render", 2), ("m.publish", 1), ("m.broken", 1)]:
        assert found.get("mpstate_step_queue_wait_seconds_count", operation=operation) == starts
    wait = {"provider": "vidgen", "outcome": "completed"}
    assert found.get("mpstate_provider_wait_seconds_count", **wait) == 1
    assert found.get("mpstate_provider_wait_seconds_sum", **wait) >= 0.2
    assert found.get("mpstate_provider_wait_seconds_bucket", le="1.0", **wait) == 1
    # Read from the store at the scrape.
    assert found.get("mpstate_store_up") == 1
    for status in ("completed", "failed", "cancelled"):
        assert found.get("mpstate_runs", status=status) == 1
    assert found.get("mpstate_runs", status="running") == 0
    assert_no_id_in_labels(found, [media.run_id, checks.run_id, held.run_id, "job-1", h.prefix])

    answers = scrape(http, receiver_url)
    resumed = {"provider": "vidgen", "answer": "resumed", "reason": ""}
    assert answers.get("mpstate_webhook_answers_total", **resumed) == 1
    assert answers.get("mpstate_runs", status="completed") == 1


def test_without_the_tenant_label_a_pipeline_has_one_series_and_instrumenting_is_idempotent(
    h: Harness, registry: CollectorRegistry, serve: Any, http: httpx.Client
) -> None:
    define_tasks(h)
    metrics = instrument(h.mp, registry, tenant_label=False)
    assert instrument(h.mp, registry, tenant_label=False) is metrics
    assert h.mp.lifecycle.observers.count(metrics.transition) == 1
    h.start_worker()
    url = serve(metrics_app(registry=registry))

    for tenant in ("acme", "globex"):
        run = h.mp.start_run("solo", [{"stepId": "p", "operation": "m.publish"}], tenant_id=tenant)
        h.wait_terminal(run.run_id)

    found = scrape(http, url)
    assert found.get("mpstate_runs_completed_total", pipeline="solo") == 2
    assert found.get("mpstate_run_cost_usd_total", pipeline="solo") == pytest.approx(1.0)
    assert "tenant" not in {name for (_, labels) in found.samples for name, _ in labels}
    assert "mpstate_runs" not in found.names()  # no store given: no store gauges


def test_a_store_that_does_not_answer_is_reported_and_the_counts_are_still_served(
    registry: CollectorRegistry, serve: Any, http: httpx.Client
) -> None:
    dead = RedisPipelineStateStore.from_url(
        "redis://127.0.0.1:1/0", socket_connect_timeout=0.2, retries=0
    )
    url = serve(metrics_app(store=dead, registry=registry))

    found = scrape(http, url)

    assert found.get("mpstate_store_up") == 0
    assert "mpstate_runs" not in found.names()


def test_failure_codes_past_the_bound_are_counted_as_other() -> None:
    code = BoundedValues(2)

    assert [code(c) for c in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]
