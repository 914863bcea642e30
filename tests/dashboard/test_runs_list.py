"""The runs list over real HTTP: order, filters, paging, search, counts and bad input."""

from __future__ import annotations

import httpx
from dashboard_support import (
    CountingStore,
    Serve,
    at,
    create_run,
    field_text,
    row_ids,
    tags,
)

from mpstate.dashboard import dashboard_app


def some_runs(store: CountingStore) -> None:
    create_run(store, "run-old", created=at(300), status="completed", tenant="acme")
    create_run(store, "run-mid", created=at(60), status="failed", pipeline="thumbs")
    create_run(
        store,
        "run-new",
        created=at(1),
        status="suspended",
        tenant="acme",
        patch={"suspendReason": "budget", "costUsd": 0.25},
        steps=[{"stepId": "a", "operation": "op", "status": "held"}],
    )


def test_the_list_shows_runs_newest_first_with_their_fields_and_counts(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    some_runs(rstore)
    base = serve(dashboard_app(rstore))
    page = http.get(f"{base}/")
    assert page.status_code == 200
    html = page.text
    assert 'data-read-only="true"' in html
    assert row_ids(html) == ["run-new", "run-mid", "run-old"]
    assert field_text(html, "run-new", "status") == "suspended"
    assert field_text(html, "run-new", "tenant") == "acme"
    assert field_text(html, "run-mid", "pipeline") == "thumbs"
    assert field_text(html, "run-new", "cost") == "$0.25"
    assert field_text(html, "run-new", "suspended").startswith("budget since")
    assert field_text(html, "run-new", "current") == "a"
    links = tags(html, "a", class_="run-link")
    assert links[0]["href"] == "/runs/run-new"
    counts = {c["data-status"] for c in tags(html, "a", data_status="*")}
    assert {"running", "suspended", "failed", "completed"} <= counts
    assert '<a class="count status-failed" data-status="failed"' in html
    assert tags(html, "form", id="search") and tags(html, "input", name="q")
    assert tags(html, "input", name="status", value="failed")
    assert not tags(html, "a", id="older") and not tags(html, "a", id="newer")


def test_the_list_filters_by_status_pipeline_tenant_time_and_reason(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    some_runs(rstore)
    base = serve(dashboard_app(rstore))

    def ids(query: str) -> list[str]:
        page = http.get(f"{base}/?{query}")
        assert page.status_code == 200, page.text
        return row_ids(page.text)

    assert ids("status=failed&status=completed") == ["run-mid", "run-old"]
    assert ids("pipeline=thumbs") == ["run-mid"]
    assert ids("tenant=acme") == ["run-new", "run-old"]
    assert ids("since=2026-01-01T11:00:00Z") == ["run-new", "run-mid"]
    assert ids("until=2026-01-01T11:30:00") == ["run-mid", "run-old"]
    assert ids("reason=budget") == ["run-new"]
    assert ids("reason=gate") == []
    assert ids("since=1h") == []  # the runs were created in 2026-01-01, long before "now"


def test_the_list_pages_fifty_runs_at_a_time(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    for index in range(55):
        create_run(rstore, f"r{index:03d}", created=at(100 - index))
    base = serve(dashboard_app(rstore))
    first = http.get(f"{base}/").text
    assert row_ids(first)[:2] == ["r054", "r053"] and len(row_ids(first)) == 50
    older = tags(first, "a", id="older")[0]["href"]
    assert not tags(first, "a", id="newer")
    second = http.get(f"{base}{older}").text
    assert row_ids(second) == ["r004", "r003", "r002", "r001", "r000"]
    assert tags(second, "a", id="newer") and not tags(second, "a", id="older")
    assert row_ids(http.get(f"{base}/?page=2").text) == row_ids(second)
    # A filter the dashboard applies itself pages from where its scan stopped.
    filtered = http.get(f"{base}/?pipeline=render").text
    assert len(row_ids(filtered)) == 50
    rest = http.get(base + tags(filtered, "a", id="older")[0]["href"]).text
    assert row_ids(rest) == ["r004", "r003", "r002", "r001", "r000"]


def test_search_finds_a_run_by_id_by_provider_job_and_by_prefix(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    some_runs(rstore)
    create_run(rstore, "job-run", patch={"externalJobIds": {"video": "j-42"}})
    base = serve(dashboard_app(rstore))
    assert row_ids(http.get(f"{base}/?q=run-mid").text) == ["run-mid"]
    assert row_ids(http.get(f"{base}/?q=video:j-42").text) == ["job-run"]
    assert row_ids(http.get(f"{base}/?q=run-n").text) == ["run-new"]
    several = http.get(f"{base}/?q=run-").text
    assert set(row_ids(several)) == {"run-new", "run-mid", "run-old"}
    assert "3 runs have an id starting with" in several
    nothing = http.get(f"{base}/?q=zzz").text
    assert row_ids(nothing) == [] and "newest 1,000 runs" in nothing


def test_bad_filters_answer_a_400_page_and_read_nothing(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    base = serve(dashboard_app(rstore))
    for query in (
        "status=bogus",
        "since=yesterday",
        "reason=lunch",
        "page=0",
        "offset=-1",
        "since=2026-01-02&until=2026-01-01",
    ):
        rstore.calls.clear()
        page = http.get(f"{base}/?{query}")
        assert page.status_code == 400, query
        assert 'id="error"' in page.text and "Traceback" not in page.text
        assert rstore.calls == [], query
