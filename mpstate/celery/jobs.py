"""External jobs: a provider's answer, by webhook or by poll, reaching the step that waits for it.

Every answer takes one path, ``ExternalJobs.resolve_outcome``: find the run that recorded the job
(``find_by_external_job_id``) and the step that awaited it (``PipelineRun.step_of_job``), check the
step still waits for exactly that job, then either log progress (the job still runs) or hand the
terminal answer to ``StepLifecycle.resolve_job``, whose versioned commit applies it once. So a
webhook, its retries and a poll racing each other resume the step exactly once, and a callback for
a job of an earlier attempt is ``ignored``.

**Pollers** (``register_poller``) serve providers that never call back (Runway, Stability, Google
Veo) and back up those whose retries give up (Replicate retries its final callback for about a
minute). When a step starts waiting on such a provider, ``mpstate.poll_job`` is published with a
countdown; each "still running" answer is logged as step-progress and the next poll waits
``poll_backoff`` times longer, up to ``poll_max_interval_s``; polling stops at a terminal answer,
when the step no longer waits for the job, or at its deadline.

**Deadlines.** Every wait has one (``await_external(timeout_s=...)``, else the provider's or the
global default, 24 h): a step with no answer by then fails with ``external-timeout``, retried
within its limit (``expire``, called by the reconciler, and by a poll that finds it late). It is
enforced from the store alone, so it holds even if every worker restarted meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from celery import Celery

from mpstate._checks import check_id
from mpstate.celery.adapters import ADAPTERS
from mpstate.celery.lifecycle import StepLifecycle
from mpstate.celery.settings import CelerySettings
from mpstate.celery.transitions import EXTERNAL_TIMEOUT, awaits_job
from mpstate.celery.webhook import PayloadAdapter, ProviderError, WebhookOutcome, default_adapter
from mpstate.errors import InvalidInputError
from mpstate.events import EventMeta, StepProgress
from mpstate.fields import utc_now
from mpstate.models import ExternalJob, PipelineRun, StepState, StepStatus
from mpstate.store import PipelineStateStore
from mpstate.tracing import resolve_span

__all__ = [
    "POLL_JOB",
    "ExternalJobs",
    "Poller",
    "Resolution",
    "WaitingStep",
    "overdue",
    "waiting_steps",
]

log = logging.getLogger("mpstate.celery")

#: Name of the task that polls a provider for a waiting step's job.
POLL_JOB = "mpstate.poll_job"

#: Asks a provider for a job's state: a terminal outcome, or ``status="running"``.
Poller = Callable[[str], WebhookOutcome]


class Resolution(StrEnum):
    """What one provider answer did."""

    #: No run recorded this job (yet: a callback can overtake the step that submitted the job).
    UNKNOWN = "unknown"
    #: A duplicate, late or superseded answer: nothing changed.
    IGNORED = "ignored"
    #: The step completed and the run advanced.
    RESUMED = "resumed"
    #: The step failed (it runs again if the failure is retryable within its limit).
    FAILED = "failed"
    #: The job still runs: logged as step-progress, the step keeps waiting.
    PROGRESS = "progress"


class JobsHost(Protocol):
    """What ``ExternalJobs`` needs of an ``MpState`` (a protocol: no import cycle)."""

    @property
    def app(self) -> Celery: ...

    @property
    def store(self) -> PipelineStateStore: ...

    @property
    def lifecycle(self) -> StepLifecycle: ...

    @property
    def settings(self) -> CelerySettings: ...

    def default_max_retries(self, step: StepState) -> int | None: ...


@dataclass(frozen=True, slots=True)
class WaitingStep:
    """A step waiting for a provider's job, as a scan saw it."""

    run: PipelineRun
    step: StepState
    job: ExternalJob


class ExternalJobs:
    """Adapters, pollers and deadlines of one ``MpState``, and the one path answers take."""

    def __init__(self, host: JobsHost) -> None:
        self.host = host
        self._adapters: dict[str, PayloadAdapter] = {}
        self._pollers: dict[str, Poller] = {}

    # -- configuration ----------------------------------------------------------------------

    def register_adapter(self, provider: str, adapter: PayloadAdapter) -> None:
        """Use ``adapter`` to read ``provider``'s webhook payloads."""
        check_id(provider, "provider")
        if not callable(adapter):
            raise InvalidInputError("adapter must be callable")
        self._adapters[provider] = adapter

    def adapter_for(self, provider: str) -> PayloadAdapter:
        """The registered adapter, else the preset of a provider of that name (``replicate``,
        ``openai``, ``fal``, ``elevenlabs``, ``luma``), else ``default_adapter``."""
        return self._adapters.get(provider) or ADAPTERS.get(provider, default_adapter)

    def register_poller(self, provider: str, poller: Poller) -> None:
        """Poll ``provider`` for the jobs steps wait for: ``poller(job_id)`` returns the job's
        ``WebhookOutcome`` (``status="running"`` while it runs)."""
        check_id(provider, "provider")
        if not callable(poller):
            raise InvalidInputError("poller must be callable")
        self._pollers[provider] = poller

    def has_poller(self, provider: str) -> bool:
        return provider in self._pollers

    # -- answers ----------------------------------------------------------------------------

    def resolve(
        self,
        provider: str,
        job_id: str,
        payload: Mapping[str, Any],
        *,
        meta: EventMeta | None = None,
    ) -> Resolution:
        """Read a callback's payload with the provider's adapter and apply it."""
        outcome = self.adapter_for(provider)(payload)
        return self.resolve_outcome(provider, job_id, outcome, meta=meta)

    def resolve_outcome(
        self,
        provider: str,
        job_id: str,
        outcome: WebhookOutcome,
        *,
        meta: EventMeta | None = None,
    ) -> Resolution:
        """Apply one answer about ``provider``'s job ``job_id`` to the step waiting for it."""
        host = self.host
        run = host.store.find_by_external_job_id(provider, job_id)
        if run is None:
            return Resolution.UNKNOWN
        step = _step_of_job(run, provider, job_id)
        if step is None or not awaits_job(run, step, provider, job_id):
            return Resolution.IGNORED
        meta = {**(meta or {}), "provider": provider, "jobId": job_id}
        if outcome.status == "running":
            host.store.append_event(
                run.run_id,
                StepProgress(
                    run_id=run.run_id,
                    step_id=step.step_id,
                    pct=outcome.progress_pct or 0.0,
                    message=outcome.message,
                    meta=meta,
                ),
            )
            return Resolution.PROGRESS
        with resolve_span(run, step.step_id, provider):
            committed = host.lifecycle.resolve_job(
                run,
                step,
                outcome,
                provider=provider,
                job_id=job_id,
                retry_limit=host.default_max_retries(step),
                meta=meta,
            )
        if not committed.changed:
            return Resolution.IGNORED
        return Resolution.RESUMED if outcome.status == "succeeded" else Resolution.FAILED

    # -- polling ----------------------------------------------------------------------------

    def waiting_started(self, run_id: str, step_id: str, provider: str, job_id: str) -> None:
        """A step began waiting for ``job_id``: schedule its first poll, if ``provider`` has a
        poller."""
        if self.has_poller(provider):
            self.schedule_poll(run_id, step_id, provider, job_id, polls=0)

    def schedule_poll(
        self, run_id: str, step_id: str, provider: str, job_id: str, *, polls: int
    ) -> None:
        """Publish the next poll of a job, ``polls`` polls after the first."""
        settings = self.host.settings
        delay = min(
            settings.poll_max_interval_s,
            settings.poll_interval_s * settings.poll_backoff**polls,
        )
        self.host.app.send_task(
            POLL_JOB, args=(run_id, step_id, provider, job_id, polls), countdown=delay
        )

    def poll(self, run_id: str, step_id: str, provider: str, job_id: str, polls: int) -> str:
        """One poll (the ``mpstate.poll_job`` task): ask the provider, apply its answer, and
        schedule the next poll while the job runs and the step still waits for it."""
        poller = self._pollers.get(provider)
        run = self.host.store.get(run_id, include_events=False)
        if poller is None or run is None:
            return "stopped"
        step = run.step(step_id)
        if not awaits_job(run, step, provider, job_id):
            return "stopped"  # answered meanwhile (a webhook), superseded, or the run ended
        job = step.awaited_job
        if job is not None and _past(job.deadline):
            return str(self.expire(WaitingStep(run, step, job)))
        outcome = poller(job_id)
        resolution = self.resolve_outcome(provider, job_id, outcome, meta={"via": "poll"})
        if resolution is Resolution.PROGRESS:
            self.schedule_poll(run_id, step_id, provider, job_id, polls=polls + 1)
        return str(resolution)

    # -- deadlines --------------------------------------------------------------------------

    def expire(self, waiting: WaitingStep) -> Resolution:
        """Fail a wait that reached its deadline with ``external-timeout`` (retryable: the step
        runs again within its retry limit, else the run fails)."""
        job = waiting.job
        seconds = (job.deadline - job.since).total_seconds() if job.deadline else 0.0
        outcome = WebhookOutcome(
            status="failed",
            job_id=job.job_id,
            error=ProviderError(
                code=EXTERNAL_TIMEOUT,
                message=f"no answer from {job.provider} for job {job.job_id} in {seconds:.0f} s",
                retryable=True,
            ),
        )
        return self.resolve_outcome(
            job.provider, job.job_id, outcome, meta={"by": "deadline", "deadlineS": seconds}
        )


def waiting_steps(run: PipelineRun) -> list[WaitingStep]:
    """Each step of ``run`` waiting for a provider's job, with the job."""
    found = []
    for step in run.steps:
        job = step.awaited_job
        if job is not None and step.status is StepStatus.WAITING:
            found.append(WaitingStep(run, step, job))
    return found


def overdue(waiting: WaitingStep, now: datetime | None = None) -> bool:
    """Whether the wait is past its deadline."""
    return _past(waiting.job.deadline, now)


def _past(deadline: datetime | None, now: datetime | None = None) -> bool:
    return deadline is not None and deadline <= (now or utc_now())


def _step_of_job(run: PipelineRun, provider: str, job_id: str) -> StepState | None:
    """The step that awaited this job; for a run suspended before steps recorded their jobs,
    the step it was suspended on."""
    step = run.step_of_job(provider, job_id)
    if step is None and run.current_step_index < len(run.steps):
        return run.steps[run.current_step_index]
    return step
