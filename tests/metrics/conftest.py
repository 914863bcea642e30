"""Fixtures for the metrics tests: a Celery harness on the suite's Redis (broker and store), a
fresh Prometheus registry per test, and HTTP servers on loopback.

The harness is the Celery tests' own (``tests/celery/celery_support.py``, importable from every
test folder: see tests/conftest.py); the endpoints are served by uvicorn in a thread
(``celery_app.embedded``) and scraped over real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from celery_app.embedded import bind_loopback, serving


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry of this test's own (the default one is shared by the whole process)."""
    return CollectorRegistry()


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(asgi_app)``: serve it on a free loopback port until the test ends; its base URL."""
    with ExitStack() as stack:
        yield lambda asgi_app: stack.enter_context(serving(asgi_app, bind_loopback()))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client
