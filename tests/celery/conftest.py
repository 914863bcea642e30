"""Fixtures for the Celery integration tests: a real broker and real workers, never eager mode.

The broker is the suite's own Redis (``redis_url``); each test gets its own Celery app (unique
``main``), its own queue (``task_default_queue``) and its own store prefix, so nothing one test
publishes or writes is seen by another. ``make_harness(broker="rabbitmq")`` uses RabbitMQ on
loopback instead, and skips the test when nothing listens there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from celery_support import RABBITMQ_URL, Harness, HarnessFactory, harness, rabbitmq_available


@pytest.fixture
def make_harness(redis_url: str, prefix: str) -> Iterator[HarnessFactory]:
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
            return stack.enter_context(harness(broker_url, redis_url, prefix, **conf))

        yield factory


@pytest.fixture
def h(make_harness: HarnessFactory) -> Harness:
    """A harness on the Redis broker with default settings."""
    return make_harness()
