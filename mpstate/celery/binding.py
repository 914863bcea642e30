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
import uuid
import weakref
from collections.abc import Mapping, Sequence
from hashlib import sha256
from typing import Any

from celery import Celery

from mpstate.celery.hooks import StepHooks, request_meta
from mpstate.celery.identity import ATTEMPT_BASE, StepIdentity
from mpstate.celery.lifecycle import StepLifecycle
from mpstate.celery.reconciler import Reconciler, ReconcileReport
from mpstate.celery.signals import SignalReceivers
from mpstate.celery.transitions import fail_awaiting_step, resume_step, start_run
from mpstate.celery.webhook import PayloadAdapter, ProviderError, WebhookOutcome, default_adapter
from mpstate.errors import InvalidInputError, MpStateError
from mpstate.events import EventMeta
from mpstate.models import PipelineRun, PipelineRunStatus, StepState, StepStatus
from mpstate.store import PipelineStateStore, check_id

__all__ = ["MpState", "revoke_running_steps"]

log = logging.getLogger("mpstate.celery")

_BOUND: weakref.WeakKeyDictionary[Celery, MpState] = weakref.WeakKeyDictionary()

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
        conf = app.conf
        if store is None:
            url = conf.get("mpstate_store_url")
            if not url:
                raise InvalidInputError("pass a store, or set app.conf.mpstate_store_url")
            from mpstate.redis import RedisPipelineStateStore  # noqa: PLC0415 - optional extra

            store = RedisPipelineStateStore.from_url(url)
        self.app = app
        self.store = store
        self.lifecycle = StepLifecycle(
            store,
            self._enqueue,
            outage_window_s=float(conf.get("mpstate_outage_window_s", 60.0)),
        )
        self.hooks = StepHooks(self.lifecycle)
        self.webhook_retry_interval_s = float(conf.get("mpstate_webhook_retry_interval_s", 2.0))
        #: How a step's task is published after the commit that decided it: retried through a
        #: broker outage about as long as a transition rides out a store outage (kombu's
        #: default gives up after 0.6 s, and the advancement would wait for the reconciler).
        self.publish_retry_policy: dict[str, float] = dict(
            conf.get("mpstate_publish_retry_policy")
            or {"max_retries": 30, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}
        )
        self.webhook_unknown_window_s = float(conf.get("mpstate_webhook_unknown_window_s", 300.0))
        self._adapters: dict[str, PayloadAdapter] = {}
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
        """Drop pooled Redis connections (called in each new prefork child)."""
        client = getattr(self.store, "client", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.reset()

    # -- runs -------------------------------------------------------------------------------

    def start_run(
        self,
        pipeline_id: str,
        steps: Sequence[StepState | Mapping[str, Any]],
        *,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        budget: Mapping[str, Any] | None = None,
    ) -> PipelineRun:
        """Create the run, log run-created and run-started, and enqueue its first step.

        With an ``idempotency_key`` already used by a live run of the tenant, that run is
        returned and nothing is enqueued, unless it was never started (a call that failed
        between creating and starting it): it is started now. ``inputs`` are defaults for every
        step's inputs; a step's ``operation`` is the name of the Celery task that runs it.
        """
        check_id(pipeline_id, "pipeline_id")
        if isinstance(steps, str | bytes) or not steps:
            raise InvalidInputError("a run needs at least one step")
        defaults = dict(inputs or {})
        step_states = []
        for step in steps:
            state = step if isinstance(step, StepState) else StepState.model_validate(dict(step))
            step_states.append(state.model_copy(update={"inputs": {**defaults, **state.inputs}}))
        definition = "\n".join(f"{s.step_id}\t{s.operation}" for s in step_states)
        run = PipelineRun(
            run_id=run_id or uuid.uuid4().hex,
            pipeline_id=pipeline_id,
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            steps=step_states,
            budget=dict(budget) if budget is not None else None,
            pipeline_def_hash=sha256(definition.encode()).hexdigest()[:16],
        )
        stored, _ = self.store.create_or_get(run)
        # Also for a run that existed already: a caller retrying after a failure between create
        # and start must start it. Of racing callers exactly one commits run-started and enqueues.
        committed = self.lifecycle.apply(stored.run_id, start_run, known=stored)
        if committed.changed:  # not if it was started already, or cancelled in between
            self._enqueue(committed.run, committed.run.steps[0], None)
        return committed.run

    def cancel_run(self, run_id: str, reason: str, *, terminate: bool = False) -> PipelineRun:
        """Cancel the run in the store, then revoke its in-flight step task.

        After the cancel commits, no transition applies to the run any more: a step still
        running finishes without effect and no later step is enqueued. ``terminate=True`` also
        kills the process executing the step (prefork workers).
        """
        run = self.store.cancel(run_id, reason)
        revoke_running_steps(self.app, run, terminate=terminate)
        return run

    # -- webhooks ---------------------------------------------------------------------------

    def register_adapter(self, provider: str, adapter: PayloadAdapter) -> None:
        """Use ``adapter`` to read ``provider``'s webhook payloads."""
        check_id(provider, "provider")
        if not callable(adapter):
            raise InvalidInputError("adapter must be callable")
        self._adapters[provider] = adapter

    def adapter_for(self, provider: str) -> PayloadAdapter:
        """The adapter that reads ``provider``'s payloads (``default_adapter`` if none is set)."""
        return self._adapters.get(provider, default_adapter)

    def resolve(
        self,
        provider: str,
        job_id: str,
        payload: Mapping[str, Any],
        *,
        meta: EventMeta | None = None,
    ) -> str:
        """Apply a provider callback to its run; returns what happened (for logs and tests).

        ``"unknown"``: no run recorded this job (yet); ``"ignored"``: a duplicate or late callback;
        ``"resumed"``: the step completed and the run advanced; ``"failed"``: the step failed.
        """
        outcome: WebhookOutcome = self.adapter_for(provider)(payload)
        run = self.store.find_by_external_job_id(provider, job_id)
        if run is None:
            return "unknown"
        step = _awaiting_step(run)
        if step is None:
            return "ignored"
        meta = {**(meta or {}), "provider": provider, "jobId": job_id}
        if outcome.status == "succeeded":
            result = outcome.step_result()
            committed = self.lifecycle.apply(
                run.run_id,
                lambda current: resume_step(
                    current,
                    step.step_id,
                    artifact_ids=result.artifact_ids,
                    cost_usd=result.cost_usd,
                    meta=meta,
                ),
                known=run,
            )
            return "resumed" if committed.changed else "ignored"
        error = outcome.error or ProviderError()
        default_max_retries = self.default_max_retries(step)
        committed = self.lifecycle.apply(
            run.run_id,
            lambda current: fail_awaiting_step(
                current,
                step.step_id,
                code=error.code,
                message=error.message,
                retryable=error.retryable,
                default_max_retries=default_max_retries,
                meta=meta,
            ),
            known=run,
        )
        return "failed" if committed.changed else "ignored"

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
        @self.app.task(  # type: ignore[untyped-decorator]
            name=RESOLVE_WEBHOOK, bind=True, max_retries=None, shared=False
        )
        def resolve_webhook(self: Any, provider: str, job_id: str, payload: dict[str, Any]) -> str:
            """Resolve a provider callback; an unknown job is retried for a bounded window."""
            # The MpState bound now (Celery keeps the first registration of a task name).
            mp = MpState.of(self.app)
            result = mp.resolve(provider, job_id, payload, meta=request_meta(self.request))
            if result == "unknown":
                waited = (self.request.retries or 0) * mp.webhook_retry_interval_s
                if waited < mp.webhook_unknown_window_s:
                    raise self.retry(countdown=mp.webhook_retry_interval_s)
                log.warning(
                    "webhook for unknown job %s/%s dropped after %.0f s", provider, job_id, waited
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
            }

        self.reconcile_task = reconcile

    # -- enqueueing -------------------------------------------------------------------------

    def _enqueue(self, run: PipelineRun, step: StepState, task_id: str | None) -> None:
        identity = StepIdentity(run.run_id, step.step_id, is_step=True)
        kwargs = dict(step.inputs)
        task = self.app.tasks.get(step.operation)
        if getattr(task, "mpstate_step_task", False):
            kwargs.update(identity.kwargs())
        headers = {**identity.headers(), ATTEMPT_BASE: step.attempts}
        self.app.send_task(
            step.operation,
            kwargs=kwargs,
            headers=headers,
            task_id=task_id,
            retry=True,
            retry_policy=self.publish_retry_policy,
        )


def revoke_running_steps(app: Celery, run: PipelineRun, *, terminate: bool = False) -> list[str]:
    """Revoke the Celery task of each running step of ``run``; returns the revoked task ids.

    For a run already cancelled in the store: a revoked message is dropped by the workers, and
    ``terminate=True`` also kills a prefork child executing it.
    """
    task_ids = [
        step.task_id for step in run.steps if step.status is StepStatus.RUNNING and step.task_id
    ]
    for task_id in task_ids:
        app.control.revoke(task_id, terminate=terminate)
    return task_ids


def _awaiting_step(run: PipelineRun) -> StepState | None:
    if run.status is not PipelineRunStatus.SUSPENDED or run.current_step_index >= len(run.steps):
        return None
    step = run.steps[run.current_step_index]
    return step if step.status is StepStatus.RUNNING else None
