"""The receiver's ``/metrics`` (Prometheus), built on ``mpstate.metrics``.

- ``mpstate_webhook_answers_total{provider, answer, reason}``: the answers of this receiver
  process (``mpstate.metrics.webhooks``); scrape each receiver process, or run them in
  multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``);
- with an ``MpState`` bound, the store's gauges, read at each scrape so they are exact across
  processes and restarts: ``mpstate_webhook_unmatched_total{provider, reason}`` and
  ``mpstate_runs{status}`` (``mpstate.metrics.store``);
- prometheus-client's default registry, where ``mpstate.metrics.instrument(mp)`` counts the
  runs this process advances (the callbacks it applies inline complete and fail steps here).

Labels are provider names, answers and reasons only: no run or job ids. Unconfigured provider
names are counted as ``other``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from mpstate.metrics.asgi import MetricsApp, metrics_app
from mpstate.metrics.webhooks import WebhookAnswers

__all__ = ["ReceiverMetrics"]


class ReceiverMetrics:
    """One receiver's answers (in a registry of its own) and the app exposing its metrics."""

    def __init__(self, providers: Collection[str], store: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.answers = WebhookAnswers(providers, self.registry)
        self.app: MetricsApp = metrics_app(store=store, registry=[self.registry, REGISTRY])

    def answered(self, provider: str, answer: str, reason: str = "") -> None:
        """Count one answer (see ``WebhookAnswers.answered``)."""
        self.answers.answered(provider, answer, reason)
