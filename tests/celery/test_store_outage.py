"""A store outage inside a step task is ridden out with backoff: the transition is not lost."""

from __future__ import annotations

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
