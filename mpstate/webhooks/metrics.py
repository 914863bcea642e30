"""The receiver's ``/metrics`` (Prometheus): its answers, and the callbacks that matched no run.

Answers are counted in this process (``mpstate_webhook_answers_total{provider, answer}``): scrape
each receiver process. Unmatched callbacks are read from the store at each scrape
(``mpstate_webhook_unmatched_total{provider, reason}``), so the figure is exact across processes
and restarts (the store counts them beyond the capped list ``mpstate webhooks unmatched`` shows).
Labels are provider names, answers and reasons only: no run or job ids, so cardinality stays
bounded by the providers you configure. Unconfigured provider names are counted as ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ReceiverMetrics"]

#: The Prometheus text format's media type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _UnmatchedCollector(Collector):
    """Reads the store's unmatched counts at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "mpstate_webhook_unmatched",
            "Callbacks that could never reach a step, by provider and reason.",
            labels=["provider", "reason"],
        )
        for (provider, reason), count in sorted(self._counts().items()):
            family.add_metric([provider, reason], count)
        yield family


class ReceiverMetrics:
    """One receiver's registry: answer counts, and the store's unmatched counts on scrape."""

    def __init__(
        self,
        providers: Collection[str],
        unmatched_counts: Callable[[], Mapping[tuple[str, str], int]] | None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._providers = frozenset(providers)
        self.answers = Counter(
            "mpstate_webhook_answers",
            "Callbacks answered by this receiver process, by provider and answer.",
            ["provider", "answer"],
            registry=self.registry,
        )
        if unmatched_counts is not None:
            self.registry.register(_UnmatchedCollector(unmatched_counts))

    def answered(self, provider: str, answer: str) -> None:
        """Count one answer (``resumed``, ``duplicate``, ``unmatched``, ``refused-401``, ...)."""
        label = provider if provider in self._providers else "other"
        self.answers.labels(provider=label, answer=answer).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
