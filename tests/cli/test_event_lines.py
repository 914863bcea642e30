"""Event lines: every kind shows what it records, one line each, whatever the text inside."""

from __future__ import annotations

import re

import pytest

from mpstate import (
    PipelineEvent,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunResumed,
    RunStarted,
    RunSuspended,
    StepCached,
    StepCompleted,
    StepFailed,
    StepGated,
    StepProgress,
    StepStarted,
    StepWaiting,
)
from mpstate.cli.event_lines import event_details, event_line, event_time
from mpstate.events import EVENT_TYPES

R = "r1"

#: One event of every kind, and the details its line must show.
CASES: list[tuple[PipelineEvent, list[str]]] = [
    (RunCreated(run_id=R, pipeline_def_hash="abc123"), ["def=abc123"]),
    (RunCreated(run_id=R, pipeline_def_hash=""), []),
    (RunStarted(run_id=R), []),
    (
        StepStarted(run_id=R, step_id="s", attempt=2, meta={"taskId": "t-1"}),
        ["attempt=2", "task=t-1"],
    ),
    (
        StepProgress(
            run_id=R, step_id="s", pct=42.5, eta_ms=1500, message="frame 3", cost_usd_accrued=0.01
        ),
        ["pct=42.5", "eta=1.5s", 'message="frame 3"', "cost=$0.01"],
    ),
    (StepProgress(run_id=R, step_id="s", pct=100), ["pct=100"]),
    (
        StepCached(run_id=R, step_id="s", cache_key="k 1", artifact_ids=["a", "b"]),
        ['cache_key="k 1"', "artifacts=a,b"],
    ),
    (
        StepCompleted(run_id=R, step_id="s", artifact_ids=[], cost_usd=0.5),
        ["cost=$0.50", "artifacts=-"],
    ),
    (
        StepFailed(run_id=R, step_id="s", code="timeout", retryable=True),
        ['code="timeout"', "retryable=true"],
    ),
    (
        StepGated(run_id=R, step_id="s", gate_type="quality", verdict="blurry"),
        ['gate="quality"', 'verdict="blurry"'],
    ),
    (
        StepWaiting(run_id=R, step_id="s", provider="veo", job_id="job 1"),
        ['provider="veo"', 'job="job 1"'],
    ),
    (RunSuspended(run_id=R, reason="webhook", resume_token="tok"), ["reason=webhook"]),
    (RunResumed(run_id=R, from_step_id="s"), ["from=s"]),
    (RunCompleted(run_id=R, total_cost_usd=1.25), ["total=$1.25"]),
    (
        RunFailed(run_id=R, code="gate-rejected", terminal_reason="too blurry"),
        ['code="gate-rejected"', 'reason="too blurry"'],
    ),
    (
        RunCancelled(run_id=R, reason="ops", meta={"taskId": "t-2", "redelivered": True}),
        ['reason="ops"', "task=t-2", "redelivered"],
    ),
]


def test_every_event_kind_has_a_case() -> None:
    kinds = {event.kind for event, _ in CASES}
    assert kinds == {cls.model_fields["kind"].default for cls in EVENT_TYPES}


@pytest.mark.parametrize(("event", "details"), CASES, ids=[e.kind for e, _ in CASES])
def test_each_kind_shows_its_details(event: PipelineEvent, details: list[str]) -> None:
    assert event_details(event) == details


def test_a_line_has_seq_time_kind_step_and_details() -> None:
    event = StepStarted(run_id=R, step_id="generate", attempt=1, at=1714564800123, seq=12)

    line = event_line(event).plain

    assert line == "  12  2024-05-01T12:00:00.123Z  step-started    generate  attempt=1"


def test_a_run_event_has_a_dash_for_its_step() -> None:
    assert re.search(r"run-started\s+-$", event_line(RunStarted(run_id=R, seq=2)).plain)


def test_free_text_with_newlines_and_quotes_stays_on_one_line() -> None:
    event = RunCancelled(run_id=R, reason='said "stop"\nthen left', seq=3)

    line = event_line(event).plain

    assert "\n" not in line
    assert line.endswith(r'reason="said \"stop\"\nthen left"')


def test_event_time_keeps_milliseconds_exactly() -> None:
    assert event_time(0) == "1970-01-01T00:00:00.000Z"
    assert event_time(1714564800999) == "2024-05-01T12:00:00.999Z"
