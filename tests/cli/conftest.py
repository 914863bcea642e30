"""Fixtures for the CLI tests: a store on the suite's Redis under this test's prefix, and ways to
run ``mpstate`` against it, in process (click's ``CliRunner``) or as the installed console script.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result

from mpstate import RedisPipelineStateStore
from mpstate.cli import cli

from .support import CLI_ENV, LAYOUT_ENV, RunCli


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*CLI_ENV, *LAYOUT_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store(
    redis_client: redis.Redis, redis_url: str, prefix: str
) -> Iterator[RedisPipelineStateStore]:
    """The store the CLI will read (``redis_client`` deletes the prefix afterwards)."""
    store = RedisPipelineStateStore.from_url(redis_url, prefix=prefix)
    yield store
    store.close()


@pytest.fixture
def run_cli(redis_url: str, prefix: str) -> RunCli:
    """``run_cli(*args, json=False, env=None)``: mpstate in process, on this test's store."""

    def run(*args: str, json: bool = False, env: Mapping[str, str] | None = None) -> Result:
        options = ["--redis-url", redis_url, "--prefix", prefix, *(["--json"] if json else [])]
        return CliRunner().invoke(cli, [*options, *args], env=env, catch_exceptions=False)

    return run


@pytest.fixture
def console_script() -> Path:
    """The ``mpstate`` executable installed next to this interpreter."""
    path = Path(sys.executable).parent / "mpstate"
    if not path.exists():
        pytest.fail(f"{path} is not installed: reinstall the project (pip install -e '.[dev]')")
    return path


@pytest.fixture
def app(
    redis_url: str, prefix: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celery]:
    """An operator's app on the suite's Redis with its own queue, set as the test module's
    ``APP`` (so ``--app <module>:APP`` loads it)."""
    app = Celery(f"mpstate-test-{prefix}", broker=redis_url, set_as_current=False)
    app.conf.task_default_queue = f"{prefix}-q"
    monkeypatch.setattr(request.module, "APP", app)
    yield app
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(f"{prefix}-q")
    app.close()
