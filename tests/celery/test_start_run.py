"""``MpState.start_run`` creates a run already started: one store write, then the first steps.

run-created and run-started (with what starting logs) are one write (``create(..., events=)``),
so a publisher makes one store round trip per run and no caller can die between creating a run
and starting it; a run that exists already (its idempotency key's) is started the old way if it
never was. Real worker, real broker; the store on a single Redis and on the cluster.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery_support import Harness

from mpstate.celery import PipelineTask
from mpstate.models import PipelineRunStatus, StepStatus

pytestmark = pytest.mark.parametrize("store_backend", ["redis", "cluster"], indirect=True)

STEPS = [{"stepId": "a", "operation": "start_run.a"}, {"stepId": "b", "operation": "start_run.b"}]


def define_tasks(h: Harness) -> None:
    for name in ("a", "b"):

        @h.app.task(name=f"start_run.{name}", base=PipelineTask, bind=True)
        def step(self: Any) -> None:
            return None


class CountedRequests:
    """Counts the requests the store's executor carries out (one per round trip)."""

    def __init__(self, h: Harness) -> None:
        self.count = 0
        self._executor = h.store._executor
        h.store._executor = self  # type: ignore[assignment]

    def __call__(self, request: Any) -> Any:
        self.count += 1
        return self._executor(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._executor, name)


def test_a_new_run_is_created_started_in_one_store_write_and_its_first_step_runs(
    h: Harness, store_backend: str
) -> None:
    define_tasks(h)
    counted = CountedRequests(h)

    run = h.mp.start_run("p", STEPS)

    # Created and started together: no second write, no read (on a cluster the index entries
    # are added ahead of it in the same request and settled after it).
    assert counted.count == (1 if store_backend == "redis" else 2)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.version == 1
    stored = h.run(run.run_id)
    assert [(e.seq, e.kind) for e in stored.events] == [(1, "run-created"), (2, "run-started")]
    assert stored.step("a").status is StepStatus.PENDING
    assert stored.step("a").task_id is not None  # published under the id the write recorded
    assert [r.run_id for r in h.store.list_runs(status="running")] == [run.run_id]

    h.start_worker()
    done = h.wait_terminal(run.run_id)
    assert done.status is PipelineRunStatus.COMPLETED, done.error


def test_a_run_created_but_never_started_is_started_by_the_next_start_run_with_its_key(
    h: Harness,
) -> None:
    # What an older mpstate leaves when its caller died between creating and starting a run.
    define_tasks(h)
    pending = h.store.create(
        {"runId": "r1", "pipelineId": "p", "steps": STEPS, "idempotencyKey": "k", "tenantId": "t"}
    )
    assert pending.status is PipelineRunStatus.PENDING

    run = h.mp.start_run("p", STEPS, tenant_id="t", idempotency_key="k")

    assert run.run_id == "r1"
    assert run.status is PipelineRunStatus.RUNNING
    assert [e.kind for e in h.run("r1").events] == ["run-created", "run-started"]
    again = h.mp.start_run("p", STEPS, tenant_id="t", idempotency_key="k")
    assert again.run_id == "r1"
    assert [e.kind for e in h.run("r1").events] == ["run-created", "run-started"]  # once
    h.start_worker()
    assert h.wait_terminal("r1").status is PipelineRunStatus.COMPLETED
