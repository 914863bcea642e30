"""The ``mpstate`` group: its help documents the exit codes, options come from flags or the
environment, ``main`` works as the console script, and one ``add_command`` line extends it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mpstate import RedisPipelineStateStore, RunNotFoundError
from mpstate.cli import MISSING_EXTRA, cli, main
from mpstate.cli.context import CliContext

from .support import make_run, run_script, script_env


def test_help_lists_the_commands_options_and_exit_codes() -> None:
    result = CliRunner().invoke(cli, ["--help"])

    assert result.exit_code == 0
    for command in ("runs", "events", "cancel"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE)
    for option in ("--redis-url", "--prefix", "--flower-url", "--broker-url", "--json"):
        assert option in result.stdout
    for env in ("MPSTATE_REDIS_URL", "MPSTATE_PREFIX", "MPSTATE_FLOWER_URL", "MPSTATE_BROKER_URL"):
        assert env in result.stdout
    exit_codes = {
        "0": "ok",
        "1": "another mpstate error",
        "2": "usage",
        "3": "run not found",
        "4": "Redis unreachable",
        "124": "events --follow: --timeout passed",
        "130": "interrupted",
    }
    for code, meaning in exit_codes.items():
        assert re.search(rf"^\s+{code}\s+{meaning}", result.stdout, re.MULTILINE)


def test_help_never_connects_to_redis() -> None:
    result = CliRunner().invoke(cli, ["--redis-url", "not a url", "runs", "list", "--help"])

    assert result.exit_code == 0
    assert "--since WHEN" in result.stdout


def test_main_returns_the_exit_code_instead_of_exiting(
    redis_url: str, prefix: str, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1")

    assert main(["--redis-url", redis_url, "--prefix", prefix, "runs", "show", "r1"]) == 0
    assert main(["--redis-url", redis_url, "--prefix", prefix, "runs", "show", "r2"]) == 3
    assert main(["runs", "list", "--limit", "0"]) == 2


def test_the_store_and_flower_url_come_from_the_environment(
    redis_url: str, prefix: str, store: RedisPipelineStateStore
) -> None:
    make_run(store, "from-env")
    env = {"MPSTATE_REDIS_URL": redis_url, "MPSTATE_PREFIX": prefix}

    result = CliRunner().invoke(cli, ["runs", "list"], env=env)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[0] == "from-env"


def test_a_flag_wins_over_the_environment(
    redis_url: str, prefix: str, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1")
    env = {"MPSTATE_REDIS_URL": redis_url, "MPSTATE_PREFIX": "someone-else"}

    result = CliRunner().invoke(cli, ["--prefix", prefix, "runs", "show", "r1"], env=env)

    assert result.exit_code == 0, result.output


def test_the_console_script_runs_with_settings_from_the_environment(
    console_script: Path, redis_url: str, prefix: str, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", status="running")
    env = {**script_env(), "MPSTATE_REDIS_URL": redis_url, "MPSTATE_PREFIX": prefix}

    shown = subprocess.run(
        [str(console_script), "runs", "show", "r1"],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=30,
    )
    missing = run_script(console_script, redis_url, prefix, "runs", "show", "r2")

    assert shown.returncode == 0, shown.stderr
    assert re.search(r"status\s+running", shown.stdout)
    assert missing.returncode == 3
    assert missing.stderr == "error: run 'r2' not found\n"


@pytest.mark.parametrize("module", ["click", "rich"])
def test_without_the_cli_extra_main_says_what_to_install_and_exits_2(module: str) -> None:
    program = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "import mpstate.cli\n"
        "sys.exit(mpstate.cli.main(['runs', 'list']))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, check=False, text=True, timeout=30
    )

    assert result.returncode == 2
    assert result.stderr == MISSING_EXTRA + "\n"
    assert MISSING_EXTRA == "the mpstate CLI needs: pip install 'mpstate[cli]'"


@pytest.fixture
def extra_command() -> Iterator[click.Command]:
    """A command added the way `webhooks` will be, removed again afterwards."""

    @click.command("probe")
    @click.argument("run_id")
    @click.pass_obj
    def probe(obj: CliContext, run_id: str) -> None:
        click.echo(f"{obj.prefix} {obj.as_json}")
        raise RunNotFoundError(run_id)

    cli.add_command(probe)
    yield probe
    cli.commands.pop("probe")


def test_a_command_added_with_add_command_gets_the_context_and_the_error_mapping(
    extra_command: click.Command,
) -> None:
    result = CliRunner().invoke(cli, ["--prefix", "px", "--json", "probe", "r9"])

    assert result.stdout == "px True\n"
    assert result.exit_code == 3
    assert result.stderr == "error: run 'r9' not found\n"
