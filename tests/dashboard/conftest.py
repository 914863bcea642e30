"""Fixtures for the dashboard tests: a store on the suite's Redis, a Celery harness for the
actions, and dashboards served by uvicorn on free loopback ports (``celery_app.embedded``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
import redis
from dashboard_support import CountingStore, Serve
from key_cleanup import delete_prefix

from celery_app.embedded import bind_loopback, serving


@pytest.fixture
def rstore(redis_url: str, prefix: str) -> Iterator[CountingStore]:
    """A Redis store under this test's prefix that counts its round trips."""
    client = redis.Redis.from_url(redis_url)
    yield CountingStore(client, prefix=prefix)
    delete_prefix(client, prefix)
    client.close()


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(asgi_app)``: serve it on a free loopback port until the test ends; its base URL."""
    with ExitStack() as stack:
        yield lambda asgi_app: stack.enter_context(serving(asgi_app, bind_loopback()))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client
