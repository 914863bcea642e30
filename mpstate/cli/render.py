"""How runs look on a terminal (rich tables) and to scripts (JSON documents).

User data (ids, messages, errors) always goes into ``Text`` objects, never into markup, so a
step error containing ``[red]`` prints as written. Tables fit the terminal (``fitting``): ids stay
whole, less important columns give way, then free text folds; nothing is ever cut off with an
ellipsis, and output to a pipe is laid out wide instead of at 80 columns.
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
from mpstate.cli.fitting import Cell, Column, FittedTable, fit_table
from mpstate.cli.flower import run_search_api_link, run_search_link, task_link
from mpstate.graph import active_steps, dependencies, is_explicit
from mpstate.models import DONE_STEP_STATUSES

__all__ = [
    "STATUS_STYLES",
    "format_cost",
    "format_time",
    "left_out",
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


#: ``runs list``: an id first; at 80 columns the times, counters, tenant and pipeline give way.
_RUN_COLUMNS = (
    Column("run", "id"),
    Column("pipeline", drop=6),
    Column("tenant", drop=5),
    Column("status"),
    Column("step", "text", drop=8, keep=True),
    Column("cost", drop=7, keep=True, justify="right"),
    Column("attempts", drop=3, justify="right"),
    Column("version", drop=2, justify="right"),
    Column("created", drop=4),
    Column("updated", drop=1),
)


def runs_table(runs: Sequence[PipelineRun], width: int | None = None) -> FittedTable:
    """One row per run: where it is, what it cost, how often its steps were tried; fitted to
    ``width`` (``None``: as wide as it takes)."""
    rows: list[list[Cell]] = [
        [
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
        ]
        for run in runs
    ]
    return fit_table(_RUN_COLUMNS, rows, width)


def left_out(fitted: FittedTable, width: int | None) -> Text | None:
    """The dim line naming the columns left out to fit ``width``, if any were."""
    if not fitted.dropped:
        return None
    return Text(f"left out at {width} columns: {', '.join(fitted.dropped)}", style="dim")


#: For a suspended run: what it waits for, and how an operator answers it.
_ANSWERS = {
    SuspendReason.GATE: "a verdict: mpstate runs approve RUN, or mpstate runs reject RUN",
    SuspendReason.BUDGET: "its budget: mpstate runs resume RUN --raise-budget USD",
    SuspendReason.WEBHOOK: "a provider: its callback (or a poll) resumes it",
}


#: Width of the header's first column (its longest label), and the space after it.
_LABEL_WIDTH = len("external jobs") + 2


def _header(run: PipelineRun, flower_url: str | None, width: int | None) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    # At least as wide as the ids, so they stay whole (unless the terminal is narrower still).
    ids = max(len(run.run_id), len(run.rerun_of or ""))
    fits = width is None or _LABEL_WIDTH + ids <= width
    grid.add_column(overflow="fold", min_width=ids if fits else None)
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


#: ``runs show``'s steps: the step, its status and its Celery task stay; the rest gives way.
_STEP_COLUMNS = (
    Column("step", "id"),
    Column("needs", "text", drop=2),
    Column("operation", drop=3),
    Column("status"),
    Column("attempts", drop=5, keep=True, justify="right"),
    Column("cost", drop=6, keep=True, justify="right"),
    Column("celery task", "id"),
    Column("last error", "text", drop=4),
)
_FLOWER_COLUMN = Column("flower", "text", drop=1)


def _steps_table(run: PipelineRun, flower_url: str | None, width: int | None) -> FittedTable:
    columns = [*_STEP_COLUMNS, *([_FLOWER_COLUMN] if flower_url else [])]
    needs = dependencies(run.steps)
    rows: list[list[Cell]] = []
    for step in run.steps:
        cells: list[Cell] = [
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
        rows.append(cells)
    return fit_table(columns, rows, width)


def run_detail(
    run: PipelineRun, flower_url: str | None, width: int | None = None
) -> list[Table | Text]:
    """``runs show``: the run's header, then its steps, fitted to ``width`` (``None``: as wide
    as it takes). When the steps' errors do not fit in the table, they follow it, one a line."""
    header = _header(run, flower_url, width)
    if not run.steps:
        return [header, Text("\nno steps", style="dim")]
    steps = _steps_table(run, flower_url, width)
    parts: list[Table | Text] = [header, Text(""), steps.table]
    if "last error" in steps.dropped:
        errors = [(step.step_id, _step_error(step)) for step in run.steps]
        parts.extend(
            Text.assemble("error of ", (step_id, "bold"), ": ", error)
            for step_id, error in errors
            if error.plain
        )
    note = left_out(steps, width)
    if note is not None:
        parts.append(note)
    return parts
