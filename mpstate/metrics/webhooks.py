"""``WebhookAnswers``: the receiver's answers, by provider, answer and reason.

Provider names are those the receiver is configured with; any other name (a callback for a
provider with no secret) is counted as ``other``, so a stranger cannot create series.
"""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from mpstate.metrics import families as f

__all__ = ["WebhookAnswers"]


class WebhookAnswers:
    """``mpstate_webhook_answers_total{provider, answer, reason}`` in ``registry``."""

    def __init__(
        self, providers: Collection[str], registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self._providers = frozenset(providers)
        family = f.WEBHOOK_ANSWERS
        self.counter = Counter(
            family.name, family.documentation, family.labels, registry=self.registry
        )

    def answered(self, provider: str, answer: str, reason: str = "") -> None:
        """Count one answer (``resumed``, ``duplicate``, ``unmatched``, ``refused-401``, ...)
        and, for a refusal or an unmatched callback, why (``signature``, ``unknown-job``...)."""
        label = provider if provider in self._providers else f.OTHER
        self.counter.labels(label, answer, reason).inc()
