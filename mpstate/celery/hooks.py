"""``StepHooks``: step-started, -completed and -failed for a task, whichever way it is run.

``PipelineTask`` calls these from its own hooks; the signal receivers call them for plain tasks
published with a step identity, and for a ``WorkerLostError`` (which Celery reports in the worker's
main process, where no task hook runs). One implementation serves both entry points.
"""

from __future__ import annotations

import logging
from typing import Any

from mpstate.celery.identity import StepIdentity
from mpstate.celery.lifecycle import StepLifecycle, error_code
from mpstate.celery.results import StepResult
from mpstate.events import EventMeta
from mpstate.models import PipelineRun

__all__ = ["StepHooks", "error_code", "request_meta"]

log = logging.getLogger("mpstate.celery")


def request_meta(request: Any) -> EventMeta:
    """Event meta for a Celery request: task id, worker hostname, redelivery flag."""
    meta: EventMeta = {"taskId": getattr(request, "id", None)}
    hostname = getattr(request, "hostname", None)
    if hostname:
        meta["worker"] = hostname
    if (getattr(request, "delivery_info", None) or {}).get("redelivered"):
        meta["redelivered"] = True
    return meta


class StepHooks:
    """Deprecated view of ``StepLifecycle``'s step methods (``start``/``complete``/``fail``);
    call ``mp.lifecycle`` instead."""

    def __init__(self, lifecycle: StepLifecycle) -> None:
        self.lifecycle = lifecycle

    def start(self, identity: StepIdentity, *, attempt: int, meta: EventMeta) -> PipelineRun | None:
        return self.lifecycle.start_step(identity, attempt=attempt, meta=meta)

    def complete(
        self,
        identity: StepIdentity,
        result: StepResult,
        *,
        meta: EventMeta,
        known: PipelineRun | None = None,
    ) -> None:
        self.lifecycle.complete_step(identity, result, meta=meta, known=known)

    def fail(
        self, identity: StepIdentity, exc: BaseException, *, retryable: bool, meta: EventMeta
    ) -> None:
        self.lifecycle.fail_step(identity, exc, retryable=retryable, meta=meta)
