"""The chaos suite, scaled down for ``make test``: 20 runs, one whole-worker kill, one Redis
restart, erratic webhooks and bad input (``make chaos`` runs 200)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from rich.console import Console

import chaos.runner
from chaos.config import ChaosConfig
from chaos.runner import run_chaos
from mpstate import InMemoryPipelineStateStore, PipelineRun, RunStarted, StepState
from mpstate.celery import MpState
from mpstate.errors import MpStateError


@pytest.fixture
def unbind_driver_apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close the ``MpState`` run_chaos binds to its driver app in this process.

    run_chaos leaves it bound: its signal receivers (Celery's signals are global) would stay
    connected and handle the plain tasks of later tests in this process (this xdist worker),
    with a store whose server the chaos run has stopped.
    """
    created: list[Celery] = []
    create_app = chaos.runner.create_app

    def recording(*args: Any, **kwargs: Any) -> Celery:
        app = create_app(*args, **kwargs)
        created.append(app)
        return app

    monkeypatch.setattr(chaos.runner, "create_app", recording)
    yield
    for app in created:
        with suppress(MpStateError):  # closed already
            MpState.of(app).close()


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("unbind_driver_apps")
def test_twenty_runs_survive_a_worker_kill_a_redis_restart_and_bad_input(tmp_path: Path) -> None:
    config = ChaosConfig.scaled_down()
    summary = run_chaos(config, workdir=tmp_path / "logs")

    console = Console(record=True, width=100)
    summary.print(console)
    report = console.export_text()
    assert summary.passed, report
    assert summary.runs == 20
    assert sum(summary.statuses.values()) == 20, report
    assert summary.worker_kills + summary.child_kills == 1, report
    assert summary.redis_restarts == 1, report
    assert summary.bad_inputs_refused == summary.receiver_probes + summary.store_probes > 0
    assert summary.canaries_unchanged and summary.canaries_completed, report
    assert summary.provider["callbacks_sent"] >= summary.callbacks_applied > 0, report
    assert summary.violating_runs == {}


def test_a_violation_keeps_the_run_it_names_with_its_event_log() -> None:
    """A failure seen once can be read after the deployment is gone: the summary keeps each
    named run as stored (a plan never started, ``#<index>``, has none)."""
    store = InMemoryPipelineStateStore()
    video = StepState(step_id="video", operation="video.generate")
    run = store.create(
        PipelineRun(run_id="stuck", pipeline_id="p", steps=[video]),
        events=[RunStarted(run_id="stuck")],
    )

    kept = chaos.runner._as_stored(store, {"stuck", "#7", "never-stored"})

    assert list(kept) == ["stuck"]
    assert kept["stuck"]["runId"] == run.run_id
    assert [event["kind"] for event in kept["stuck"]["events"]] == ["run-created", "run-started"]
    assert kept["stuck"]["steps"][0]["stepId"] == "video"
