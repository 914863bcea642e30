"""Every failure is one ``error: ...`` line on stderr and a documented exit code: 1 other mpstate
errors, 2 usage and refused input (nothing changed), 3 run not found, 4 Redis unreachable."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from mpstate import PipelineRun, RedisPipelineStateStore
from mpstate.cli import cli
from mpstate.cli.exit_codes import CliError, redacted_url
from mpstate.testing import free_port

from .support import RunCli, make_run

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "show", "nope"],
        ["events", "nope"],
        ["events", "nope", "--follow", "--timeout", "5"],
        ["cancel", "nope", "--reason", "x"],
    ],
    ids=["runs show", "events", "events --follow", "cancel"],
)
def test_an_unknown_run_exits_3_with_one_line_naming_it(
    run_cli: RunCli, store: RedisPipelineStateStore, args: list[str]
) -> None:
    make_run(store, "r1")

    result = run_cli(*args)

    assert result.exit_code == 3
    assert result.stderr == "error: run 'nope' not found\n"
    assert result.stdout == ""


def test_errors_stay_text_on_stderr_with_json(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    result = run_cli("runs", "show", "nope", json=True)

    assert result.exit_code == 3
    assert result.stderr == "error: run 'nope' not found\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "list"],
        ["runs", "show", "r1"],
        ["events", "r1", "--follow"],
        ["cancel", "r1", "--reason", "x"],
    ],
    ids=["runs list", "runs show", "events --follow", "cancel"],
)
def test_an_unreachable_redis_exits_4_promptly_with_a_clear_message(args: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    started = time.monotonic()
    result = CliRunner().invoke(cli, ["--redis-url", url, *args])
    elapsed = time.monotonic() - started

    assert result.exit_code == 4, result.output
    assert result.stderr.startswith(f"error: cannot reach Redis at {url}: ")
    assert "Connection refused" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
    assert elapsed < 10


def test_the_unreachable_message_never_prints_the_redis_password() -> None:
    url = f"redis://admin:hunter2@127.0.0.1:{free_port()}/0"

    result = CliRunner().invoke(cli, ["--redis-url", url, "runs", "list"])

    assert result.exit_code == 4
    assert "hunter2" not in result.output
    assert "redis://admin:***@127.0.0.1:" in result.stderr


def test_redacted_url_masks_only_the_password() -> None:
    assert redacted_url("redis://:pw@host:6379/1") == "redis://:***@host:6379/1"
    assert redacted_url("rediss://user:p%40ss@host/0") == "rediss://user:***@host/0"
    assert redacted_url("redis://host:6379/0") == "redis://host:6379/0"


BAD_INPUT = {
    "empty run id (show)": (["runs", "show", ""], "run_id must be a non-empty string"),
    "empty run id (events)": (["events", ""], "run_id must be a non-empty string"),
    "empty run id (cancel)": (["cancel", "", "--reason", "x"], "run_id must be a non-empty string"),
    "unreadable --since": (
        ["runs", "list", "--since", "yesterdayish"],
        "'yesterdayish' is neither",
    ),
    "--limit 0": (["runs", "list", "--limit", "0"], "'--limit': 0 is not in the range"),
    "--limit above a page": (["runs", "list", "--limit", "10001"], "'--limit'"),
    "negative --offset": (["runs", "list", "--offset", "-1"], "'--offset'"),
    "unknown --status": (["runs", "list", "--status", "done"], "'--status'"),
    "--since after --until": (
        ["runs", "list", "--since", "1h", "--until", "2h"],
        "--since is after --until",
    ),
    "negative events --since": (["events", "r1", "--since", "-1"], "'--since'"),
    "empty --tenant": (["cancel", "r1", "--reason", "x", "--tenant", ""], "tenant_id must be"),
    "blank --reason": (["cancel", "r1", "--reason", "  "], "'--reason': must not be empty"),
    "missing --reason": (["cancel", "r1"], "Missing option '--reason'"),
    "unknown option": (["runs", "list", "--colour"], "--colour"),
}


def _run_state(store: RedisPipelineStateStore) -> tuple[PipelineRun, list[str]]:
    return store.require("r1", include_events=False), [e.kind for e in store.list_events("r1")]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    run_cli: RunCli, store: RedisPipelineStateStore, args: list[str], message: str
) -> None:
    make_run(store, "r1", status="running")
    before = _run_state(store)

    result = run_cli(*args)

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    assert _run_state(store) == before


def test_a_usage_error_points_at_the_commands_help(run_cli: RunCli) -> None:
    result = run_cli("runs", "list", "--limit", "0")

    assert result.stderr.rstrip().endswith("(see 'mpstate runs list --help')")


def test_a_malformed_redis_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["--redis-url", "http://x:secret@host", "runs", "list"])

    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid --redis-url http://x:***@host: ")
    assert "secret" not in result.stderr


def test_a_prefix_the_store_refuses_is_a_usage_error(redis_url: str) -> None:
    result = CliRunner().invoke(cli, ["--redis-url", redis_url, "--prefix", "{x}", "runs", "list"])

    assert result.exit_code == 2
    assert result.stderr.startswith("error: prefix cannot contain")


def test_cli_error_carries_its_exit_code() -> None:
    assert CliError("x").exit_code == 1
    assert CliError("x", 4).exit_code == 4
    assert CliError.exit_code == 1  # the class default is untouched
