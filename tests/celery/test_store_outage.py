"""A store outage inside a step task is ridden out with backoff: the transition is not lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery_support import Harness, events_of, harness, wait_for

from mpstate import PipelineRun, StateStoreUnavailableError
from mpstate.celery import PipelineTask
from mpstate.models import PipelineRunStatus
from mpstate.testing import RedisServer


@pytest.fixture
def store_server() -> Iterator[RedisServer]:
    """A store of its own (the broker stays up), durable across a restart: AOF, fsync always."""
    with RedisServer(appendonly=True, extra_args=("--appendfsync", "always")) as server:
        yield server


@pytest.fixture
def h(redis_url: str, prefix: str, store_server: RedisServer) -> Iterator[Harness]:
    with harness(redis_url, store_server.url, prefix, mpstate_outage_window_s=30) as h:
        yield h


def test_a_step_that_finishes_while_the_store_is_down_completes_once_it_is_back(
    h: Harness, store_server: RedisServer
) -> None:
    running = threading.Event()
    release = threading.Event()

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="outage.step")
    def step(self: Any) -> dict[str, Any]:
        running.set()
        release.wait(20)
        return {"artifactIds": ["a-1"], "costUsd": 0.25}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="outage.next")
    def next_step(self: Any) -> dict[str, Any]:
        return {"artifactIds": ["b-1"]}

    h.start_worker()
    run = h.mp.start_run(
        "outage",
        [{"stepId": "s", "operation": "outage.step"}, {"stepId": "n", "operation": "outage.next"}],
    )
    assert running.wait(20)

    store_server.stop()  # the step's completion now meets StateStoreUnavailableError
    release.set()
    restarted = threading.Timer(1.5, store_server.start)
    restarted.start()

    def finished() -> PipelineRun | None:
        try:
            current = h.store.get(run.run_id)
        except StateStoreUnavailableError:
            return None  # the outage this test makes
        return current if current is not None and current.is_terminal else None

    try:
        run = wait_for(finished, timeout=30, what="the run to finish after the store came back")
    finally:
        restarted.join()

    assert run.status is PipelineRunStatus.COMPLETED
    assert [e.step_id for e in events_of(run, "step-completed")] == ["s", "n"]
    assert [e.kind for e in run.events].count("run-completed") == 1
    assert run.cost_usd == 0.25


def test_a_hook_that_cannot_record_a_transition_logs_the_error_instead_of_swallowing_it(
    redis_url: str, prefix: str, store_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A plain task's events are written by signal receivers, whose exceptions Celery would only
    # swallow: with the store down past the outage window, mpstate logs the failure itself.
    with harness(redis_url, store_server.url, prefix, mpstate_outage_window_s=0.2) as h:
        release = threading.Event()

        @h.app.task(bind=True, shared=False, name="outage.plain")
        def plain(self: Any) -> dict[str, Any]:
            release.wait(20)
            return {"artifactIds": ["p-1"]}

        h.start_worker()
        run = h.mp.start_run("outage", [{"stepId": "p", "operation": "outage.plain"}])
        h.wait_event(run.run_id, "step-started", "p")
        store_server.stop()
        with caplog.at_level(logging.ERROR, logger="mpstate.celery"):
            release.set()
            wait_for(lambda: h.finished_tasks("outage.plain"), what="the plain task to end")
            wait_for(
                lambda: any(
                    "step-completed for a plain task failed" in r.message for r in caplog.records
                ),
                what="the error to be logged",
            )
        [record] = [r for r in caplog.records if "step-completed for a plain task" in r.message]
        assert record.exc_info is not None
        assert record.exc_info[0] is StateStoreUnavailableError
        store_server.start()


def test_progress_reported_while_the_store_is_down_is_dropped_and_the_step_still_completes(
    h: Harness, store_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by the chaos suite: a progress report during a Redis restart failed the whole run.
    running = threading.Event()
    store_down = threading.Event()

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="outage.progress")
    def step(self: Any) -> dict[str, Any]:
        running.set()
        store_down.wait(20)
        self.progress(50, message="halfway, during the outage")
        return {"artifactIds": ["p-1"], "costUsd": 0.1}

    h.start_worker()
    run = h.mp.start_run("outage", [{"stepId": "p", "operation": "outage.progress"}])
    assert running.wait(20)
    store_server.stop()
    restarted = threading.Timer(1.5, store_server.start)
    restarted.start()
    with caplog.at_level(logging.WARNING, logger="mpstate.celery"):
        store_down.set()

        def finished() -> PipelineRun | None:
            try:
                current = h.store.get(run.run_id)
            except StateStoreUnavailableError:
                return None
            return current if current is not None and current.is_terminal else None

        try:
            run = wait_for(finished, timeout=30, what="the run to finish after the outage")
        finally:
            restarted.join()

    assert run.status is PipelineRunStatus.COMPLETED
    assert events_of(run, "step-progress") == []
    assert any("step-progress of run" in r.getMessage() for r in caplog.records)
