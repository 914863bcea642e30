"""The reconciler on a real worker and a real Redis broker: lost attempts and lost advancements are
repaired once, a lost attempt's message coming back is refused, and live runs are left alone.

A dead worker is simulated by committing a step's start (or a completion) directly through the
store, the way ``StepLifecycle`` commits it, while no message for the step exists anywhere: the
state a worker killed mid-step (or between committing a completion and publishing the next step)
leaves behind. ``stale_after_s`` is a fraction of a second, and each test waits until the run is
idle for that long (by the reconciler's own reading) before repairing it.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.result import AsyncResult
from celery_support import DEADLINE, Harness, assert_never, kinds, step_events, wait_for

from mpstate import InvalidInputError, PipelineRun, StepProgress, audit_run
from mpstate.celery import RECONCILE, PipelineTask, Reconciler, StalledStep, StepIdentity
from mpstate.celery import reconciler as reconciler_module
from mpstate.celery.identity import ATTEMPT_BASE
from mpstate.celery.transitions import (
    WORKER_LOST,
    Transition,
    complete_step,
    fail_step,
    start_run,
    start_step,
)
from mpstate.fields import utc_now
from mpstate.models import PipelineRunStatus, StepStatus

pytestmark = pytest.mark.parametrize("store_backend", ["redis", "cluster"], indirect=True)

#: How long a step may be idle before the reconciler treats it as lost, in these tests.
STALE_S = 0.3
#: The task id of the attempt whose worker "died".
LOST_TASK = "lost-task-id"

STEPS = [
    {"stepId": "one", "operation": "rc.one"},
    {"stepId": "two", "operation": "rc.two"},
]

REQUEUED_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "one"),
    ("step-failed", "one"),
    ("step-started", "one"),
    ("step-completed", "one"),
    ("step-started", "two"),
    ("step-completed", "two"),
    ("run-completed", None),
]


def define_tasks(h: Harness, bodies: Counter[str], *, hold_one: bool = False) -> None:
    """The step tasks; ``bodies`` counts each body's executions. With ``hold_one`` step one's body
    waits for the latch "one" before returning."""

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="rc.one")
    def one(self: Any) -> dict[str, Any]:
        bodies["one"] += 1
        if hold_one:
            assert h.latch("one").wait(DEADLINE)
        return {"artifactIds": ["a-1"], "costUsd": 0.01}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="rc.two")
    def two(self: Any) -> dict[str, Any]:
        bodies["two"] += 1
        return {"artifactIds": ["b-1"], "costUsd": 0.02}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="rc.fragile", max_retries=0)
    def fragile(self: Any) -> dict[str, Any]:
        bodies["fragile"] += 1
        return {"artifactIds": ["f-1"]}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="rc.slow")
    def slow(self: Any) -> dict[str, Any]:
        bodies["slow"] += 1
        pct = 0.0
        while not h.latch("slow").wait(0.03):  # reports progress until the test lets it finish
            pct = min(pct + 1, 99)
            self.progress(pct, message="still working")
        return {"artifactIds": ["s-1"]}


# -- runs left behind by a dead worker ---------------------------------------------------------


def commit(h: Harness, run: PipelineRun, transition: Transition | None) -> PipelineRun:
    """Commit a transition the way ``StepLifecycle`` does (versioned), and nothing else."""
    assert transition is not None
    return h.store.commit(
        run.run_id, transition.patch or None, transition.events, expected_version=run.version
    ).run


def new_run(h: Harness, steps: Sequence[Mapping[str, Any]] = STEPS) -> PipelineRun:
    run = h.store.create(
        {"runId": uuid.uuid4().hex, "pipelineId": "reconcile", "steps": list(steps)}
    )
    return commit(h, run, start_run(run))


def lost_attempt(
    h: Harness, steps: Sequence[Mapping[str, Any]] = STEPS, *, attempts: int = 1
) -> PipelineRun:
    """A run whose first step a worker started (``attempts`` times, retrying in between, under
    ``LOST_TASK``) and then died on: no message for the step exists anywhere."""
    run = new_run(h, steps)
    step_id = run.steps[0].step_id
    meta = {"taskId": LOST_TASK, "worker": "dead@host"}
    for attempt in range(attempts):
        if attempt:
            run = commit(
                h,
                run,
                fail_step(run, step_id, code="Busy", message="", retryable=True, meta=meta),
            )
        run = commit(
            h, run, start_step(run, step_id, attempt=attempt, task_id=LOST_TASK, meta=meta)
        )
    return run


def lost_advancement(h: Harness) -> PipelineRun:
    """A run whose step one completed, committed by a process that died before publishing step
    two: two is pending, and no message for it exists."""
    run = new_run(h)
    meta = {"taskId": "t-one", "worker": "dead@host"}
    run = commit(h, run, start_step(run, "one", attempt=0, task_id="t-one", meta=meta))
    done = complete_step(run, "one", artifact_ids=["a-1"], cost_usd=0.01, cache_key=None, meta=meta)
    assert done is not None and done.enqueue  # what the dead process never sent
    return commit(h, run, done)


def stalled_ids(h: Harness, stale_after_s: float = STALE_S) -> list[str]:
    return [s.run_id for s in Reconciler(h.mp, stale_after_s=stale_after_s).find_stalled()]


def wait_until_stalled(h: Harness, run_id: str) -> None:
    wait_for(lambda: run_id in stalled_ids(h), what=f"run {run_id} to count as stalled")


def queued(h: Harness) -> int:
    """Messages waiting in this test's broker queue."""
    return int(h.client.llen(h.queue))


def resend(
    h: Harness, run_id: str, step_id: str, operation: str, *, task_id: str, attempt: int
) -> AsyncResult:
    """The step's message as its first enqueue published it, delivered (again) under
    ``task_id``: what a dead worker's unacknowledged message looks like when it comes back."""
    identity = StepIdentity(run_id, step_id, is_step=True)
    return h.app.send_task(
        operation,
        kwargs=identity.kwargs(),
        headers={**identity.headers(), ATTEMPT_BASE: attempt},
        task_id=task_id,
    )


def ids(steps: Sequence[StalledStep]) -> list[tuple[str, str, str]]:
    return [(s.run_id, s.step_id, str(s.status)) for s in steps]


# -- a lost attempt is requeued ----------------------------------------------------------------


def test_a_lost_attempt_is_failed_as_worker_lost_and_enqueued_again_and_the_run_completes(
    h: Harness,
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    run = lost_attempt(h)
    assert stalled_ids(h) == []  # just written: not idle yet
    wait_until_stalled(h, run.run_id)

    report = Reconciler(h.mp, stale_after_s=STALE_S).run_once()

    assert ids(report.stalled) == [(run.run_id, "one", "running")]
    assert report.requeued == report.stalled
    assert (report.failed, report.skipped) == ([], [])
    assert report.stalled[0].idle_s >= STALE_S
    assert report.stalled[0].version == run.version
    repaired = h.run(run.run_id)
    (failed,) = step_events(repaired, "one", "step-failed")
    assert (failed.code, failed.retryable) == (WORKER_LOST, True)
    assert failed.meta["by"] == "reconciler"
    step = repaired.step("one")
    assert step.status is StepStatus.RUNNING
    assert step.task_id not in (None, LOST_TASK)
    assert step.last_error is not None and step.last_error.code == WORKER_LOST
    assert queued(h) == 1

    h.start_worker()
    done = h.wait_terminal(run.run_id)

    assert done.status is PipelineRunStatus.COMPLETED
    assert kinds(done) == REQUEUED_LOG
    assert [e.attempt for e in step_events(done, "one", "step-started")] == [0, 1]
    assert bodies == {"one": 1, "two": 1}
    # The replacement ran under the task id recorded on the step, as attempt 1.
    (executed,) = h.finished_tasks("rc.one")
    assert executed.task_id == step.task_id
    assert executed.headers[ATTEMPT_BASE] == 1
    assert audit_run(h.store.require(run.run_id)) == []


@pytest.mark.parametrize("when", ["before-the-replacement-starts", "while-the-replacement-runs"])
def test_the_lost_attempts_original_message_coming_back_after_the_requeue_does_not_run(
    h: Harness, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies, hold_one=when == "while-the-replacement-runs")
    run = lost_attempt(h)
    wait_until_stalled(h, run.run_id)
    held: list[tuple[Any, ...]] = []
    if when == "before-the-replacement-starts":
        # Hold the replacement back, so the original is delivered first.
        with monkeypatch.context() as patch:
            patch.setattr(h.mp.lifecycle, "enqueue", lambda *args: held.append(args))
            report = Reconciler(h.mp, stale_after_s=STALE_S).run_once()
        h.start_worker()
    else:
        report = Reconciler(h.mp, stale_after_s=STALE_S).run_once()
        h.start_worker(pool="threads", concurrency=2)
        wait_for(lambda: len(step_events(h.run(run.run_id), "one", "step-started")) == 2)
    assert len(report.requeued) == 1
    replacement = h.run(run.run_id).step("one").task_id
    before = h.run(run.run_id)

    original = resend(h, run.run_id, "one", "rc.one", task_id=LOST_TASK, attempt=0)

    assert h.wait_finished(original.id).state == "IGNORED"
    assert h.run(run.run_id).events == before.events  # the refused start logged nothing
    if held:
        ((held_run, held_step, held_task_id),) = held
        assert held_task_id == replacement
        h.mp.lifecycle.enqueue(held_run, held_step, held_task_id)
    h.latch("one").set()
    done = h.wait_terminal(run.run_id)
    assert done.status is PipelineRunStatus.COMPLETED
    assert bodies == {"one": 1, "two": 1}
    assert len(step_events(done, "one", "step-completed")) == 1
    assert kinds(done) == REQUEUED_LOG
    assert [f.task_id for f in h.finished_tasks("rc.one") if f.state == "SUCCESS"] == [replacement]
    assert audit_run(h.store.require(run.run_id)) == []


# -- a lost advancement is enqueued ------------------------------------------------------------


def test_a_pending_step_that_was_never_enqueued_is_enqueued_and_the_run_completes(
    h: Harness,
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    run = lost_advancement(h)
    wait_until_stalled(h, run.run_id)
    events_before = h.run(run.run_id).events

    report = Reconciler(h.mp, stale_after_s=STALE_S).run_once()

    assert ids(report.stalled) == [(run.run_id, "two", "pending")]
    assert report.requeued == report.stalled
    repaired = h.run(run.run_id)
    assert repaired.events == events_before  # nothing ran, so nothing is logged
    assert repaired.version == run.version + 1
    assert repaired.step("two").status is StepStatus.PENDING
    assert repaired.step("two").task_id
    assert queued(h) == 1

    h.start_worker()
    done = h.wait_terminal(run.run_id)

    assert done.status is PipelineRunStatus.COMPLETED
    assert bodies == {"two": 1}
    assert [t.task_id for t in h.finished_tasks("rc.two")] == [repaired.step("two").task_id]
    assert step_events(done, "two", "step-failed") == []
    assert [e.attempt for e in step_events(done, "two", "step-started")] == [0]
    assert audit_run(h.store.require(run.run_id)) == []


def test_policy_fail_still_enqueues_a_pending_step_because_nothing_of_it_ran(h: Harness) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    run = lost_advancement(h)
    wait_until_stalled(h, run.run_id)

    report = Reconciler(h.mp, stale_after_s=STALE_S, policy="fail").run_once()

    assert ids(report.requeued) == [(run.run_id, "two", "pending")]
    assert report.failed == []
    h.start_worker()
    assert h.wait_terminal(run.run_id).status is PipelineRunStatus.COMPLETED
    assert bodies == {"two": 1}


# -- failing instead -----------------------------------------------------------------------------


def assert_failed_as_worker_lost(run: PipelineRun, step_id: str) -> None:
    assert run.status is PipelineRunStatus.FAILED
    assert [kind for kind, _ in kinds(run)][-2:] == ["step-failed", "run-failed"]
    failed, run_failed = run.events[-2:]
    assert (failed.step_id, failed.code, failed.retryable) == (step_id, WORKER_LOST, False)
    assert run_failed.code == WORKER_LOST
    assert run.step(step_id).status is StepStatus.FAILED
    assert run.error is not None and run.error.startswith(f"step {step_id} failed: worker-lost")
    assert audit_run(run) == []


def test_policy_fail_fails_a_lost_attempt_and_its_run_and_enqueues_nothing(h: Harness) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    h.start_worker()
    run = lost_attempt(h)
    wait_until_stalled(h, run.run_id)

    report = h.mp.reconcile(stale_after_s=STALE_S, policy="fail")

    assert ids(report.failed) == [(run.run_id, "one", "running")]
    assert (report.requeued, report.skipped) == ([], [])
    assert_failed_as_worker_lost(h.run(run.run_id), "one")
    assert_never(lambda: bodies or queued(h), 0.5, "a step enqueued for a failed run")
    assert h.mp.reconcile(stale_after_s=STALE_S).stalled == []  # a failed run is not stalled


@pytest.mark.parametrize(
    ("step", "attempts"),
    [
        ({"stepId": "one", "operation": "rc.one", "maxRetries": 0}, 1),
        ({"stepId": "one", "operation": "rc.one", "maxRetries": 1}, 2),
        ({"stepId": "one", "operation": "rc.fragile"}, 1),  # the task's max_retries=0
    ],
    ids=["step-allows-none", "step-spent-its-one-retry", "task-allows-none"],
)
def test_a_lost_attempt_with_its_retries_spent_fails_the_run_under_policy_requeue(
    h: Harness, step: dict[str, Any], attempts: int
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    h.start_worker()
    run = lost_attempt(h, [step, STEPS[1]], attempts=attempts)
    wait_until_stalled(h, run.run_id)

    report = Reconciler(h.mp, stale_after_s=STALE_S, policy="requeue").run_once()

    assert ids(report.failed) == [(run.run_id, "one", "running")]
    assert report.requeued == []
    assert_failed_as_worker_lost(h.run(run.run_id), "one")
    assert_never(lambda: bodies or queued(h), 0.3, "a step enqueued for a failed run")


def test_a_lost_attempt_with_one_retry_left_is_requeued(h: Harness) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    step = {"stepId": "one", "operation": "rc.one", "maxRetries": 1}
    run = lost_attempt(h, [step, STEPS[1]])
    wait_until_stalled(h, run.run_id)

    report = Reconciler(h.mp, stale_after_s=STALE_S).run_once()

    assert len(report.requeued) == 1
    h.start_worker()
    assert h.wait_terminal(run.run_id).status is PipelineRunStatus.COMPLETED
    assert bodies == {"one": 1, "two": 1}


# -- live runs are left alone --------------------------------------------------------------------


def test_a_step_that_keeps_reporting_progress_is_not_stalled_however_long_it_runs(
    h: Harness,
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    h.start_worker()
    run = h.mp.start_run("slow", [{"stepId": "slow", "operation": "rc.slow"}])
    h.wait_event(run.run_id, "step-progress", "slow")
    started = h.run(run.run_id)
    # The step reports progress every 0.03 s: the limit leaves a wide margin for a busy machine
    # (at 2 x STALE_S a loaded 2-core machine once delayed one progress past it).
    reconciler = Reconciler(h.mp, stale_after_s=4 * STALE_S)

    # Twice the stale limit with no write to the run itself, only progress events.
    assert_never(lambda: reconciler.run_once().stalled, 8 * STALE_S, "the slow step stalled")

    running = h.run(run.run_id)
    assert running.version == started.version
    assert (utc_now() - running.updated_at).total_seconds() > 6 * STALE_S
    h.latch("slow").set()
    done = h.wait_terminal(run.run_id)
    assert done.status is PipelineRunStatus.COMPLETED
    assert step_events(done, "slow", "step-failed") == []
    assert bodies == {"slow": 1}
    assert audit_run(h.store.require(run.run_id)) == []


@pytest.mark.parametrize("how", ["a write to the run", "an event in its log"])
def test_a_run_touched_within_the_stale_limit_is_not_stalled(h: Harness, how: str) -> None:
    run = lost_attempt(h)
    wait_until_stalled(h, run.run_id)

    if how == "a write to the run":
        touched = h.store.update(run.run_id, {"budget": {"maxUsd": 5}}).updated_at
    else:
        h.store.append_event(run.run_id, StepProgress(run_id=run.run_id, step_id="one", pct=10))
        touched = datetime.fromtimestamp(h.store.list_events(run.run_id)[-1].at / 1000, UTC)
    reconciler = Reconciler(h.mp, stale_after_s=STALE_S)

    # Scanned as of a moment within the limit after the touch, and past it.
    assert list(reconciler.find_stalled(now=touched + timedelta(seconds=0.9 * STALE_S))) == []
    later = list(reconciler.find_stalled(now=touched + timedelta(seconds=1.5 * STALE_S)))
    assert [s.run_id for s in later] == [run.run_id]
    assert later[0].idle_s == pytest.approx(1.5 * STALE_S, abs=0.01)
    wait_until_stalled(h, run.run_id)  # and by the clock, once quiet for long enough


# -- what a scan reads ---------------------------------------------------------------------------


def count_reads(h: Harness, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the store's log reads from here on (``last_event`` and ``list_events`` calls)."""
    reads: Counter[str] = Counter()
    for name in ("last_event", "list_events"):
        original = getattr(h.store, name)

        def counted(*args: Any, name: str = name, original: Any = original, **kwargs: Any) -> Any:
            reads[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(h.store, name, counted)
    return reads


def test_a_scan_reads_a_candidate_runs_newest_event_and_not_its_log(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = lost_attempt(h)
    for pct in range(20):  # a longer log costs the scan nothing more
        h.store.append_event(run.run_id, StepProgress(run_id=run.run_id, step_id="one", pct=pct))
    wait_until_stalled(h, run.run_id)
    reads = count_reads(h, monkeypatch)

    stalled = list(Reconciler(h.mp, stale_after_s=STALE_S).find_stalled())

    assert ids(stalled) == [(run.run_id, "one", "running")]
    assert reads == Counter({"last_event": 1})


def test_of_two_steps_in_flight_the_quiet_one_is_stalled_while_the_other_reports_progress(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [
        {"stepId": "a", "operation": "rc.one", "dependsOn": []},
        {"stepId": "b", "operation": "rc.two", "dependsOn": []},
    ]
    run = new_run(h, steps)
    meta = {"taskId": LOST_TASK, "worker": "dead@host"}
    run = commit(h, run, start_step(run, "a", attempt=0, task_id=LOST_TASK, meta=meta))
    meta = {"taskId": "t-b", "worker": "alive@host"}
    run = commit(h, run, start_step(run, "b", attempt=0, task_id="t-b", meta=meta))
    a_started = h.store.list_events(run.run_id)[-2]
    assert (a_started.kind, getattr(a_started, "step_id", None)) == ("step-started", "a")
    # b's progress is the run's newest event, well after a's start: a's own last event is older.
    progress = StepProgress(run_id=run.run_id, step_id="b", pct=50, at=a_started.at + 2000)
    h.store.append_event(run.run_id, progress)
    reads = count_reads(h, monkeypatch)
    now = datetime.fromtimestamp((a_started.at + 1500) / 1000, UTC)

    stalled = list(Reconciler(h.mp, stale_after_s=STALE_S).find_stalled(now=now))

    assert ids(stalled) == [(run.run_id, "a", "running")]
    assert stalled[0].idle_s == pytest.approx(1.5, abs=0.01)
    # The newest event, b's, cannot tell when a last moved: the log can, read once.
    assert reads == Counter({"last_event": 1, "list_events": 1})


def test_a_dry_run_lists_the_stalled_steps_and_writes_and_enqueues_nothing(h: Harness) -> None:
    attempt = lost_attempt(h)
    advancement = lost_advancement(h)
    wait_until_stalled(h, attempt.run_id)
    wait_until_stalled(h, advancement.run_id)
    before = {r.run_id: h.run(r.run_id) for r in (attempt, advancement)}

    report = h.mp.reconcile(stale_after_s=STALE_S, dry_run=True)

    assert sorted(ids(report.stalled)) == sorted(
        [(attempt.run_id, "one", "running"), (advancement.run_id, "two", "pending")]
    )
    assert (report.requeued, report.failed, report.skipped) == ([], [], [])
    for run_id, run in before.items():
        assert h.run(run_id) == run  # same version, same document, same log
    assert queued(h) == 0


# -- racing reconcilers ------------------------------------------------------------------------

RACERS = 8


@pytest.mark.parametrize("scan", ["all-scan-before-any-repairs", "free-for-all"])
def test_reconcilers_racing_on_one_stalled_run_enqueue_it_exactly_once(
    h: Harness, monkeypatch: pytest.MonkeyPatch, scan: str
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    run = lost_attempt(h)
    wait_until_stalled(h, run.run_id)
    barrier = threading.Barrier(RACERS, timeout=DEADLINE)
    if scan == "all-scan-before-any-repairs":
        find_stalled = Reconciler.find_stalled

        def scan_then_wait(self: Reconciler, now: datetime | None = None) -> Iterator[StalledStep]:
            found = list(find_stalled(self, now))
            barrier.wait()
            yield from found

        monkeypatch.setattr(Reconciler, "find_stalled", scan_then_wait)

    def reconcile(_: int) -> Any:
        if scan == "free-for-all":
            barrier.wait()
        return Reconciler(h.mp, stale_after_s=STALE_S).run_once()

    with ThreadPoolExecutor(RACERS) as pool:
        reports = list(pool.map(reconcile, range(RACERS)))

    assert sum(len(r.requeued) for r in reports) == 1
    assert all(r.failed == [] for r in reports)
    for report in reports:  # each saw it stalled and repaired it or lost the race, or saw it moved
        assert len(report.stalled) == len(report.requeued) + len(report.skipped) <= 1
    if scan == "all-scan-before-any-repairs":
        assert sum(len(r.skipped) for r in reports) == RACERS - 1
    assert queued(h) == 1
    assert len(step_events(h.run(run.run_id), "one", "step-failed")) == 1

    h.start_worker()
    done = h.wait_terminal(run.run_id)
    assert kinds(done) == REQUEUED_LOG
    assert_never(lambda: bodies["one"] > 1, 0.3, "a second execution of step one")
    assert bodies == {"one": 1, "two": 1}
    assert audit_run(h.store.require(run.run_id)) == []


# -- the mpstate.reconcile task ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "counts", "status"),
    [
        (
            "requeue",
            {
                "stalled": 1,
                "requeued": 1,
                "failed": 0,
                "skipped": 0,
                "expired": 0,
                "repolled": 0,
                "timed_out": 0,
            },
            "completed",
        ),
        (
            "fail",
            {
                "stalled": 1,
                "requeued": 0,
                "failed": 1,
                "skipped": 0,
                "expired": 0,
                "repolled": 0,
                "timed_out": 0,
            },
            "failed",
        ),
    ],
)
def test_the_reconcile_task_runs_a_pass_on_a_worker_and_returns_its_counts(
    h: Harness, policy: str, counts: dict[str, int], status: str
) -> None:
    bodies: Counter[str] = Counter()
    define_tasks(h, bodies)
    h.start_worker()
    run = lost_attempt(h)
    wait_until_stalled(h, run.run_id)

    sent: AsyncResult = h.app.send_task(
        RECONCILE, kwargs={"stale_after_s": STALE_S, "policy": policy}
    )

    finished = h.wait_finished(sent.id)
    assert (finished.state, finished.retval) == ("SUCCESS", counts)
    assert h.wait_terminal(run.run_id).status == status


def test_the_reconcile_task_leaves_a_short_stall_alone_with_its_default_of_ten_minutes(
    h: Harness,
) -> None:
    h.start_worker()
    run = lost_attempt(h)
    wait_until_stalled(h, run.run_id)
    before = h.run(run.run_id)

    finished = h.wait_finished(h.app.send_task(RECONCILE).id)

    assert finished.retval == {
        "stalled": 0,
        "requeued": 0,
        "failed": 0,
        "skipped": 0,
        "expired": 0,
        "repolled": 0,
        "timed_out": 0,
    }
    assert h.run(run.run_id) == before


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"stale_after_s": 0},
        {"stale_after_s": -1},
        {"stale_after_s": float("nan")},
        {"stale_after_s": float("inf")},
        {"stale_after_s": "x"},
        {"stale_after_s": "10"},
        {"stale_after_s": True},
        {"stale_after_s": None},
        {"stale_after_s": STALE_S, "policy": "retry"},
        {"stale_after_s": STALE_S, "policy": ""},
        {"stale_after_s": STALE_S, "policy": None},
    ],
    ids=repr,
)
def test_a_bad_stale_limit_or_policy_is_refused_and_nothing_is_written(
    h: Harness, options: dict[str, Any]
) -> None:
    run = lost_attempt(h)
    wait_until_stalled(h, run.run_id)
    before = h.run(run.run_id)

    with pytest.raises(InvalidInputError):
        Reconciler(h.mp, **options)
    with pytest.raises(InvalidInputError):
        h.mp.reconcile(**options)

    assert h.run(run.run_id) == before
    assert queued(h) == 0


# -- a pass sees every stalled run -----------------------------------------------------------------


def test_one_pass_fails_every_stalled_run_even_when_they_fill_several_pages(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconciler_module, "PAGE_SIZE", 2)  # 500 in production: > 500 runs
    runs = [lost_attempt(h) for _ in range(5)]
    for run in runs:
        wait_until_stalled(h, run.run_id)

    report = Reconciler(h.mp, stale_after_s=STALE_S, policy="fail").run_once()

    assert sorted(s.run_id for s in report.failed) == sorted(r.run_id for r in runs)
    assert all(h.run(r.run_id).status is PipelineRunStatus.FAILED for r in runs)
