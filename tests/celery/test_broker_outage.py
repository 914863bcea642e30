"""A broker outage inside a step task: what is not state (progress events) never fails the step."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery_support import Harness, events_of, harness, wait_for

from mpstate.celery import PipelineTask
from mpstate.models import PipelineRunStatus
from mpstate.testing import RedisServer


@pytest.fixture
def broker_server() -> Iterator[RedisServer]:
    """A broker of its own (the store stays up), keeping its messages across a restart."""
    with RedisServer(appendonly=True, extra_args=("--appendfsync", "always")) as server:
        yield server


@pytest.fixture
def h(redis_url: str, prefix: str, broker_server: RedisServer) -> Iterator[Harness]:
    with harness(broker_server.url, redis_url, prefix, worker_send_task_events=True) as h:
        yield h


def test_progress_sent_while_the_broker_is_down_is_dropped_and_the_step_still_completes(
    h: Harness, broker_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by the chaos suite: Flower's task-progress event, published while Redis restarted,
    # raised kombu's OperationalError out of progress() and failed the run.
    running = threading.Event()
    broker_down = threading.Event()
    reported = threading.Event()

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="broker_outage.progress")
    def step(self: Any) -> dict[str, Any]:
        running.set()
        broker_down.wait(20)
        self.progress(50, message="halfway, while the broker is down")
        reported.set()
        return {"artifactIds": ["p-1"], "costUsd": 0.1}

    h.start_worker()
    run = h.mp.start_run("outage", [{"stepId": "p", "operation": "broker_outage.progress"}])
    assert running.wait(20)
    broker_server.stop()
    with caplog.at_level(logging.WARNING, logger="mpstate.celery"):
        broker_down.set()
        assert reported.wait(60)
        broker_server.start()
        run = wait_for(
            lambda: (r := h.store.require(run.run_id)).is_terminal and r,
            timeout=60,
            what="the run to finish",
        )

    assert run.status is PipelineRunStatus.COMPLETED
    assert [e.pct for e in events_of(run, "step-progress")] == [50]
    assert any("task-progress of run" in r.getMessage() for r in caplog.records)


def test_a_step_that_completes_while_the_broker_is_down_still_advances_the_run(
    h: Harness, broker_server: RedisServer
) -> None:
    # Found by the chaos suite: the next step's publish gave up after kombu's default 0.6 s of
    # retries, so a run advanced during a Redis restart waited for the reconciler.
    running = threading.Event()
    broker_down = threading.Event()

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="broker_outage.first")
    def first(self: Any) -> dict[str, Any]:
        running.set()
        broker_down.wait(20)
        return {"artifactIds": ["a-1"]}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="broker_outage.second")
    def second(self: Any) -> dict[str, Any]:
        return {"artifactIds": ["b-1"]}

    h.start_worker()
    run = h.mp.start_run(
        "outage",
        [
            {"stepId": "a", "operation": "broker_outage.first"},
            {"stepId": "b", "operation": "broker_outage.second"},
        ],
    )
    assert running.wait(20)
    broker_server.stop()
    restarted = threading.Timer(2.0, broker_server.start)
    restarted.start()
    broker_down.set()
    try:
        run = wait_for(
            lambda: (r := h.store.require(run.run_id)).is_terminal and r,
            timeout=60,
            what="the run to finish without a reconciler",
        )
    finally:
        restarted.join()

    assert run.status is PipelineRunStatus.COMPLETED
    assert [e.step_id for e in events_of(run, "step-completed")] == ["a", "b"]
