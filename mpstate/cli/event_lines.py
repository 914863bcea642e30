"""One line per event: seq, time, kind, step, then what that kind of event says.

A line, not a table row, so ``events --follow`` can print each event the moment it arrives and
``grep``/``awk`` can read the output.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import assert_never

from rich.text import Text

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
from mpstate.cli.render import format_cost

__all__ = ["event_details", "event_line", "event_time"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_KIND_STYLES = {
    "step-completed": "green",
    "step-cached": "green",
    "run-completed": "bold green",
    "step-failed": "red",
    "step-gated": "yellow",
    "step-waiting": "yellow",
    "run-failed": "bold red",
    "run-suspended": "yellow",
    "run-cancelled": "bold magenta",
}


def event_time(at_ms: int) -> str:
    """An event's ``at`` (epoch milliseconds) as UTC ISO-8601, milliseconds kept: events of one
    step are often less than a second apart."""
    moment = _EPOCH + timedelta(milliseconds=at_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _quoted(value: str) -> str:
    # JSON string syntax: spaces, quotes and newlines in free text cannot break the line apart.
    return json.dumps(value, ensure_ascii=False)


def _artifacts(ids: list[str]) -> str:
    return "artifacts=" + (",".join(ids) if ids else "-")


def event_details(event: PipelineEvent, *, with_meta: bool = True) -> list[str]:
    """``key=value`` words for what this kind of event records (beyond run, step and time);
    ``with_meta`` adds from the event's ``meta`` the Celery task id, redelivery, and who
    answered a suspension (``by``, ``note``, a gate that timed out)."""
    details: list[str]
    match event:
        case RunCreated():
            details = [f"def={event.pipeline_def_hash}"] if event.pipeline_def_hash else []
        case RunStarted():
            details = []
        case StepStarted():
            details = [f"attempt={event.attempt}"]
        case StepProgress():
            details = [f"pct={event.pct:g}"]
            if event.eta_ms is not None:
                details.append(f"eta={event.eta_ms / 1000:g}s")
            if event.message is not None:
                details.append(f"message={_quoted(event.message)}")
            if event.cost_usd_accrued is not None:
                details.append(f"cost={format_cost(event.cost_usd_accrued)}")
        case StepCached():
            details = [f"cache_key={_quoted(event.cache_key)}", _artifacts(event.artifact_ids)]
        case StepCompleted():
            details = [f"cost={format_cost(event.cost_usd)}", _artifacts(event.artifact_ids)]
        case StepFailed():
            details = [f"code={_quoted(event.code)}", f"retryable={str(event.retryable).lower()}"]
        case StepGated():
            details = [f"gate={_quoted(event.gate_type)}", f"verdict={_quoted(event.verdict)}"]
        case StepWaiting():
            details = [f"provider={_quoted(event.provider)}", f"job={_quoted(event.job_id)}"]
        case RunSuspended():
            details = [f"reason={event.reason}"]
        case RunResumed():
            details = [f"from={event.from_step_id}"]
        case RunCompleted():
            details = [f"total={format_cost(event.total_cost_usd)}"]
        case RunFailed():
            details = [f"code={_quoted(event.code)}", f"reason={_quoted(event.terminal_reason)}"]
        case RunCancelled():
            details = [f"reason={_quoted(event.reason)}"]
        case _:  # a new kind without a case is a type error here, not an UnboundLocalError
            assert_never(event)
    if not with_meta:
        return details
    task_id = (event.meta or {}).get("taskId")
    if task_id:
        details.append(f"task={task_id}")
    if (event.meta or {}).get("redelivered"):
        details.append("redelivered")
    # Who answered a suspension (a verdict, a resume) and why.
    for key in ("by", "note"):
        value = (event.meta or {}).get(key)
        if isinstance(value, str):
            details.append(f"{key}={_quoted(value)}")
    if (event.meta or {}).get("timedOut"):
        details.append("timed-out")
    return details


def event_line(event: PipelineEvent) -> Text:
    """The event as one line of text, its kind coloured on a terminal."""
    step_id = getattr(event, "step_id", None) or "-"
    line = Text(f"{event.seq or 0:>4}  {event_time(event.at)}  ")
    line.append(f"{event.kind:<14}", style=_KIND_STYLES.get(event.kind, ""))
    line.append(f"  {step_id}")
    details = event_details(event)
    if details:
        line.append("  " + " ".join(details))
    return line
