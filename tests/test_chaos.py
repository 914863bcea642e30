"""The chaos suite, scaled down for ``make test``: 20 runs, one whole-worker kill, one Redis
restart, erratic webhooks and bad input (``make chaos`` runs 200)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from chaos.config import ChaosConfig
from chaos.runner import run_chaos


@pytest.mark.slow
@pytest.mark.timeout(240)
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
