"""``StepHooks``: step-started, -completed and -failed for a task, whichever way it is run.

``PipelineTask`` calls these from its own hooks; the signal receivers call them for plain tasks
published with a step identity, and for a ``WorkerLostError`` (which Celery reports in the worker's
main process, where no task hook runs). One implementation serves both entry points.
"""

from __future__ import annotations

import logging
from typing import Any

from mpstate.celery.identity import StepIdentity
from mpstate.celery.lifecycle import StepLifecycle
from mpstate.celery.results import StepResult
from mpstate.celery.transitions import complete_step, fail_step, start_step
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


def error_code(exc: BaseException) -> str:
    """A failure's code: the exception's own ``code`` attribute if it is a string, else its type."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


class StepHooks:
    """The step lifecycle as seen from a task."""

    def __init__(self, lifecycle: StepLifecycle) -> None:
        self.lifecycle = lifecycle

    def start(self, identity: StepIdentity, *, attempt: int, meta: EventMeta) -> PipelineRun | None:
        """Log step-started; the run to execute against, or None when the body must not run."""
        committed = self.lifecycle.apply(
            identity.run_id,
            lambda run: start_step(
                run,
                identity.step_id,
                attempt=attempt,
                task_id=str(meta.get("taskId") or ""),
                meta=meta,
            ),
        )
        return committed.run if committed.changed else None

    def complete(
        self,
        identity: StepIdentity,
        result: StepResult,
        *,
        meta: EventMeta,
        known: PipelineRun | None = None,
    ) -> None:
        """Log step-completed (or -cached) and publish what it made ready, unless the step
        awaits a provider.

        ``known``: the run as step-started committed it, decided on without another read.
        """
        if result.suspended:
            return
        committed = self.lifecycle.apply(
            identity.run_id,
            lambda run: complete_step(
                run,
                identity.step_id,
                artifact_ids=result.artifact_ids,
                cost_usd=result.cost_usd,
                cache_key=result.cache_key,
                outputs=result.outputs,
                meta=meta,
            ),
            known=known,
        )
        if not committed.changed:
            log.info(
                "late or duplicate result for run %r step %r ignored (run %s)",
                identity.run_id,
                identity.step_id,
                committed.run.status,
            )

    def fail(
        self, identity: StepIdentity, exc: BaseException, *, retryable: bool, meta: EventMeta
    ) -> None:
        """Log step-failed; when it is final, run-failed with the reason."""
        self.lifecycle.apply(
            identity.run_id,
            lambda run: fail_step(
                run,
                identity.step_id,
                code=error_code(exc),
                message=str(exc),
                retryable=retryable,
                meta=meta,
            ),
        )
