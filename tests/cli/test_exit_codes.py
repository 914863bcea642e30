"""Every failure is one ``error: ...`` line on stderr and a documented exit code: 1 other mpstate
errors, 2 usage and refused input (nothing changed: also a malformed --redis-url, a database the
server does not have, a bad --app), 3 run not found, 4 Redis unreachable (also: what answers at
the URL is not Redis)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mpstate import PipelineRun, RedisPipelineStateStore
from mpstate.cli import cli
from mpstate.cli.exit_codes import CliError, database_of, redacted_url
from mpstate.testing._servers import free_port

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


def assert_one_line(result: Result, code: int) -> None:
    """Exit ``code``, one ``error:`` line on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize(
    "url", ["http://localhost:6379/0", "foo://x", "redis//127.0.0.1:6379", "localhost:6379"]
)
def test_a_redis_url_with_a_wrong_scheme_exits_2(url: str) -> None:
    result = CliRunner().invoke(cli, ["--redis-url", url, "runs", "list"])

    assert_one_line(result, 2)
    assert result.stderr.startswith(f"error: invalid --redis-url {url}: ")
    assert "redis://" in result.stderr  # the schemes it takes


@pytest.mark.parametrize("db", ["dev", "-1", "1.5"])
def test_a_database_that_is_not_a_number_exits_2_instead_of_using_database_0(
    redis_url: str, db: str
) -> None:
    url = f"{redis_url.rsplit('/', 1)[0]}/{db}"

    result = CliRunner().invoke(cli, ["--redis-url", url, "runs", "list"])

    assert_one_line(result, 2)
    assert result.stderr.startswith(f"error: invalid --redis-url {url}: the database must be")
    assert repr(db) in result.stderr


def test_a_database_the_server_does_not_have_exits_2_naming_it(redis_url: str) -> None:
    url = f"{redis_url.rsplit('/', 1)[0]}/99"  # a default server has 16

    for args in (["runs", "list"], ["events", "r1", "--follow"], ["cancel", "r1", "--reason", "x"]):
        result = CliRunner().invoke(cli, ["--redis-url", url, *args])

        assert_one_line(result, 2)
        assert result.stderr.startswith(f"error: Redis at {url} has no database 99 (")


@pytest.fixture
def not_redis() -> Iterator[str]:
    """A redis:// URL at a port where an HTTP server answers every request with a 400."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"redis://:hunter2@127.0.0.1:{port}/0"
    listener.close()
    thread.join(timeout=5)


def test_a_server_that_is_not_redis_exits_4_as_unreachable(not_redis: str) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["--redis-url", not_redis, "runs", "list"])

    assert_one_line(result, 4)
    assert result.stderr.startswith(
        f"error: cannot reach Redis at {redacted_url(not_redis)}: the server there does not "
        "speak the Redis protocol ("
    )
    assert "hunter2" not in result.output
    assert time.monotonic() - started < 10


@pytest.fixture
def app_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importable modules: ``broken_app`` fails on import, ``plain_module`` has no Celery app."""
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('no config here')\n")
    (tmp_path / "plain_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))


BAD_APPS = {
    "no such module": ("mpstate_no_such_module", "cannot load --app 'mpstate_no_such_module': "),
    "no such attribute": ("plain_module:app", "module 'plain_module' has no attribute 'app'"),
    "no app in the module": ("plain_module", "no Celery app in it"),
    "not a Celery app": (
        "plain_module:VALUE",
        "'plain_module:VALUE' is not a Celery app (type int)",
    ),
    "a module, not an app": ("os:path", "--app 'os:path' is not a Celery app (type module)"),
    "the module fails on import": ("broken_app", "RuntimeError: no config here"),
}


@pytest.mark.usefixtures("app_modules")
@pytest.mark.parametrize(("app", "message"), BAD_APPS.values(), ids=BAD_APPS.keys())
@pytest.mark.parametrize(
    "args",
    [
        ["reconcile", "--stale-after", "10m"],
        ["runs", "rerun", "r1"],
        ["webhooks", "serve", "--secrets", "fal=whsec_x"],
    ],
    ids=["reconcile", "runs rerun", "webhooks serve"],
)
def test_a_bad_app_exits_2_with_one_line(
    run_cli: RunCli, store: RedisPipelineStateStore, args: list[str], app: str, message: str
) -> None:
    make_run(store, "r1", status="cancelled")

    result = run_cli(*args, "--app", app)

    assert_one_line(result, 2)
    assert message in result.stderr


def test_database_of_reads_the_path_or_the_db_query() -> None:
    assert database_of("redis://host:6379/3") == "3"
    assert database_of("redis://host:6379") == "0"
    assert database_of("redis://host/1?db=5") == "5"
    assert database_of("unix:///run/redis.sock") == "0"
    assert database_of("unix:///run/redis.sock?db=2") == "2"
