"""Fixtures for the CLI tests: a store on the suite's Redis under this test's prefix, and ways to
run ``mpstate`` against it, in process (click's ``CliRunner``) or as the installed console script.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result

from mpstate import RedisPipelineStateStore
from mpstate.celery.identity import RUN_ID
from mpstate.cli import cli

from .support import CLI_ENV, DEFAULT_QUEUE, LAYOUT_ENV, RunCli


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


@pytest.fixture
def broker(redis_url: str, prefix: str) -> Iterator[tuple[str, redis.Redis]]:
    """A broker URL on the suite's Redis, database 2 (away from the stores), and a client to
    it. Afterwards exactly the messages of this test's runs (ids start with its prefix) are
    removed, never the whole queue."""
    url = urlunsplit(urlsplit(redis_url)._replace(path="/2"))
    client = redis.Redis.from_url(url)
    yield url, client
    for raw in client.lrange(DEFAULT_QUEUE, 0, -1):
        if str(json.loads(raw)["headers"].get(RUN_ID, "")).startswith(prefix):
            client.lrem(DEFAULT_QUEUE, 0, raw)
    client.close()
