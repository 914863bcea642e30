"""cancel: a live run becomes cancelled once; a finished run cannot be cancelled."""

from __future__ import annotations

from typing import Any

import pytest

from mpstate import (
    InvalidInputError,
    InvalidTransitionError,
    PipelineRunStatus,
    PipelineStateStore,
    RunCancelled,
    RunNotFoundError,
    StaleFenceError,
)
from mpstate.fields import utc_now

LIVE = [PipelineRunStatus.PENDING, PipelineRunStatus.RUNNING, PipelineRunStatus.SUSPENDED]


@pytest.mark.parametrize("status", LIVE, ids=[s.value for s in LIVE])
def test_cancel_sets_status_error_completed_at_and_version_and_logs_run_cancelled(
    store: PipelineStateStore, status: PipelineRunStatus
) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    if status is not PipelineRunStatus.PENDING:
        store.update("r1", {"status": status.value})
    version = store.require("r1").version
    before = utc_now()

    cancelled = store.cancel("r1", "user asked")

    assert cancelled.status is PipelineRunStatus.CANCELLED
    assert cancelled.error == "user asked"
    assert cancelled.version == version + 1
    assert cancelled.completed_at is not None
    assert cancelled.completed_at >= before
    assert cancelled.updated_at >= before
    assert cancelled.events == []
    stored = store.require("r1")
    assert stored.model_copy(update={"events": []}) == cancelled
    last = stored.events[-1]
    assert isinstance(last, RunCancelled)
    assert last.reason == "user asked"
    assert last.run_id == "r1"
    assert last.seq == len(stored.events)


def test_cancelling_twice_changes_nothing_the_second_time(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    first = store.cancel("r1", "first reason")
    after_first = store.require("r1")

    second = store.cancel("r1", "second reason")

    assert second == first
    assert second.version == first.version
    assert second.error == "first reason"
    assert store.require("r1") == after_first
    assert [e.kind for e in after_first.events].count("run-cancelled") == 1


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_cancelling_a_finished_run_raises_and_changes_nothing(
    store: PipelineStateStore, status: str
) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    store.update("r1", {"status": status})
    before = store.require("r1")

    with pytest.raises(InvalidTransitionError) as caught:
        store.cancel("r1", "too late")

    assert caught.value.run_id == "r1"
    assert caught.value.status == status
    assert store.require("r1") == before


def test_cancel_moves_the_run_to_the_cancelled_status_listing(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "tenantId": "t"})
    store.update("r1", {"status": "running"})
    store.cancel("r1", "stop")
    assert store.list_runs(status="running") == []
    assert store.list_runs(status="running", tenant_id="t") == []
    assert [r.run_id for r in store.list_runs(status="cancelled")] == ["r1"]
    assert [r.run_id for r in store.list_runs(status="cancelled", tenant_id="t")] == ["r1"]


def test_cancel_of_a_missing_run_raises_run_not_found(store: PipelineStateStore) -> None:
    with pytest.raises(RunNotFoundError):
        store.cancel("missing", "why")


@pytest.mark.parametrize("reason", [None, 5, b"bytes"])
def test_cancel_needs_a_string_reason(store: PipelineStateStore, reason: Any) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    with pytest.raises(InvalidInputError):
        store.cancel("r1", reason)
    assert store.require("r1").status is PipelineRunStatus.PENDING


def test_cancel_under_a_stale_fence_is_refused_even_when_already_cancelled(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    with store.lock("r1") as old:
        pass
    with store.lock("r1") as current:
        with pytest.raises(StaleFenceError):
            store.cancel("r1", "stale", fence=old.fence)
        assert store.require("r1").status is PipelineRunStatus.PENDING
        store.cancel("r1", "current", fence=current.fence)
        with pytest.raises(StaleFenceError):
            store.cancel("r1", "stale again", fence=old.fence)
    stored = store.require("r1")
    assert stored.error == "current"
