"""Fixtures for the receiver tests: a Celery harness on the suite's Redis, and servers on loopback.

The harness is the Celery tests' own (``tests/celery/celery_support.py``, importable from every
test folder: see tests/conftest.py).
Each receiver is served by uvicorn in a thread on a free loopback port (``celery_app.embedded``)
and stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from provider_support import FAL_KEY, FAL_NEXT_KEY, Endpoint, JwksServer, jwks_server
from webhook_support import Serve

from celery_app.embedded import bind_loopback, serving


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
