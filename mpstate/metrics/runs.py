"""``RunMetrics``: run and step metrics counted from every committed transition.

::

    metrics = instrument(mp)        # RunMetrics(registry).observe(mp), once per registry

``RunMetrics`` is a lifecycle observer (``StepLifecycle.observers``): it sees each transition once,
after its commit won, in the process that committed it (a worker's pool child, the receiver, the
process that called ``start_run``). It reads only what the transition wrote (the run as written
and the events committed), so counting costs no store round trip. Under a prefork pool every
child counts its own: set ``PROMETHEUS_MULTIPROC_DIR`` (``mpstate.metrics.multiprocess``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from mpstate.events import (
    AWAITING_APPROVAL,
    PipelineEvent,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCached,
    StepCompleted,
    StepFailed,
    StepGated,
    StepStarted,
)
from mpstate.fields import epoch_ms
from mpstate.metrics import families as f
from mpstate.metrics.labels import BoundedValues
from mpstate.metrics.multiprocess import connect_worker_shutdown, multiprocess_dir
from mpstate.models import PipelineRun, StepState

if TYPE_CHECKING:
    from mpstate.celery.binding import MpState
    from mpstate.celery.transitions import Transition

__all__ = ["RunMetrics", "instrument"]

_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, RunMetrics] = weakref.WeakKeyDictionary()


def instrument(
    mp: MpState, registry: CollectorRegistry | None = None, *, tenant_label: bool = True
) -> RunMetrics:
    """Count ``mp``'s transitions (and cancels) in ``registry`` (default: prometheus_client's
    ``REGISTRY``); the ``RunMetrics`` doing it. Idempotent: one ``RunMetrics`` per registry, and
    an ``MpState`` is observed once."""
    registry = REGISTRY if registry is None else registry
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = RunMetrics(registry, tenant_label=tenant_label)
    elif metrics.tenant_label != tenant_label:
        raise ValueError(f"this registry counts runs with tenant_label={metrics.tenant_label}")
    return metrics.observe(mp)


class RunMetrics:
    """The run-level counters and histograms, and the observer that feeds them.

    ``tenant_label=False`` drops the ``tenant`` label (for deployments with many tenants: each
    pipeline then has one series, not one per tenant).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        tenant_label: bool = True,
        max_codes: int = f.MAX_CODES,
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        if self.registry in _BY_REGISTRY:
            raise ValueError("this registry has a RunMetrics already: use instrument()")
        self.tenant_label = tenant_label
        self._code = BoundedValues(max_codes)
        run = f.RUNS_STARTED.labels if tenant_label else ("pipeline",)
        self.runs_started = self._counter(f.RUNS_STARTED, run)
        self.runs_completed = self._counter(f.RUNS_COMPLETED, run)
        self.runs_failed = self._counter(f.RUNS_FAILED, (*run, "code"))
        self.runs_cancelled = self._counter(f.RUNS_CANCELLED, run)
        self.run_cost = self._counter(f.RUN_COST, run)
        self.step_retries = self._counter(f.RETRIES, f.RETRIES.labels)
        self.step_duration = self._histogram(f.STEP_DURATION)
        self.queue_wait = self._histogram(f.QUEUE_WAIT)
        self.provider_wait = self._histogram(f.PROVIDER_WAIT)
        self._handlers: dict[str, Callable[[PipelineRun, PipelineEvent], None]] = {
            "run-started": self._run_started,
            "run-completed": self._run_completed,
            "run-failed": self._run_failed,
            "run-cancelled": self._run_cancelled,
            "step-started": self._step_started,
            "step-completed": self._step_ended,
            "step-cached": self._step_ended,
            "step-failed": self._step_ended,
            "step-gated": self._step_gated,
        }
        _BY_REGISTRY[self.registry] = self

    def _counter(self, family: f.Family, labels: tuple[str, ...]) -> Counter:
        return Counter(family.name, family.documentation, labels, registry=self.registry)

    def _histogram(self, family: f.Family) -> Histogram:
        return Histogram(
            family.name,
            family.documentation,
            family.labels,
            registry=self.registry,
            buckets=family.buckets,
        )

    def observe(self, mp: MpState) -> RunMetrics:
        """Count ``mp``'s transitions from now on (once, however often it is called); under
        multiprocess mode also drop a pool child's live files when it exits."""
        if self.transition not in mp.lifecycle.observers:
            mp.lifecycle.observers.append(self.transition)
        if multiprocess_dir() is not None:
            connect_worker_shutdown()
        return self

    def transition(self, run: PipelineRun, transition: Transition) -> None:
        """The observer (``mpstate.celery.lifecycle.Observer``): count what ``transition``
        committed on ``run``."""
        for event in transition.events:
            handler = self._handlers.get(event.kind)
            if handler is not None:
                handler(run, event)

    # -- runs -------------------------------------------------------------------------------

    def _run(self, run: PipelineRun) -> tuple[str, ...]:
        if self.tenant_label:
            return run.pipeline_id, run.tenant_id or ""
        return (run.pipeline_id,)

    def _run_started(self, run: PipelineRun, event: PipelineEvent) -> None:
        assert isinstance(event, RunStarted)
        self.runs_started.labels(*self._run(run)).inc()

    def _run_completed(self, run: PipelineRun, event: PipelineEvent) -> None:
        assert isinstance(event, RunCompleted)
        self.runs_completed.labels(*self._run(run)).inc()

    def _run_failed(self, run: PipelineRun, event: PipelineEvent) -> None:
        assert isinstance(event, RunFailed)
        self.runs_failed.labels(*self._run(run), self._code(event.code)).inc()

    def _run_cancelled(self, run: PipelineRun, event: PipelineEvent) -> None:
        assert isinstance(event, RunCancelled)
        self.runs_cancelled.labels(*self._run(run)).inc()

    # -- steps ------------------------------------------------------------------------------

    def _step_started(self, run: PipelineRun, event: PipelineEvent) -> None:
        """Queue wait, for a start that follows a publish by mpstate: not a redelivery, and not
        a Celery retry of a failed attempt (republished by Celery, not stamped ``queued_at``)."""
        assert isinstance(event, StepStarted)
        step = run.step(event.step_id)
        if step.queued_at is None or (event.meta or {}).get("redelivered"):
            return
        error = step.last_error
        if error is not None and error.at > step.queued_at:
            return
        self.queue_wait.labels(step.operation).observe(_seconds(step.queued_at, event.at))

    def _step_ended(self, run: PipelineRun, event: PipelineEvent) -> None:
        assert isinstance(event, StepCompleted | StepCached | StepFailed)
        step = run.step(event.step_id)
        if isinstance(event, StepFailed) and event.retryable:
            self.step_retries.labels(step.operation).inc()
        elif step.started_at is not None:  # a step carried over by a re-run never started
            outcome = {"step-completed": "completed", "step-cached": "cached"}.get(
                event.kind, "failed"
            )
            self.step_duration.labels(step.operation, outcome).observe(
                _seconds(step.started_at, event.at)
            )
        if isinstance(event, StepCompleted) and event.cost_usd > 0:
            self.run_cost.labels(*self._run(run)).inc(event.cost_usd)
        self._provider_answered(
            step, event, "failed" if isinstance(event, StepFailed) else "completed"
        )

    def _step_gated(self, run: PipelineRun, event: PipelineEvent) -> None:
        """A provider's result that waits for a person ends the provider's wait too."""
        assert isinstance(event, StepGated)
        if event.verdict == AWAITING_APPROVAL:
            self._provider_answered(run.step(event.step_id), event, "completed")

    def _provider_answered(self, step: StepState, event: PipelineEvent, outcome: str) -> None:
        """The provider wait, when ``event`` applies a provider's answer: the lifecycle stamps
        ``provider`` and ``jobId`` on the events of an answer (webhook, poll or deadline)."""
        meta = event.meta or {}
        provider, job_id = meta.get("provider"), meta.get("jobId")
        if not (isinstance(provider, str) and isinstance(job_id, str)):
            return
        for job in reversed(step.external_jobs):
            if job.provider == provider and job.job_id == job_id:
                self.provider_wait.labels(provider, outcome).observe(_seconds(job.since, event.at))
                return


def _seconds(since: datetime, at_ms: int) -> float:
    """Seconds from ``since`` to the event time ``at_ms`` (never negative: clocks differ
    between hosts)."""
    return max(0.0, (at_ms - epoch_ms(since)) / 1000)
