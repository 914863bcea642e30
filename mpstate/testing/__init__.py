"""Testing your pipelines with mpstate: a pytest plugin, helpers and the store contract suite.

- ``mpstate.testing.plugin``: pytest fixtures, enabled on request (``pytest -p
  mpstate.testing.plugin``, ``pytest_plugins = ["mpstate.testing.plugin"]`` in your root
  conftest.py, or ``mpstate_plugin = true`` in your pytest configuration): an in-memory store,
  a Redis store on a private redis-server, and ``MpState`` bound to your Celery app with a real
  worker thread on an in-memory broker.
- ``wait_for_status`` and ``assert_event_kinds``: wait for a run, check its log.
- ``sign_webhook``: a provider callback signed as the receiver expects it; ``deliver`` posts it
  to an ASGI app (the receiver) in process.
- ``RedisServer``: a throwaway redis-server on a free loopback port.
- ``mpstate.testing.contract.StoreContract``: the store contract as tests, for a new backend.

Importing this package needs neither pytest, Celery nor redis-py.
"""

from __future__ import annotations

from mpstate.testing._servers import RedisServer
from mpstate.testing.runs import assert_event_kinds, describe_log, wait_for_status
from mpstate.testing.webhooks import WebhookRequest, deliver, sign_webhook

__all__ = [
    "RedisServer",
    "WebhookRequest",
    "assert_event_kinds",
    "deliver",
    "describe_log",
    "sign_webhook",
    "wait_for_status",
]
