"""Tables fit the terminal: at 80 and 120 columns run ids and Celery task ids stay whole on one
line (copyable), the less important columns are left out first, and free text folds."""

from __future__ import annotations

import io
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text

from mpstate import RedisPipelineStateStore, StepError
from mpstate.cli.fitting import FOLD_MIN, Column, fit_table

from .support import RunCli, make_run, script_env

TENANT = "acme-corporation-europe-west"
PIPELINE = "product-photo-launch-campaign"


def hex_id() -> str:
    """A run id like the demo's: 32 hex digits."""
    return uuid.uuid4().hex


def steps() -> list[dict[str, Any]]:
    """Three steps of a graph, two with Celery task ids (uuids), one with an error."""
    return [
        {
            "stepId": "generate",
            "operation": "image.generate",
            "status": "completed",
            "attempts": 2,
            "costUsd": 0.04,
            "taskId": str(uuid.uuid4()),
        },
        {
            "stepId": "upscale",
            "operation": "image.upscale",
            "dependsOn": ["generate"],
            "status": "running",
            "attempts": 1,
            "taskId": str(uuid.uuid4()),
            "lastError": StepError(code="provider-timeout", message="took too long").model_dump(),
        },
        {"stepId": "video", "operation": "video.generate", "dependsOn": ["upscale"]},
    ]


@pytest.fixture
def demo_runs(store: RedisPipelineStateStore) -> list[str]:
    """Three running runs with realistic ids, a long tenant and pipeline; the newest last."""
    now = datetime.now(UTC)
    ids = [hex_id() for _ in range(3)]
    for n, run_id in enumerate(ids):
        make_run(
            store,
            run_id,
            tenant_id=TENANT,
            pipelineId=PIPELINE,
            steps=steps(),
            status="running",
            currentStepIndex=1,
            created_at=now - timedelta(minutes=10 - n),
        )
    return ids


def lines_with(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def header(output: str) -> list[str]:
    return output.splitlines()[0].split()


# -- runs list ---------------------------------------------------------------------------------


def test_runs_list_at_80_columns_keeps_every_run_id_whole_and_leaves_out_the_rest(
    run_cli: RunCli, demo_runs: list[str]
) -> None:
    result = run_cli("runs", "list", env={"COLUMNS": "80"})

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    for run_id in demo_runs:
        (row,) = lines_with(out, run_id)
        assert row.split()[:4] == [run_id, "running", "1/3", "upscale"]
    assert header(out)[:4] == ["run", "status", "step", "cost"]
    assert not {"pipeline", "tenant", "created", "updated"} & set(header(out))
    (note,) = lines_with(out, "left out at 80 columns:")
    assert all(name in note for name in ("pipeline", "tenant", "created", "updated"))
    assert PIPELINE not in out
    assert TENANT not in out


def test_runs_list_at_120_columns_shows_more_columns_and_still_whole_ids(
    run_cli: RunCli, demo_runs: list[str]
) -> None:
    result = run_cli("runs", "list", env={"COLUMNS": "120"})

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert max(len(line) for line in out.splitlines()) <= 120
    assert header(out) == ["run", "pipeline", "status", "step", "cost", "created"]
    for run_id in demo_runs:
        (row,) = lines_with(out, run_id)
        assert row.split()[:3] == [run_id, PIPELINE, "running"]
    (note,) = lines_with(out, "left out at 120 columns:")
    assert note == "left out at 120 columns: tenant, attempts, version, updated"


def test_runs_list_piped_without_columns_shows_every_column_and_no_note(
    run_cli: RunCli, demo_runs: list[str]
) -> None:
    out = run_cli("runs", "list").stdout

    assert header(out) == [
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
    ]
    assert "left out" not in out


def test_runs_list_in_the_console_script_at_80_columns_keeps_ids_whole(
    console_script: Path, redis_url: str, prefix: str, demo_runs: list[str]
) -> None:
    result = subprocess.run(
        [str(console_script), "--redis-url", redis_url, "--prefix", prefix, "runs", "list"],
        capture_output=True,
        check=False,
        text=True,
        env=script_env() | {"COLUMNS": "80"},
        timeout=30,
    )

    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert max(len(line) for line in rows) <= 80
    assert [row.split()[0] for row in rows[1:4]] == list(reversed(demo_runs))  # newest first


# -- runs show ---------------------------------------------------------------------------------


def test_runs_show_at_80_columns_keeps_the_run_and_task_ids_whole(
    run_cli: RunCli, store: RedisPipelineStateStore, demo_runs: list[str]
) -> None:
    run = store.require(demo_runs[0])

    result = run_cli("runs", "show", run.run_id, env={"COLUMNS": "80"})

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    assert out.splitlines()[0].split() == ["run", run.run_id]
    (steps_header,) = lines_with(out, "celery task")
    assert steps_header.split() == ["step", "status", "attempts", "cost", "celery", "task"]
    for step in run.steps[:2]:
        (row,) = [line for line in out.splitlines() if line.startswith(f"{step.step_id} ")]
        assert str(step.task_id) in row.split()
    # The errors column is left out, so the errors follow the table.
    assert "error of upscale: provider-timeout: took too long" in out
    (note,) = lines_with(out, "left out at 80 columns:")
    assert note == "left out at 80 columns: needs, operation, last error"


def test_runs_show_at_120_columns_has_room_for_the_errors_column(
    run_cli: RunCli, store: RedisPipelineStateStore, demo_runs: list[str]
) -> None:
    run = store.require(demo_runs[0])

    out = run_cli("runs", "show", run.run_id, env={"COLUMNS": "120"}).stdout

    assert max(len(line) for line in out.splitlines()) <= 120
    (steps_header,) = lines_with(out, "celery task")
    assert "last error" in steps_header
    (row,) = lines_with(out, str(run.steps[1].task_id))
    assert row.split()[0] == "upscale"
    assert row.rstrip().endswith("provider-timeout: took too long")
    assert "error of" not in out


def test_runs_show_with_a_flower_url_at_80_columns_leaves_out_the_links_first(
    run_cli: RunCli, store: RedisPipelineStateStore, demo_runs: list[str]
) -> None:
    run = store.require(demo_runs[0])

    out = run_cli(
        "--flower-url", "http://flower.test:5555", "runs", "show", run.run_id, env={"COLUMNS": "80"}
    ).stdout

    assert out.splitlines()[0].split() == ["run", run.run_id]
    assert lines_with(out, str(run.steps[0].task_id))
    assert "left out at 80 columns: needs, operation, last error, flower" in out


# -- fit_table ---------------------------------------------------------------------------------


def render(columns: list[Column], rows: list[list[str | Text]], width: int) -> tuple[str, ...]:
    """The fitted table as printed at ``width``, then the names of the columns left out."""
    fitted = fit_table(columns, rows, width)
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(fitted.table)
    return (console.export_text(), *fitted.dropped)


def test_columns_are_left_out_lowest_drop_first_and_come_back_when_they_fit() -> None:
    columns = [
        Column("id", "id"),
        Column("small", drop=1),
        Column("big", drop=2),
        Column("mid", drop=3),
    ]
    row: list[str | Text] = ["i" * 30, "s" * 5, "b" * 30, "m" * 10]

    text, *dropped = render(columns, [row], 50)

    # 81 cells wide: "small" goes (74), then "big" (42); "small" then fits again (49).
    assert dropped == ["big"]
    assert text.splitlines()[1].split() == ["i" * 30, "s" * 5, "m" * 10]


def test_a_keep_column_stays_while_folding_the_text_can_fit() -> None:
    columns = [Column("id", "id"), Column("note", "text", drop=1, keep=True)]
    long_note = "word " * 20

    text, *dropped = render(columns, [["i" * 40, long_note]], 40 + 2 + FOLD_MIN)

    assert dropped == []
    lines = text.splitlines()
    assert lines[1].startswith("i" * 40 + "  word")
    assert len(lines) > 2  # the note folded onto more lines


def test_ids_fold_only_when_the_terminal_is_narrower_than_the_ids() -> None:
    columns = [Column("id", "id"), Column("status")]

    text, *dropped = render(columns, [["x" * 50, "running"]], 40)

    assert dropped == []
    assert "…" not in text
    assert text.count("x") == 50  # folded, nothing cut
