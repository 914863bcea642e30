"""Starting a step this process published: decided on the remembered run, never on a stale one.

``StepLifecycle`` remembers the run a commit wrote when that commit published steps; a start
whose message carries that run's version (and whose task id the step records) is decided on the
copy instead of a read. These tests drive the lifecycle against an in-memory store, counting the
reads, and prove that a copy another writer has moved past is never what gets committed.
"""

from __future__ import annotations

from typing import Any

import pytest

from mpstate import InMemoryPipelineStateStore, PipelineRun
from mpstate.celery.identity import StepIdentity
from mpstate.celery.lifecycle import StepLifecycle
from mpstate.celery.published import PublishedRuns
from mpstate.models import PipelineRunStatus, StepState, StepStatus

RUN_ID = "r1"


class CountingStore(InMemoryPipelineStateStore):
    """The in-memory store, counting the runs read by ``get``."""

    reads = 0

    def get(self, run_id: str, *, include_events: bool = True) -> PipelineRun | None:
        self.reads += 1
        return super().get(run_id, include_events=include_events)


class Published:
    """What the lifecycle published: (run version, step id, task id) per message."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str, str]] = []

    def __call__(self, run: PipelineRun, step: StepState, task_id: str | None) -> None:
        assert task_id is not None
        self.messages.append((run.version, step.step_id, task_id))


@pytest.fixture
def store() -> CountingStore:
    store = CountingStore()
    store.create(
        {
            "runId": RUN_ID,
            "pipelineId": "p",
            "steps": [{"stepId": s, "operation": f"op.{s}"} for s in ("a", "b")],
        }
    )
    return store


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def lifecycle(store: CountingStore, published: Published) -> StepLifecycle:
    lifecycle = StepLifecycle(store, published)
    lifecycle.start_run(store.require(RUN_ID))
    return lifecycle


def start(lifecycle: StepLifecycle, step_id: str, version: int | None, task_id: str) -> Any:
    return lifecycle.start_step(
        StepIdentity(RUN_ID, step_id, is_step=True),
        attempt=0,
        meta={"taskId": task_id},
        published_version=version,
    )


def test_a_step_published_here_starts_without_reading_the_run(
    store: CountingStore, published: Published, lifecycle: StepLifecycle
) -> None:
    version, step_id, task_id = published.messages[-1]
    reads = store.reads
    run = start(lifecycle, step_id, version, task_id)
    assert store.reads == reads
    assert run is not None and run.step("a").status is StepStatus.RUNNING
    assert store.require(RUN_ID).version == version + 1


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(lambda v, t: (None, t), id="no version in the message"),
        pytest.param(lambda v, t: (v - 1, t), id="another version"),
        pytest.param(lambda v, t: (v, "another-task"), id="another task id"),
    ],
)
def test_a_message_that_does_not_match_the_remembered_run_reads_it(
    store: CountingStore, published: Published, lifecycle: StepLifecycle, message: Any
) -> None:
    version, step_id, task_id = published.messages[-1]
    hinted_version, hinted_task = message(version, task_id)
    reads = store.reads
    start(lifecycle, step_id, hinted_version, hinted_task)
    assert store.reads == reads + 1


def test_a_remembered_run_another_writer_moved_past_is_read_again_not_committed(
    store: CountingStore, published: Published, lifecycle: StepLifecycle
) -> None:
    version, step_id, task_id = published.messages[-1]
    # An operator cancels the run after the publish: the remembered copy (running, step a
    # ready) is now stale, though the message's version still matches it.
    store.cancel(RUN_ID, "stop")
    reads = store.reads
    assert start(lifecycle, step_id, version, task_id) is None  # the body must not run
    stored = store.require(RUN_ID)
    assert stored.status is PipelineRunStatus.CANCELLED
    assert stored.step("a").status is not StepStatus.RUNNING
    assert [e.kind for e in stored.events].count("step-started") == 0
    assert store.reads == reads + 1  # the version conflict made it read the run


def test_a_remembered_run_is_used_once(
    store: CountingStore, published: Published, lifecycle: StepLifecycle
) -> None:
    version, step_id, task_id = published.messages[-1]
    start(lifecycle, step_id, version, task_id)
    reads = store.reads
    start(lifecycle, step_id, version, task_id)  # a redelivery of the message
    assert store.reads == reads + 1


def test_the_memory_keeps_only_the_newest_runs() -> None:
    runs = PublishedRuns(kept=2)
    documents = [
        PipelineRun.model_validate(
            {
                "runId": f"r{i}",
                "pipelineId": "p",
                "version": 3,
                "steps": [{"stepId": "a", "operation": "op.a", "taskId": f"t{i}"}],
            }
        )
        for i in range(3)
    ]
    for run in documents:
        runs.remember(run)
    assert runs.take("r0", "a", version=3, task_id="t0") is None
    assert runs.take("r2", "a", version=3, task_id="t2") == documents[2]
    assert runs.take("r1", "a", version=3, task_id="t1") == documents[1]
