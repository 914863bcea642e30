"""``mpstate cancel``: the run is cancelled once, finished runs are refused, and with a broker
the running steps' Celery tasks are revoked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery.app.control import Control

from mpstate import PipelineRun, RedisPipelineStateStore, RunCancelled
from mpstate.testing._servers import free_port

from .support import RunCli, make_run

STEPS = [
    {"stepId": "generate", "operation": "image.generate", "status": "completed", "taskId": "t-1"},
    {"stepId": "upscale", "operation": "image.upscale", "status": "running", "taskId": "t-2"},
    {"stepId": "video", "operation": "video.generate"},
]


def event_kinds(store: RedisPipelineStateStore, run_id: str) -> list[str]:
    return [event.kind for event in store.list_events(run_id)]


def snapshot(store: RedisPipelineStateStore, run_id: str) -> tuple[PipelineRun, list[str]]:
    return store.require(run_id, include_events=False), event_kinds(store, run_id)


def test_cancel_cancels_the_run_and_logs_run_cancelled_with_the_reason(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="running")

    result = run_cli("cancel", "r1", "--reason", "customer changed their mind")

    assert result.exit_code == 0, result.output
    run = store.require("r1")
    assert run.status == "cancelled"
    assert run.error == "customer changed their mind"
    last = run.events[-1]
    assert isinstance(last, RunCancelled)
    assert last.reason == "customer changed their mind"
    assert result.stdout.splitlines()[0] == f"run 'r1': status cancelled, version {run.version}"


def test_cancelling_twice_succeeds_and_changes_nothing_the_second_time(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="running")
    assert run_cli("cancel", "r1", "--reason", "first").exit_code == 0
    before = snapshot(store, "r1")

    again = run_cli("cancel", "r1", "--reason", "second")

    assert again.exit_code == 0, again.output
    assert snapshot(store, "r1") == before
    assert event_kinds(store, "r1").count("run-cancelled") == 1


def test_cancelling_a_completed_run_exits_1_and_leaves_it_completed(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="completed")
    before = snapshot(store, "r1")

    result = run_cli("cancel", "r1", "--reason", "too late")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "completed" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert snapshot(store, "r1") == before


def test_cancel_json_prints_the_cancelled_run_document(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1")

    result = run_cli("cancel", "r1", "--reason", "ops", json=True)

    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)
    stored = store.require("r1", include_events=False)
    assert output == {
        "run": stored.model_dump(mode="json", by_alias=True, exclude={"events"}),
        "revokedTaskIds": None,
    }
    assert output["run"]["status"] == "cancelled"


def test_cancel_with_another_tenant_is_not_found_and_cancels_nothing(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", tenant_id="acme")
    before = snapshot(store, "r1")

    result = run_cli("cancel", "r1", "--reason", "x", "--tenant", "globex")

    assert result.exit_code == 3
    assert snapshot(store, "r1") == before


@pytest.fixture
def revoked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Records what Celery is asked to revoke instead of broadcasting it."""
    calls: list[tuple[str, bool]] = []

    def revoke(self: Control, task_id: str, terminate: bool = False, **options: Any) -> None:
        calls.append((task_id, terminate))

    monkeypatch.setattr(Control, "revoke", revoke)
    return calls


def test_cancel_with_a_broker_revokes_the_running_steps_tasks(
    run_cli: RunCli, store: RedisPipelineStateStore, revoked: list[tuple[str, bool]]
) -> None:
    make_run(store, "r1", status="running", steps=STEPS, currentStepIndex=1)

    result = run_cli("--broker-url", "memory://", "cancel", "r1", "--reason", "stop", "--terminate")

    assert result.exit_code == 0, result.output
    assert revoked == [("t-2", True)]
    assert "revoked 1 Celery task(s): t-2" in result.stdout
    assert store.require("r1").status == "cancelled"


def test_cancel_json_lists_the_revoked_task_ids(
    run_cli: RunCli, store: RedisPipelineStateStore, revoked: list[tuple[str, bool]]
) -> None:
    make_run(store, "r1", status="running", steps=STEPS, currentStepIndex=1)

    result = run_cli("--broker-url", "memory://", "cancel", "r1", "--reason", "stop", json=True)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["revokedTaskIds"] == ["t-2"]
    assert revoked == [("t-2", False)]


def test_cancel_without_a_broker_does_not_touch_celery(
    run_cli: RunCli, store: RedisPipelineStateStore, revoked: list[tuple[str, bool]]
) -> None:
    make_run(store, "r1", status="running", steps=STEPS, currentStepIndex=1)

    result = run_cli("cancel", "r1", "--reason", "stop")

    assert result.exit_code == 0, result.output
    assert revoked == []
    assert result.stdout.splitlines()[-1] == (
        "no Celery task revoked (no broker URL): to revoke the run's running step tasks, "
        "give --broker-url (or MPSTATE_BROKER_URL)"
    )
    assert result.stderr == ""


def test_cancel_json_without_a_broker_has_no_revoked_ids(
    run_cli: RunCli, store: RedisPipelineStateStore, revoked: list[tuple[str, bool]]
) -> None:
    make_run(store, "r1", status="running", steps=STEPS, currentStepIndex=1)

    result = run_cli("cancel", "r1", "--reason", "stop", json=True)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["revokedTaskIds"] is None
    assert revoked == []


def test_cancel_terminate_without_a_broker_is_a_usage_error_and_cancels_nothing(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="running")
    before = snapshot(store, "r1")

    result = run_cli("cancel", "r1", "--reason", "stop", "--terminate")

    assert result.exit_code == 2
    assert "--broker-url" in result.stderr
    assert snapshot(store, "r1") == before


def test_cancel_says_the_run_is_cancelled_when_the_broker_cannot_be_reached(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="running", steps=STEPS, currentStepIndex=1)
    broker = f"redis://127.0.0.1:{free_port()}/0"

    result = run_cli("--broker-url", broker, "cancel", "r1", "--reason", "stop")

    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: run 'r1' was cancelled, but revoking its Celery tasks failed: "
    )
    assert store.require("r1").status == "cancelled"
