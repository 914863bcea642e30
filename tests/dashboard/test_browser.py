"""The dashboard in a real browser: Chromium (Playwright) on pages served by uvicorn, a real Redis
store, a real Celery worker and broker running the pipeline the pages show.

The pipeline's three steps hold on latches (``browser_support``) until the test releases them, so
the test decides when the run moves and watches the page follow: the live log (server-sent
events), the timeline, the header. It also pauses the log, cancels a run through the
confirmation form, and checks that a read-only dashboard offers and accepts no action and that a
tenant's dashboard does not show another tenant's run. Every wait is on a condition (Playwright's
``expect``, or the store), never a fixed sleep.

Three dashboards on the same store, each on its own loopback port: the main one (actions, the
asyncio store for the live log, as ``mpstate dashboard serve`` builds it), a read-only one, and
one scoped to tenant ``acme``. They share one ``TokenAuth``: signing in once (the login form's
session cookie; cookies do not depend on the port) signs the browser in to all of them.

Screenshots of the list and of a run go to the test's ``tmp_path``; with
``MPSTATE_UPDATE_SCREENSHOTS=1`` also to docs/screenshots/ (the README's).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_support import (
    CHROMIUM,
    PIPELINE,
    STEP_IDS,
    define_steps,
    latch_name,
    pipeline_steps,
)
from celery_support import Finished, Harness, harness, kinds
from playwright.sync_api import APIResponse, Browser, Locator, Page, expect, sync_playwright

from celery_app.embedded import bind_loopback, serving
from mpstate.aio import AsyncRedisPipelineStateStore
from mpstate.dashboard import TokenAuth, dashboard_app
from mpstate.models import PipelineRunStatus

TOKEN = "browser-test-token"
#: Longest any page assertion waits, in milliseconds.
WAIT_MS = 15_000
#: Playwright's default for ``expect``, restored after this module.
EXPECT_DEFAULT_MS = 5_000
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@dataclass(frozen=True)
class Dashboards:
    """Base URLs of the dashboards the tests open."""

    main: str
    read_only: str
    tenant: str


# -- fixtures: one worker, one store and the dashboards for the whole module ----------------------


@pytest.fixture(scope="module", autouse=True)
def page_timeouts() -> Iterator[None]:
    expect.set_options(timeout=WAIT_MS)
    yield
    expect.set_options(timeout=EXPECT_DEFAULT_MS)


@pytest.fixture(scope="module")
def h(redis_url: str) -> Iterator[Harness]:
    """The module's harness (its own prefix and queue) with a 4-thread worker running the steps."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    conf = {"broker_transport_options": {"polling_interval": 0.2}}
    with harness(redis_url, redis_url, prefix, **conf) as h:
        define_steps(h)
        h.start_worker(pool="threads", concurrency=4)
        yield h


@pytest.fixture(scope="module")
def dashboards(h: Harness, redis_url: str) -> Iterator[Dashboards]:
    auth = TokenAuth(TOKEN)
    async_store = AsyncRedisPipelineStateStore.from_url(redis_url, prefix=h.prefix)
    apps = {
        "main": dashboard_app(h.store, mp=h.mp, async_store=async_store, auth=auth),
        "read_only": dashboard_app(h.store, mp=h.mp, auth=auth, read_only=True),
        "tenant": dashboard_app(h.store, mp=h.mp, auth=auth, tenant_id="acme"),
    }
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(serving(app, bind_loopback())) for name, app in apps.items()
        }
        yield Dashboards(**urls)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium (``make test`` installs it); never a browser Playwright downloads."""
    if not CHROMIUM.exists():
        message = f"no {CHROMIUM}: make test installs it (apt-get install chromium)"
        if os.environ.get("CI"):  # CI installs it through make test: a missing one is a failure
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, dashboards: Dashboards) -> Iterator[Page]:
    """A fresh browser context, signed in through the main dashboard's login form.

    Closed before the servers stop: an open live log would keep uvicorn waiting at shutdown.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, dashboards.main)
        yield page
    finally:
        context.close()


# -- helpers --------------------------------------------------------------------------------------


def sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/login?next=/")
    page.fill("form#login input[name=token]", TOKEN)
    page.click("form#login button[type=submit]")
    expect(page).to_have_url(f"{base}/")
    expect(page.locator("header.top .who")).to_contain_text("operator")


def release(h: Harness, run_id: str, *step_ids: str) -> None:
    for step_id in step_ids:
        h.latch(latch_name(run_id, step_id)).set()


def log_item(kind: str, step_id: str = "") -> str:
    return f'ol#event-log li[data-kind="{kind}"][data-step-id="{step_id}"]'


def bar(step_id: str, css: str) -> str:
    return f'#timeline svg g.step-row[data-step-id="{step_id}"] rect.{css}'


def header_status(page: Page) -> Locator:
    return page.locator('#run-header [data-field="status"]')


def shown_log(page: Page) -> list[tuple[int, str, str | None]]:
    """The log as the page shows it: (seq, kind, step id or None) per item, top to bottom."""
    items = page.locator("ol#event-log li").evaluate_all(
        "items => items.map(i => [Number(i.dataset.seq), i.dataset.kind, i.dataset.stepId])"
    )
    return [(seq, kind, step or None) for seq, kind, step in items]


def stage_other_runs(h: Harness) -> dict[str, str]:
    """Start runs that end up failed, suspended (budget), cancelled and running (held at its
    first step until released): {run id: its status}."""
    quick = {"hold": False}
    failed = h.mp.start_run(
        "transcode", pipeline_steps(), tenant_id="studio", inputs={**quick, "fail": "render"}
    )
    suspended = h.mp.start_run(
        PIPELINE,
        pipeline_steps(estimates=True),
        tenant_id="acme",
        inputs=quick,
        budget={"maxUsd": 0.1},
    )
    cancelled = h.mp.start_run("transcode", pipeline_steps(), tenant_id="globex")
    running = h.mp.start_run(PIPELINE, pipeline_steps(), tenant_id="globex")
    h.mp.cancel_run(cancelled.run_id, "superseded by a newer upload")
    release(h, cancelled.run_id, *STEP_IDS)
    h.wait_status(failed.run_id, "failed")
    h.wait_status(suspended.run_id, "suspended")
    h.wait_event(running.run_id, "step-started", "fetch")
    return {
        failed.run_id: "failed",
        suspended.run_id: "suspended",
        cancelled.run_id: "cancelled",
        running.run_id: "running",
    }


def post_action(page: Page, base: str, run_id: str, action: str) -> APIResponse:
    """POST an action as its confirmation form would: the browser's cookies (signed in), the
    CSRF cookie's token in the form, this dashboard as the origin."""
    (csrf,) = [c["value"] for c in page.context.cookies(base) if c["name"] == "mpstate_csrf"]
    return page.request.post(
        f"{base}/runs/{run_id}/actions/{action}",
        form={"csrf_token": csrf},
        headers={"Origin": base},
        max_redirects=0,
    )


def run_of(finished: Finished) -> str | None:
    """The run a finished task belonged to (its message headers)."""
    return finished.headers.get("mpstate_run_id")


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page PNG under ``tmp_path``; also docs/screenshots/ when asked to refresh them."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{name} looks empty"
    if os.environ.get("MPSTATE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / name)
    return path


# -- the tests ------------------------------------------------------------------------------------


def test_a_run_is_listed_and_its_page_follows_it_live_until_it_completes(
    h: Harness, dashboards: Dashboards, page: Page, tmp_path: Path
) -> None:
    done = h.mp.start_run(PIPELINE, pipeline_steps(), tenant_id="acme", inputs={"hold": False})
    run_id = h.mp.start_run(PIPELINE, pipeline_steps(), tenant_id="studio").run_id
    h.wait_terminal(done.run_id)
    h.wait_event(run_id, "step-started", "fetch")

    # The list: the run's row, found by the search form too; then its page through its link.
    page.goto(f"{dashboards.main}/")
    expect(page.locator("body")).to_have_attribute("data-read-only", "false")
    row = page.locator(f'#runs tr[data-run-id="{run_id}"]')
    expect(row.locator('td[data-field="status"]')).to_have_text("running")
    expect(row.locator('td[data-field="pipeline"]')).to_have_text(PIPELINE)
    expect(row.locator('td[data-field="tenant"]')).to_have_text("studio")
    expect(page.locator('#counts [data-status="running"] b')).to_have_text("1")
    expect(page.locator('#counts [data-status="completed"] b')).to_have_text("1")
    page.fill("form#search input[name=q]", run_id)
    page.click("form#search button[type=submit]")
    expect(page.locator("#runs tr[data-run-id]")).to_have_count(1)
    row.locator("a.run-link").click()
    expect(page).to_have_url(f"{dashboards.main}/runs/{run_id}")

    # The page as served: fetch is running; then live over server-sent events.
    expect(page.locator("#live-status")).to_have_text("live")
    expect(header_status(page)).to_have_text("running")
    expect(page.locator(log_item("run-created"))).to_have_count(1)
    expect(page.locator(log_item("step-started", "fetch"))).to_have_count(1)
    expect(page.locator(bar("fetch", "bar-running"))).to_have_count(1)
    expect(page.locator('#timeline svg g.step-row[data-step-id="render"] rect')).to_have_count(0)
    expect(page.locator('#graph svg g.node[data-step-id="fetch"]')).to_have_attribute(
        "data-status", "running"
    )

    # fetch completes: the log, the timeline, the graph and the steps follow without a reload.
    release(h, run_id, "fetch")
    expect(page.locator(log_item("step-completed", "fetch"))).to_have_count(1)
    expect(page.locator(log_item("step-started", "render"))).to_have_count(1)
    expect(page.locator(bar("fetch", "bar-done"))).to_have_count(1)
    expect(page.locator(bar("render", "bar-running"))).to_have_count(1)
    expect(page.locator('#graph svg g.node[data-step-id="fetch"]')).to_have_attribute(
        "data-status", "completed"
    )
    expect(
        page.locator('#steps section.step[data-step-id="fetch"] [data-field="status"]')
    ).to_have_text("completed")
    shown_before_pause = shown_log(page)[-1][0]

    # Paused, the log holds what arrives (and says so); resumed, it appends it in order.
    page.click("button#pause")
    expect(page.locator("button#pause")).to_have_text("Resume")
    release(h, run_id, "render")
    h.wait_event(run_id, "step-started", "publish")
    arrived = [e for e in h.run(run_id).events if (e.seq or 0) > shown_before_pause]
    assert [e.kind for e in arrived] == ["step-completed", "step-started"]
    expect(page.locator("#buffered")).to_have_text(f"{len(arrived)} new event(s) held")
    expect(page.locator(log_item("step-completed", "render"))).to_have_count(0)
    assert shown_log(page)[-1][0] == shown_before_pause
    page.click("button#pause")
    expect(page.locator("button#pause")).to_have_text("Pause")
    expect(page.locator(log_item("step-completed", "render"))).to_have_count(1)
    expect(page.locator(log_item("step-started", "publish"))).to_have_count(1)
    expect(page.locator("#buffered")).to_have_text("")

    # The last step: run-completed ends the stream, the header says completed.
    release(h, run_id, "publish")
    expect(page.locator(log_item("run-completed"))).to_have_count(1)
    expect(header_status(page)).to_have_text("completed")
    expect(page.locator("#live-status")).to_have_text("ended")
    for step_id in STEP_IDS:
        expect(page.locator(bar(step_id, "bar-done"))).to_have_count(1)
    run = h.wait_terminal(run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    # Every event once, in seq order, none lost to the pause: the store's log as the page shows it.
    assert shown_log(page) == [
        (e.seq, kind, step) for e, (kind, step) in zip(run.events, kinds(run), strict=True)
    ]

    # Screenshots: the run's page as served once it ended, and the list.
    page.reload()
    expect(page.locator("#timeline svg g.step-row rect.bar-done")).to_have_count(3)
    screenshot(page, tmp_path, "dashboard-run.png")
    # The list, with runs in the other states next to this one.
    staged = {**stage_other_runs(h), run_id: "completed"}
    try:
        page.goto(f"{dashboards.main}/")
        for other, status in staged.items():
            cell = page.locator(f'#runs tr[data-run-id="{other}"] td[data-field="status"]')
            expect(cell).to_have_text(status)
        expect(page.locator('#counts [data-status="suspended"] b')).to_have_text("1")
        screenshot(page, tmp_path, "dashboard-list.png")
    finally:
        for other in staged:
            release(h, other, *STEP_IDS)


def test_a_run_is_cancelled_from_its_page_through_the_confirmation_form(
    h: Harness, dashboards: Dashboards, page: Page
) -> None:
    run_id = h.mp.start_run(PIPELINE, pipeline_steps(), tenant_id="studio").run_id
    h.wait_event(run_id, "step-started", "fetch")
    try:
        page.goto(f"{dashboards.main}/runs/{run_id}")
        expect(page.locator("#live-status")).to_have_text("live")
        page.click('a.action[data-action="cancel"]')
        expect(page).to_have_url(f"{dashboards.main}/runs/{run_id}/actions/cancel")
        expect(page.locator("form#confirm input[name=csrf_token]")).to_have_count(1)
        page.click("#confirm-button")

        # The POST answered 303 to the run's page, which shows the flash and the cancelled run.
        expect(page).to_have_url(f"{dashboards.main}/runs/{run_id}")
        expect(page.locator("#flash")).to_have_text("Run cancelled.")
        expect(header_status(page)).to_have_text("cancelled")
        expect(page.locator(log_item("run-cancelled"))).to_have_count(1)
        expect(page.locator('a.action[data-action="cancel"]')).to_have_count(0)
        expect(page.locator('a.action[data-action="rerun"]')).to_have_count(1)
        run = h.run(run_id)
        assert run.status is PipelineRunStatus.CANCELLED
        assert run.error == "cancelled from the dashboard by operator"
        assert kinds(run)[-1] == ("run-cancelled", None)
    finally:
        release(h, run_id, *STEP_IDS)
    step_task = h.run(run_id).step("fetch").task_id
    assert step_task
    h.wait_finished(step_task)
    assert h.run(run_id).status is PipelineRunStatus.CANCELLED
    ran = {f.headers.get("mpstate_step_id") for f in h.finished if run_of(f) == run_id}
    assert ran == {"fetch"}, "a step ran after the cancel"


def test_a_read_only_dashboard_offers_no_action_and_refuses_a_posted_one(
    h: Harness, dashboards: Dashboards, page: Page
) -> None:
    run_id = h.mp.start_run(PIPELINE, pipeline_steps(), tenant_id="studio").run_id
    h.wait_event(run_id, "step-started", "fetch")
    try:
        before = h.run(run_id)
        base = dashboards.read_only
        page.goto(f"{base}/")
        expect(page.locator("body")).to_have_attribute("data-read-only", "true")
        expect(page.locator(f'#runs tr[data-run-id="{run_id}"]')).to_have_count(1)
        page.goto(f"{base}/runs/{run_id}")
        expect(page.locator("body")).to_have_attribute("data-read-only", "true")
        expect(header_status(page)).to_have_text("running")
        expect(page.locator("header.top .who")).to_contain_text("operator")  # signed in, still
        expect(page.locator("a.action")).to_have_count(0)

        # A signed-in POST with a good CSRF token and origin: refused all the same.
        posted = post_action(page, base, run_id, "cancel")
        assert posted.status == 403
        assert "read-only" in posted.text()
        assert page.request.get(f"{base}/runs/{run_id}/actions/cancel").status == 403
        after = h.run(run_id)
        assert after.status is PipelineRunStatus.RUNNING
        assert (after.version, after.events) == (before.version, before.events)
    finally:
        release(h, run_id, *STEP_IDS)
    assert h.wait_terminal(run_id).status is PipelineRunStatus.COMPLETED


def test_a_tenant_dashboard_neither_lists_nor_shows_nor_acts_on_another_tenants_run(
    h: Harness, dashboards: Dashboards, page: Page
) -> None:
    ours = h.mp.start_run(PIPELINE, pipeline_steps(), tenant_id="acme", inputs={"hold": False})
    theirs = h.mp.start_run(PIPELINE, pipeline_steps(), tenant_id="globex").run_id
    h.wait_terminal(ours.run_id)
    h.wait_event(theirs, "step-started", "fetch")
    base = dashboards.tenant
    try:
        page.goto(f"{base}/")
        expect(page.locator("header.top")).to_contain_text("tenant acme")
        expect(page.locator(f'#runs tr[data-run-id="{ours.run_id}"]')).to_have_count(1)
        expect(page.locator(f'#runs tr[data-run-id="{theirs}"]')).to_have_count(0)
        tenants = page.locator('#runs td[data-field="tenant"]').all_inner_texts()
        assert tenants and set(tenants) == {"acme"}

        shown = page.goto(f"{base}/runs/{theirs}")
        assert shown is not None and shown.status == 404
        expect(page.locator('#error[data-status="404"]')).to_be_visible()
        expect(page.locator("body")).not_to_contain_text(PIPELINE)
        for part in ("fragment/header", "events/stream", "actions/cancel"):
            assert page.request.get(f"{base}/runs/{theirs}/{part}").status == 404
        # This dashboard acts (on its tenant's runs): a good cancel of the other run is a 404.
        posted = post_action(page, base, theirs, "cancel")
        assert posted.status == 404
        assert h.run(theirs).status is PipelineRunStatus.RUNNING

        shown = page.goto(f"{base}/runs/{ours.run_id}")
        assert shown is not None and shown.status == 200
        expect(header_status(page)).to_have_text("completed")
        expect(page.locator('#run-header [data-field="tenant"]')).to_have_text("acme")
        # The unscoped dashboard shows the other tenant's run (it exists).
        assert page.request.get(f"{dashboards.main}/runs/{theirs}").status == 200
    finally:
        release(h, theirs, *STEP_IDS)
    assert h.wait_terminal(theirs).status is PipelineRunStatus.COMPLETED
