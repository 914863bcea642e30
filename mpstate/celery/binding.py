"""``MpState``: binds a store to a Celery app and runs pipelines on it.

::

    app = Celery("media", broker="redis://localhost:6379/0")
    mp = MpState(app, RedisPipelineStateStore.from_url("redis://localhost/1"))
    run = mp.start_run("product-photo", [
        {"stepId": "generate", "operation": "image.generate", "inputs": {"prompt": "a bike"}},
        {"stepId": "upscale", "operation": "image.upscale"},
    ], tenant_id="acme", idempotency_key="order-42")

Without a store argument the store comes from ``app.conf.mpstate_store_url`` (a Redis URL).
Creating an ``MpState`` connects the signal receivers and registers ``mpstate.resolve_webhook``;
``close()`` disconnects them.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery
from celery.canvas import Signature

from mpstate._checks import check_id
from mpstate.budget import MAX_USD, check_budget
from mpstate.celery.canvas import is_canvas, steps_from_canvas
from mpstate.celery.identity import ATTEMPT_BASE, RUN_VERSION, StepIdentity, request_meta
from mpstate.celery.jobs import POLL_JOB, ExternalJobs, Poller
from mpstate.celery.lifecycle import StepLifecycle
from mpstate.celery.reconciler import Reconciler, ReconcileReport
from mpstate.celery.settings import CelerySettings
from mpstate.celery.signals import SignalReceivers
from mpstate.celery.transitions import Transition
from mpstate.celery.webhook import PayloadAdapter, WebhookOutcome
from mpstate.definitions import fresh_step, new_run
from mpstate.deliveries import UnmatchedCallback, UnmatchedReason
from mpstate.errors import (
    InvalidInputError,
    MpStateError,
    VersionConflictError,
)
from mpstate.events import EventMeta, RunCancelled
from mpstate.fields import utc_now
from mpstate.graph import active_steps
from mpstate.models import FailurePolicy, PipelineRun, StepState
from mpstate.rerun import carried_steps, rerun_id
from mpstate.store import PipelineStateStore
from mpstate.tracing import new_run_context, publishing

__all__ = ["MpState", "revoke_running_steps"]

log = logging.getLogger("mpstate.celery")

_BOUND: weakref.WeakKeyDictionary[Celery, MpState] = weakref.WeakKeyDictionary()
#: The tasks each app got from its first MpState. An MpState bound to the app later (after
#: ``close()``, as the pytest plugin does for each test) reuses them: they run on the MpState
#: bound when they execute, and Celery warns about a second registration of a task name.
_TASKS: weakref.WeakKeyDictionary[Celery, tuple[Any, Any, Any]] = weakref.WeakKeyDictionary()

#: Times a re-run looks again after another caller reserved one first.
_RERUN_RACES = 10
#: Re-runs of re-runs ``start_run`` follows from a run found by its idempotency key.
_RERUN_CHAIN_LIMIT = 100

#: Celery's default ``Task.max_retries``, for a step whose task is not registered here.
_CELERY_MAX_RETRIES = 3

#: Name of the webhook task every MpState registers.
RESOLVE_WEBHOOK = "mpstate.resolve_webhook"
#: Name of the reconciler task every MpState registers (put it in your beat schedule).
RECONCILE = "mpstate.reconcile"


class MpState:
    """A store bound to a Celery app: signal hooks, step advancement, webhook resume."""

    def __init__(self, app: Celery, store: PipelineStateStore | None = None) -> None:
        if app in _BOUND:
            raise MpStateError("this Celery app already has an MpState; close() it first")
        #: Every ``app.conf.mpstate_*`` setting, read and validated once (before any connection).
        self.settings = settings = CelerySettings.from_conf(app.conf)
        if store is None:
            if not settings.store_url:
                raise InvalidInputError("pass a store, or set app.conf.mpstate_store_url")
            from mpstate.redis import RedisPipelineStateStore  # noqa: PLC0415 - optional extra

            store = RedisPipelineStateStore.from_url(settings.store_url)
        self.app = app
        self.store = store
        self.lifecycle = StepLifecycle(
            store,
            self._enqueue,
            revoke=self._revoke,
            outage_window_s=settings.outage_window_s,
        )
        # Shorthands of ``settings`` for the webhook task and ``_enqueue``.
        self.webhook_retry_interval_s = settings.webhook_retry_interval_s
        self.webhook_unknown_window_s = settings.webhook_unknown_window_s
        self.publish_retry_policy: dict[str, Any] = dict(settings.publish_retry_policy)
        #: Adapters, pollers and deadlines of provider jobs (``mpstate.celery.jobs``).
        self.jobs = ExternalJobs(self)
        self._receivers = SignalReceivers(self)
        self._receivers.connect()
        self._register_tasks()
        _BOUND[app] = self

    @classmethod
    def of(cls, app: Celery) -> MpState:
        """The ``MpState`` bound to ``app``."""
        try:
            return _BOUND[app]
        except KeyError:
            raise MpStateError(f"no MpState is bound to Celery app {app.main!r}") from None

    def close(self) -> None:
        """Disconnect the signal receivers and unbind from the app."""
        self._receivers.disconnect()
        _BOUND.pop(self.app, None)

    def reset_connections(self) -> None:
        """Forget the store's pooled connections (called in each new prefork child)."""
        self.store.reset_connections()

    # -- runs -------------------------------------------------------------------------------

    def start_run(
        self,
        pipeline_id: str,
        steps: Sequence[StepState | Mapping[str, Any]] | Signature,
        *,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        budget: Mapping[str, Any] | None = None,
        failure_policy: FailurePolicy | str = FailurePolicy.FAIL_FAST,
    ) -> PipelineRun:
        """Create the run, log run-created and run-started, and publish the steps that depend on
        no other step (the first step of a linear run).

        ``steps`` is a list of steps (``StepState`` or mappings; ``depends_on`` makes it a graph)
        or a Celery signature or canvas (chain, group, chord, nested) of registered tasks, which
        becomes one run whose steps mirror it (``mpstate.celery.canvas``). A bad graph or an
        unmappable canvas raises ``InvalidPipelineError`` before anything is created.

        With an ``idempotency_key`` already used by a run of the tenant, that run is returned (its
        latest re-run, if it was re-run) and nothing is published, unless it was never started (a
        call that failed between creating and starting it): it is started now. ``inputs`` are
        defaults for every step's inputs; a step's ``operation`` is the name of the Celery task
        that runs it.
        ``failure_policy``: ``fail-fast`` (default) or ``finish-branches`` (``FailurePolicy``).
        ``budget={"maxUsd": 5.0}`` stops the run from starting a step that would cross it
        (``mpstate.budget``): the run is suspended (reason ``budget``) until ``resume``. A step's
        ``estimatedCostUsd`` defaults to its task's ``estimated_cost_usd``.
        """
        check_id(pipeline_id, "pipeline_id")
        if is_canvas(steps):
            steps = steps_from_canvas(self.app, steps)
        run = new_run(
            pipeline_id,
            steps,
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            inputs=inputs,
            run_id=run_id,
            budget=budget,
            failure_policy=failure_policy,
        )
        run = self._with_task_estimates(run)
        run.trace_context = new_run_context(pipeline_id, run.run_id)
        # Created already started (one write), its first steps published.
        stored, created = self.lifecycle.create_started(run)
        if created:
            return stored
        # A run that existed already (its idempotency key's): a caller retrying after a failure
        # between creating and starting it (an older mpstate created, then started) must start
        # it. Of racing callers exactly one commits run-started and publishes (the lifecycle
        # publishes what the winning commit made ready).
        return self.lifecycle.start_run(self._latest_rerun(stored))

    def _with_task_estimates(self, run: PipelineRun) -> PipelineRun:
        """``run`` with each step's missing cost estimate taken from its task's default."""
        defaults = {
            step.step_id: getattr(self.app.tasks.get(step.operation), "estimated_cost_usd", None)
            for step in run.steps
            if step.estimated_cost_usd is None
        }
        steps = [
            step.model_copy(update={"estimated_cost_usd": float(default)})
            if (default := defaults.get(step.step_id)) is not None
            else step
            for step in run.steps
        ]
        return run.model_copy(update={"steps": steps})

    # -- suspensions ------------------------------------------------------------------------

    def resume(
        self,
        run_id: str,
        token: str,
        *,
        budget: Mapping[str, Any] | None = None,
        by: str | None = None,
    ) -> PipelineRun:
        """Resume a run its budget suspended: the held steps start again, as far as the budget
        (its keys updated from ``budget``, e.g. ``{"maxUsd": 8.0}``) allows; run-resumed is
        logged from the first of them. Returns the run.

        ``token`` is the run's ``resume_token`` (single-use). Raises ``InvalidResumeTokenError``
        for a wrong, stale or used token, ``BudgetExceededError`` when the budget still stops
        every held step, ``InvalidTransitionError`` for a run that is finished or suspended for
        another reason: nothing changes then. Of concurrent resumes exactly one applies.
        """
        check_id(run_id, "run_id")
        token = _check_token(token)
        raised = check_budget(budget)
        meta = _operator_meta(by=by)
        if raised is not None and MAX_USD in raised:
            meta["maxUsd"] = float(raised[MAX_USD])
        return self.lifecycle.release_held(run_id, token, budget=raised, meta=meta).run

    def approve(
        self, run_id: str, token: str, *, by: str | None = None, note: str | None = None
    ) -> PipelineRun:
        """Approve the step waiting for a verdict with ``token`` (the run's ``resume_token``
        when it is suspended for a gate, else the step's ``approval.token``): step-gated
        ``approved`` (``by`` and ``note`` in its meta), run-resumed, and the step completes with
        the result it waited with. Raises ``InvalidResumeTokenError`` for a wrong or used token
        and ``InvalidTransitionError`` for a finished run; of concurrent verdicts exactly one
        applies."""
        return self._verdict(run_id, token, approved=True, by=by, note=note)

    def reject(
        self, run_id: str, token: str, *, by: str | None = None, note: str | None = None
    ) -> PipelineRun:
        """Reject the step waiting with ``token``: step-gated ``rejected`` and the run fails
        with ``gate-rejected`` (errors as ``approve``)."""
        return self._verdict(run_id, token, approved=False, by=by, note=note)

    def _verdict(
        self, run_id: str, token: str, *, approved: bool, by: str | None, note: str | None
    ) -> PipelineRun:
        check_id(run_id, "run_id")
        token = _check_token(token)
        meta = _operator_meta(by=by, note=note)
        return self.lifecycle.decide_gate(run_id, token, approved=approved, meta=meta).run

    def rerun(self, run_id: str, *, from_step: str | None = None, reason: str = "") -> PipelineRun:
        """Re-drive a failed or cancelled run as a new run, and return the new run.

        The original stays final and its log untouched; the two are linked both ways
        (``rerun_of`` on the new run, ``reruns`` on the original). The new run has the same
        pipeline, steps, tenant, budget and failure policy. Its idempotency key stays with the
        original; ``start_run`` with that key follows ``reruns`` and returns the latest re-run.
        It carries over the steps that succeeded and do not depend on ``from_step`` (by default
        the first step that did not succeed), logged as step-cached with their artifacts and
        outputs and no cost, and runs the rest (``mpstate.rerun``).

        Calling it again while the re-run is live returns that re-run; of callers racing to
        re-run one run, exactly one creates it. Raises ``InvalidTransitionError`` for a run that
        is live or completed, and ``InvalidInputError`` for an unknown ``from_step``.
        """
        check_id(run_id, "run_id")
        for _ in range(_RERUN_RACES):
            original = self.store.require(run_id, include_events=False)
            carried = carried_steps(original, from_step)
            new_id = self._rerun_id(original)
            if isinstance(new_id, PipelineRun):
                return new_id  # a re-run is under way already
            if new_id is None:
                continue  # another caller reserved a re-run meanwhile: look again
            return self._start_rerun(original, new_id, carried, reason)
        raise VersionConflictError(run_id, expected=-1, actual=-1)

    def _start_rerun(
        self, original: PipelineRun, new_id: str, carried: dict[str, StepState], reason: str
    ) -> PipelineRun:
        run = new_run(
            original.pipeline_id,
            [fresh_step(step) for step in original.steps],
            tenant_id=original.tenant_id,
            run_id=new_id,
            budget=original.budget,
            failure_policy=original.failure_policy,
            rerun_of=original.run_id,
        )
        run.trace_context = new_run_context(run.pipeline_id, run.run_id)
        stored, _ = self.store.create_or_get(run)
        meta: EventMeta = {"rerunOf": original.run_id, "reason": reason}
        return self.lifecycle.start_run(stored, carried, meta=meta)

    def _latest_rerun(self, run: PipelineRun) -> PipelineRun:
        """``run``, or the newest re-run of it (of its re-runs, and so on) that exists."""
        for _ in range(_RERUN_CHAIN_LIMIT):
            newer = next(
                (
                    found
                    for rerun_id_ in reversed(run.reruns)
                    if (found := self.store.get(rerun_id_, include_events=False)) is not None
                ),
                None,
            )
            if newer is None:
                return run
            run = newer
        return run

    def _rerun_id(self, original: PipelineRun) -> str | PipelineRun | None:
        """The id the next re-run of ``original`` gets, reserved on the original; the live re-run
        if there is one; None if another caller reserved one first."""
        if original.reruns:
            last = self.store.get(original.reruns[-1], include_events=False)
            if last is None:
                return original.reruns[-1]  # reserved, not created: an interrupted re-run
            if not last.is_terminal:
                return last
        new_id = rerun_id(original, len(original.reruns) + 1)
        reserved = self.lifecycle.reserve_rerun(original, new_id)
        return new_id if reserved else None

    def cancel_run(self, run_id: str, reason: str, *, terminate: bool = False) -> PipelineRun:
        """Cancel the run in the store, then revoke its in-flight step task.

        After the cancel commits, no transition applies to the run any more: a step still
        running finishes without effect and no later step is enqueued. ``terminate=True`` also
        kills the process executing the step (prefork workers).
        """
        asked_at = utc_now()
        run = self.store.cancel(run_id, reason)
        # A run cancelled earlier comes back unchanged: only a cancel committed by this call
        # (stamped completed_at after it began) is shown to the lifecycle's observers.
        if run.completed_at is not None and run.completed_at >= asked_at:
            cancelled = RunCancelled(run_id=run.run_id, reason=reason)
            self.lifecycle.notify(run, Transition({}, [cancelled]))
        revoke_running_steps(self.app, run, terminate=terminate)
        return run

    def _revoke(self, task_ids: Sequence[str]) -> None:
        """Revoke tasks a failed run no longer needs; best effort (a step that still runs
        finishes without effect: its completion is refused)."""
        try:
            for task_id in task_ids:
                self.app.control.revoke(task_id)
        except Exception as exc:  # the broker's errors vary by transport
            log.warning("could not revoke tasks %s: %r", list(task_ids), exc)

    # -- webhooks ---------------------------------------------------------------------------

    def register_adapter(self, provider: str, adapter: PayloadAdapter) -> None:
        """Use ``adapter`` to read ``provider``'s webhook payloads (over its preset, if any)."""
        self.jobs.register_adapter(provider, adapter)

    def adapter_for(self, provider: str) -> PayloadAdapter:
        """The adapter that reads ``provider``'s payloads: registered, preset, or the default."""
        return self.jobs.adapter_for(provider)

    def register_poller(self, provider: str, poller: Poller) -> None:
        """Poll ``provider`` for the jobs steps wait for (see ``mpstate.celery.jobs``)."""
        self.jobs.register_poller(provider, poller)

    def resolve(
        self,
        provider: str,
        job_id: str,
        payload: Mapping[str, Any],
        *,
        meta: EventMeta | None = None,
    ) -> str:
        """Apply a provider callback to its run; returns what happened (``Resolution``):
        ``unknown``, ``ignored``, ``resumed``, ``failed`` or ``progress``."""
        return str(self.jobs.resolve(provider, job_id, payload, meta=meta))

    def resolve_outcome(
        self,
        provider: str,
        job_id: str,
        outcome: WebhookOutcome,
        *,
        meta: EventMeta | None = None,
    ) -> str:
        """Like ``resolve``, for an answer already read by an adapter (or a poller)."""
        return str(self.jobs.resolve_outcome(provider, job_id, outcome, meta=meta))

    def record_unmatched(
        self, provider: str, job_id: str | None, detail: str, *, delivery_id: str | None = None
    ) -> UnmatchedCallback:
        """Keep a callback that can never reach a step where operators see it (``mpstate webhooks
        unmatched``, metrics): the job id is recorded under another provider, or by no run."""
        others = (
            [p for p in self.store.find_job_providers(job_id) if p != provider] if job_id else []
        )
        if others:
            reason = UnmatchedReason.OTHER_PROVIDER
            detail = f"job {job_id!r} is recorded under provider {', '.join(map(repr, others))}"
        else:
            reason = UnmatchedReason.UNKNOWN_JOB
        callback = UnmatchedCallback(
            provider=provider,
            job_id=job_id,
            reason=reason,
            detail=detail,
            delivery_id=delivery_id,
        )
        self.store.record_unmatched(callback)
        log.warning("unmatched callback from %s for job %s: %s", provider, job_id, detail)
        return callback

    def default_max_retries(self, step: StepState) -> int | None:
        """The retry limit of the step's task (Celery's default, 3, when it is not registered
        here); the step's own ``max_retries`` takes precedence over it."""
        task = self.app.tasks.get(step.operation)
        return task.max_retries if task is not None else _CELERY_MAX_RETRIES

    def reconcile(
        self, *, stale_after_s: float, policy: str = "requeue", dry_run: bool = False
    ) -> ReconcileReport:
        """Find steps stalled for ``stale_after_s`` and re-enqueue or fail them (see
        ``mpstate.celery.reconciler``)."""
        return Reconciler(self, stale_after_s=stale_after_s, policy=policy).run_once(
            dry_run=dry_run
        )

    def _register_tasks(self) -> None:
        registered = _TASKS.get(self.app)
        if registered is not None:
            self.resolve_webhook, self.reconcile_task, self.poll_job = registered
            return

        @self.app.task(  # type: ignore[untyped-decorator]
            name=RESOLVE_WEBHOOK, bind=True, max_retries=None, shared=False
        )
        def resolve_webhook(
            self: Any,
            provider: str,
            job_id: str,
            payload: dict[str, Any],
            delivery_id: str | None = None,
        ) -> str:
            """Resolve a provider callback; an unknown job is retried for a bounded window, then
            kept as unmatched (with the provider's delivery id, when it sent one)."""
            # The MpState bound now (Celery keeps the first registration of a task name).
            mp = MpState.of(self.app)
            result = mp.resolve(provider, job_id, payload, meta=request_meta(self.request))
            if result == "unknown":
                waited = (self.request.retries or 0) * mp.webhook_retry_interval_s
                if waited < mp.webhook_unknown_window_s:
                    raise self.retry(countdown=mp.webhook_retry_interval_s)
                mp.record_unmatched(
                    provider,
                    job_id,
                    f"no run recorded the job within {waited:.0f} s",
                    delivery_id=delivery_id,
                )
                return "dropped"
            return result

        self.resolve_webhook = resolve_webhook

        @self.app.task(name=RECONCILE, bind=True, shared=False, ignore_result=True)  # type: ignore[untyped-decorator]
        def reconcile(
            self: Any, stale_after_s: float = 600.0, policy: str = "requeue"
        ) -> dict[str, int]:
            """One reconciler pass, for a beat schedule; returns what it did, by count."""
            report = MpState.of(self.app).reconcile(stale_after_s=stale_after_s, policy=policy)
            return {
                "stalled": len(report.stalled),
                "requeued": len(report.requeued),
                "failed": len(report.failed),
                "skipped": len(report.skipped),
                "expired": len(report.expired),
                "repolled": len(report.repolled),
                "timed_out": len(report.timed_out),
            }

        self.reconcile_task = reconcile

        @self.app.task(name=POLL_JOB, bind=True, shared=False, ignore_result=True)  # type: ignore[untyped-decorator]
        def poll_job(  # noqa: PLR0917 - the task's message arguments
            self: Any, run_id: str, step_id: str, provider: str, job_id: str, polls: int
        ) -> str:
            """Poll a provider for a waiting step's job (see ``mpstate.celery.jobs``)."""
            mp = MpState.of(self.app)
            return mp.jobs.poll(run_id, step_id, provider, job_id, polls)

        self.poll_job = poll_job
        _TASKS[self.app] = (self.resolve_webhook, self.reconcile_task, self.poll_job)

    # -- enqueueing -------------------------------------------------------------------------

    def _enqueue(self, run: PipelineRun, step: StepState, task_id: str | None) -> None:
        identity = StepIdentity(run.run_id, step.step_id, is_step=True)
        kwargs = dict(step.inputs)
        task = self.app.tasks.get(step.operation)
        if getattr(task, "mpstate_step_task", False):
            kwargs.update(identity.kwargs())
        with publishing(run) as trace_headers:
            headers = {
                **trace_headers,
                **identity.headers(),
                ATTEMPT_BASE: step.attempts,
                RUN_VERSION: run.version,
            }
            self.app.send_task(
                step.operation,
                kwargs=kwargs,
                headers=headers,
                task_id=task_id,
                retry=True,
                retry_policy=self.publish_retry_policy,
            )


def _check_token(token: object) -> str:
    if not isinstance(token, str) or not token:
        raise InvalidInputError(f"token must be a non-empty string, not {token!r}")
    return token


def _operator_meta(**fields: str | None) -> EventMeta:
    """Who gave a verdict or resumed, for the event's meta (``by``, ``note``)."""
    meta: EventMeta = {}
    for name, value in fields.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidInputError(f"{name} must be a string, not {value!r}")
        meta[name] = value
    return meta


def revoke_running_steps(app: Celery, run: PipelineRun, *, terminate: bool = False) -> list[str]:
    """Revoke the Celery task of each running or queued step of ``run``; returns the task ids.

    For a run already cancelled in the store: a revoked message is dropped by the workers, and
    ``terminate=True`` also kills a prefork child executing it. A step waiting for a provider has
    no task to revoke (the provider's job is not cancelled).
    """
    task_ids = [step.task_id for step in active_steps(run.steps) if step.task_id]
    for task_id in task_ids:
        app.control.revoke(task_id, terminate=terminate)
    return task_ids
