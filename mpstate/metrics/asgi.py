"""``metrics_app``: the Prometheus endpoint as an ASGI app (``prometheus_client.make_asgi_app``).

::

    Route("/metrics", metrics_app(store=mp.store), methods=["GET"])   # Starlette
    uvicorn.run(metrics_app(store), port=9808)                         # standalone

Each scrape reads the store's gauges first, off the event loop (a sync store in a worker thread,
an asyncio store awaited), then renders this process's registries, or, in multiprocess mode,
every process's values from the directory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from mpstate.metrics.multiprocess import multiprocess_dir, multiprocess_registry
from mpstate.metrics.store import StoreCollector, StoreSnapshot

__all__ = ["MetricsApp", "metrics_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def metrics_app(
    store: Any = None,
    registry: Collector | Sequence[Collector] | None = None,
    *,
    multiprocess: str | None = None,
    unmatched: bool = True,
) -> MetricsApp:
    """An ASGI app answering every HTTP request with the metrics (text or OpenMetrics, by the
    ``Accept`` header).

    ``store``: a sync or asyncio store whose gauges to add (``mpstate.metrics.store``); None:
    none. ``registry``: what this process counted (default prometheus-client's ``REGISTRY``),
    or several registries. ``multiprocess``: a ``PROMETHEUS_MULTIPROC_DIR`` to add up (default:
    the environment's); then ``registry`` is not read, since every process's values, this
    one's included, are in the directory. ``unmatched=False``: no unmatched-callback counts (a
    tenant view's store has none).
    """
    path = multiprocess or multiprocess_dir()
    collectors: list[Collector]
    if path is not None:
        collectors = [multiprocess_registry(path)]
    elif registry is None:
        collectors = [REGISTRY]
    elif isinstance(registry, Sequence):
        collectors = list(registry)
    else:
        collectors = [registry]
    gauges = StoreCollector(store, unmatched=unmatched) if store is not None else None
    return MetricsApp(collectors, gauges)


class MetricsApp:
    """The ASGI app ``metrics_app`` builds (a class, so Starlette's ``Route`` serves it as an
    app, not as a request handler)."""

    def __init__(self, collectors: Sequence[Collector], store: StoreCollector | None) -> None:
        self.collectors = tuple(collectors)
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        registry = CollectorRegistry(auto_describe=False)
        for collector in self.collectors:
            registry.register(collector)
        if self.store is not None:
            registry.register(_Snapshot(await self.store.aread()))
        await make_asgi_app(registry)(scope, receive, send)


class _Snapshot(Collector):
    def __init__(self, snapshot: StoreSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return self.snapshot.families()


async def _lifespan(receive: Receive, send: Send) -> None:
    """Served standalone (uvicorn): nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
