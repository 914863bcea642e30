"""The benchmarks' harnesses work: a short run against its own server reports everything.

Timings are never checked here (the machine is shared and noisy); only that every operation was
measured and the results file is complete.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

OPERATIONS = {
    "create",
    "get_new",
    "get_20_events",
    "get_no_events",
    "update",
    "append_event",
    "list_events_100",
    "list_runs_page_small",
    "list_runs_page_big",
    "list_runs_all_1k",
    "find_by_external_job_id",
    "lock",
    "lock_handoff",
}


@pytest.mark.slow
def test_quick_benchmark_reports_every_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("benchmarks.store")
    output = tmp_path / "store.json"

    assert bench.main(["--smoke", "--output", str(output)]) == 0

    result = json.loads(output.read_text())
    operations = {row["name"]: row for row in result["operations"]}
    assert set(operations) == OPERATIONS
    for name, row in operations.items():
        assert row["ops_per_s"] > 0, name
    for name in OPERATIONS - {"lock_handoff"}:
        assert operations[name]["ratio_to_evalsha"] > 0, name
        assert operations[name]["round_trips"] >= 1, name
        assert len(operations[name]["rounds"]) == result["config"]["rounds"], name
    assert result["lock_handoff"]["handoffs"] > 0
    assert result["bench_client_connections"] == 1
    assert {target["operation"] for target in result["targets"]} == {
        "create",
        "update",
        "append_event",
        "list_runs_page_big",
        "lock_handoff",
    }
    for key in ("redis_version", "python_version", "redis_py_version", "date"):
        assert result["machine"][key], key
    assert "raw EVALSHA" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_celery_hooks_benchmark_reports_both_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("benchmarks.celery_hooks")
    output = tmp_path / "celery_hooks.json"

    assert bench.main(["--quick", "--output", str(output)]) == 0

    result = json.loads(output.read_text())
    rows = {row["name"]: row for row in result["results"]}
    assert set(rows) == {"bare", "hooks"}
    for name, row in rows.items():
        assert row["steps_per_s"] > 0, name
        assert row["end_to_end_steps_per_s"] > 0, name
        assert len(row["rounds"]) == result["config"]["rounds"], name
        assert row["steps_measured"] > 0, name
    hooks = rows["hooks"]
    assert hooks["ratio_to_bare"] > 0
    # Every step reads and commits its run at least once: the counters saw the store's calls.
    assert hooks["store_round_trips_per_step_worker"] >= 1
    assert hooks["evalsha_per_step"] >= 1
    assert hooks["store_redis_commands_per_step"] > 0
    assert rows["bare"]["store_round_trips_per_step"] == 0
    assert [target["operation"] for target in result["targets"]] == ["hooks"]
    assert result["breakdown"]["worker_us_per_step"]
    for key in ("redis_version", "python_version", "celery_version", "date"):
        assert result["machine"][key], key
    out = capsys.readouterr().out
    assert "x bare" in out
    assert "PipelineTask no-op step" in out
