"""The reconciler: finds steps of running runs that stalled, and publishes them again or fails them.

Celery recovers most lost work by itself: with ``acks_late`` and ``reject_on_worker_lost`` a
killed pool child's message is requeued at once. Two cases it cannot see:

- **A lost attempt.** A whole worker died (SIGKILL, OOM, a lost host) with the step's message
  unacknowledged. On Redis the message comes back only after the ``visibility_timeout`` (an hour
  by default); the run shows the step running, with no event since.
- **A lost publish.** The process that committed a step's completion died before it published
  the steps that completion made ready. The run shows them pending and ready, and no task will
  run them.

``Reconciler.run_once()`` lists running runs and looks at each step that is running, or pending
with every dependency done (of a linear run: its current step). Such a step is stalled when it
has been idle for ``stale_after_s``: a running step since its own last event (progress
included), a ready one since anything in its run last moved (the store cannot tell a message
waiting in a long queue from one never published, so a ready step of a busy run is taken as
queued; it is found once the run goes quiet). Policy ``requeue`` logs step-failed
``worker-lost`` (retryable) and publishes the step again under a new task id, within the step's
retry limit; past it, or with policy ``fail``, the step fails for good (and the run with it, see
``FailurePolicy``). A ready step is published (nothing ran). A step waiting for a provider is not
stalled: it waits for a callback.

The stalled steps of one run are repaired in one versioned commit of the run exactly as the scan
saw it, so two reconcilers, or a reconciler and a message that came back after all, never both
act: the other's write wins and the repair is skipped. When the original message does come back,
the step refuses it (its attempt is superseded) and the body does not run.

The same pass enforces deadlines from the store alone, so they hold even if every worker
restarted meanwhile: a wait for a provider past its deadline fails with ``external-timeout``
(``mpstate.celery.jobs``), and an approval gate past its deadline is decided by its
``on_timeout`` (approved or rejected, ``timedOut`` in the step-gated's meta).

``stale_after_s`` must exceed your longest step, its retry countdown, and the time a message can
wait in the queue: a step that is merely slow is indistinguishable from a lost one. Steps that
report progress (``PipelineTask.progress``) count as alive while they do.

Run it periodically: ``mpstate reconcile`` (the CLI), or the ``mpstate.reconcile`` task in your
beat schedule (``app.conf.beat_schedule``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from mpstate._checks import check_positive
from mpstate.celery.jobs import ExternalJobs, WaitingStep, overdue, waiting_steps
from mpstate.celery.lifecycle import StepLifecycle
from mpstate.celery.settings import CelerySettings
from mpstate.errors import InvalidInputError, MpStateError, RunNotFoundError
from mpstate.events import PipelineEvent
from mpstate.fields import utc_now
from mpstate.graph import active_steps
from mpstate.models import GateTimeout, PipelineRun, PipelineRunStatus, StepState, StepStatus
from mpstate.store import PipelineStateStore


class ReconcilerHost(Protocol):
    """What the reconciler needs of an ``MpState``: its store, its lifecycle and retry limits
    (a protocol, so this module does not import the binding that imports it)."""

    @property
    def store(self) -> PipelineStateStore: ...

    @property
    def lifecycle(self) -> StepLifecycle: ...

    @property
    def jobs(self) -> ExternalJobs: ...

    @property
    def settings(self) -> CelerySettings: ...

    def default_max_retries(self, step: StepState) -> int | None: ...


__all__ = ["OverdueGate", "ReconcilePolicy", "ReconcileReport", "Reconciler", "StalledStep"]

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
    #: Steps whose wait for a provider passed its deadline: failed with ``external-timeout``.
    expired: list[WaitingStep] = field(default_factory=list)
    #: Steps waiting on a polled provider whose polls went quiet: a poll was published again.
    repolled: list[WaitingStep] = field(default_factory=list)
    #: Approval gates past their deadline: their ``on_timeout`` decided.
    timed_out: list[OverdueGate] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OverdueGate:
    """A step whose wait for a verdict passed its deadline, as the scan saw it."""

    run_id: str
    step_id: str
    gate_type: str
    #: What the deadline decides: ``approve`` or ``reject``.
    on_timeout: GateTimeout
    #: The wait's token: a verdict given since the scan ends that wait, and the expiry is void.
    token: str


class Reconciler:
    """Finds stalled steps in ``mp``'s store and repairs them by ``policy``."""

    def __init__(
        self,
        mp: ReconcilerHost,
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
        """Each running or ready step of a running run that has been idle for
        ``stale_after_s``."""
        now = now or utc_now()
        cutoff = now - timedelta(seconds=self.stale_after_s)
        offset = 0
        while True:
            # A run created after the cutoff cannot have been idle since before it.
            page = self.mp.store.list_runs(
                status=PipelineRunStatus.RUNNING, until=cutoff, limit=PAGE_SIZE, offset=offset
            )
            for run in page:
                yield from self._stalled_steps(run, now, cutoff)
            if len(page) < PAGE_SIZE:
                return
            offset += PAGE_SIZE

    def _stalled_steps(
        self, run: PipelineRun, now: datetime, cutoff: datetime
    ) -> list[StalledStep]:
        active = active_steps(run.steps)
        if not active or (len(active) == 1 and run.updated_at > cutoff):
            return []
        single = len(active) == 1
        updated_ms = run.updated_at.timestamp() * 1000
        try:
            # One short read per run: its newest event, not its whole log.
            newest = self.mp.store.last_event(run.run_id)
            own_ms = self._running_last_ms(run.run_id, active, newest, updated_ms, single=single)
        except RunNotFoundError:
            return []  # expired or deleted since the page was read
        # The run as a whole: its last write or event. A queued step cannot be told from a lost
        # publish by the store; while anything in its run moves, it is taken as queued.
        run_ms = updated_ms if newest is None else max(updated_ms, newest.at)
        cutoff_ms = cutoff.timestamp() * 1000
        stalled = []
        for step in active:
            if step.status is StepStatus.PENDING:
                idle_since = run_ms
            else:
                # A running step is idle since its own last event (progress counts); with one
                # step in flight every write to the run is about it too, with several not.
                own = own_ms[step.step_id]
                idle_since = max(own, updated_ms) if single else own
            if idle_since > cutoff_ms:
                continue
            stalled.append(
                StalledStep(
                    run_id=run.run_id,
                    step_id=step.step_id,
                    status=step.status,
                    idle_s=round(now.timestamp() - idle_since / 1000, 3),
                    version=run.version,
                    tenant_id=run.tenant_id,
                )
            )
        return stalled

    def _running_last_ms(
        self,
        run_id: str,
        active: list[StepState],
        newest: PipelineEvent | None,
        updated_ms: float,
        *,
        single: bool,
    ) -> dict[str, float]:
        """Each running step's last event time (epoch ms; the run's last write if it has none).

        Told by the run's newest event when it can (``_told_by_newest``); else, when another
        step logged since, read from the whole log.
        """
        running = [step.step_id for step in active if step.status is not StepStatus.PENDING]
        told: dict[str, float] = {}
        for step_id in running:
            own = _told_by_newest(step_id, newest, updated_ms, single=single)
            if own is None:
                logged = _last_event_ms(self.mp.store.list_events(run_id))
                return {each: logged.get(each, updated_ms) for each in running}
            told[step_id] = own
        return told

    def _live_runs(self) -> Iterator[PipelineRun]:
        offset = 0
        live = [PipelineRunStatus.RUNNING, PipelineRunStatus.SUSPENDED]
        while True:
            page = self.mp.store.list_runs(status=live, limit=PAGE_SIZE, offset=offset)
            yield from page
            if len(page) < PAGE_SIZE:
                return
            offset += PAGE_SIZE

    def find_waiting(self) -> Iterator[WaitingStep]:
        """Every step of a live run that waits for a provider's job."""
        for run in self._live_runs():
            yield from waiting_steps(run)

    def find_overdue_gates(self, now: datetime | None = None) -> Iterator[OverdueGate]:
        """Every step of a live run whose wait for a verdict is past its deadline."""
        now = now or utc_now()
        for run in self._live_runs():
            for step in run.steps:
                approval = step.approval
                if (
                    approval is not None
                    and step.status is StepStatus.WAITING
                    and approval.deadline is not None
                    and approval.deadline <= now
                ):
                    yield OverdueGate(
                        run.run_id,
                        step.step_id,
                        approval.gate_type,
                        approval.on_timeout,
                        approval.token,
                    )

    def _expire_gates(self, report: ReconcileReport, *, dry_run: bool) -> None:
        """Let each overdue gate's ``on_timeout`` decide (a verdict given first wins)."""
        for gate in list(self.find_overdue_gates()):
            if dry_run:
                report.timed_out.append(gate)
                continue
            committed = self.mp.lifecycle.expire_gate(
                gate.run_id, gate.step_id, gate.token, meta={"by": "deadline"}
            )
            if committed.changed:
                report.timed_out.append(gate)
                log.warning(
                    "run %s: gate %s of step %s timed out: %s",
                    gate.run_id,
                    gate.gate_type,
                    gate.step_id,
                    gate.on_timeout,
                )

    def _tend_waits(self, report: ReconcileReport, *, dry_run: bool) -> None:
        """Expire waits past their deadline; publish a poll again where polls went quiet (the
        worker holding one died): measured by the step's last event, as polls log progress."""
        now = utc_now()
        quiet = timedelta(seconds=max(self.stale_after_s, 2 * self.mp.settings.poll_max_interval_s))
        waiting = list(self.find_waiting())
        for wait in waiting:
            if overdue(wait, now):
                report.expired.append(wait)
                if not dry_run:
                    self.mp.jobs.expire(wait)
            elif (
                self.mp.jobs.has_poller(wait.job.provider)
                and wait.job.since < now - quiet
                and self._quiet_since(wait.run.run_id, wait.step.step_id, now - quiet)
            ):
                report.repolled.append(wait)
                if not dry_run:
                    self.mp.jobs.schedule_poll(
                        wait.run.run_id,
                        wait.step.step_id,
                        wait.job.provider,
                        wait.job.job_id,
                        polls=0,
                    )

    def _quiet_since(self, run_id: str, step_id: str, since: datetime) -> bool:
        """Whether the step logged nothing since ``since``: told by the run's newest event
        alone, unless that is another step's and newer (then by the step's own, from the log)."""
        since_ms = since.timestamp() * 1000
        newest = self.mp.store.last_event(run_id)
        if newest is None or newest.at < since_ms:
            return True
        if getattr(newest, "step_id", None) == step_id:
            return False
        return _last_event_ms(self.mp.store.list_events(run_id)).get(step_id, 0) < since_ms

    def run_once(self, *, dry_run: bool = False) -> ReconcileReport:
        """Scan once and repair what is stalled, expire waits past their deadline and revive
        quiet polls (``dry_run``: only report it)."""
        report = ReconcileReport()
        self._tend_waits(report, dry_run=dry_run)
        self._expire_gates(report, dry_run=dry_run)
        # The whole scan first: a repair that fails a run moves it out of the running set, and
        # paging on while repairing would skip as many runs.
        report.stalled = list(self.find_stalled())
        if not dry_run:
            by_run: dict[str, list[StalledStep]] = {}
            for stalled in report.stalled:
                by_run.setdefault(stalled.run_id, []).append(stalled)
            for steps in by_run.values():
                self._repair(steps, report)
        return report

    def _repair(self, stalled: list[StalledStep], report: ReconcileReport) -> None:
        """Repair one run's stalled steps in one versioned commit of the run as scanned."""
        first = stalled[0]
        requeue = self.policy is ReconcilePolicy.REQUEUE
        step_ids = [s.step_id for s in stalled]
        try:
            committed = self.mp.lifecycle.recover_steps(
                first.run_id,
                step_ids,
                seen_version=first.version,
                requeue=requeue,
                retry_limits=self.mp.default_max_retries,
                meta={"by": "reconciler", "idleS": max(s.idle_s for s in stalled)},
            )
        except MpStateError:
            raise
        except Exception as exc:  # the broker's errors vary by transport
            # The repair is committed; a publish failed. The steps are idle again from now on,
            # so a later pass publishes them again: the pass goes on with the other runs.
            report.unpublished.extend(stalled)
            log.error(
                "run %s: steps %s repaired, but not published: %r", first.run_id, step_ids, exc
            )
            return
        if not committed.changed:
            report.skipped.extend(stalled)
            return
        for step in stalled:
            if committed.run.step(step.step_id).status is StepStatus.FAILED:
                report.failed.append(step)
                log.warning("run %s: stalled step %s failed", step.run_id, step.step_id)
            else:
                report.requeued.append(step)
                log.warning(
                    "run %s: stalled step %s published again as task %s (idle %.0f s)",
                    step.run_id,
                    step.step_id,
                    committed.run.step(step.step_id).task_id,
                    step.idle_s,
                )


def _told_by_newest(
    step_id: str, newest: PipelineEvent | None, updated_ms: float, *, single: bool
) -> float | None:
    """A running step's last event time as far as the run's newest event tells it (epoch ms),
    or None when it cannot: then the step's own is read from the log.

    Exact when the newest event is the step's own. Otherwise the step's own is no later than it:
    with the step alone in flight, only ``max(own, updated_ms)`` matters, which is ``updated_ms``
    when nothing was logged after the run's last write.
    """
    if newest is not None and getattr(newest, "step_id", None) == step_id:
        return newest.at
    if single and (newest is None or newest.at <= updated_ms):
        return updated_ms
    return None


def _last_event_ms(events: list[PipelineEvent]) -> dict[str, int]:
    """Each step's last event time (epoch ms), from the log."""
    last: dict[str, int] = {}
    for event in events:
        step_id = getattr(event, "step_id", None)
        if step_id is not None:
            last[step_id] = max(last.get(step_id, 0), event.at)
    return last
