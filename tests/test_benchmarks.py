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
    "create_follow_ups",
    "status_change",
    "status_change_follow_ups",
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
        # What the op would reach with a client costing nothing: a raw round trip's time over
        # the op's round trips at that time less the baseline's server part, plus its server.
        row, round_trip_us = operations[name], 1e6 / operations[name]["baseline_ops_per_s"]
        least_us = (
            row["round_trips"] * (round_trip_us - result["baseline"]["server_cpu_us_per_op"])
            + row["server_cpu_us_per_op"]
        )
        assert row["ceiling_ratio_to_evalsha"] == pytest.approx(round_trip_us / least_us, rel=1e-3)
    # On a single Redis a create and a status change are one round trip each; with the
    # cluster's follow-ups, two (the entries added ahead in one pipeline with the run's script).
    for name in ("create", "status_change"):
        assert operations[name]["round_trips"] == 1, name
        assert operations[f"{name}_follow_ups"]["round_trips"] == 2, name
    assert result["lock_handoff"]["handoffs"] > 0
    assert result["bench_client_connections"] == 1
    targets = {target["operation"]: target for target in result["targets"]}
    assert set(targets) == {
        "create",
        "update",
        "append_event",
        "find_by_external_job_id",
        "lock",
        "list_runs_page_big",
        "lock_handoff",
    }
    assert targets["create"]["goal"] == 0.5
    assert targets["update"]["goal"] == 0.7
    for name, target in targets.items():
        assert target["met"] in (True, False), name
        assert target["verdict"] == ("PASS" if target["met"] else "MISS"), name
    for key in ("redis_version", "python_version", "redis_py_version", "date"):
        assert result["machine"][key], key
    assert "raw EVALSHA" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_celery_hooks_benchmark_reports_every_kind_and_goal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("benchmarks.celery_hooks.cli")
    output = tmp_path / "celery_hooks.json"

    assert bench.main(["--quick", "--rounds", "1", "--chunks", "1", "--output", str(output)]) == 0

    result = json.loads(output.read_text())
    rows = {row["name"]: row for row in result["results"]}
    assert set(rows) == {"bare", "chain", "floor", "hooks"}
    for name, row in rows.items():
        assert row["steps_per_s"] > 0, name
        assert row["end_to_end_steps_per_s"] > 0, name
        assert len(row["rounds"]) == result["config"]["rounds"], name
        assert row["steps_measured"] > 0, name
    hooks = rows["hooks"]
    assert hooks["ratio_to_bare"] > 0
    assert hooks["ratio_to_chain"] > 0
    assert hooks["end_to_end_ratio_to_chain"] > 0
    assert len(hooks["end_to_end_ratio_to_chain_per_round"]) == result["config"]["rounds"]
    # Every step commits its run at least once: the counters saw the store's calls.
    assert hooks["store_round_trips_per_step_worker"] >= 1
    assert hooks["evalsha_per_step"] >= 1
    assert hooks["store_redis_commands_per_step"] > 0
    assert rows["bare"]["store_round_trips_per_step"] == 0
    assert rows["chain"]["store_round_trips_per_step"] == 0
    # The floor's two writes per step, and one per run from the publisher, on the same counter.
    floor = rows["floor"]
    steps = result["config"]["steps"]
    assert floor["store_round_trips_per_step_worker"] == 2
    assert floor["store_round_trips_per_step_publisher"] == pytest.approx(1 / steps, abs=0.01)
    # The server saw every one of them; its count may hold a few of kombu's own scripts too
    # (the broker's timers run some while any kind's backlog drains).
    assert floor["evalsha_per_step"] >= round(2 + 1 / steps, 2)  # as the row rounds it
    # A chain's links published by the worker: the broker's commands are counted for them too.
    assert rows["chain"]["redis_commands_per_step"] > 0
    targets = {target["operation"]: target for target in result["targets"]}
    assert list(targets) == [
        "hooks_to_chain_end_to_end",
        "floor_to_chain_end_to_end",
        "store_server_cpu_us_per_step",
        "store_redis_commands_per_step",
        "store_round_trips_per_step",
    ]
    assert targets["hooks_to_chain_end_to_end"]["value"] == hooks["end_to_end_ratio_to_chain"]
    assert targets["floor_to_chain_end_to_end"]["value"] == floor["end_to_end_ratio_to_chain"]
    assert (
        f"hooks / floor, end to end {hooks['end_to_end_ratio_to_floor']:.3f}"
        in (targets["floor_to_chain_end_to_end"]["note"])
    )
    assert len(hooks["end_to_end_ratio_to_floor_per_round"]) == result["config"]["rounds"]
    assert targets["store_round_trips_per_step"]["met"] is None
    for name in list(targets)[:4]:
        assert targets[name]["verdict"] in ("PASS", "MISS"), name
    assert result["breakdown"]["worker_us_per_step"]
    for key in ("redis_version", "python_version", "celery_version", "date"):
        assert result["machine"][key], key
    out = capsys.readouterr().out
    assert "x bare" in out
    assert "x chain" in out
    assert "Celery chain of 3 no-op tasks" in out
    assert "PipelineTask no-op step" in out
    assert "floor: 2 minimal writes per step" in out
