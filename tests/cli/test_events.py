"""``mpstate events``: a run's log as lines or JSON lines, from a seq or a time, and followed live
(exit 0 at the run's end, 124 when --timeout passes first)."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pytest

from mpstate import (
    RedisPipelineStateStore,
    RunCompleted,
    RunStarted,
    StepCompleted,
    StepProgress,
    StepStarted,
)

from .support import RunCli, make_run, script_env

pytestmark = pytest.mark.timeout(60)


def seqs(output: str) -> list[int]:
    return [int(line.split()[0]) for line in output.splitlines() if line.strip()]


def started_run(store: RedisPipelineStateStore, run_id: str = "r1") -> None:
    """A running run with events 1-4: created, started, step-started, step-progress."""
    make_run(store, run_id, status="running")
    started_run_tail(store, run_id)


def started_run_tail(store: RedisPipelineStateStore, run_id: str = "r1") -> None:
    """Events 3-4 of ``started_run``: step-started, step-progress."""
    store.append_event(
        run_id, StepStarted(run_id=run_id, step_id="generate", attempt=0, meta={"taskId": "t-9"})
    )
    store.append_event(
        run_id,
        StepProgress(run_id=run_id, step_id="generate", pct=40, message="rendering frame 3"),
    )


def test_events_prints_one_line_per_event_with_its_details(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    started_run(store)

    result = run_cli("events", "r1")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert seqs(result.stdout) == [1, 2, 3, 4]
    assert re.fullmatch(r"\s*1  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  run-created\s+-", lines[0])
    assert re.search(r"step-started\s+generate  attempt=0 task=t-9$", lines[2])
    assert lines[3].endswith('generate  pct=40 message="rendering frame 3"')


def test_events_since_skips_the_events_already_seen(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    started_run(store)

    assert seqs(run_cli("events", "r1", "--since", "2").stdout) == [3, 4]
    assert run_cli("events", "r1", "--since", "4").stdout == ""


def test_events_since_a_duration_skips_the_events_recorded_before_it(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="running")  # 1 run-created, 2 run-started: now
    three_hours_ago = int(time.time() * 1000) - 3 * 3600 * 1000
    store.append_event(
        "r1", StepProgress(run_id="r1", step_id="generate", pct=10, at=three_hours_ago)
    )

    result = run_cli("events", "r1", "--since", "2h")

    assert result.exit_code == 0, result.output
    assert seqs(result.stdout) == [1, 2]
    assert seqs(run_cli("events", "r1", "--since", "4h").stdout) == [1, 2, 3]


def test_events_since_an_iso_time_keeps_the_events_at_or_after_it(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="running")
    time.sleep(0.05)  # events 3 and 4 are a few milliseconds younger than 1 and 2
    started_run_tail(store)
    third = store.list_events("r1")[2]
    at = datetime.fromtimestamp(third.at / 1000, UTC).isoformat()

    result = run_cli("events", "r1", "--since", at)
    in_the_future = run_cli("events", "r1", "--since", "2999-01-01T00:00:00Z")

    assert result.exit_code == 0, result.output
    assert seqs(result.stdout) == [3, 4]
    assert in_the_future.exit_code == 0
    assert in_the_future.stdout == ""


def test_events_follow_since_a_time_prints_only_the_newer_events_of_an_ended_run(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="completed")

    result = run_cli("events", "r1", "--follow", "--timeout", "5", "--since", "2999-01-01")

    assert result.exit_code == 0, result.output  # the run ended: not a timeout
    assert result.stdout == ""


def test_events_since_refuses_a_negative_seq_and_an_unreadable_time(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    started_run(store)

    for since in ("-1", "yesterdayish"):
        result = run_cli("events", "r1", "--since", since)

        assert result.exit_code == 2
        assert result.stderr.startswith("error: Invalid value for '--since': ")
        assert len(result.stderr.splitlines()) == 1
        assert "Traceback" not in result.output


def test_events_json_prints_one_event_document_per_line(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    started_run(store)

    result = run_cli("events", "r1", "--since", "1", json=True)

    assert result.exit_code == 0, result.output
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [
        event.model_dump(mode="json", by_alias=True)
        for event in store.list_events("r1", since_seq=1)
    ]
    assert documents == expected
    assert [d["kind"] for d in documents] == ["run-started", "step-started", "step-progress"]
    assert documents[1]["stepId"] == "generate"


def test_events_of_another_tenants_run_are_not_found(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    started_run(store)

    result = run_cli("events", "r1", "--tenant", "globex")

    assert result.exit_code == 3
    assert result.stdout == ""


def test_events_follow_of_a_finished_run_replays_the_log_and_exits(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="completed")

    started = time.monotonic()
    result = run_cli("events", "r1", "--follow")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].split()[2] == "run-completed"
    assert time.monotonic() - started < 5


def test_events_follow_timeout_ends_a_quiet_follow(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    started_run(store)

    started = time.monotonic()
    result = run_cli("events", "r1", "--follow", "--timeout", "0.5", "--since", "3")
    elapsed = time.monotonic() - started

    assert result.exit_code == 124, result.output
    assert seqs(result.stdout) == [4]
    assert result.stderr == "error: run 'r1' had not ended when --timeout 0.5s passed\n"
    assert "Traceback" not in result.output
    assert 0.5 <= elapsed < 5


def test_events_follow_reaching_the_end_within_the_timeout_exits_0(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="completed")

    result = run_cli("events", "r1", "--follow", "--timeout", "5")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].split()[2] == "run-completed"
    assert result.stderr == ""


def test_events_follow_timeout_0_still_tells_an_ended_run_from_a_live_one(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "done", status="completed")
    make_run(store, "live", status="running")

    assert run_cli("events", "done", "--follow", "--timeout", "0").exit_code == 0
    assert run_cli("events", "live", "--follow", "--timeout", "0").exit_code == 124


def test_events_timeout_without_follow_is_a_usage_error(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    started_run(store)

    result = run_cli("events", "r1", "--timeout", "1")

    assert result.exit_code == 2
    assert result.stderr.startswith("error: Invalid value for '--timeout': only applies with")


def _lines_of(stream: IO[str]) -> queue.Queue[str | None]:
    """The stream's lines as they arrive (None at its end), read by a thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _follow(console_script: Path, redis_url: str, prefix: str, *args: str) -> subprocess.Popen[str]:
    # An ignored signal stays ignored across exec, and a pytest-xdist worker runs with SIGINT
    # ignored (its controller handles Ctrl-C): handled while spawning, it is the default in the
    # follower, as in a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [str(console_script), "--redis-url", redis_url, "--prefix", prefix, "events", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=script_env(),
        )
    finally:
        if previous is not None:  # None: not set from Python, nothing to restore
            signal.signal(signal.SIGINT, previous)


def test_events_follow_in_the_console_script_prints_new_events_live_and_ends_with_the_run(
    console_script: Path, redis_url: str, prefix: str, store: RedisPipelineStateStore
) -> None:
    started_run(store)
    follower = _follow(console_script, redis_url, prefix, "r1", "--follow", "--since", "2")
    try:
        lines = _lines_of(follower.stdout)  # type: ignore[arg-type]
        replayed = [lines.get(timeout=20), lines.get(timeout=10)]
        assert [line.split()[0] for line in replayed if line] == ["3", "4"]

        # Appended while the follower waits: each must arrive before the next is written.
        store.append_event("r1", StepProgress(run_id="r1", step_id="generate", pct=90))
        late_progress = lines.get(timeout=10)
        store.append_event(
            "r1",
            StepCompleted(run_id="r1", step_id="generate", artifact_ids=["img-1"], cost_usd=0.04),
        )
        late_completed = lines.get(timeout=10)
        store.append_event("r1", RunCompleted(run_id="r1", total_cost_usd=0.04))
        late_end = lines.get(timeout=10)

        assert late_progress is not None and re.match(
            r"\s*5 .* step-progress .*pct=90", late_progress
        )
        assert late_completed is not None and re.match(
            r"\s*6 .* step-completed\s+generate  cost=\$0\.04 artifacts=img-1", late_completed
        )
        assert late_end is not None and re.match(r"\s*7 .* run-completed .*total=\$0\.04", late_end)
        assert follower.wait(timeout=10) == 0  # ended on its own after the terminal event
        assert lines.get(timeout=5) is None
        assert follower.stderr is not None and follower.stderr.read() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_events_follow_interrupted_by_ctrl_c_exits_130_without_a_traceback(
    console_script: Path, redis_url: str, prefix: str, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1")
    store.append_event("r1", RunStarted(run_id="r1"))
    follower = _follow(console_script, redis_url, prefix, "r1", "--follow")
    try:
        lines = _lines_of(follower.stdout)  # type: ignore[arg-type]
        assert [lines.get(timeout=20), lines.get(timeout=10)] != [None, None]  # replay printed

        follower.send_signal(signal.SIGINT)

        assert follower.wait(timeout=10) == 130
        assert follower.stderr is not None and follower.stderr.read().strip() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
