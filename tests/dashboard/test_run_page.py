"""A run's page over real HTTP: header, timeline, graph, steps, deliveries and the log."""

from __future__ import annotations

import httpx
from dashboard_support import CountingStore, Serve, create_run, tags
from starlette.applications import Starlette
from starlette.routing import Mount

from mpstate.dashboard import dashboard_app

DAG = [
    {
        "stepId": "fetch",
        "operation": "op.fetch",
        "status": "completed",
        "costUsd": 0.01,
        "taskId": "task-fetch",
    },
    {
        "stepId": "video",
        "operation": "op.video",
        "dependsOn": ["fetch"],
        "status": "waiting",
        "externalJobs": [{"provider": "vid", "jobId": "j-7", "attempt": 2}],
        "lastError": {"code": "TIMEOUT", "message": "provider slow", "retryable": True},
    },
    {"stepId": "thumb", "operation": "op.thumb", "dependsOn": ["fetch"], "status": "running"},
    {"stepId": "publish", "operation": "op.publish", "dependsOn": ["video", "thumb"]},
]

EVENTS = [
    {"kind": "step-started", "stepId": "fetch", "attempt": 1, "at": 1_000},
    {
        "kind": "step-completed",
        "stepId": "fetch",
        "artifactIds": ["a1"],
        "costUsd": 0.01,
        "at": 2_000,
    },
    {"kind": "step-started", "stepId": "video", "attempt": 1, "at": 2_100},
    {"kind": "step-started", "stepId": "thumb", "attempt": 1, "at": 2_100},
    {"kind": "step-failed", "stepId": "video", "code": "TIMEOUT", "retryable": True, "at": 3_000},
    {"kind": "step-started", "stepId": "video", "attempt": 2, "at": 3_500},
    {"kind": "step-waiting", "stepId": "video", "provider": "vid", "jobId": "j-7", "at": 4_000},
    {
        "kind": "step-progress",
        "stepId": "video",
        "pct": 40,
        "at": 5_000,
        "meta": {"provider": "vid", "jobId": "j-7", "via": "poll"},
    },
]


def test_a_runs_page_shows_its_header_timeline_graph_steps_and_log(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    create_run(rstore, "dag-1", steps=DAG, events=EVENTS, patch={"budget": {"maxUsd": 2.5}})
    rstore.record_unmatched({"provider": "video", "jobId": "j-7", "reason": "unknown-job"})
    base = serve(dashboard_app(rstore, flower_url="http://flower:5555/"))
    page = http.get(f"{base}/runs/dag-1")
    assert page.status_code == 200
    html = page.text
    assert '<span data-field="status" class="status status-running">running</span>' in html
    assert "$2.50" in html  # the budget
    # The timeline: one row per step, video's two attempts and its wait as separate bars.
    rows = tags(html, "g", class_="step-row")
    assert [r["data-step-id"] for r in rows] == ["fetch", "video", "thumb", "publish"]
    assert tags(html, "rect", class_="bar-done")
    assert tags(html, "rect", class_="bar-failed")
    assert tags(html, "rect", class_="bar-waiting")
    assert tags(html, "rect", class_="bar-running")
    assert "#timeline" not in html and 'id="timeline"' in html
    # The graph: a node per step, layered by depth (video and thumb in the second column).
    nodes = {n["data-step-id"]: n for n in tags(html, "g", class_="node")}
    assert set(nodes) == {"fetch", "video", "thumb", "publish"}
    assert len(tags(html, "path", class_="edge")) == 4
    x_of = {rect["x"] for rect in tags(html, "rect", width="150")}
    assert len(x_of) == 3
    # The steps: status, Flower link, provider job, last error, deliveries (poll + unmatched).
    steps = tags(html, "section", class_="step")
    assert [s["data-step-id"] for s in steps] == ["fetch", "video", "thumb", "publish"]
    assert 'href="http://flower:5555/task/task-fetch"' in html
    assert "vid:<code>j-7</code>" in html and "TIMEOUT: provider slow" in html
    assert "<td>poll</td>" in html and "<td>unmatched</td>" in html
    # The log, with the filters and the live status.
    items = tags(html, "li", data_seq="*")
    assert [i["data-kind"] for i in items][:2] == ["run-created", "run-started"]
    assert items[0]["data-step-id"] == "" and items[2]["data-step-id"] == "fetch"
    assert [int(i["data-seq"]) for i in items] == list(range(1, len(EVENTS) + 3))
    for element_id in ("pause", "event-filter-step", "event-filter-kind", "live-status"):
        assert f'id="{element_id}"' in html
    assert not tags(html, "a", class_="action")  # read-only


def test_a_fragment_renders_one_part_of_the_page(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    create_run(rstore, "dag-2", steps=DAG, events=EVENTS)
    base = serve(dashboard_app(rstore))
    timeline = http.get(f"{base}/runs/dag-2/fragment/timeline")
    assert timeline.status_code == 200 and timeline.text.startswith('<section id="timeline"')
    header = http.get(f"{base}/runs/dag-2/fragment/header")
    assert header.text.startswith('<section id="run-header"')
    assert http.get(f"{base}/runs/dag-2/fragment/secrets").status_code == 404


def test_an_unknown_run_answers_a_404_page(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    base = serve(dashboard_app(rstore))
    for path in (
        "/runs/nope",
        "/runs/%20bad%20id",
        "/runs/nope/fragment/header",
        "/runs/nope/events/stream",
    ):
        page = http.get(base + path)
        assert page.status_code == 404, path
        assert 'id="error"' in page.text and "Traceback" not in page.text


def test_the_page_is_served_under_a_mount_with_relative_links(
    rstore: CountingStore, serve: Serve, http: httpx.Client
) -> None:
    create_run(rstore, "dag-3", steps=DAG, events=EVENTS)
    base = serve(Starlette(routes=[Mount("/ops", app=dashboard_app(rstore))]))
    listing = http.get(f"{base}/ops/").text
    assert tags(listing, "a", class_="run-link")[0]["href"] == "/ops/runs/dag-3"
    page = http.get(f"{base}/ops/runs/dag-3").text
    assert 'href="/ops/static/dashboard.css"' in page
    assert 'data-stream="/ops/runs/dag-3/events/stream"' in page
    assert http.get(f"{base}/ops/static/dashboard.js").status_code == 200
    assert http.get(f"{base}/ops/healthz").json() == {"status": "ok"}
