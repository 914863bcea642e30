"""The reconciler: finds runs whose current step stalled, and re-enqueues or fails that step.

Celery recovers most lost work by itself: with ``acks_late`` and ``reject_on_worker_lost`` a
killed pool child's message is requeued at once. Two cases it cannot see:

- **A lost attempt.** A whole worker died (SIGKILL, OOM, a lost host) with the step's message
  unacknowledged. On Redis the message comes back only after the ``visibility_timeout`` (an hour
  by default); the run shows the step running, with no event since.
- **A lost advancement.** The process that committed a step's completion died before it
  published the next step's task. The run shows the next step pending, and no task will run it.

``Reconciler.run_once()`` lists running runs, and treats a run as stalled when its current step is
pending or running and neither the run (``updated_at``) nor its log (the last event, progress
included) moved for ``stale_after_s``. Policy ``requeue`` logs step-failed ``worker-lost``
(retryable) and enqueues the step again under a new task id, within the step's retry limit;
past it, or with policy ``fail``, the run fails. A pending step is enqueued (nothing ran).

Each repair is a versioned commit of the run exactly as the scan saw it, so two reconcilers, or a
reconciler and a message that came back after all, never both act: the other's write wins and
the repair is skipped. When the original message does come back, the step refuses it (its attempt
is superseded) and the body does not run.

``stale_after_s`` must exceed your longest step, its retry countdown, and the time a message can
wait in the queue: a step that is merely slow is indistinguishable from a lost one. Steps that
report progress (``PipelineTask.progress``) count as alive while they do.

Run it periodically: ``mpstate reconcile`` (the CLI), or the ``mpstate.reconcile`` task in your
beat schedule (``app.conf.beat_schedule``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from mpstate.celery.transitions import recover_step
from mpstate.errors import InvalidInputError, MpStateError, RunNotFoundError
from mpstate.fields import utc_now
from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus
from mpstate.store import check_positive

if TYPE_CHECKING:
    from mpstate.celery.binding import MpState

__all__ = ["ReconcilePolicy", "ReconcileReport", "Reconciler", "StalledStep"]

log = logging.getLogger("mpstate.celery.reconciler")

#: Runs read per page while scanning.
PAGE_SIZE = 500


class ReconcilePolicy(StrEnum):
    """What to do with a stalled running step."""

    #: Log step-failed ``worker-lost`` and enqueue the step again (within its retry limit).
    REQUEUE = "requeue"
    #: Log step-failed ``worker-lost`` and fail the run.
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class StalledStep:
    """A run's current step that nothing has touched for too long, as the scan saw it."""

    run_id: str
    step_id: str
    #: ``pending`` (never enqueued) or ``running`` (its attempt was lost).
    status: StepStatus
    idle_s: float
    version: int
    tenant_id: str | None = None


@dataclass(slots=True)
class ReconcileReport:
    """What one pass found and did."""

    stalled: list[StalledStep] = field(default_factory=list)
    requeued: list[StalledStep] = field(default_factory=list)
    failed: list[StalledStep] = field(default_factory=list)
    #: Stalled when scanned, but written to before the repair (a message came back): left alone.
    skipped: list[StalledStep] = field(default_factory=list)
    #: Repaired in the store, but the broker refused the step's message (a later pass retries).
    unpublished: list[StalledStep] = field(default_factory=list)


class Reconciler:
    """Finds stalled steps in ``mp``'s store and repairs them by ``policy``."""

    def __init__(
        self,
        mp: MpState,
        *,
        stale_after_s: float,
        policy: ReconcilePolicy | str = ReconcilePolicy.REQUEUE,
    ) -> None:
        self.mp = mp
        self.stale_after_s = check_positive(stale_after_s, "stale_after_s")
        try:
            self.policy = ReconcilePolicy(policy)
        except ValueError:
            choices = ", ".join(p.value for p in ReconcilePolicy)
            raise InvalidInputError(f"policy must be one of {choices}, not {policy!r}") from None

    def find_stalled(self, now: datetime | None = None) -> Iterator[StalledStep]:
        """Each running run whose current step has been idle for ``stale_after_s``."""
        now = now or utc_now()
        cutoff = now - timedelta(seconds=self.stale_after_s)
        offset = 0
        while True:
            # A run created after the cutoff cannot have been idle since before it.
            page = self.mp.store.list_runs(
                status=PipelineRunStatus.RUNNING, until=cutoff, limit=PAGE_SIZE, offset=offset
            )
            for run in page:
                stalled = self._stalled_step(run, now, cutoff)
                if stalled is not None:
                    yield stalled
            if len(page) < PAGE_SIZE:
                return
            offset += PAGE_SIZE

    def _stalled_step(
        self, run: PipelineRun, now: datetime, cutoff: datetime
    ) -> StalledStep | None:
        if run.updated_at > cutoff or run.current_step_index >= len(run.steps):
            return None
        step = run.steps[run.current_step_index]
        if step.status not in (StepStatus.PENDING, StepStatus.RUNNING):
            return None
        try:
            events = self.mp.store.list_events(run.run_id, since_seq=0)
        except RunNotFoundError:
            return None  # expired or deleted since the page was read
        last_ms = events[-1].at if events else int(run.updated_at.timestamp() * 1000)
        if last_ms > cutoff.timestamp() * 1000:
            return None
        return StalledStep(
            run_id=run.run_id,
            step_id=step.step_id,
            status=step.status,
            idle_s=round(now.timestamp() - max(last_ms / 1000, run.updated_at.timestamp()), 3),
            version=run.version,
            tenant_id=run.tenant_id,
        )

    def run_once(self, *, dry_run: bool = False) -> ReconcileReport:
        """Scan once and repair what is stalled (``dry_run``: only report it)."""
        report = ReconcileReport()
        # The whole scan first: a repair that fails a run moves it out of the running set, and
        # paging on while repairing would skip as many runs.
        report.stalled = list(self.find_stalled())
        if not dry_run:
            for stalled in report.stalled:
                self._repair(stalled, report)
        return report

    def _repair(self, stalled: StalledStep, report: ReconcileReport) -> None:
        task_id = uuid.uuid4().hex
        requeue = self.policy is ReconcilePolicy.REQUEUE
        try:
            committed = self.mp.lifecycle.apply(
                stalled.run_id,
                lambda run: recover_step(
                    run,
                    stalled.step_id,
                    seen_version=stalled.version,
                    requeue=requeue,
                    task_id=task_id,
                    default_max_retries=self.mp.default_max_retries(run.step(stalled.step_id)),
                    meta={"by": "reconciler", "idleS": stalled.idle_s},
                ),
            )
        except MpStateError:
            raise
        except Exception as exc:  # the broker's errors vary by transport
            # The repair is committed; its publish failed. The step is idle again from now on,
            # so a later pass enqueues it again: the pass goes on with the other runs.
            report.unpublished.append(stalled)
            log.error(
                "run %s: step %s repaired, but not published: %r",
                stalled.run_id,
                stalled.step_id,
                exc,
            )
            return
        if not committed.changed:
            report.skipped.append(stalled)
        elif committed.run.status is PipelineRunStatus.FAILED:
            report.failed.append(stalled)
            log.warning("run %s: stalled step %s failed", stalled.run_id, stalled.step_id)
        else:
            report.requeued.append(stalled)
            log.warning(
                "run %s: stalled step %s enqueued again as task %s (idle %.0f s)",
                stalled.run_id,
                stalled.step_id,
                task_id,
                stalled.idle_s,
            )
