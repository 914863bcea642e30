"""Metrics read from the store at each scrape: exact across processes and restarts.

- ``mpstate_runs{status}``: ``count_by_status()``, one round trip whatever the number of runs;
- ``mpstate_webhook_unmatched_total{provider, reason}``: ``count_unmatched()`` (the store counts
  them beyond the capped list ``mpstate webhooks unmatched`` shows);
- ``mpstate_store_up``: 0 when the store did not answer (the other families are then left out,
  and the rest of the scrape still succeeds).

Suspended runs by reason are not exported: the reason is not indexed, so counting it would read
every suspended run at each scrape (``mpstate_runs{status="suspended"}`` has their total).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mpstate.errors import MpStateError
from mpstate.metrics import families as f
from mpstate.models import PipelineRunStatus

__all__ = ["StoreCollector", "StoreSnapshot"]

log = logging.getLogger("mpstate.metrics")


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What one scrape read from the store (``up`` False: it did not answer)."""

    up: bool
    runs: Mapping[PipelineRunStatus, int] = field(default_factory=dict)
    unmatched: Mapping[tuple[str, str], int] | None = None

    def families(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f.STORE_UP.name, f.STORE_UP.documentation, value=int(self.up))
        if not self.up:
            return
        runs = GaugeMetricFamily(f.RUNS.name, f.RUNS.documentation, labels=f.RUNS.labels)
        for status in PipelineRunStatus:
            runs.add_metric([status.value], self.runs.get(status, 0))
        yield runs
        if self.unmatched is not None:
            unmatched = CounterMetricFamily(
                f.WEBHOOK_UNMATCHED.name,
                f.WEBHOOK_UNMATCHED.documentation,
                labels=f.WEBHOOK_UNMATCHED.labels,
            )
            for (provider, reason), count in sorted(self.unmatched.items()):
                unmatched.add_metric([provider, reason], count)
            yield unmatched


class StoreCollector(Collector):
    """Reads the store at each collection (``read``), or reads it ahead on the caller's terms
    (``aread`` for an asyncio caller; ``metrics_app`` does).

    ``store``: a sync or an asyncio store (a tenant view counts that tenant's runs).
    ``unmatched=False`` leaves out the unmatched callbacks (a tenant view has none).
    """

    def __init__(self, store: Any, *, unmatched: bool = True) -> None:
        self.store = store
        self.unmatched = unmatched
        self.is_async = inspect.iscoroutinefunction(store.count_by_status)

    def read(self) -> StoreSnapshot:
        """One snapshot, from a sync store."""
        if self.is_async:
            raise TypeError("an asyncio store is read with aread()")
        try:
            runs = self.store.count_by_status()
            unmatched = self.store.count_unmatched() if self.unmatched else None
        except MpStateError as exc:
            return _down(exc)
        return StoreSnapshot(True, runs, unmatched)

    async def aread(self) -> StoreSnapshot:
        """One snapshot, from an asyncio store (a sync one is read in a worker thread)."""
        if not self.is_async:
            import anyio.to_thread  # noqa: PLC0415 - the web extra

            return await anyio.to_thread.run_sync(self.read)
        try:
            runs = await self.store.count_by_status()
            unmatched = await self.store.count_unmatched() if self.unmatched else None
        except MpStateError as exc:
            return _down(exc)
        return StoreSnapshot(True, runs, unmatched)

    def collect(self) -> Iterator[Metric]:
        return self.read().families()


def _down(exc: MpStateError) -> StoreSnapshot:
    log.warning("mpstate metrics: the store did not answer: %s", exc)
    return StoreSnapshot(False)
