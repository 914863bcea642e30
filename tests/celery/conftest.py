"""Fixtures for the Celery integration tests: a real broker and real workers, never eager mode.

The broker is the suite's own Redis (``redis_url``); each test gets its own Celery app (unique
``main``), its own queue (``task_default_queue``) and its own store prefix, so nothing one test
publishes or writes is seen by another. ``make_harness(broker="rabbitmq")`` uses RabbitMQ on
loopback instead, and skips the test when nothing listens there.

The store is on that same Redis unless the test is parametrized with ``store_backend`` =
"cluster": then it is on the suite's local Redis Cluster (``cluster_url``, skipped unless
``MPSTATE_TEST_CLUSTER`` is set), while the broker stays the single Redis (kombu has no Redis
Cluster transport). A module opts in with (``STORE_BACKENDS`` from ``celery_support``)::

    pytestmark = pytest.mark.parametrize("store_backend", STORE_BACKENDS, indirect=True)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from celery_support import (
    RABBITMQ_URL,
    STORE_BACKENDS,
    Harness,
    HarnessFactory,
    harness,
    rabbitmq_available,
)


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    """Where the harness puts the store: "redis" (the suite's Redis, default) or "cluster"."""
    backend = str(getattr(request, "param", "redis"))
    if backend not in STORE_BACKENDS:
        raise ValueError(f"unknown store_backend {backend!r}")
    return backend


@pytest.fixture
def store_url(store_backend: str, redis_url: str, request: pytest.FixtureRequest) -> str:
    """The harness's store URL: ``redis_url``, or ``redis+cluster://`` and a cluster node."""
    if store_backend == "cluster":
        node = str(request.getfixturevalue("cluster_url"))  # skips without MPSTATE_TEST_CLUSTER
        scheme, _, rest = node.partition("://")
        return f"{scheme}+cluster://{rest}"
    return redis_url


@pytest.fixture
def make_harness(redis_url: str, store_url: str, prefix: str) -> Iterator[HarnessFactory]:
    """Build this test's harness; ``broker`` is "redis" (default) or "rabbitmq"."""
    with ExitStack() as stack:

        def factory(broker: str = "redis", **conf: Any) -> Harness:
            if broker == "rabbitmq":
                if not rabbitmq_available():
                    pytest.skip("no RabbitMQ on 127.0.0.1:5672")
                broker_url = RABBITMQ_URL
                # The worker's event loop wakes on broker traffic or a timer only: a short AMQP
                # heartbeat keeps ETA retries and shutdown from waiting up to 10 s.
                conf.setdefault("broker_heartbeat", 1)
            else:
                broker_url = redis_url
                # BRPOP returns every 0.2 s, so countdowns fire and the worker stops promptly.
                conf.setdefault("broker_transport_options", {"polling_interval": 0.2})
            return stack.enter_context(
                harness(broker_url, store_url, prefix, client_url=redis_url, **conf)
            )

        yield factory


@pytest.fixture
def h(make_harness: HarnessFactory) -> Harness:
    """A harness on the Redis broker with default settings."""
    return make_harness()
