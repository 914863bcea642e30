"""A page costs a bounded number of store round trips, whatever the number of runs."""

from __future__ import annotations

import httpx
from dashboard_support import CountingStore, Serve, at, create_run

from mpstate.dashboard import dashboard_app


def round_trips(store: CountingStore, http: httpx.Client, url: str) -> int:
    store.calls.clear()
    assert http.get(url).status_code == 200
    return len(store.calls)


def test_the_list_and_a_runs_page_cost_the_same_with_5_or_120_runs(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    base = serve(dashboard_app(rstore))
    for index in range(5):
        create_run(rstore, f"r{index:03d}", created=at(500 - index))
    rstore.record_unmatched({"provider": "vid", "jobId": "j-1", "reason": "unknown-job"})
    create_run(rstore, "jobs", patch={"externalJobIds": {"vid": "j-1"}})
    pages = ("/", "/?status=running&status=failed", "/runs/r000", "/runs/jobs", "/?pipeline=x")
    few = {page: round_trips(rstore, http, base + page) for page in pages}
    for index in range(5, 120):
        create_run(rstore, f"r{index:03d}", created=at(500 - index))
    many = {page: round_trips(rstore, http, base + page) for page in pages}
    assert few == many
    assert many["/"] <= 3  # count_by_status + list_runs
    assert many["/runs/r000"] <= 2  # get with events
    assert many["/runs/jobs"] <= many["/runs/r000"] + 1  # + list_unmatched
    assert many["/?pipeline=x"] <= 12  # at most 10 store pages when filtering here
