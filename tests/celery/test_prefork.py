"""A prefork worker subprocess whose pool child is SIGKILLed in the middle of a step.

With ``task_reject_on_worker_lost`` the message comes back and the step runs again: the run
completes and every step completes once. Without it Celery reports a ``WorkerLostError`` in the
worker's main process, which must fail the step and the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery_support import (
    Harness,
    HarnessFactory,
    PreforkWorker,
    assert_seqs_contiguous,
    events_of,
    kinds,
    start_prefork_worker,
)

from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus

StartWorker = Callable[..., Path]

STEPS = [
    {"stepId": "prepare", "operation": "prefork.prepare"},
    {"stepId": "crash", "operation": "prefork.crash_once"},
    {"stepId": "finish", "operation": "prefork.finish"},
]


@pytest.fixture
def prefork_worker(make_harness: HarnessFactory, redis_url: str) -> Iterator[StartWorker]:
    """Start a prefork worker subprocess on this test's queue; returns a starter."""
    started: list[PreforkWorker] = []

    def start(h: Harness, *, reject_on_worker_lost: bool) -> Path:
        worker = start_prefork_worker(
            h,
            "prefork_app",
            {
                "MPSTATE_PREFORK_BROKER": h.broker_url,
                "MPSTATE_PREFORK_STORE": redis_url,
                "MPSTATE_PREFORK_PREFIX": h.prefix,
                "MPSTATE_PREFORK_QUEUE": h.queue,
                "MPSTATE_PREFORK_REJECT": "1" if reject_on_worker_lost else "0",
            },
        )
        started.append(worker)
        return worker.log

    yield start
    for worker in started:
        worker.stop()


def run_to_the_end(h: Harness, log: Path) -> PipelineRun:
    """Start the pipeline and wait for its end; on a timeout, show the worker's log."""
    run = h.mp.start_run("prefork", STEPS)
    try:
        return h.wait_terminal(run.run_id, timeout=25)
    except AssertionError:
        print(log.read_text(errors="replace")[-4000:])
        raise


def test_a_step_whose_pool_child_is_killed_is_redelivered_and_the_run_completes(
    h: Harness, prefork_worker: StartWorker
) -> None:
    log = prefork_worker(h, reject_on_worker_lost=True)
    run = run_to_the_end(h, log)

    assert h.client.exists(f"{h.prefix}:crashed:{run.step('crash').task_id}")
    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "prepare"),
        ("step-completed", "prepare"),
        ("step-started", "crash"),
        ("step-started", "crash"),
        ("step-completed", "crash"),
        ("step-started", "finish"),
        ("step-completed", "finish"),
        ("run-completed", None),
    ]
    assert_seqs_contiguous(run)
    for step in run.steps:
        assert len([e for e in events_of(run, "step-completed") if e.step_id == step.step_id]) == 1
        assert step.status is StepStatus.COMPLETED
    crash_starts = [e for e in events_of(run, "step-started") if e.step_id == "crash"]
    # The same message came back: same task id, same attempt, flagged as a redelivery.
    assert {e.meta["taskId"] for e in crash_starts} == {run.step("crash").task_id}
    assert [e.attempt for e in crash_starts] == [0, 0]
    assert crash_starts[1].meta.get("redelivered") is True
    assert run.step("crash").attempts == 1
    assert run.step("finish").artifact_ids == ["survived-1-done"]
    assert events_of(run, "run-completed")[0].total_cost_usd == pytest.approx(0.06)


def test_without_reject_on_worker_lost_a_killed_pool_child_fails_the_step_and_the_run(
    h: Harness, prefork_worker: StartWorker
) -> None:
    log = prefork_worker(h, reject_on_worker_lost=False)
    run = run_to_the_end(h, log)

    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "prepare"),
        ("step-completed", "prepare"),
        ("step-started", "crash"),
        ("step-failed", "crash"),
        ("run-failed", None),
    ]
    assert_seqs_contiguous(run)
    (failed,) = events_of(run, "step-failed")
    assert (failed.code, failed.retryable) == ("WorkerLostError", False)
    assert failed.meta["taskId"] == run.step("crash").task_id
    assert failed.meta.get("workerLost") is True
    assert run.step("crash").status is StepStatus.FAILED
    assert run.step("finish").status is StepStatus.PENDING
