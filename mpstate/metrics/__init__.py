"""Prometheus metrics of runs, steps, providers and the receiver (``pip install 'mpstate[web]'``).

::

    from mpstate.metrics import instrument, metrics_app

    instrument(mp)                              # count mp's transitions and cancels
    Route("/metrics", metrics_app(store=mp.store))  # expose them, with the store's gauges

- ``runs``: ``RunMetrics``, a lifecycle observer counting runs started, completed, failed and
  cancelled, cost, retries, and step, queue-wait and provider-wait durations;
- ``webhooks``: ``WebhookAnswers``, the receiver's answers;
- ``store``: gauges read from the store at each scrape (runs by status, unmatched callbacks);
- ``multiprocess``: prefork pool children (``PROMETHEUS_MULTIPROC_DIR``);
- ``asgi``: ``metrics_app``, the endpoint (``mpstate metrics serve`` serves it standalone);
- ``families``: every metric's name, help, labels and buckets.

No label carries a run, step, job or task id (see ``families``).
"""

from __future__ import annotations

try:
    import prometheus_client  # noqa: F401 - checked here for a clear hint
except ImportError as exc:  # pragma: no cover - the extra is installed in development
    raise ImportError(f"mpstate.metrics needs: pip install 'mpstate[web]' ({exc})") from exc

from mpstate.metrics.asgi import MetricsApp, metrics_app
from mpstate.metrics.multiprocess import multiprocess_dir, multiprocess_registry
from mpstate.metrics.runs import RunMetrics, instrument
from mpstate.metrics.store import StoreCollector, StoreSnapshot
from mpstate.metrics.webhooks import WebhookAnswers

__all__ = [
    "MetricsApp",
    "RunMetrics",
    "StoreCollector",
    "StoreSnapshot",
    "WebhookAnswers",
    "instrument",
    "metrics_app",
    "multiprocess_dir",
    "multiprocess_registry",
]
