"""The receiver's ``/metrics``: its answers by provider and answer, and the store's unmatched
callbacks by provider and reason, read at each scrape (exact across receiver processes)."""

from __future__ import annotations

import httpx
from celery_support import Harness
from prometheus_client.parser import text_string_to_metric_families
from test_receiver_inline import post, started_render_step, suspend
from webhook_support import SECRETS, SUCCEEDED, Serve

from mpstate.deliveries import UnmatchedCallback
from mpstate.webhooks import webhook_app


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_each_answer_by_provider_and_the_stores_unmatched_callbacks(
    h: Harness, serve: Serve, http: httpx.Client, prefix: str
) -> None:
    run = started_render_step(h, f"{prefix}-run")
    suspend(h, run)
    url = serve(webhook_app(h.app, SECRETS, early_wait_s=0.0, metrics=True))
    # Recorded by another receiver process: the scrape reads the store, not this process.
    h.store.record_unmatched(
        UnmatchedCallback(provider="video", job_id="elsewhere", reason="unknown-job")
    )

    assert post(http, url, SUCCEEDED).json()["outcome"] == "resumed"
    assert post(http, url, SUCCEEDED).json()["outcome"] == "ignored"
    forged = http.post(f"{url}/webhooks/video", content=b"{}", headers={"X-Mpstate-Timestamp": "1"})
    assert forged.status_code == 401
    assert http.post(f"{url}/webhooks/nobody", content=b"{}").status_code == 404

    scraped = http.get(f"{url}/metrics")

    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    found = samples(scraped.text)
    answers = "mpstate_webhook_answers_total"
    assert found[(answers, (("answer", "resumed"), ("provider", "video"), ("reason", "")))] == 1
    assert found[(answers, (("answer", "ignored"), ("provider", "video"), ("reason", "")))] == 1
    refused = (("answer", "refused-401"), ("provider", "video"), ("reason", "signature"))
    assert found[(answers, refused)] == 1
    # An unconfigured name is not a label value of its own: cardinality stays bounded.
    unknown = (("answer", "refused-404"), ("provider", "other"), ("reason", "unknown-provider"))
    assert found[(answers, unknown)] == 1
    # The store's gauges come with the answers.
    assert found[("mpstate_runs", (("status", "running"),))] == 1
    assert found[("mpstate_store_up", ())] == 1
    unmatched = (("provider", "video"), ("reason", "unknown-job"))
    assert found[("mpstate_webhook_unmatched_total", unmatched)] == 1


def test_without_the_option_the_receiver_serves_no_metrics(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    url = serve(webhook_app(h.app, SECRETS))

    assert http.get(f"{url}/metrics").status_code == 404
