"""How a task message says which run and step it belongs to.

A step's own task carries three message headers: ``mpstate_run_id``, ``mpstate_step_id`` and
``mpstate_role = "step"``. Celery keeps headers across ``self.retry()`` and hands them to the worker
as ``request.headers`` (and as request attributes). Every task a step publishes (chains, groups,
callbacks) gets the run and step ids copied by a ``before_task_publish`` receiver with
``mpstate_role = "child"``: attributable to its run, but not the step itself.

Step tasks of ``PipelineTask`` also get the ids as kwargs (``mpstate_run_id``, ``mpstate_step_id``)
so Flower can find them (``kwargs:mpstate_run_id=...``, it does not show headers); the task strips
them before calling the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mpstate.events import EventMeta

__all__ = [
    "ROLE",
    "RUN_ID",
    "RUN_VERSION",
    "STEP_ID",
    "StepIdentity",
    "identity_of",
    "published_version",
    "request_meta",
]

RUN_ID = "mpstate_run_id"
STEP_ID = "mpstate_step_id"
ROLE = "mpstate_role"
#: Attempts the step made before this message was enqueued (a step enqueued again after a
#: provider's retryable failure); Celery's retry count restarts at 0 for a new message.
ATTEMPT_BASE = "mpstate_attempt_base"
#: The run's version as the commit that published a step's message wrote it: lets the process
#: that published it start the step on the run it remembers (``mpstate.celery.published``).
RUN_VERSION = "mpstate_run_version"


@dataclass(frozen=True, slots=True)
class StepIdentity:
    """The run and step a task message belongs to, and whether it is the step's own task."""

    run_id: str
    step_id: str
    is_step: bool

    def headers(self) -> dict[str, str]:
        return {
            RUN_ID: self.run_id,
            STEP_ID: self.step_id,
            ROLE: "step" if self.is_step else "child",
        }

    def kwargs(self) -> dict[str, str]:
        return {RUN_ID: self.run_id, STEP_ID: self.step_id}


def _headers_of(request: Any) -> Mapping[str, Any]:
    # A task's request context has ``headers``; the worker's ``Request`` (task_received, main
    # process) keeps the message headers in ``request_dict``.
    headers = getattr(request, "headers", None)
    if not headers:
        headers = getattr(request, "request_dict", None)
    return headers if isinstance(headers, Mapping) else {}


def identity_of(request: Any) -> StepIdentity | None:
    """The identity a task request carries in its headers, or None."""
    headers = _headers_of(request)
    run_id = headers.get(RUN_ID) or getattr(request, RUN_ID, None)
    step_id = headers.get(STEP_ID) or getattr(request, STEP_ID, None)
    if not (isinstance(run_id, str) and isinstance(step_id, str)):
        return None
    role = headers.get(ROLE) or getattr(request, ROLE, None)
    return StepIdentity(run_id, step_id, is_step=role == "step")


def attempt_of(request: Any) -> int:
    """The step attempt a request executes, from 0: attempts before its message plus retries."""
    headers = _headers_of(request)
    base = headers.get(ATTEMPT_BASE) or getattr(request, ATTEMPT_BASE, None) or 0
    return int(base) + int(getattr(request, "retries", 0) or 0)


def published_version(request: Any) -> int | None:
    """The run version a step's message was published at, or None (an older publisher)."""
    headers = _headers_of(request)
    version = headers.get(RUN_VERSION) or getattr(request, RUN_VERSION, None)
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def without_identity_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The kwargs the body sees: a copy without the Flower-facing identity kwargs.

    A copy, not an edit: ``request.kwargs`` is what ``self.retry()`` republishes, and the retried
    message must keep the ids for Flower too.
    """
    return {key: value for key, value in kwargs.items() if key not in (RUN_ID, STEP_ID)}


def request_meta(request: Any) -> EventMeta:
    """Event meta for a Celery request: task id, worker hostname, redelivery flag."""
    meta: EventMeta = {"taskId": getattr(request, "id", None)}
    hostname = getattr(request, "hostname", None)
    if hostname:
        meta["worker"] = hostname
    if (getattr(request, "delivery_info", None) or {}).get("redelivered"):
        meta["redelivered"] = True
    return meta
