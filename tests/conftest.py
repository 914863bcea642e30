"""Fixtures: every store test runs against in-memory, fakeredis and a real redis-server.

The real server is started by the suite on a free loopback port (``mpstate.testing``) unless
``MPSTATE_TEST_REDIS_URL`` names one; each test writes under its own key prefix and deletes only
that prefix afterwards, so a shared server is never flushed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis

from mpstate import InMemoryPipelineStateStore, PipelineStateStore, RedisPipelineStateStore
from mpstate.redis.keys import RedisKeys
from mpstate.testing import RedisServer

BACKENDS = ("memory", "fakeredis", "redis")

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


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete this test's keys only (SCAN, never FLUSH)."""
    keys = list(client.scan_iter(match=RedisKeys(prefix).pattern(), count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


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
            client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
            cleanups.append(lambda: (delete_prefix(client, prefix), client.close()))
        return RedisPipelineStateStore(client, prefix=prefix, **options)

    yield factory
    for cleanup in cleanups:
        cleanup()


@pytest.fixture
def store(make_store: StoreFactory) -> PipelineStateStore:
    """A store of each backend with default options."""
    return make_store()
