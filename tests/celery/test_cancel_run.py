"""``MpState.cancel_run`` while a step runs: the run ends cancelled and nothing runs after it.

(Named after ``MpState.cancel_run``: ``test_cancel.py`` is taken by the store tests, and test
modules in directories without ``__init__.py`` need unique basenames.)
"""

from __future__ import annotations

from typing import Any

import pytest
from celery_support import DEADLINE, Harness, assert_never, kinds

from mpstate.celery import PipelineTask, StepIdentity
from mpstate.models import PipelineRunStatus

pytestmark = pytest.mark.parametrize("store_backend", ["redis", "cluster"], indirect=True)

CANCELLED_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "first"),
    ("step-completed", "first"),
    ("step-started", "slow"),
    ("run-cancelled", None),
]


def define_tasks(h: Harness, ran: list[str]) -> None:
    @h.app.task(base=PipelineTask, bind=True, shared=False, name="c.first")
    def first(self: Any) -> dict[str, Any]:
        ran.append("first")
        return {"artifactIds": ["a"], "costUsd": 0.01}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="c.slow")
    def slow(self: Any) -> dict[str, Any]:
        ran.append("slow")
        assert h.latch("slow").wait(DEADLINE)
        ran.append("slow-finished")
        return {"artifactIds": ["b"], "costUsd": 0.02}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="c.after")
    def after(self: Any) -> dict[str, Any]:
        ran.append("after")
        return {"artifactIds": ["c"]}


STEPS = [
    {"stepId": "first", "operation": "c.first"},
    {"stepId": "slow", "operation": "c.slow"},
    {"stepId": "after", "operation": "c.after"},
]


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_cancelling_a_run_while_its_step_runs_ends_it_cancelled_and_starts_no_later_step(
    h: Harness, pool: str
) -> None:
    ran: list[str] = []
    define_tasks(h, ran)
    h.start_worker(pool=pool, concurrency=2)
    run = h.mp.start_run("cancel", STEPS)
    h.wait_event(run.run_id, "step-started", "slow")

    cancelled = h.mp.cancel_run(run.run_id, "stop")
    assert cancelled.status is PipelineRunStatus.CANCELLED
    h.latch("slow").set()
    task_id = h.run(run.run_id).step("slow").task_id
    assert task_id
    h.wait_finished(task_id)
    run = h.run(run.run_id)

    # Give a wrongly enqueued next step time to show up: nothing may follow run-cancelled.
    assert_never(lambda: h.run(run.run_id).events != run.events, 1.0, "an event after the cancel")
    assert run.status is PipelineRunStatus.CANCELLED
    assert run.error == "stop"
    assert kinds(run) == CANCELLED_LOG
    assert run.events[-1].reason == "stop"
    assert ran == ["first", "slow", "slow-finished"]
    assert not h.finished_tasks("c.after")


def test_a_step_task_delivered_after_the_cancel_does_not_run_its_body(h: Harness) -> None:
    ran: list[str] = []
    define_tasks(h, ran)
    h.start_worker()
    run = h.mp.start_run("cancel", STEPS)
    h.wait_event(run.run_id, "step-started", "slow")
    h.mp.cancel_run(run.run_id, "stop")
    h.latch("slow").set()
    h.wait_finished(h.run(run.run_id).step("slow").task_id)
    before = h.run(run.run_id)

    # A copy of the next step's message, as a late or duplicate enqueue would deliver it.
    identity = StepIdentity(run.run_id, "after", is_step=True)
    late = h.app.send_task("c.after", kwargs=identity.kwargs(), headers=identity.headers())
    finished = h.wait_finished(late.id)

    assert finished.state == "IGNORED"
    assert "after" not in ran
    after = h.run(run.run_id)
    assert after.events == before.events
    assert after.status is PipelineRunStatus.CANCELLED
