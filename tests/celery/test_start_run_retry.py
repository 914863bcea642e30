"""``MpState.start_run`` retried: a run that was created but never started (the caller failed
between the two) is started by the retry, and of callers racing with one idempotency key exactly
one enqueues the first step. Real worker, real Redis broker.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from celery_support import DEADLINE, Harness, assert_never, events_of, kinds, step_events

from mpstate import PipelineRun, audit_run
from mpstate.models import PipelineRunStatus

pytestmark = pytest.mark.parametrize("store_backend", ["redis", "cluster"], indirect=True)

KEY = "order-42"
STEPS = [
    {"stepId": "one", "operation": "sr.one"},
    {"stepId": "two", "operation": "sr.two"},
]
COMPLETED_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "one"),
    ("step-completed", "one"),
    ("step-started", "two"),
    ("step-completed", "two"),
    ("run-completed", None),
]
CALLERS = 8


def define_tasks(h: Harness, bodies: Counter[str]) -> None:
    for step in ("one", "two"):

        @h.app.task(bind=True, shared=False, name=f"sr.{step}")
        def body(self: Any, step: str = step, **_: Any) -> dict[str, Any]:
            bodies[step] += 1
            return {"artifactIds": [f"{step}-1"]}


def create_without_starting(h: Harness, run_id: str = "half-made") -> PipelineRun:
    """What a caller that died between creating and starting the run left behind."""
    run, created = h.store.create_or_get(
        {
            "runId": run_id,
            "pipelineId": "retry",
            "idempotencyKey": KEY,
            "steps": STEPS,
        }
    )
    assert created and run.status is PipelineRunStatus.PENDING
    return run


def queued(h: Harness) -> int:
    return int(h.client.llen(h.queue))


def test_start_run_with_the_key_of_a_run_never_started_starts_that_run_and_enqueues_it_once(
    h: Harness,
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    half_made = create_without_starting(h)
    assert queued(h) == 0

    started = h.mp.start_run("retry", STEPS, idempotency_key=KEY)

    assert started.run_id == half_made.run_id
    assert started.status is PipelineRunStatus.RUNNING
    assert queued(h) == 1
    # Retrying again changes nothing: the run is started already.
    again = h.mp.start_run("retry", STEPS, idempotency_key=KEY)
    assert again.run_id == half_made.run_id
    assert again.version == started.version
    assert queued(h) == 1

    h.start_worker()
    done = h.wait_terminal(half_made.run_id)

    assert done.status is PipelineRunStatus.COMPLETED
    assert kinds(done) == COMPLETED_LOG
    assert bodies == {"one": 1, "two": 1}
    assert audit_run(done) == []


@pytest.mark.parametrize("existing", ["created-but-never-started", "none"])
def test_callers_racing_to_start_one_run_enqueue_its_first_step_exactly_once(
    h: Harness, existing: str
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    if existing == "created-but-never-started":
        create_without_starting(h)
    barrier = threading.Barrier(CALLERS, timeout=DEADLINE)

    def call(_: int) -> PipelineRun:
        barrier.wait()
        return h.mp.start_run("retry", STEPS, idempotency_key=KEY)

    with ThreadPoolExecutor(CALLERS) as pool:
        returned = list(pool.map(call, range(CALLERS)))

    run_ids = {run.run_id for run in returned}
    assert len(run_ids) == 1
    (run_id,) = run_ids
    if existing == "created-but-never-started":
        assert run_id == "half-made"
    assert queued(h) == 1  # before any worker: exactly one first-step message

    h.start_worker()
    done = h.wait_terminal(run_id)
    assert_never(lambda: bodies["one"] > 1, 0.5, "a second execution of step one")

    assert done.status is PipelineRunStatus.COMPLETED
    assert bodies == {"one": 1, "two": 1}
    assert len(events_of(done, "run-started")) == 1
    assert len(step_events(done, "one", "step-started")) == 1
    assert kinds(h.run(run_id)) == COMPLETED_LOG
    assert audit_run(h.run(run_id)) == []


def test_start_run_does_not_restart_a_run_that_was_cancelled_before_it_started(
    h: Harness,
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    half_made = create_without_starting(h)
    h.store.cancel(half_made.run_id, "changed my mind")
    before = h.run(half_made.run_id)

    returned = h.mp.start_run("retry", STEPS, idempotency_key=KEY, run_id=half_made.run_id)

    assert returned.run_id == half_made.run_id
    assert returned.status is PipelineRunStatus.CANCELLED
    assert h.run(half_made.run_id) == before
    assert queued(h) == 0
