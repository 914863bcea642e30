"""``StepLifecycle``: the one owner of decide -> commit -> publish for every run transition.

Every entry point calls one of its methods and nothing else: ``PipelineTask``'s hooks and helpers
(start, complete, fail, gate, await), the signal receivers for plain tasks, the webhook receiver
and poller (``resolve_job``), the reconciler (``recover_steps``), ``MpState.start_run`` and
``MpState.rerun``. Each method asks one pure function of ``mpstate.celery.transitions`` what to
write; the ``Committer`` commits it at the version it was decided on (``mpstate.celery.commits``:
conflicts, outages, one deadline); and only the commit's winner then publishes the 0..N steps that
commit made ready and revokes the tasks a failed run no longer needs. So advancement happens once
per commit, whoever calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mpstate.celery.commits import Committed, Committer, Decide
from mpstate.celery.identity import StepIdentity
from mpstate.celery.published import PublishedRuns
from mpstate.celery.results import StepResult
from mpstate.celery.transitions import (
    Transition,
    await_approval,
    complete_step,
    decide_gate,
    expire_gate,
    fail_awaiting_step,
    fail_step,
    gate_step,
    progress_step,
    recover_steps,
    release_held,
    resume_step,
    start_run,
    start_step,
    suspend_step,
)
from mpstate.celery.webhook import ProviderError, WebhookOutcome
from mpstate.events import EventMeta, StepProgress
from mpstate.fields import utc_now
from mpstate.models import GateTimeout, PipelineRun, StepState, StepStatus
from mpstate.patches import trusted_patch
from mpstate.store import PipelineStateStore

__all__ = ["Committed", "Observer", "StepLifecycle", "error_code"]

log = logging.getLogger("mpstate.celery")

#: Publishes a step's task: (run, step, the task id the commit recorded on the step).
Enqueue = Callable[[PipelineRun, StepState, str | None], None]
#: Revokes Celery tasks by id.
Revoke = Callable[[Sequence[str]], None]
#: Sees each committed transition, after its commit won (metrics, tracing): the run as written
#: and the transition. It must not raise; if it does, the error is logged and ignored.
Observer = Callable[[PipelineRun, Transition], None]


def error_code(exc: BaseException) -> str:
    """A failure's code: the exception's own ``code`` attribute if it is a string, else its type."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


class StepLifecycle:
    """Applies transitions to one store, then publishes what each commit made ready."""

    def __init__(
        self,
        store: PipelineStateStore,
        enqueue: Enqueue,
        *,
        outage_window_s: float = 60.0,
        revoke: Revoke | None = None,
    ) -> None:
        self.store = store
        self.enqueue = enqueue
        #: Revokes the tasks of steps a failed run no longer needs (best effort).
        self.revoke = revoke
        self.committer = Committer(store, outage_window_s=outage_window_s)
        #: Called with every committed transition (``Observer``), in order of registration.
        self.observers: list[Observer] = []
        #: The runs this process published steps from, to start them without a read.
        self.published = PublishedRuns()

    @property
    def outage_window_s(self) -> float:
        """How long one transition rides out a store outage."""
        return self.committer.outage_window_s

    def apply(self, run_id: str, decide: Decide, *, known: PipelineRun | None = None) -> Committed:
        """Commit what ``decide`` says on the current run, then publish and revoke what the
        commit asks for (only the winner of a race gets a transition back)."""
        committed = self.committer.apply(run_id, decide, known=known)
        if committed.transition is not None:
            self._carry_out(committed.run, committed.transition)
        return committed

    def _carry_out(self, run: PipelineRun, transition: Transition) -> None:
        """After ``transition`` was written, making ``run``: observers, publishes, revokes."""
        self.notify(run, transition)
        if transition.enqueue:
            self.published.remember(run)
        for step in transition.enqueue:
            self.enqueue(run, step, step.task_id)
        if transition.revoke and self.revoke is not None:
            self.revoke(transition.revoke)

    def notify(self, run: PipelineRun, transition: Transition) -> None:
        """Call each observer with a committed transition (``apply`` does; ``MpState.cancel_run``
        too, for the cancel the store commits itself)."""
        for observer in self.observers:
            try:
                observer(run, transition)
            except Exception:  # an observer never breaks a transition
                log.exception("mpstate: an observer of run %r failed", run.run_id)

    # -- runs -------------------------------------------------------------------------------

    def start_run(
        self,
        run: PipelineRun,
        carried: Mapping[str, StepState] | None = None,
        *,
        meta: EventMeta | None = None,
    ) -> PipelineRun:
        """run-started, and the steps that depend on nothing published (``carried``: the steps
        a re-run takes over, logged as step-cached in the same commit)."""
        return self.apply(
            run.run_id, lambda pending: start_run(pending, carried, meta=meta), known=run
        ).run

    def create_started(
        self, run: PipelineRun, *, meta: EventMeta | None = None
    ) -> tuple[PipelineRun, bool]:
        """Create ``run`` already started, in one write: run-created, then what ``start_run``
        logs; then publish the steps that depend on nothing. A run whose id or idempotency key
        exists already is returned as it is, with False: nothing written, nothing published (its
        caller starts it with ``start_run`` if it never was)."""
        transition = start_run(run, meta=meta)
        if transition is None:  # not a pending run: nothing to start
            return self.store.create_or_get(run)
        started = run.model_copy(update=trusted_patch(transition.patch).values)
        stored, created = self.store.create_or_get(started, events=transition.events)
        if created:
            self._carry_out(stored, transition)
        return stored, created

    def reserve_rerun(self, original: PipelineRun, rerun_id: str) -> bool:
        """Link ``rerun_id`` to ``original`` as its next re-run, unless another caller linked one
        since ``original`` was read (False: read it again)."""

        def decide(run: PipelineRun) -> Transition | None:
            if run.reruns != original.reruns:
                return None
            return Transition({"reruns": [*run.reruns, rerun_id]}, [])

        return self.apply(original.run_id, decide, known=original).changed

    # -- a step's task ----------------------------------------------------------------------

    def start_step(
        self,
        identity: StepIdentity,
        *,
        attempt: int,
        meta: EventMeta,
        published_version: int | None = None,
    ) -> PipelineRun | None:
        """Log step-started; the run to execute against, or None when the body must not run.

        ``published_version``: the run version in the step's message; when this process
        published it from that very version, the start is decided without reading the run."""
        task_id = str(meta.get("taskId") or "")
        known = self.published.take(
            identity.run_id, identity.step_id, version=published_version, task_id=task_id
        )
        committed = self.apply(
            identity.run_id,
            lambda run: start_step(
                run, identity.step_id, attempt=attempt, task_id=task_id, meta=meta
            ),
            known=known,
        )
        if not committed.changed:
            return None
        if committed.run.step(identity.step_id).status is StepStatus.HELD:
            log.info(
                "run %r step %r held back by the run's budget", identity.run_id, identity.step_id
            )
            return None
        return committed.run

    def complete_step(
        self,
        identity: StepIdentity,
        result: StepResult,
        *,
        meta: EventMeta,
        known: PipelineRun | None = None,
    ) -> Committed | None:
        """Log step-completed (or -cached) and publish what it made ready, unless the step
        awaits a provider (None then). ``known``: the run as step-started committed it."""
        if result.suspended:
            return None
        committed = self.apply(
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
        return committed

    def fail_step(
        self, identity: StepIdentity, exc: BaseException, *, retryable: bool, meta: EventMeta
    ) -> Committed:
        """Log step-failed; when it is final, the run fails (see ``FailurePolicy``)."""
        return self.apply(
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

    def gate_step(
        self, identity: StepIdentity, *, gate_type: str, verdict: str, passed: bool, meta: EventMeta
    ) -> Committed:
        """Log step-gated; a rejection fails the run."""
        return self.apply(
            identity.run_id,
            lambda run: gate_step(
                run,
                identity.step_id,
                gate_type=gate_type,
                verdict=verdict,
                passed=passed,
                meta=meta,
            ),
        )

    def suspend_step(
        self,
        identity: StepIdentity,
        *,
        provider: str,
        job_id: str,
        meta: EventMeta,
        timeout_s: float | None = None,
    ) -> Committed:
        """Record the provider job on the step (step-waiting) with its deadline; suspend the run
        if nothing else runs."""
        return self.apply(
            identity.run_id,
            lambda run: suspend_step(
                run,
                identity.step_id,
                provider=provider,
                job_id=job_id,
                meta=meta,
                timeout_s=timeout_s,
            ),
        )

    def report_progress(self, identity: StepIdentity, event: StepProgress) -> Committed:
        """Log step-progress that reports accrued cost, raising the step's accrued cost in the
        same commit (the budget counts it)."""
        return self.apply(identity.run_id, lambda run: progress_step(run, identity.step_id, event))

    def await_approval(
        self,
        identity: StepIdentity,
        result: StepResult,
        *,
        gate_type: str,
        details: Mapping[str, Any],
        timeout_s: float | None,
        on_timeout: GateTimeout,
        meta: EventMeta,
    ) -> Committed:
        """The step's result waits for a person's verdict (step-gated ``awaiting-approval``);
        the run is suspended (``gate``) once nothing else is in flight."""
        return self.apply(
            identity.run_id,
            lambda run: await_approval(
                run,
                identity.step_id,
                gate_type=gate_type,
                details=details,
                artifact_ids=result.artifact_ids,
                cost_usd=result.cost_usd,
                outputs=result.outputs,
                timeout_s=timeout_s,
                on_timeout=on_timeout,
                meta=meta,
            ),
        )

    # -- from outside the task --------------------------------------------------------------

    def decide_gate(self, run_id: str, token: str, *, approved: bool, meta: EventMeta) -> Committed:
        """A person's verdict on the step waiting with ``token`` (see ``decide_gate``)."""
        return self.apply(run_id, lambda run: decide_gate(run, token, approved=approved, meta=meta))

    def expire_gate(self, run_id: str, step_id: str, token: str, *, meta: EventMeta) -> Committed:
        """Apply the gate's ``on_timeout`` to a wait past its deadline (a no-op if a verdict
        came first)."""
        return self.apply(
            run_id,
            lambda run: expire_gate(run, step_id, token=token, now=utc_now(), meta=meta),
        )

    def release_held(
        self,
        run_id: str,
        token: str,
        *,
        budget: Mapping[str, Any] | None,
        meta: EventMeta,
    ) -> Committed:
        """Resume a run its budget suspended (see ``release_held``)."""
        return self.apply(run_id, lambda run: release_held(run, token, budget=budget, meta=meta))

    def resolve_job(
        self,
        run: PipelineRun,
        step: StepState,
        outcome: WebhookOutcome,
        *,
        provider: str,
        job_id: str,
        retry_limit: int | None,
        meta: EventMeta,
    ) -> Committed:
        """A provider's terminal answer for the job ``step`` waits for (a webhook or a poll):
        resume the step with its result, or fail it (retried within ``retry_limit``)."""
        if outcome.status == "succeeded":
            result = outcome.step_result()
            return self.apply(
                run.run_id,
                lambda current: resume_step(
                    current,
                    step.step_id,
                    provider=provider,
                    job_id=job_id,
                    artifact_ids=result.artifact_ids,
                    cost_usd=result.cost_usd,
                    outputs=result.outputs,
                    meta=meta,
                ),
                known=run,
            )
        error = outcome.error or ProviderError()
        return self.apply(
            run.run_id,
            lambda current: fail_awaiting_step(
                current,
                step.step_id,
                provider=provider,
                job_id=job_id,
                code=error.code,
                message=error.message,
                retryable=error.retryable,
                default_max_retries=retry_limit,
                meta=meta,
            ),
            known=run,
        )

    def recover_steps(
        self,
        run_id: str,
        step_ids: Sequence[str],
        *,
        seen_version: int,
        requeue: bool,
        retry_limits: Callable[[StepState], int | None],
        meta: EventMeta,
    ) -> Committed:
        """Publish stalled steps again, or fail them, in one commit of the run as scanned."""
        return self.apply(
            run_id,
            lambda run: recover_steps(
                run,
                step_ids,
                seen_version=seen_version,
                requeue=requeue,
                retry_limits={step_id: retry_limits(run.step(step_id)) for step_id in step_ids},
                meta=meta,
            ),
        )
