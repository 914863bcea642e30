"""``PipelineTask``: the base class of step tasks that keep their run's state by themselves.

::

    @app.task(base=PipelineTask, bind=True, name="image.generate")
    def generate(self, prompt: str) -> dict:
        self.progress(50, message="rendering")
        return {"artifactIds": ["img-1"], "costUsd": 0.04}

The body receives the step's inputs as kwargs. Before it runs, the task logs step-started (the
attempt is Celery's retry count) and skips the body (``Ignore``) when the run was cancelled or
finished, or the step is done already. After it returns, the task logs step-completed (or
step-cached) and enqueues the next step once. Retries log step-failed ``retryable=true`` (from
``retry``, before the retry is published), the final failure step-failed ``retryable=false`` and
run-failed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from celery import Task
from celery.backends.base import DisabledBackend
from celery.exceptions import Ignore
from kombu.exceptions import OperationalError

from mpstate._checks import check_id, check_positive
from mpstate.celery.binding import MpState
from mpstate.celery.identity import (
    StepIdentity,
    attempt_of,
    identity_of,
    published_version,
    request_meta,
    without_identity_kwargs,
)
from mpstate.celery.results import StepResult, as_step_result
from mpstate.celery.transitions import may_retry
from mpstate.errors import InvalidInputError, NotInRunError, StateStoreUnavailableError
from mpstate.events import EventMeta, StepProgress
from mpstate.graph import upstream
from mpstate.models import GateTimeout, PipelineRun
from mpstate.tracing import message_carrier, step_span
from mpstate.webhooks.schemes.tokens import callback_path

__all__ = ["PipelineTask"]

log = logging.getLogger("mpstate.celery")


class _SeenRun:
    """The run as a step attempt last wrote it, shared by the attempt's request contexts."""

    __slots__ = ("run",)

    def __init__(self, run: PipelineRun) -> None:
        self.run = run


class PipelineTask(Task):  # type: ignore[misc]  # celery ships no type hints
    """Base class for step tasks (``base=PipelineTask, bind=True``)."""

    #: Marks the class for the signal receivers, which leave these tasks to their own hooks.
    mpstate_step_task: ClassVar[bool] = True
    #: What one attempt of this task is expected to cost, in USD: the default of a step's
    #: ``estimatedCostUsd``, which the run's budget reserves while the step is in flight
    #: (``mpstate.budget``). Read when the run starts, from the tasks registered there.
    estimated_cost_usd: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Celery builds one subclass per decorated function, with ``__header__`` checking call
        # arguments against the body's signature (``apply_async``, ``retry``). The identity
        # kwargs are not the body's: check what the body will receive.
        super().__init_subclass__(**kwargs)
        header = cls.__dict__.get("__header__")
        if isinstance(header, staticmethod):
            check = header.__func__

            def check_body_arguments(*args: Any, **call_kwargs: Any) -> Any:
                return check(*args, **without_identity_kwargs(call_kwargs))

            cls.__header__ = staticmethod(check_body_arguments)

    # -- inside the body --------------------------------------------------------------------

    @property
    def in_run(self) -> bool:
        """Whether this call executes a step of a run (not a plain ``.delay()`` or chain link)."""
        identity = identity_of(self.request)
        return identity is not None and identity.is_step

    @property
    def identity(self) -> StepIdentity:
        identity = identity_of(self.request)
        if identity is None:
            raise NotInRunError(self.name, "the step identity")
        return identity

    @property
    def run_id(self) -> str:
        """The run this step belongs to."""
        return self.identity.run_id

    @property
    def step_id(self) -> str:
        """The step this task executes."""
        return self.identity.step_id

    @property
    def attempt(self) -> int:
        """The attempt, from 0, counted across every message of the step (retries included)."""
        return attempt_of(self.request)

    @property
    def pipeline_run(self) -> PipelineRun:
        """The run as this attempt last wrote it (at its start, or after ``gate``)."""
        seen = self._seen()
        if seen is None:
            raise NotInRunError(self.name, "pipeline_run")
        return seen.run

    def _seen(self) -> _SeenRun | None:
        seen: _SeenRun | None = getattr(self.request, "mpstate_seen", None)
        return seen

    @property
    def artifacts(self) -> dict[str, list[str]]:
        """Artifact ids of the steps this one waits for, directly or through others, by step id
        (of a linear run: every step before this one)."""
        run = self.pipeline_run
        return {step.step_id: list(step.artifact_ids) for step in upstream(run.steps, self.step_id)}

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        """``StepResult.outputs`` of the steps this one waits for, by step id (as ``artifacts``)."""
        run = self.pipeline_run
        return {step.step_id: dict(step.outputs) for step in upstream(run.steps, self.step_id)}

    def progress(
        self,
        pct: float,
        eta_ms: int | None = None,
        message: str | None = None,
        cost_usd_accrued: float | None = None,
    ) -> None:
        """Log step-progress, and send it as a ``task-progress`` event (Flower shows PROGRESS).

        Outside a run (a plain ``.delay()``) only the Celery side happens: the ``task-progress``
        event, and the PROGRESS state in the result backend when there is one. Progress is not
        state: while the store or the broker is unavailable the event is dropped with a warning
        instead of failing the step (the step's next transition rides out the outage).
        ``cost_usd_accrued`` (what the step has spent so far) is state the run's budget counts:
        it is committed on the step, through an outage within ``mpstate_outage_window_s``.
        """
        if not self.in_run:
            self._celery_progress(pct, message)
            return
        event = StepProgress(
            run_id=self.run_id,
            step_id=self.step_id,
            pct=pct,
            eta_ms=eta_ms,
            message=message,
            cost_usd_accrued=cost_usd_accrued,
            meta=self.event_meta(),
        )
        try:
            if cost_usd_accrued is None:
                self.mpstate.store.append_event(self.run_id, event)
            else:
                self.mpstate.lifecycle.report_progress(self.identity, event)
        except StateStoreUnavailableError as exc:
            log.warning(
                "step-progress of run %r step %r dropped: %s", self.run_id, self.step_id, exc
            )
        self._send_progress_event(pct, run_id=self.run_id, step_id=self.step_id)

    def _celery_progress(self, pct: float, message: str | None) -> None:
        if self.request.called_directly:
            return
        if not self.ignore_result and not isinstance(self.backend, DisabledBackend):
            self.update_state(state="PROGRESS", meta={"pct": pct, "message": message})
        self._send_progress_event(pct)

    def _send_progress_event(self, pct: float, **fields: str) -> None:
        if self.request.called_directly:
            return
        try:
            self.send_event("task-progress", pct=pct, **fields)
        except OperationalError as exc:  # kombu: the broker is unreachable
            where = (
                f"run {fields['run_id']!r} step {fields['step_id']!r}"
                if fields
                else f"task {self.request.id}"
            )
            log.warning("task-progress of %s not sent: %s", where, exc)

    def cached(self, cache_key: str, artifact_ids: list[str]) -> StepResult:
        """Return this from the body when a cache answered: the step is logged as step-cached."""
        return StepResult(cache_key=cache_key, artifact_ids=list(artifact_ids))

    def gate(self, gate_type: str, verdict: str, passed: bool) -> bool:
        """Log step-gated; a rejection fails the run and ends the body (the task is IGNORED).

        Raises ``NotInRunError`` outside a run: a gate decides on a run. The verdicts mpstate
        writes itself (``awaiting-approval``, ``over-budget``, ``within-budget``) are refused
        (``InvalidInputError``): to wait for a person, use ``await_approval``.
        """
        if not self.in_run:
            raise NotInRunError(self.name, "gate()")
        committed = self.mpstate.lifecycle.gate_step(
            self.identity,
            gate_type=gate_type,
            verdict=verdict,
            passed=passed,
            meta=self.event_meta(),
        )
        seen = self._seen()
        if seen is not None:
            seen.run = committed.run
        if not passed:
            raise Ignore()
        return True

    def await_external(
        self, provider: str, job_id: str, *, timeout_s: float | None = None
    ) -> StepResult:
        """Record the provider's job on the step (findable before this returns) and wait for it.

        Return the result from the body: the step completes when the provider's answer arrives
        (its webhook through the receiver or ``mpstate.resolve_webhook``, or a poll when a poller
        is registered for ``provider``). Other branches of the run go on meanwhile; the run is
        suspended only once nothing else runs. With no answer within ``timeout_s`` (default:
        ``mpstate_external_timeouts[provider]``, else ``mpstate_external_timeout_s``, 24 h) the
        step fails with ``external-timeout`` and is retried within its limit. Raises
        ``NotInRunError`` outside a run: there is no step to resume when the provider calls back.
        """
        if not self.in_run:
            raise NotInRunError(self.name, "await_external()")
        mp = self.mpstate
        wait_s = mp.settings.timeout_for(provider) if timeout_s is None else timeout_s
        committed = mp.lifecycle.suspend_step(
            self.identity,
            provider=provider,
            job_id=job_id,
            meta=self.event_meta(),
            timeout_s=check_positive(wait_s, "timeout_s"),
        )
        if committed.changed:
            mp.jobs.waiting_started(self.run_id, self.step_id, provider, job_id)
        return StepResult(suspended=True)

    def await_approval(
        self,
        gate_type: str = "approval",
        *,
        details: Mapping[str, Any] | None = None,
        result: StepResult | Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        on_timeout: GateTimeout | str = GateTimeout.REJECT,
    ) -> StepResult:
        """Ask a person to approve what this step produced; return this from the body.

        ``result`` (artifacts, cost, outputs) becomes the step's result when approved
        (``MpState.approve``): then the run goes on. Rejected (``MpState.reject``), the run
        fails with ``gate-rejected``. ``details`` is what the person looks at (kept on the step,
        small). With no verdict within ``timeout_s`` (default: no deadline; enforced by the
        reconciler) ``on_timeout`` decides: ``reject`` (default) or ``approve``. Other branches
        go on meanwhile; the run is suspended (reason ``gate``) once nothing else is in flight.
        Raises ``NotInRunError`` outside a run.
        """
        if not self.in_run:
            raise NotInRunError(self.name, "await_approval()")
        check_id(gate_type, "gate_type")
        try:
            policy = GateTimeout(on_timeout)
        except ValueError:
            choices = ", ".join(p.value for p in GateTimeout)
            raise InvalidInputError(
                f"on_timeout must be one of {choices}, not {on_timeout!r}"
            ) from None
        produced = as_step_result(
            dict(result) if isinstance(result, Mapping) else result, strict=True
        )
        self.mpstate.lifecycle.await_approval(
            self.identity,
            produced,
            gate_type=gate_type,
            details=dict(details or {}),
            timeout_s=None if timeout_s is None else check_positive(timeout_s, "timeout_s"),
            on_timeout=policy,
            meta=self.event_meta(),
        )
        return StepResult(suspended=True)

    def callback_url(self, provider: str) -> str:
        """The URL a provider that signs nothing (Luma) calls back on for this attempt of this
        step: the receiver's ``mpstate_callback_base_url`` and a path whose token, minted with
        ``mpstate_callback_secret`` (the provider's secret on the receiver), is bound to the run,
        the step and the attempt. A callback on an earlier attempt's URL is refused."""
        if not self.in_run:
            raise NotInRunError(self.name, "callback_url()")
        settings = self.mpstate.settings
        if not settings.callback_base_url or not settings.callback_secret:
            raise InvalidInputError(
                "callback_url() needs app.conf.mpstate_callback_base_url and "
                "mpstate_callback_secret"
            )
        path = callback_path(
            settings.callback_secret, provider, self.run_id, self.step_id, self.attempt
        )
        return settings.callback_base_url.rstrip("/") + path

    def retry(self, *args: Any, max_retries: int | None = None, **kwargs: Any) -> Any:
        """``Task.retry``, with the step's ``max_retries`` as the default limit.

        When a retry will be published, step-failed (``retryable=true``) is logged first: Celery
        publishes the retry inside this call, and the next attempt may start, even finish, before
        this attempt's ``on_retry`` runs. The retried message keeps the identity kwargs (the body
        never saw them), so Flower finds every attempt of a step.
        """
        seen = self._seen()
        identity = identity_of(self.request)
        if identity is None or not identity.is_step or seen is None:
            return super().retry(*args, max_retries=max_retries, **kwargs)
        step = seen.run.step(identity.step_id)
        if max_retries is not None:
            step = step.model_copy(update={"max_retries": max_retries})
        limit = step.max_retries if step.max_retries is not None else self.max_retries
        if limit is not None:
            # The limit counts every attempt of the step; Celery counts this message's retries.
            max_retries = max(0, limit - (self.attempt - int(self.request.retries or 0)))
        if may_retry(step, self.attempt + 1, self.max_retries):
            exc = kwargs.get("exc") or sys.exc_info()[1] or RuntimeError("retry requested")
            self.mpstate.lifecycle.fail_step(identity, exc, retryable=True, meta=self.event_meta())
        if not args and kwargs.get("kwargs") is None:
            kwargs["kwargs"] = {**(self.request.kwargs or {}), **identity.kwargs()}
        return super().retry(*args, max_retries=max_retries, **kwargs)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def mpstate(self) -> MpState:
        """The ``MpState`` bound to this task's app."""
        return MpState.of(self.app)

    def event_meta(self) -> EventMeta:
        """What each event of this task records about it: task id, worker, redelivery."""
        return request_meta(self.request)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs = without_identity_kwargs(kwargs)
        # The attempt's request, read once: ``self.request`` walks Celery's request stack.
        request = self.request
        identity = identity_of(request)
        if identity is None or not identity.is_step:
            # A plain call (.delay(), apply(), a link of a plain chain): an ordinary task.
            retval = super().__call__(*args, **kwargs)
            return _as_message_value(retval)
        # Task.retry leaves the last limit on the (shared) task object and autoretry_for reuses
        # it: start every attempt from the step's own max_retries instead.
        self.__dict__.pop("override_max_retries", None)
        attempt = attempt_of(request)
        with step_span(message_carrier(request), identity.run_id, identity.step_id, attempt):
            return self._run_step(identity, request, attempt, *args, **kwargs)

    def _run_step(
        self, identity: StepIdentity, request: Any, attempt: int, *args: Any, **kwargs: Any
    ) -> Any:
        """One attempt: step-started, the body, then step-completed (or the body's own end).

        ``request`` is the attempt's (the body runs under a context of its own, popped when it
        returns)."""
        lifecycle = self.mpstate.lifecycle
        run = lifecycle.start_step(
            identity,
            attempt=attempt,
            meta=request_meta(request),
            published_version=published_version(request),
        )
        if run is None:
            raise Ignore()
        # A holder, not the run: the body's request context is a copy of this one, and what the
        # body writes (gate) must be seen here, so completion decides without reading.
        seen = request.mpstate_seen = _SeenRun(run)
        try:
            retval = super().__call__(*args, **kwargs)
        except Exception as exc:
            # Celery hands on_failure a picklable stand-in of an exception that does not pickle
            # (without its ``code``): keep the original for the step-failed it logs.
            request.mpstate_raised = exc
            raise
        result = as_step_result(retval, strict=True)
        lifecycle.complete_step(identity, result, meta=request_meta(request), known=seen.run)
        return _as_message_value(retval)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        identity = identity_of(self.request)
        if identity is not None and identity.is_step:
            raised = getattr(self.request, "mpstate_raised", None)
            self.mpstate.lifecycle.fail_step(
                identity, raised or exc, retryable=False, meta=self.event_meta()
            )
        super().on_failure(exc, task_id, args, kwargs, einfo)


def _as_message_value(retval: Any) -> Any:
    """A ``StepResult`` as the dict a result backend and the next link of a chain can carry."""
    if isinstance(retval, StepResult):
        return retval.model_dump(mode="json", by_alias=True)
    return retval
