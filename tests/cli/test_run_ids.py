"""``RUN``: every command takes a run id or its start, as the demo prints short ids. The exact id
wins; a prefix one run has names it; several exit 2 naming them; none exits 3."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from mpstate import RedisPipelineStateStore
from mpstate.cli import cli, run_ids

from .support import RunCli, make_run

#: 32-hex run ids, like the demo's: two share their first three characters.
FIRST = "4f71d6a0c3e94b6f8a1d2e3f4a5b6c7d"
SECOND = "4f7e09b1d2c34e5f9a0b1c2d3e4f5a6b"
OTHER = "9c0e5a2b7d1f4c3e8b6a9d0c1e2f3a4b"

#: Every command that takes RUN, and the options it needs besides.
RUN_COMMANDS = [
    (("runs", "show"), ()),
    (("events",), ()),
    (("cancel",), ("--reason", "x")),
    (("runs", "rerun"), ()),
    (("runs", "resume"), ()),
    (("runs", "approve"), ()),
    (("runs", "reject"), ()),
]
Command = tuple[tuple[str, ...], tuple[str, ...]]


def command_id(command: Command) -> str:
    return " ".join(command[0])


def with_run(command: Command, run: str) -> list[str]:
    """The command's arguments with ``run`` as its RUN."""
    path, options = command
    return [*path, run, *options]


@pytest.fixture
def three_runs(store: RedisPipelineStateStore) -> None:
    now = datetime.now(UTC)
    make_run(store, FIRST, status="running", created_at=now - timedelta(minutes=3))
    make_run(store, SECOND, status="running", created_at=now - timedelta(minutes=2))
    make_run(store, OTHER, tenant_id="globex", created_at=now - timedelta(minutes=1))


@pytest.mark.usefixtures("three_runs")
def test_runs_show_takes_a_unique_prefix_and_shows_the_whole_id(run_cli: RunCli) -> None:
    result = run_cli("runs", "show", "4f71")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split() == ["run", FIRST]


@pytest.mark.usefixtures("three_runs")
def test_events_takes_a_unique_prefix(run_cli: RunCli) -> None:
    result = run_cli("events", "4f7e", json=True)

    assert result.exit_code == 0, result.output
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert [doc["kind"] for doc in documents] == ["run-created", "run-started"]
    assert {doc["runId"] for doc in documents} == {SECOND}


@pytest.mark.usefixtures("three_runs")
def test_cancel_takes_a_unique_prefix_and_cancels_only_that_run(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    result = run_cli("cancel", "9c0e", "--reason", "typed the short id")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"run {OTHER!r}: status cancelled")
    assert [store.require(r).status.value for r in (FIRST, SECOND, OTHER)] == [
        "running",
        "running",
        "cancelled",
    ]


@pytest.mark.usefixtures("three_runs")
@pytest.mark.parametrize("command", RUN_COMMANDS, ids=command_id)
def test_a_prefix_several_runs_share_exits_2_naming_them_and_changes_nothing(
    run_cli: RunCli, store: RedisPipelineStateStore, command: Command
) -> None:
    result = run_cli(*with_run(command, "4f7"))

    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: 2 runs have an id starting with '4f7' ({SECOND}, {FIRST}): give more of the id\n"
    )
    assert store.require(FIRST).version == store.require(SECOND).version == 2


@pytest.mark.usefixtures("three_runs")
@pytest.mark.parametrize("command", RUN_COMMANDS, ids=command_id)
def test_a_prefix_no_run_has_exits_3_as_an_unknown_run(run_cli: RunCli, command: Command) -> None:
    result = run_cli(*with_run(command, "4f70"))

    assert result.exit_code == 3, result.output
    assert result.stderr == "error: run '4f70' not found\n"


def test_an_exact_id_wins_over_the_longer_ids_it_starts(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    for run_id in ("r1", "r10", "r11"):
        make_run(store, run_id)

    result = run_cli("runs", "show", "r1")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split() == ["run", "r1"]


def test_an_ambiguous_prefix_names_five_runs_and_counts_the_rest(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    now = datetime.now(UTC)
    ids = [f"batch-{n}" for n in range(7)]
    for n, run_id in enumerate(ids):
        make_run(store, run_id, created_at=now + timedelta(seconds=n))

    result = run_cli("events", "batch")

    assert result.exit_code == 2
    newest_five = ", ".join(reversed(ids[2:]))
    assert result.stderr == (
        f"error: 7 runs have an id starting with 'batch' ({newest_five} and 2 more): "
        "give more of the id\n"
    )


@pytest.mark.usefixtures("three_runs")
def test_with_tenant_only_that_tenants_runs_are_searched(run_cli: RunCli) -> None:
    other_tenant = run_cli("runs", "show", "9c0e", "--tenant", "acme")
    own_tenant = run_cli("runs", "show", "9c0e", "--tenant", "globex")

    assert other_tenant.exit_code == 3
    assert other_tenant.stderr == "error: run '9c0e' not found\n"
    assert own_tenant.exit_code == 0, own_tenant.output
    assert OTHER in own_tenant.stdout


@pytest.mark.usefixtures("three_runs")
def test_a_prefix_is_looked_for_among_the_newest_runs_only(
    run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_ids, "PREFIX_SCAN", 2)  # the newest two: SECOND and OTHER

    assert run_cli("runs", "show", "4f7e").exit_code == 0
    assert run_cli("runs", "show", "4f7").exit_code == 0  # FIRST is beyond the newest two
    assert run_cli("runs", "show", "4f71").exit_code == 3
    assert run_cli("runs", "show", FIRST).exit_code == 0  # the whole id is always found


@pytest.mark.parametrize("command", RUN_COMMANDS, ids=command_id)
def test_the_help_of_every_run_command_says_how_far_a_prefix_is_looked_for(
    command: Command,
) -> None:
    result = CliRunner().invoke(cli, [*command[0], "--help"], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert "RUN is a run id, or its start" in result.stdout
    assert "newest 1,000 runs" in result.stdout
