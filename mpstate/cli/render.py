"""How runs look on a terminal (rich tables) and to scripts (JSON documents).

User data (ids, messages, errors) always goes into ``Text`` objects, never into markup, so a
step error containing ``[red]`` prints as written. Nothing is ever cut off with an ellipsis:
long cells fold, and output to a pipe is laid out wide instead of at 80 columns.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mpstate import PipelineRun, StepState, StepStatus, SuspendReason
from mpstate.budget import max_usd
from mpstate.cli.flower import run_search_api_link, run_search_link, task_link
from mpstate.graph import active_steps, dependencies, is_explicit
from mpstate.models import DONE_STEP_STATUSES

__all__ = [
    "STATUS_STYLES",
    "format_cost",
    "format_time",
    "make_console",
    "print_json",
    "run_detail",
    "run_document",
    "runs_table",
]

#: Width used when stdout is not a terminal (and COLUMNS is unset): wide enough for a table.
PIPE_WIDTH = 240

#: Colour of each run and step status (rich drops colour when stdout is not a terminal).
STATUS_STYLES = {
    "pending": "dim",
    "running": "cyan",
    "suspended": "yellow",
    "waiting": "yellow",
    "held": "magenta",
    "completed": "green",
    "cached": "green",
    "failed": "red",
    "gated": "red",
    "cancelled": "magenta",
}


def make_console() -> Console:
    """A console on stdout that prints text as written: no markup, no highlighting."""
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(markup=False, highlight=False, width=PIPE_WIDTH if piped else None)


def print_json(value: Any) -> None:
    """One JSON document on one line, flushed (a follower reads it at once)."""
    click.echo(json.dumps(value))


def run_document(run: PipelineRun) -> dict[str, Any]:
    """The run as JSON (camelCase, ISO timestamps), without its log: read that with ``events``."""
    return run.model_dump(mode="json", by_alias=True, exclude={"events"})


def format_time(value: datetime | None) -> str:
    """UTC to the second; the store keeps milliseconds, which no operator reads."""
    if value is None:
        return "-"
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def format_cost(value: float) -> str:
    """Dollars with at least cents and without trailing zeros: $0.04, $0.004, $1,234.50."""
    whole, _, fraction = f"{value:,.6f}".rstrip("0").partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def _status(value: str) -> Text:
    return Text(value, style=STATUS_STYLES.get(value, ""))


def _step_position(run: PipelineRun) -> str:
    """Where the run is: ``2/3 upscale`` for a linear run; for a graph, the steps done and every
    step in flight (running, queued or waiting), ``1/4 image,voice``."""
    total = len(run.steps)
    if total == 0:
        return "-"
    if run.current_step_index >= total:
        return f"{total}/{total}"
    if not is_explicit(run.steps):
        return f"{run.current_step_index + 1}/{total} {run.steps[run.current_step_index].step_id}"
    done = sum(step.status in DONE_STEP_STATUSES for step in run.steps)
    waiting = [step for step in run.steps if step.status is StepStatus.WAITING]
    in_flight = {step.step_id for step in [*active_steps(run.steps), *waiting]}
    names = ",".join(step.step_id for step in run.steps if step.step_id in in_flight)
    return f"{done}/{total} {names}".rstrip()


#: Columns of free text that may fold on a narrow terminal; the others keep their width.
_FREE_TEXT = frozenset(
    {"run", "pipeline", "tenant", "step", "needs", "operation", "last error", "flower"}
)

_RUN_COLUMNS = (
    "run",
    "pipeline",
    "tenant",
    "status",
    "step",
    "cost",
    "attempts",
    "version",
    "created",
    "updated",
)


def runs_table(runs: Sequence[PipelineRun]) -> Table:
    """One row per run: where it is, what it cost, how often its steps were tried."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in _RUN_COLUMNS:
        right = name in ("cost", "attempts", "version")
        table.add_column(
            name,
            justify="right" if right else "left",
            no_wrap=name not in _FREE_TEXT,
            overflow="fold",
        )
    for run in runs:
        table.add_row(
            Text(run.run_id),
            Text(run.pipeline_id),
            Text(run.tenant_id or "-"),
            _status(run.status.value),
            Text(_step_position(run)),
            format_cost(run.cost_usd),
            str(sum(step.attempts for step in run.steps)),
            str(run.version),
            format_time(run.created_at),
            format_time(run.updated_at),
        )
    return table


#: For a suspended run: what it waits for, and how an operator answers it.
_ANSWERS = {
    SuspendReason.GATE: "a verdict: mpstate runs approve RUN, or mpstate runs reject RUN",
    SuspendReason.BUDGET: "its budget: mpstate runs resume RUN --raise-budget USD",
    SuspendReason.WEBHOOK: "a provider: its callback (or a poll) resumes it",
}


def _header(run: PipelineRun, flower_url: str | None) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, Text | str]] = [
        ("run", Text(run.run_id)),
        ("status", _status(run.status.value)),
        ("pipeline", Text(run.pipeline_id)),
        ("tenant", Text(run.tenant_id or "-")),
        ("step", Text(_step_position(run))),
        ("cost", format_cost(run.cost_usd)),
        ("version", str(run.version)),
        ("created", format_time(run.created_at)),
        ("updated", format_time(run.updated_at)),
        ("started", format_time(run.started_at)),
        ("completed", format_time(run.completed_at)),
    ]
    if run.error:
        rows.append(("error", Text(run.error, style="red")))
    limit = max_usd(run.budget)
    if limit is not None:
        rows.append(("budget", Text(f"{format_cost(run.cost_usd)} of {format_cost(limit)}")))
    if run.suspend_reason is not None:
        rows.append(("waits for", Text(_ANSWERS[run.suspend_reason])))
    if run.rerun_of:
        rows.append(("re-run of", Text(run.rerun_of)))
    if run.reruns:
        rows.append(("re-runs", Text(", ".join(run.reruns))))
    jobs = sorted(run.external_jobs())
    if jobs:
        rows.append(("external jobs", Text(", ".join(f"{p}:{j}" for p, j in jobs))))
    if flower_url:
        rows.append(("flower", Text(run_search_link(flower_url, run.run_id))))
        rows.append(("flower api", Text(run_search_api_link(flower_url, run.run_id))))
    for name, value in rows:
        grid.add_row(name, value)
    return grid


def _step_error(step: StepState) -> Text:
    if step.last_error is not None:
        message = f": {step.last_error.message}" if step.last_error.message else ""
        return Text(f"{step.last_error.code}{message}", style="red")
    return Text(step.error or "", style="red")


def _step_status(step: StepState) -> Text:
    """The step's status; a step waiting for a verdict says for which gate."""
    text = _status(step.status.value)
    if step.approval is not None:
        text.append(f" ({step.approval.gate_type})")
    return text


def _steps_table(run: PipelineRun, flower_url: str | None) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    names = [
        "step",
        "needs",
        "operation",
        "status",
        "attempts",
        "cost",
        "celery task",
        "last error",
    ]
    if flower_url:
        names.append("flower")
    for name in names:
        right = name in ("attempts", "cost")
        table.add_column(
            name,
            justify="right" if right else "left",
            no_wrap=name not in _FREE_TEXT,
            overflow="fold",
        )
    needs = dependencies(run.steps)
    for step in run.steps:
        cells: list[Text | str] = [
            Text(step.step_id),
            Text(",".join(needs[step.step_id]) or "-"),
            Text(step.operation),
            _step_status(step),
            str(step.attempts),
            format_cost(step.cost_usd),
            Text(step.task_id or "-"),
            _step_error(step),
        ]
        if flower_url:
            cells.append(Text(task_link(flower_url, step.task_id) if step.task_id else "-"))
        table.add_row(*cells)
    return table


def run_detail(run: PipelineRun, flower_url: str | None) -> list[Table | Text]:
    """``runs show``: the run's header, then its steps."""
    if not run.steps:
        return [_header(run, flower_url), Text("\nno steps", style="dim")]
    return [_header(run, flower_url), Text(""), _steps_table(run, flower_url)]
