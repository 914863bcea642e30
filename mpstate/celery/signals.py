"""Signal receivers: step events for plain tasks, identity propagation, prefork safety.

Connected by ``MpState`` (never as an import side effect) and disconnected by ``MpState.close``.
A receiver that fails logs the error with its traceback at ERROR level (Celery itself would only
swallow it) and re-raises.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from celery import current_task, signals
from celery.exceptions import WorkerLostError

from mpstate.celery.identity import (
    RUN_ID,
    STEP_ID,
    StepIdentity,
    attempt_of,
    identity_of,
    published_version,
    request_meta,
)
from mpstate.celery.lifecycle import StepLifecycle
from mpstate.celery.results import as_step_result
from mpstate.events import EventMeta
from mpstate.tracing import message_carrier, step_span


class ReceiverHost(Protocol):
    """What the receivers need of an ``MpState`` (a protocol, so this module does not import the
    binding that imports it)."""

    @property
    def lifecycle(self) -> StepLifecycle: ...

    def reset_connections(self) -> None: ...


__all__ = ["SignalReceivers"]

log = logging.getLogger("mpstate.celery")

#: Identities of requests received by this worker's main process, for failures reported there.
_RECEIVED_LIMIT = 10_000


def _is_step_task(task: Any) -> bool:
    return bool(getattr(task, "mpstate_step_task", False))


class SignalReceivers:
    """The receivers of one ``MpState``; ``connect``/``disconnect`` them as a group."""

    def __init__(self, mp: ReceiverHost) -> None:
        self.mp = mp
        self._received: OrderedDict[str, StepIdentity] = OrderedDict()
        self._connected: list[tuple[Any, Callable[..., Any]]] = []

    @property
    def lifecycle(self) -> StepLifecycle:
        return self.mp.lifecycle

    def connect(self) -> None:
        for signal, receiver in (
            (signals.before_task_publish, self.before_task_publish),
            (signals.task_received, self.task_received),
            (signals.task_prerun, self.task_prerun),
            (signals.task_postrun, self.task_postrun),
            (signals.task_success, self.task_success),
            (signals.task_retry, self.task_retry),
            (signals.task_failure, self.task_failure),
            (signals.worker_process_init, self.worker_process_init),
        ):
            signal.connect(receiver, weak=False)
            self._connected.append((signal, receiver))

    def disconnect(self) -> None:
        for signal, receiver in self._connected:
            signal.disconnect(receiver)
        self._connected.clear()

    def _guarded(self, what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:
            log.exception("mpstate: %s failed", what)
            raise

    # -- receivers --------------------------------------------------------------------------

    def before_task_publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        """Give every task a step publishes the step's run and step ids (as a child), and log a
        plain step task's retry before the retry message leaves (its next attempt may finish
        before ``task_retry`` fires)."""
        if headers is None:
            return
        task = current_task
        identity = identity_of(task.request) if task else None
        if identity is None:
            return
        if RUN_ID not in headers:
            headers.update(StepIdentity(identity.run_id, identity.step_id, is_step=False).headers())
        elif identity.is_step and not _is_step_task(task) and _is_retry_of(headers, task.request):
            exc = sys.exc_info()[1]
            if exc is None:
                return  # retry(exc=...) outside an except block: task_retry has the exception
            meta = request_meta(task.request)
            self._guarded(
                "step-failed (retrying) for a plain task",
                lambda: self.lifecycle.fail_step(identity, exc, retryable=True, meta=meta),
            )
            task.request.mpstate_retry_logged = True  # only once it is written

    def task_received(self, request: Any = None, **_: Any) -> None:
        identity = identity_of(request) if request is not None else None
        if identity is not None and identity.is_step:
            self._received[request.id] = identity
            while len(self._received) > _RECEIVED_LIMIT:
                self._received.popitem(last=False)

    def task_prerun(self, task: Any = None, **_: Any) -> None:
        if task is None or _is_step_task(task):
            return
        identity = identity_of(task.request)
        if identity is None or not identity.is_step:
            return
        # The attempt's span, current until task_postrun (a PipelineTask opens its own).
        span = step_span(
            message_carrier(task.request),
            identity.run_id,
            identity.step_id,
            attempt_of(task.request),
        )
        span.__enter__()
        task.request.mpstate_span = span
        self._guarded(
            "step-started for a plain task",
            lambda: self.lifecycle.start_step(
                identity,
                attempt=attempt_of(task.request),
                meta=request_meta(task.request),
                published_version=published_version(task.request),
            ),
        )

    def task_postrun(self, task: Any = None, **_: Any) -> None:
        """End a plain step task's span (after task_success or task_failure logged its end)."""
        span = getattr(task.request, "mpstate_span", None) if task is not None else None
        if span is not None:
            task.request.mpstate_span = None
            span.__exit__(None, None, None)

    def task_success(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        if sender is None or _is_step_task(sender):
            return
        identity = identity_of(sender.request)
        if identity is None or not identity.is_step:
            return
        self._guarded(
            "step-completed for a plain task",
            lambda: self.lifecycle.complete_step(
                identity, as_step_result(result, strict=False), meta=request_meta(sender.request)
            ),
        )

    def task_retry(
        self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any
    ) -> None:
        if sender is None or _is_step_task(sender):
            return
        identity = identity_of(request)
        if (
            identity is None
            or not identity.is_step
            or getattr(request, "mpstate_retry_logged", False)
        ):
            return
        exc = getattr(reason, "exc", None) or reason
        self._guarded(
            "step-failed (retrying) for a plain task",
            lambda: self.lifecycle.fail_step(
                identity, exc, retryable=True, meta=request_meta(request)
            ),
        )

    def task_failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        kwargs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        if exception is None:
            return
        worker_lost = isinstance(exception, WorkerLostError)
        # A lost worker never reaches the task's own on_failure, whatever the request stack holds.
        identity = None if worker_lost or sender is None else identity_of(sender.request)
        meta: EventMeta
        if identity is not None:
            if _is_step_task(sender):
                return  # PipelineTask.on_failure, which saw the same request, logged it
            meta = request_meta(sender.request)
        else:
            # Reported by the worker's main process with no request context (a lost worker, a
            # hard time limit, Reject): the request is the one this process received earlier.
            identity = self._received.pop(task_id or "", None) or _identity_from_kwargs(kwargs)
            meta = {"taskId": task_id}
            if worker_lost:
                meta["workerLost"] = True
        if identity is None or not identity.is_step:
            return
        self._guarded(
            "step-failed for a task failure",
            lambda: self.lifecycle.fail_step(identity, exception, retryable=False, meta=meta),
        )

    def worker_process_init(self, **_: Any) -> None:
        """A new prefork child: drop connections inherited from the parent."""
        self.mp.reset_connections()


def _is_retry_of(headers: dict[str, Any], request: Any) -> bool:
    """Whether a message being published is the retry of the request's own task."""
    return headers.get("id") == request.id and headers.get("retries") == (request.retries or 0) + 1


def _identity_from_kwargs(kwargs: dict[str, Any] | None) -> StepIdentity | None:
    if not kwargs:
        return None
    run_id, step_id = kwargs.get(RUN_ID), kwargs.get(STEP_ID)
    if isinstance(run_id, str) and isinstance(step_id, str):
        return StepIdentity(run_id, step_id, is_step=True)
    return None
