"""Rendering: costs and times read well, user data is printed as written, nothing is cut off."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mpstate import RedisPipelineStateStore
from mpstate.cli.render import format_cost, format_time

from .support import RunCli, make_run


@pytest.mark.parametrize(
    ("cost", "text"),
    [
        (0, "$0.00"),
        (0.04, "$0.04"),
        (0.004, "$0.004"),
        (1234.5, "$1,234.50"),
        (0.1234567, "$0.123457"),
    ],
)
def test_costs_show_cents_at_least_and_no_trailing_zeros(cost: float, text: str) -> None:
    assert format_cost(cost) == text


def test_times_are_utc_to_the_second() -> None:
    assert format_time(datetime(2024, 5, 1, 12, 0, 7, 123000, tzinfo=UTC)) == "2024-05-01T12:00:07Z"
    assert format_time(None) == "-"


def test_markup_in_user_data_is_printed_as_written(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    steps = [{"stepId": "[bold]s1[/bold]", "operation": "op", "error": "[red]boom"}]
    make_run(store, "[link=x]r1", tenant_id="[i]t", steps=steps, status="cancelled")

    listed = run_cli("runs", "list").stdout
    shown = run_cli("runs", "show", "[link=x]r1").stdout
    cancelled = run_cli("cancel", "[link=x]r1", "--reason", "again").stdout

    assert "[link=x]r1" in listed
    assert "[i]t" in listed
    assert "[bold]s1[/bold]" in shown
    assert "[red]boom" in shown
    assert cancelled.startswith("run '[link=x]r1': status cancelled")


def test_long_ids_are_never_truncated_when_piped(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    run_id = "run-" + "x" * 120
    make_run(store, run_id)

    assert run_id in run_cli("runs", "list").stdout
    assert "…" not in run_cli("runs", "list").stdout
