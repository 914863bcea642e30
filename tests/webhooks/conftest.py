"""Fixtures for the receiver tests: a Celery harness on the suite's Redis, and servers on loopback.

The harness is the Celery tests' own (``tests/celery/celery_support.py``, importable from every
test folder: see tests/conftest.py).
Each receiver is served by uvicorn in a thread on a free loopback port (``celery_app.embedded``)
and stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from celery_support import Harness, HarnessFactory, harness
from provider_support import FAL_KEY, FAL_NEXT_KEY, Endpoint, JwksServer, jwks_server
from webhook_support import Serve

from celery_app.embedded import bind_loopback, serving


@pytest.fixture
def make_harness(redis_url: str, prefix: str) -> Iterator[HarnessFactory]:
    """Build this test's harness on the suite's Redis (broker and store); workers are opt-in."""
    with ExitStack() as stack:

        def factory(**conf: Any) -> Harness:
            conf.setdefault("broker_transport_options", {"polling_interval": 0.2})
            return stack.enter_context(harness(redis_url, redis_url, prefix, **conf))

        yield factory


@pytest.fixture
def h(make_harness: HarnessFactory) -> Harness:
    """A harness with default settings and no worker (``h.start_worker()`` starts one)."""
    return make_harness()


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(asgi_app)``: serve it on a free loopback port until the test ends; its base URL."""
    with ExitStack() as stack:
        yield lambda asgi_app: stack.enter_context(serving(asgi_app, bind_loopback()))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    """A loopback address reserved for a receiver, known before the harness reads its settings."""
    endpoint = Endpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    """fal's key set (the current key and the next, for rotation) served on loopback."""
    with jwks_server(FAL_KEY, FAL_NEXT_KEY) as server:
        yield server
