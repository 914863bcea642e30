"""Counting in Celery's prefork pool children: prometheus-client's multiprocess mode.

A prefork worker executes tasks in child processes, so the transitions (and their counts) happen
there; a child's in-memory counters would be lost to any scrape of the worker's main process.
With ``PROMETHEUS_MULTIPROC_DIR`` set in the worker's environment **before it starts** (the
client reads it when it is imported), every process writes its values to its own file in that
directory, and ``metrics_app`` (``mpstate metrics serve`` on the worker host) adds them up at
each scrape. Empty the directory before the workers start (a process id can be reused).

A child that exits has its live-gauge files removed (``mark_process_dead``, from Celery's
``worker_process_shutdown``); its counters and histograms stay counted, as Prometheus expects.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = ["ENV", "connect_worker_shutdown", "multiprocess_dir", "multiprocess_registry"]

#: The environment variable prometheus-client reads.
ENV = "PROMETHEUS_MULTIPROC_DIR"

_DISPATCH_UID = "mpstate.metrics.mark_process_dead"


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this process's environment, or None (single process)."""
    return os.environ.get(ENV) or None


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that adds up every process's values in ``path`` (default: ``ENV``)."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=path or multiprocess_dir())  # type: ignore[no-untyped-call]
    return registry


def _child_exited(pid: int | None = None, **_: Any) -> None:
    if pid is not None and (path := multiprocess_dir()) is not None:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def connect_worker_shutdown() -> None:
    """Connect ``mark_process_dead`` to Celery's ``worker_process_shutdown`` (once)."""
    from celery.signals import worker_process_shutdown  # noqa: PLC0415 - the celery extra

    worker_process_shutdown.connect(_child_exited, weak=False, dispatch_uid=_DISPATCH_UID)
