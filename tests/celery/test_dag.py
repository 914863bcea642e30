"""Parallel steps on a real worker, a real Redis broker and a real store (also on a Redis Cluster).

Most tests run the diamond ``a -> (b, c) -> d`` on an in-thread worker with four threads. Bodies
record what they saw (``self.artifacts``, ``self.outputs``, their own clock) and hold on latches
where a test needs a moment to last, never on sleeps: b and c prove they overlap by each waiting
until both have started. Each run's log is checked kind by kind and by seq, and every finished run
must pass ``audit_run`` (stored state = the state its log replays to).
"""

from __future__ import annotations

import copy
import functools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from celery import chain, group, signals
from celery.worker import state as worker_state
from celery_support import (
    DEADLINE,
    STORE_BACKENDS,
    Harness,
    HarnessFactory,
    PreforkWorker,
    assert_never,
    assert_seqs_contiguous,
    events_of,
    kinds,
    start_prefork_worker,
    step_events,
    wait_for,
)

from mpstate import audit_run
from mpstate.celery import PipelineTask, Reconciler, StepIdentity
from mpstate.celery.lifecycle import StepLifecycle
from mpstate.celery.results import StepResult
from mpstate.errors import (
    InvalidPipelineError,
    InvalidTransitionError,
    NotInRunError,
)
from mpstate.models import DONE_STEP_STATUSES, PipelineRun, PipelineRunStatus, StepStatus

pytestmark = pytest.mark.parametrize("store_backend", STORE_BACKENDS, indirect=True)


LETTERS = ("a", "b", "c", "d")
COSTS = {"a": 0.01, "b": 0.02, "c": 0.03, "d": 0.04}
#: How long b (or c) waits for the other to start before declaring they did not overlap.
OVERLAP_WAIT = 10.0
#: How long a step may be idle before the reconciler treats it as lost, in these tests.
STALE_S = 0.3

Hook = Callable[[Any, str], Any]
T = TypeVar("T")


class PermanentError(Exception):
    """A failure no retry can fix."""


# -- the diamond -------------------------------------------------------------------------------


def diamond_steps(prefix: str = "dag") -> list[dict[str, Any]]:
    return [
        {"stepId": "a", "operation": f"{prefix}.a", "dependsOn": []},
        {"stepId": "b", "operation": f"{prefix}.b", "dependsOn": ["a"]},
        {"stepId": "c", "operation": f"{prefix}.c", "dependsOn": ["a"]},
        {"stepId": "d", "operation": f"{prefix}.d", "dependsOn": ["b", "c"]},
    ]


def result_of(letter: str) -> dict[str, Any]:
    """What the body of ``letter`` returns unless a hook returns something else."""
    return {
        "artifactIds": [f"{letter}-1"],
        "costUsd": COSTS[letter],
        "outputs": {"by": letter, "size": len(letter) * 10},
    }


#: What d sees of its three upstream steps when each returned ``result_of``.
UPSTREAM_ARTIFACTS = {letter: [f"{letter}-1"] for letter in "abc"}
UPSTREAM_OUTPUTS = {letter: {"by": letter, "size": 10} for letter in "abc"}


@dataclass
class Diamond:
    """The diamond's four tasks (``dag.a`` ... ``dag.d``) on the harness's app.

    Each body records what it saw into ``bodies``, then runs its hook (by letter), and returns
    the hook's value, or ``result_of(letter)`` when the hook returns None.
    """

    h: Harness
    hooks: dict[str, Hook] = field(default_factory=dict)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    flags: dict[str, bool] = field(default_factory=lambda: {"fixed": False})

    def define(self, prefix: str = "dag") -> dict[str, Any]:
        return {letter: self._define(letter, f"{prefix}.{letter}") for letter in LETTERS}

    def _define(self, letter: str, name: str) -> Any:
        diamond = self

        @self.h.app.task(base=PipelineTask, bind=True, shared=False, name=name)
        def body(self: Any, **inputs: Any) -> Any:
            return diamond.execute(self, letter, inputs)

        return body

    def execute(self, task: Any, letter: str, inputs: dict[str, Any]) -> Any:
        record: dict[str, Any] = {
            "letter": letter,
            "run": task.run_id,
            "step": task.step_id,
            "taskId": task.request.id,
            "attempt": task.attempt,
            "inputs": dict(inputs),
            "artifacts": task.artifacts,
            "outputs": task.outputs,
            "start": time.monotonic(),
        }
        self.bodies.append(record)
        hook = self.hooks.get(letter)
        value = hook(task, letter) if hook is not None else None
        record["end"] = time.monotonic()
        return result_of(letter) if value is None else value

    def ran(self, letter: str, run_id: str | None = None) -> list[dict[str, Any]]:
        """The bodies of ``letter`` that ran (of one run, or of any)."""
        return [
            b
            for b in list(self.bodies)
            if b["letter"] == letter and (run_id is None or b["run"] == run_id)
        ]


def overlapping(h: Harness) -> Hook:
    """b and c: say this one started, then wait until both have: neither can end before the
    other started, and a worker running them one after the other fails the first."""

    def hook(task: Any, letter: str) -> None:
        h.latch(f"started-{letter}").set()
        both = all(h.latch(f"started-{other}").wait(OVERLAP_WAIT) for other in "bc")
        assert both, "b and c did not run at the same time"

    return hook


def held(h: Harness, name: str) -> Hook:
    """Say the body runs (latch ``running-<name>``), then wait for the latch ``name``."""

    def hook(task: Any, letter: str) -> None:
        h.latch(f"running-{name}").set()
        assert h.latch(name).wait(DEADLINE), f"latch {name} never released"

    return hook


def after_step_done(h: Harness, step_id: str) -> Hook:
    """Wait until ``step_id`` of this run is done in the store (completed or cached)."""

    def hook(task: Any, letter: str) -> None:
        wait_for(
            lambda: (
                h.store.require(task.run_id, include_events=False).step(step_id).status
                in DONE_STEP_STATUSES
            ),
            what=f"step {step_id} to be done",
        )

    return hook


def then(*hooks: Hook) -> Hook:
    """The hooks one after the other; the last value that is not None."""

    def hook(task: Any, letter: str) -> Any:
        value = None
        for each in hooks:
            result = each(task, letter)
            if result is not None:
                value = result
        return value

    return hook


def failing_unless_fixed(flags: dict[str, bool]) -> Hook:
    def hook(task: Any, letter: str) -> None:
        if not flags["fixed"]:
            raise PermanentError(f"{letter}: the input is broken")

    return hook


def gated_unless_fixed(flags: dict[str, bool]) -> Hook:
    def hook(task: Any, letter: str) -> None:
        fixed = flags["fixed"]
        task.gate("quality", "sharp" if fixed else "blurry", passed=fixed)

    return hook


def start(h: Harness, **options: Any) -> PipelineRun:
    return h.mp.start_run("diamond", diamond_steps(), **options)


# -- reading a run -----------------------------------------------------------------------------


def seqs(run: PipelineRun, kind: str, step_id: str | None = None) -> list[int]:
    return [e.seq for e in run.events if e.kind == kind and getattr(e, "step_id", None) == step_id]


def seq(run: PipelineRun, kind: str, step_id: str | None = None) -> int:
    """The seq of the one event of this kind (and step)."""
    (only,) = seqs(run, kind, step_id)
    return only


def at_once(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run the calls in threads released together by a barrier; each one's result (or the
    exception it raised), in call order."""
    barrier = threading.Barrier(len(calls))
    results: list[T | BaseException | None] = [None] * len(calls)

    def call(index: int) -> None:
        barrier.wait(timeout=DEADLINE)
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # handed to the test, not lost in the thread
            results[index] = exc

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert all(r is not None for r in results), results
    return [r for r in results if r is not None]


def assert_audited(h: Harness, run_id: str) -> None:
    run = h.store.require(run_id)
    assert audit_run(run) == []
    assert_seqs_contiguous(run)


def record_publishes(h: Harness) -> list[tuple[str, str, str | None]]:
    """Record every step the lifecycle publishes (run id, step id, task id), then publish it."""
    published: list[tuple[str, str, str | None]] = []
    publish = h.mp.lifecycle.enqueue

    def recording(run: PipelineRun, step: Any, task_id: str | None) -> None:
        published.append((run.run_id, step.step_id, task_id))
        publish(run, step, task_id)

    h.mp.lifecycle.enqueue = recording
    return published


def record_revokes(h: Harness) -> list[str]:
    """Record every task id the lifecycle revokes, then revoke it."""
    revoked: list[str] = []
    revoke = h.mp.lifecycle.revoke
    assert revoke is not None

    def recording(task_ids: Any) -> None:
        revoked.extend(task_ids)
        revoke(task_ids)

    h.mp.lifecycle.revoke = recording
    return revoked


DIAMOND_HEAD = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "a"),
    ("step-completed", "a"),
]
DIAMOND_TAIL = [("step-started", "d"), ("step-completed", "d"), ("run-completed", None)]


def assert_diamond_log(run: PipelineRun, ids: dict[str, str] | None = None) -> None:
    """a; then b and c both started before either completed; then d once; then the end."""
    ids = ids or {letter: letter for letter in LETTERS}
    log = kinds(run)
    rename = {v: k for k, v in ids.items()}
    log = [(kind, rename.get(step, step) if step else None) for kind, step in log]
    assert log[:4] == DIAMOND_HEAD
    assert sorted(log[4:6]) == [("step-started", "b"), ("step-started", "c")]
    assert sorted(log[6:8]) == [("step-completed", "b"), ("step-completed", "c")]
    assert log[8:] == DIAMOND_TAIL


# -- 1. the diamond ----------------------------------------------------------------------------


@pytest.mark.parametrize("last", ["b", "c"])
def test_b_and_c_run_side_by_side_and_d_runs_once_after_both_with_their_results(
    h: Harness, last: str
) -> None:
    first = "c" if last == "b" else "b"
    dm = Diamond(h, hooks={first: overlapping(h), last: then(overlapping(h), held(h, last))})
    dm.define()
    h.start_worker(pool="threads", concurrency=4)
    run_id = start(h).run_id
    # One branch is done, the other still runs: d is neither published nor started.
    h.wait_event(run_id, "step-completed", first)
    half = h.run(run_id)
    assert (half.step("d").status, half.step("d").task_id) == (StepStatus.PENDING, None)
    assert_never(lambda: dm.ran("d") or step_events(h.run(run_id), "d"), 0.3, "d to start")
    h.latch(last).set()
    run = h.wait_terminal(run_id)

    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert_diamond_log(run)
    started = [seq(run, "step-started", s) for s in "bc"]
    completed = [seq(run, "step-completed", s) for s in "bc"]
    assert max(started) < min(completed)  # both started before either completed
    assert seq(run, "step-started", "d") > max(completed)
    # The bodies' own clocks agree: each ran while the other ran.
    [b], [c] = dm.ran("b"), dm.ran("c")
    assert max(b["start"], c["start"]) < min(b["end"], c["end"])
    # d ran once and saw every step upstream of it, the two branches included.
    [d] = dm.ran("d")
    assert (d["artifacts"], d["outputs"]) == (UPSTREAM_ARTIFACTS, UPSTREAM_OUTPUTS)
    assert [dm.ran(x)[0]["artifacts"] for x in "abc"] == [{}, {"a": ["a-1"]}, {"a": ["a-1"]}]
    assert len(h.finished_tasks("dag.d")) == 1
    assert {s.step_id: s.artifact_ids for s in run.steps} == {x: [f"{x}-1"] for x in LETTERS}
    assert {s.step_id: s.outputs for s in run.steps} == {x: result_of(x)["outputs"] for x in "abcd"}
    assert len({s.task_id for s in run.steps}) == 4
    assert run.cost_usd == pytest.approx(sum(COSTS.values()))
    assert events_of(run, "run-completed")[0].total_cost_usd == pytest.approx(sum(COSTS.values()))
    assert_audited(h, run.run_id)


# -- 2. a redelivery of c ----------------------------------------------------------------------


def unacked_message(h: Harness, task_id: str) -> dict[str, Any] | None:
    """The message of ``task_id`` as kombu's Redis transport keeps it while it is unacknowledged
    (``acks_late``): the payload a visibility-timeout restore puts back on the queue."""
    for _, raw in h.client.hscan_iter("unacked"):
        payload, _exchange, _routing_key = json.loads(raw)
        if payload.get("headers", {}).get("id") == task_id:
            return dict(payload)
    return None


def redeliver(h: Harness, payload: dict[str, Any]) -> None:
    """Put a copy of the message back on the queue as kombu's restore does (flagged redelivered,
    at the consuming end), under a delivery tag of its own."""
    message = copy.deepcopy(payload)
    message["headers"]["redelivered"] = True
    message["properties"]["delivery_info"]["redelivered"] = True
    message["properties"]["delivery_tag"] = str(uuid.uuid4())
    h.client.rpush(h.queue, json.dumps(message))


@pytest.mark.parametrize("when", ["while-c-runs", "after-c-completed"])
def test_a_second_delivery_of_cs_message_changes_nothing_and_d_runs_once(
    h: Harness, when: str
) -> None:
    dm = Diamond(h, hooks={"c": held(h, "c"), "d": held(h, "d")})
    dm.define()
    h.start_worker(pool="threads", concurrency=4)
    run_id = start(h).run_id
    h.wait_event(run_id, "step-started", "c")
    c_task = h.run(run_id).step("c").task_id
    assert c_task
    message = wait_for(lambda: unacked_message(h, c_task), what="c's unacknowledged message")
    assert message["headers"]["mpstate_step_id"] == "c"

    if when == "while-c-runs":
        redeliver(h, message)
        wait_for(lambda: len(dm.ran("c")) == 2, what="the second delivery of c to run its body")
        h.latch("c").set()
        h.wait_event(run_id, "step-started", "d")
    else:
        h.latch("c").set()
        h.wait_event(run_id, "step-started", "d")
        redeliver(h, message)
        wait_for(lambda: len(h.finished_tasks(task_id=c_task)) == 2, what="c's second delivery")
    h.latch("d").set()
    run = h.wait_terminal(run_id)
    wait_for(lambda: len(h.finished_tasks(task_id=c_task)) == 2, what="both deliveries of c")

    assert run.status is PipelineRunStatus.COMPLETED, run.error
    c_started = step_events(run, "c", "step-started")
    if when == "while-c-runs":
        # The copy ran the body again (the step was still running); its result was a duplicate.
        assert len(dm.ran("c")) == 2
        assert [e.meta.get("redelivered") for e in c_started] == [None, True]
        assert [e.attempt for e in c_started] == [0, 0]
        assert sorted(f.state for f in h.finished_tasks(task_id=c_task)) == ["SUCCESS"] * 2
    else:
        # The copy found the step done: no event, no body.
        assert len(dm.ran("c")) == 1
        assert len(c_started) == 1
        states = sorted(f.state for f in h.finished_tasks(task_id=c_task))
        assert states == ["IGNORED", "SUCCESS"]
    assert {e.meta["taskId"] for e in c_started} == {c_task}
    assert len(step_events(run, "c", "step-completed")) == 1
    assert len(step_events(run, "d", "step-started")) == 1
    assert len(dm.ran("d")) == 1
    assert len(h.finished_tasks("dag.d")) == 1
    assert dm.ran("d")[0]["artifacts"] == UPSTREAM_ARTIFACTS
    assert seq(run, "step-started", "d") > seq(run, "step-completed", "c")
    assert run.cost_usd == pytest.approx(sum(COSTS.values()))  # c counted once
    assert kinds(run)[-3:] == DIAMOND_TAIL
    assert_audited(h, run_id)


# -- 3. a duplicate completion -----------------------------------------------------------------


@pytest.mark.parametrize("when", ["after-cs-own-completion", "before-cs-own-completion"])
def test_a_duplicate_completion_of_c_publishes_nothing_again_and_d_runs_once(
    h: Harness, when: str
) -> None:
    dm = Diamond(h)
    if when == "after-cs-own-completion":
        dm.hooks["d"] = held(h, "d")
    else:
        dm.hooks["c"] = held(h, "c")
    dm.define()
    published = record_publishes(h)
    h.start_worker(pool="threads", concurrency=4)
    run_id = start(h).run_id
    h.wait_event(run_id, "step-started", "c")
    c_task = h.run(run_id).step("c").task_id
    identity = StepIdentity(run_id, "c", is_step=True)
    result = StepResult.model_validate(result_of("c"))
    meta = {"taskId": c_task, "worker": "duplicate@test"}

    if when == "after-cs-own-completion":
        h.wait_event(run_id, "step-started", "d")  # c completed, d runs (held)
        before = h.run(run_id)
        publishes = list(published)
        duplicates = [h.mp.lifecycle.complete_step(identity, result, meta=meta) for _ in range(2)]
        after = h.run(run_id)
        assert [d is not None and d.changed for d in duplicates] == [False, False]
        assert (after.version, after.events) == (before.version, before.events)
        assert published == publishes
        h.latch("d").set()
    else:
        h.wait_event(run_id, "step-completed", "b")
        first = h.mp.lifecycle.complete_step(identity, result, meta=meta)  # c's body still runs
        assert first is not None and first.changed
        h.wait_event(run_id, "step-completed", "d")
        h.latch("c").set()
    run = h.wait_terminal(run_id)
    h.wait_finished(c_task)
    run = h.run(run_id)

    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert Counter(step for rid, step, _ in published if rid == run_id) == dict.fromkeys(LETTERS, 1)
    [d_task] = [task for _, step, task in published if step == "d"]
    assert run.step("d").task_id == d_task
    (completed,) = step_events(run, "c", "step-completed")
    by_test = completed.meta.get("worker") == "duplicate@test"
    assert by_test is (when == "before-cs-own-completion")
    assert len(step_events(run, "d", "step-started")) == 1
    assert len(dm.ran("d")) == 1
    assert len(h.finished_tasks("dag.d")) == 1
    assert run.cost_usd == pytest.approx(sum(COSTS.values()))
    assert kinds(run)[-3:] == DIAMOND_TAIL
    assert_audited(h, run_id)


# -- 4. a lost publish -------------------------------------------------------------------------


def test_a_completion_committed_by_a_process_that_died_before_publishing_d_is_repaired_once(
    h: Harness,
) -> None:
    """Simulated: c's completion is committed through a ``StepLifecycle`` on the same store whose
    enqueue never publishes (the process died right after the commit)."""
    dm = Diamond(h, hooks={"c": then(after_step_done(h, "b"), held(h, "c"))})
    dm.define()
    published = record_publishes(h)
    h.start_worker(pool="threads", concurrency=4)
    run_id = start(h).run_id
    wait_for(lambda: h.latch("running-c").is_set(), what="c to run")
    c_task = h.run(run_id).step("c").task_id

    lost: list[str] = []
    dying = StepLifecycle(h.store, lambda run, step, task_id: lost.append(step.step_id))
    committed = dying.complete_step(
        StepIdentity(run_id, "c", is_step=True),
        StepResult.model_validate(result_of("c")),
        meta={"taskId": c_task, "worker": "dead@host"},
    )
    assert committed is not None and committed.transition is not None
    assert [s.step_id for s in committed.transition.enqueue] == ["d"] == lost
    lost_task = committed.run.step("d").task_id
    assert lost_task
    h.latch("c").set()  # c's own completion now comes too late: it changes nothing
    h.wait_finished(c_task)
    stranded = h.run(run_id)
    assert stranded.status is PipelineRunStatus.RUNNING
    assert (stranded.step("d").status, stranded.step("d").task_id) == (
        StepStatus.PENDING,
        lost_task,
    )
    assert "d" not in [step for _, step, _ in published]
    assert_never(lambda: dm.ran("d"), 0.5, "d to run without a publish")

    wait_for(
        lambda: (
            run_id in [s.run_id for s in Reconciler(h.mp, stale_after_s=STALE_S).find_stalled()]
        ),
        what="d to count as stalled",
    )
    report = Reconciler(h.mp, stale_after_s=STALE_S).run_once()
    again = Reconciler(h.mp, stale_after_s=STALE_S).run_once()  # a second pass: nothing to do
    run = h.wait_terminal(run_id)

    assert [(s.step_id, s.status) for s in report.requeued] == [("d", StepStatus.PENDING)]
    assert (report.failed, report.skipped, report.unpublished) == ([], [], [])
    assert again.requeued == []
    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert [step for _, step, _ in published].count("d") == 1
    assert run.step("d").task_id not in (None, lost_task)
    assert h.finished_tasks(task_id=lost_task) == []
    assert len(dm.ran("d")) == 1
    assert dm.ran("d")[0]["artifacts"] == UPSTREAM_ARTIFACTS
    assert len(step_events(run, "c", "step-completed")) == 1
    assert step_events(run, "c", "step-completed")[0].meta["worker"] == "dead@host"
    assert kinds(run)[-3:] == DIAMOND_TAIL
    assert_audited(h, run_id)


StartWorker = Callable[[Harness], Path]


@pytest.fixture
def dag_worker(store_url: str) -> Iterator[StartWorker]:
    """Start a prefork ``celery worker`` subprocess running dag_worker_app on the test's queue."""
    started: list[tuple[PreforkWorker, Harness]] = []

    def start_worker(h: Harness) -> Path:
        worker = start_prefork_worker(
            h,
            "dag_worker_app",
            {
                "MPSTATE_DAG_BROKER": h.broker_url,
                "MPSTATE_DAG_STORE": store_url,
                "MPSTATE_DAG_PREFIX": h.prefix,
                "MPSTATE_DAG_QUEUE": h.queue,
            },
        )
        started.append((worker, h))
        return worker.log

    yield start_worker
    for worker, h in started:
        worker.stop()
        markers = list(h.client.scan_iter(match=f"{h.prefix}:dag:*"))
        if markers:
            h.client.delete(*markers)


def test_a_worker_sigkilled_between_committing_cs_completion_and_publishing_d_is_repaired_once(
    h: Harness, dag_worker: StartWorker
) -> None:
    """Real: the prefork pool child that commits c's completion kills itself (SIGKILL) in the
    lifecycle's enqueue, after the commit and before d's message is sent (dag_worker_app)."""
    for letter in LETTERS:  # the same tasks here, so mpstate publishes what it does in production

        @h.app.task(base=PipelineTask, bind=True, shared=False, name=f"dagk.{letter}")
        def stub(self: Any) -> None:
            raise AssertionError("the worker subprocess runs the steps")

    def counter(name: str) -> int:
        return int(h.client.get(f"{h.prefix}:dag:{name}") or 0)

    log = dag_worker(h)
    run_id = h.mp.start_run("dag-kill", diamond_steps("dagk")).run_id
    try:
        killed = wait_for(
            lambda: h.client.get(f"{h.prefix}:dag:killed"), 30, "the pool child to kill itself"
        ).decode()
        stranded = wait_for(
            lambda: (r := h.run(run_id)).step("c").status is StepStatus.COMPLETED and r,
            what="c's completion to be committed",
        )
        # The commit recorded d's task id; the process died before sending it.
        assert stranded.status is PipelineRunStatus.RUNNING
        assert (stranded.step("d").status, stranded.step("d").task_id) == (
            StepStatus.PENDING,
            killed,
        )
        wait_for(
            lambda: (
                run_id in [s.run_id for s in Reconciler(h.mp, stale_after_s=STALE_S).find_stalled()]
            ),
            what="d to count as stalled",
        )
        assert step_events(h.run(run_id), "d") == []
        assert counter("body:d") == 0
        report = Reconciler(h.mp, stale_after_s=STALE_S).run_once()
        run = h.wait_terminal(run_id, timeout=30)
    except AssertionError:
        print(log.read_text(errors="replace")[-6000:])
        raise

    assert [(s.step_id, s.status) for s in report.requeued] == [("d", StepStatus.PENDING)]
    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert run.step("d").task_id not in (None, killed)
    # c's message came back (reject_on_worker_lost) and was refused before its body.
    wait_for(lambda: counter("delivery:c") == 2, what="c's message to come back")
    assert [counter(f"delivery:{x}") for x in LETTERS] == [1, 1, 2, 1]
    assert [counter(f"body:{x}") for x in LETTERS] == [1, 1, 1, 1]
    assert run.step("d").artifact_ids == ["d-a+b+c"]
    assert len(step_events(run, "c", "step-started")) == 1  # the redelivery logged nothing
    assert len(step_events(run, "c", "step-completed")) == 1
    assert len(step_events(run, "d", "step-started")) == 1
    assert seq(run, "step-started", "d") > seq(run, "step-completed", "c")
    assert kinds(run)[-3:] == DIAMOND_TAIL
    assert run.cost_usd == pytest.approx(sum(COSTS.values()))
    assert_audited(h, run_id)


# -- 5. both branches wait for one provider ----------------------------------------------------

PROVIDER = "vid"


def succeeded(letter: str) -> dict[str, Any]:
    return {
        "status": "succeeded",
        "artifactIds": [f"{letter}-vid"],
        "costUsd": 0.5,
        "outputs": {"by": f"{letter}-provider"},
    }


def waiting_diamond(h: Harness) -> tuple[Diamond, dict[str, str]]:
    """b awaits job-b and c awaits job-c, both on provider "vid"; c only once the latch
    "c-await" is released. Returns the diamond and the job ids by step (fresh for each run:
    call ``jobs.update`` before starting another)."""
    jobs: dict[str, str] = {}
    dm = Diamond(h)

    def awaiting(task: Any, letter: str) -> Any:
        if letter == "c":
            assert h.latch("c-await").wait(DEADLINE)
        return task.await_external(PROVIDER, jobs[letter])

    dm.hooks.update(b=awaiting, c=awaiting)
    dm.define()
    return dm, jobs


def new_jobs(jobs: dict[str, str]) -> None:
    token = uuid.uuid4().hex[:8]
    jobs.update(b=f"job-b-{token}", c=f"job-c-{token}")


def suspend_both(h: Harness, jobs: dict[str, str]) -> PipelineRun:
    """Start a run, and check it is suspended only once both b and c wait."""
    new_jobs(jobs)
    h.latch("c-await").clear()
    run_id = start(h).run_id
    h.wait_event(run_id, "step-waiting", "b")
    waiting_b = h.run(run_id)
    assert waiting_b.status is PipelineRunStatus.RUNNING  # c still runs: not suspended
    assert events_of(waiting_b, "run-suspended") == []
    h.latch("c-await").set()
    run = h.wait_status(run_id, "suspended")
    log = kinds(run)
    assert log[:4] == DIAMOND_HEAD
    # c may start after b waits (while c is queued the run is not suspended either), but c
    # waits only after b did, and the run is suspended in c's commit, not before.
    assert sorted(log[4:-2]) == [
        ("step-started", "b"),
        ("step-started", "c"),
        ("step-waiting", "b"),
    ]
    assert log[-2:] == [("step-waiting", "c"), ("run-suspended", None)]
    assert seq(run, "step-started", "b") < seq(run, "step-waiting", "b")
    assert [run.step(s).awaited_job.job_id for s in "bc"] == [jobs["b"], jobs["c"]]
    return run


def assert_resumed_twice(h: Harness, run: PipelineRun, dm: Diamond, first: str) -> None:
    """The log after both callbacks, ``first`` applied first, as the rules say."""
    second = "c" if first == "b" else "b"
    n = len(DIAMOND_HEAD) + 5
    assert kinds(run)[n:] == [
        ("run-resumed", None),
        ("step-completed", first),
        ("run-suspended", None),
        ("run-resumed", None),
        ("step-completed", second),
        *DIAMOND_TAIL,
    ]
    assert [e.from_step_id for e in events_of(run, "run-resumed")] == [first, second]
    tokens = [e.resume_token for e in events_of(run, "run-suspended")]
    assert len(set(tokens)) == 2  # suspended again with a fresh token
    assert run.status is PipelineRunStatus.COMPLETED, run.error
    for letter in "bc":
        (completed,) = step_events(run, letter, "step-completed")
        assert completed.meta["jobId"] == run.step(letter).external_jobs[-1].job_id
        assert completed.artifact_ids == [f"{letter}-vid"]
    [d] = dm.ran("d", run.run_id)
    assert d["artifacts"] == {"a": ["a-1"], "b": ["b-vid"], "c": ["c-vid"]}
    assert d["outputs"] == {
        "a": result_of("a")["outputs"],
        "b": {"by": "b-provider"},
        "c": {"by": "c-provider"},
    }
    assert run.cost_usd == pytest.approx(COSTS["a"] + 0.5 + 0.5 + COSTS["d"])
    assert_audited(h, run.run_id)


@pytest.mark.parametrize("first", ["b", "c"])
def test_two_branches_waiting_on_one_provider_resume_in_either_order_and_d_runs_once(
    h: Harness, first: str
) -> None:
    dm, jobs = waiting_diamond(h)
    h.start_worker(pool="threads", concurrency=4)
    run_id = suspend_both(h, jobs).run_id
    second = "c" if first == "b" else "b"

    assert h.mp.resolve(PROVIDER, jobs[first], succeeded(first)) == "resumed"
    half = h.run(run_id)
    assert half.status is PipelineRunStatus.SUSPENDED
    assert kinds(half)[-3:] == [
        ("run-resumed", None),
        ("step-completed", first),
        ("run-suspended", None),
    ]
    assert (half.step("d").status, half.step("d").task_id) == (StepStatus.PENDING, None)
    assert h.mp.resolve(PROVIDER, jobs[first], succeeded(first)) == "ignored"
    assert h.run(run_id).version == half.version
    assert h.mp.resolve(PROVIDER, jobs[second], succeeded(second)) == "resumed"
    run = h.wait_terminal(run_id)

    assert_resumed_twice(h, run, dm, first)
    assert len(h.finished_tasks("dag.d")) == 1
    assert h.mp.resolve(PROVIDER, jobs[second], succeeded(second)) == "ignored"


def test_callbacks_for_both_branches_at_once_resume_each_job_once_and_d_runs_once(
    h: Harness,
) -> None:
    dm, jobs = waiting_diamond(h)
    h.start_worker(pool="threads", concurrency=4)
    for _ in range(3):
        run_id = suspend_both(h, jobs).run_id
        # Two callbacks per job (a provider's retry), all four at once.
        outcomes = at_once(
            [
                functools.partial(h.mp.resolve, PROVIDER, jobs[letter], succeeded(letter))
                for letter in "bcbc"
            ]
        )
        run = h.wait_terminal(run_id)

        assert sorted(zip("bcbc", outcomes, strict=True)) == [
            ("b", "ignored"),
            ("b", "resumed"),
            ("c", "ignored"),
            ("c", "resumed"),
        ]
        first = step_events(run, "b", "step-completed")[0].seq
        first_step = "b" if first < step_events(run, "c", "step-completed")[0].seq else "c"
        assert_resumed_twice(h, run, dm, first_step)
    assert len(h.finished_tasks("dag.d")) == 3


def test_a_callback_for_the_job_of_an_earlier_attempt_is_ignored(h: Harness) -> None:
    """b awaits job-0; a retryable failure of job-0 runs b again, which awaits job-1; callbacks
    for job-0 are answered "ignored" from then on, and change nothing."""
    base = f"job-{uuid.uuid4().hex[:8]}"
    dm = Diamond(h, hooks={"d": held(h, "d")})
    dm.hooks["b"] = lambda task, letter: task.await_external(PROVIDER, f"{base}-{task.attempt}")
    dm.define()
    h.start_worker(pool="threads", concurrency=4)
    run_id = start(h).run_id
    job0, job1 = f"{base}-0", f"{base}-1"

    def suspended_on(job: str) -> PipelineRun | None:
        run = h.run(run_id)
        awaited = run.step("b").awaited_job
        ok = run.status is PipelineRunStatus.SUSPENDED and awaited and awaited.job_id == job
        return run if ok else None

    wait_for(lambda: suspended_on(job0), what="b to await job-0")
    busy = {"status": "failed", "error": {"code": "BUSY", "retryable": True}}
    assert h.mp.resolve(PROVIDER, job0, busy) == "failed"
    waiting = wait_for(lambda: suspended_on(job1), what="b to run again and await job-1")

    # While b waits for job-1: job-0's late success and a repeated failure change nothing.
    assert h.mp.resolve(PROVIDER, job0, succeeded("b")) == "ignored"
    assert h.mp.resolve(PROVIDER, job0, busy) == "ignored"
    assert h.run(run_id).version == waiting.version

    assert h.mp.resolve(PROVIDER, job1, succeeded("b")) == "resumed"
    h.wait_event(run_id, "step-started", "d")
    live = h.run(run_id)
    assert not live.is_terminal
    # After job-1 succeeded, while the run still runs d: job-0 is still somebody else's past.
    assert h.mp.resolve(PROVIDER, job0, succeeded("b")) == "ignored"
    assert h.run(run_id).version == live.version
    h.latch("d").set()
    run = h.wait_terminal(run_id)
    assert h.mp.resolve(PROVIDER, job0, succeeded("b")) == "ignored"
    assert h.mp.resolve(PROVIDER, job1, succeeded("b")) == "ignored"

    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert h.run(run_id).version == run.version
    assert [e.attempt for e in step_events(run, "b", "step-started")] == [0, 1]
    assert [(e.code, e.retryable) for e in step_events(run, "b", "step-failed")] == [("BUSY", True)]
    (completed,) = step_events(run, "b", "step-completed")
    assert completed.meta["jobId"] == job1
    assert [(j.job_id, j.attempt) for j in run.step("b").external_jobs] == [(job0, 0), (job1, 1)]
    assert run.step("b").artifact_ids == ["b-vid"]
    assert len(dm.ran("d")) == 1
    assert dm.ran("d")[0]["artifacts"] == {"a": ["a-1"], "b": ["b-vid"], "c": ["c-1"]}
    assert_audited(h, run_id)


# -- 6. one branch fails for good --------------------------------------------------------------


def failing_b_while_c_runs(h: Harness) -> Diamond:
    """b fails for good once c runs; c holds until the latch "c" is released."""

    def fail_b(task: Any, letter: str) -> None:
        assert h.latch("running-c").wait(DEADLINE)
        raise PermanentError("b: the input is broken")

    dm = Diamond(h, hooks={"b": fail_b, "c": held(h, "c")})
    dm.define()
    return dm


def test_under_fail_fast_a_failed_branch_fails_the_run_at_once_and_revokes_the_running_sibling(
    h: Harness,
) -> None:
    dm = failing_b_while_c_runs(h)
    revoked = record_revokes(h)
    h.start_worker(pool="threads", concurrency=4)
    run_id = start(h).run_id
    failed = h.wait_status(run_id, "failed")
    c_task = failed.step("c").task_id
    assert c_task

    # At once: in the commit of b's failure, while c still runs.
    assert seq(failed, "run-failed") == seq(failed, "step-failed", "b") + 1
    assert "end" not in dm.ran("c")[0]
    assert failed.step("c").status is StepStatus.RUNNING
    assert (failed.step("d").status, failed.step("d").task_id) == (StepStatus.PENDING, None)
    (run_failed,) = events_of(failed, "run-failed")
    assert run_failed.code == "PermanentError"
    assert "step b failed" in run_failed.terminal_reason
    assert wait_for(lambda: list(revoked), what="the revoke") == [c_task]
    wait_for(lambda: c_task in worker_state.revoked, what="the revoke to reach the worker")

    h.latch("c").set()
    assert "end" in wait_for(lambda: dm.ran("c")[0].get("end") and dm.ran("c")[0])
    h.wait_finished(c_task)
    run = h.run(run_id)
    assert run.events == failed.events  # c's completion after run-failed changed nothing
    assert step_events(run, "c", "step-completed") == []
    assert run.status is PipelineRunStatus.FAILED
    assert dm.ran("d") == [] and h.finished_tasks("dag.d") == []
    assert_audited(h, run_id)


def test_under_fail_fast_a_sibling_still_queued_never_runs_its_body(h: Harness) -> None:
    """With one execution slot b runs first (published first) and fails; c's message, queued
    behind it, is revoked and, whether the revoke or the message reaches the worker first, c's
    body never runs."""
    dm = Diamond(h, hooks={"b": failing_unless_fixed({"fixed": False})})
    dm.define()
    revoked = record_revokes(h)
    discarded: list[str] = []

    def on_revoked(request: Any = None, **_: Any) -> None:
        discarded.append(getattr(request, "id", ""))

    signals.task_revoked.connect(on_revoked, weak=False)
    try:
        h.start_worker(pool="solo")
        run_id = start(h).run_id
        failed = h.wait_status(run_id, "failed")
        c_task = failed.step("c").task_id
        assert c_task and failed.step("c").status is StepStatus.PENDING
        assert wait_for(lambda: list(revoked), what="the revoke") == [c_task]
        wait_for(lambda: c_task in worker_state.revoked, what="the revoke to reach the worker")
        wait_for(
            lambda: (
                c_task in discarded
                or [f.state for f in h.finished_tasks(task_id=c_task)] == ["IGNORED"]
            ),
            what="c's message to be dropped",
        )
    finally:
        signals.task_revoked.disconnect(on_revoked)
    run = h.run(run_id)

    assert dm.ran("c") == [] and dm.ran("d") == []
    assert run.events == failed.events
    assert step_events(run, "c") == []
    assert_audited(h, run_id)


def test_under_finish_branches_the_sibling_runs_to_its_end_then_the_run_fails(
    h: Harness,
) -> None:
    dm = failing_b_while_c_runs(h)
    revoked = record_revokes(h)
    h.start_worker(pool="threads", concurrency=4)
    run_id = start(h, failure_policy="finish-branches").run_id
    h.wait_event(run_id, "step-failed", "b")
    waiting = h.run(run_id)
    assert waiting.status is PipelineRunStatus.RUNNING  # c still runs: the run goes on
    assert events_of(waiting, "run-failed") == []
    assert (waiting.step("d").status, waiting.step("d").task_id) == (StepStatus.PENDING, None)
    h.latch("c").set()
    run = h.wait_terminal(run_id)

    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run)[-3:] == [
        ("step-failed", "b"),
        ("step-completed", "c"),
        ("run-failed", None),
    ]
    assert run.step("c").status is StepStatus.COMPLETED
    assert run.step("c").artifact_ids == ["c-1"]
    assert (run.step("d").status, run.step("d").task_id) == (StepStatus.PENDING, None)
    assert "step b failed" in (run.error or "")
    assert dm.ran("d") == [] and h.finished_tasks("dag.d") == []
    assert revoked == []
    assert_audited(h, run_id)


class QuotaExceededError(Exception):
    """A failure with a code of its own, whose constructor takes more than its message (so it
    does not survive a pickle round trip)."""

    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(f"tenant {tenant} is over its limit of {limit}")
        self.code = "QUOTA"


def test_a_branch_failing_with_an_unpicklable_exception_records_the_exceptions_own_code(
    h: Harness,
) -> None:
    def fail_b(task: Any, letter: str) -> None:
        raise QuotaExceededError("acme", 3)

    Diamond(h, hooks={"b": fail_b}).define()
    h.start_worker(pool="threads", concurrency=4)
    run = h.wait_terminal(start(h).run_id)

    assert run.status is PipelineRunStatus.FAILED
    assert [e.code for e in step_events(run, "b", "step-failed")] == ["QUOTA"]
    assert events_of(run, "run-failed")[0].code == "QUOTA"


# -- 7. a canvas -------------------------------------------------------------------------------


def test_a_celery_canvas_runs_as_the_diamond_with_task_names_as_step_ids(h: Harness) -> None:
    dm = Diamond(h, hooks={"b": overlapping(h), "c": overlapping(h)})
    t = dm.define()
    h.start_worker(pool="threads", concurrency=4)
    canvas = chain(t["a"].si(x=1), group(t["b"].si(), t["c"].si()), t["d"].si())
    run = h.wait_terminal(h.mp.start_run("canvas", canvas).run_id)

    assert [(s.step_id, s.operation, s.depends_on, s.inputs) for s in run.steps] == [
        ("dag.a", "dag.a", [], {"x": 1}),
        ("dag.b", "dag.b", ["dag.a"], {}),
        ("dag.c", "dag.c", ["dag.a"], {}),
        ("dag.d", "dag.d", ["dag.b", "dag.c"], {}),
    ]
    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert_diamond_log(run, {letter: f"dag.{letter}" for letter in LETTERS})
    assert dm.ran("a")[0]["inputs"] == {"x": 1}
    [d] = dm.ran("d")
    assert d["artifacts"] == {f"dag.{x}": v for x, v in UPSTREAM_ARTIFACTS.items()}
    assert d["outputs"] == {f"dag.{x}": v for x, v in UPSTREAM_OUTPUTS.items()}
    assert len(h.finished_tasks("dag.d")) == 1
    assert_audited(h, run.run_id)


@pytest.mark.parametrize("mutable", ["b", "d"])
def test_a_canvas_with_a_mutable_signature_after_a_step_is_refused_and_creates_nothing(
    h: Harness, mutable: str
) -> None:
    t = Diamond(h).define()

    def sig(letter: str) -> Any:
        return t[letter].s() if letter == mutable else t[letter].si()

    canvas = chain(t["a"].si(x=1), group(sig("b"), sig("c")), sig("d"))
    with pytest.raises(InvalidPipelineError) as refused:
        h.mp.start_run("canvas", canvas)

    assert refused.value.step_ids == (f"dag.{mutable}",)
    assert ".si(" in str(refused.value)
    assert h.store.list_runs() == []
    assert h.client.llen(h.queue) == 0  # no worker: a started run's first step would be here


# -- 8. plain calls ----------------------------------------------------------------------------


@pytest.fixture
def hb(make_harness: HarnessFactory, redis_url: str) -> Harness:
    """A harness whose app keeps task results (in the suite's Redis), so callers can get them.

    (The harness sets ``task_ignore_result=True`` itself, so it is overridden here, before any
    task is defined.)
    """
    h = make_harness(result_backend=redis_url, result_expires=300)
    h.app.conf.task_ignore_result = False
    return h


def define_plain_tasks(h: Harness, seen: list[tuple[str, Any]]) -> dict[str, Any]:
    @h.app.task(base=PipelineTask, bind=True, shared=False, name="plain.add")
    def add(self: Any, x: int, y: int = 1) -> int:
        seen.append(("add", self.in_run))
        return x + y

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="plain.times")
    def times(self: Any, value: int, factor: int = 10) -> int:
        seen.append(("times", self.in_run))
        return value * factor

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="plain.progressing")
    def progressing(self: Any) -> str:
        # Events travel by Redis pub/sub: an event sent before the test's receiver subscribed
        # is gone, so report progress until the receiver got one.
        deadline = time.monotonic() + DEADLINE
        while not h.latch("progress-received").wait(0.05) and time.monotonic() < deadline:
            self.progress(50, message="half way")
        assert h.latch("progressing").wait(DEADLINE)
        return "done"

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="plain.awaiting")
    def awaiting(self: Any) -> Any:
        try:
            return self.await_external(PROVIDER, "job-nobody-awaits")
        except Exception as exc:
            seen.append(("raised", exc))
            raise

    return {"add": add, "times": times, "progressing": progressing, "awaiting": awaiting}


def test_a_pipeline_task_called_with_delay_apply_async_or_in_a_plain_chain_is_an_ordinary_task(
    hb: Harness,
) -> None:
    seen: list[tuple[str, Any]] = []
    t = define_plain_tasks(hb, seen)
    hb.start_worker(pool="threads", concurrency=4)

    assert t["add"].delay(1).get(timeout=DEADLINE) == 2
    assert t["add"].apply_async(args=(2,), kwargs={"y": 5}).get(timeout=DEADLINE) == 7
    assert chain(t["add"].s(1), t["times"].s()).apply_async().get(timeout=DEADLINE) == 20

    assert seen == [("add", False), ("add", False), ("add", False), ("times", False)]
    wait_for(lambda: len(hb.finished_tasks()) == 4, what="the four calls to finish")
    assert [f.state for f in hb.finished_tasks()] == ["SUCCESS"] * 4
    assert all("mpstate_run_id" not in f.headers for f in hb.finished_tasks())
    assert hb.store.list_runs() == []


def test_progress_in_a_plain_call_sends_a_task_progress_event_and_does_not_raise(
    hb: Harness,
) -> None:
    t = define_plain_tasks(hb, [])
    received: list[dict[str, Any]] = []
    receivers: list[Any] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "task-progress":
            received.append(event)
            hb.latch("progress-received").set()
            receivers[0].should_stop = True

    def capture() -> None:
        with hb.app.connection_for_read() as connection:
            receivers.append(hb.app.events.Receiver(connection, handlers={"*": on_event}))
            receivers[0].capture(limit=None, timeout=DEADLINE, wakeup=False)

    listener = threading.Thread(target=capture, daemon=True)
    listener.start()
    hb.start_worker(pool="threads", concurrency=2)

    result = t["progressing"].delay()
    wait_for(lambda: result.state == "PROGRESS", what="the PROGRESS state")
    assert result.info == {"pct": 50, "message": "half way"}
    listener.join(DEADLINE)
    hb.latch("progressing").set()

    assert result.get(timeout=DEADLINE) == "done"
    sent = received[0]
    assert (sent["uuid"], sent["pct"]) == (result.id, 50)
    assert "run_id" not in sent
    assert hb.store.list_runs() == []


def test_await_external_in_a_plain_call_fails_the_task_with_not_in_run_error(
    hb: Harness,
) -> None:
    seen: list[tuple[str, Any]] = []
    t = define_plain_tasks(hb, seen)
    hb.start_worker(pool="threads", concurrency=2)

    result = t["awaiting"].delay()
    result.get(timeout=DEADLINE, propagate=False)

    [(_, raised)] = seen
    assert type(raised) is NotInRunError
    assert "await_external() needs a pipeline run" in str(raised)
    assert result.state == "FAILURE"
    stored = json.loads(hb.client.get(f"celery-task-meta-{result.id}"))
    assert stored["status"] == "FAILURE"
    assert stored["result"]["exc_module"] == "mpstate.errors"
    # The constructor's arguments, so the backend rebuilds the same error for the caller.
    assert stored["result"]["exc_message"] == ["plain.awaiting", "await_external()"]
    assert hb.wait_finished(result.id).state == "FAILURE"
    assert hb.store.list_runs() == []
    assert hb.store.find_by_external_job_id(PROVIDER, "job-nobody-awaits") is None


def test_a_plain_caller_sees_the_failure_as_not_in_run_error(hb: Harness) -> None:
    t = define_plain_tasks(hb, [])
    hb.start_worker(pool="threads", concurrency=2)

    result = t["awaiting"].delay()
    result.get(timeout=DEADLINE, propagate=False)

    stored = json.loads(hb.client.get(f"celery-task-meta-{result.id}"))
    assert stored["result"]["exc_type"] == "NotInRunError"
    assert isinstance(hb.wait_finished(result.id).retval, NotInRunError)
    with pytest.raises(NotInRunError):
        result.get(timeout=DEADLINE)


# -- 9. re-runs --------------------------------------------------------------------------------


def ended_run(h: Harness, dm: Diamond, how: str, **options: Any) -> PipelineRun:
    """A diamond run that ended ``how``: c failed for good, was gate-rejected, or the run was
    cancelled while c ran; a and b completed first every time."""
    run_id = start(h, **options).run_id
    if how == "cancel":
        wait_for(lambda: h.latch("running-c").is_set(), what="c to run")
        h.mp.cancel_run(run_id, "operator said stop")
        h.latch("c").set()
        h.wait_finished(h.run(run_id).step("c").task_id)
    return h.wait_terminal(run_id)


def rerun_diamond(h: Harness, how: str) -> Diamond:
    dm = Diamond(h)
    wait_b = after_step_done(h, "b")
    if how == "failure":
        dm.hooks["c"] = then(wait_b, failing_unless_fixed(dm.flags))
    elif how == "gate":
        dm.hooks["c"] = then(wait_b, gated_unless_fixed(dm.flags))
    else:
        hold = held(h, "c")

        def hold_unless_fixed(task: Any, letter: str) -> None:
            if not dm.flags["fixed"]:
                hold(task, letter)

        dm.hooks["c"] = then(wait_b, hold_unless_fixed)
    dm.define()
    return dm


def without_links(run: PipelineRun) -> dict[str, Any]:
    return run.model_dump(exclude={"reruns", "version", "updated_at", "events"})


@pytest.mark.parametrize("how", ["failure", "cancel", "gate"])
def test_a_rerun_carries_a_and_b_over_runs_c_and_d_and_leaves_the_original_as_it_was(
    h: Harness, how: str
) -> None:
    dm = rerun_diamond(h, how)
    h.start_worker(pool="threads", concurrency=4)
    original = ended_run(h, dm, how)
    expected_status = PipelineRunStatus.CANCELLED if how == "cancel" else PipelineRunStatus.FAILED
    assert original.status is expected_status
    if how == "gate":
        assert events_of(original, "run-failed")[0].code == "gate-rejected"
    assert [original.step(s).status for s in "ab"] == [StepStatus.COMPLETED] * 2

    dm.flags["fixed"] = True
    rerun = h.mp.rerun(original.run_id, reason="fixed the input")
    run = h.wait_terminal(rerun.run_id)
    after = h.run(original.run_id)

    # The original: final, its log untouched; only the link to its re-run was written.
    assert after.events == original.events
    assert without_links(after) == without_links(original)
    assert after.version == original.version + 1
    assert after.reruns == [run.run_id]
    assert (run.rerun_of, run.run_id != original.run_id) == (original.run_id, True)
    # The re-run: a and b carried over as step-cached (artifacts, outputs, no cost), c and d ran.
    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-cached", "a"),
        ("step-cached", "b"),
        ("step-started", "c"),
        *([("step-gated", "c")] if how == "gate" else []),
        ("step-completed", "c"),
        *DIAMOND_TAIL,
    ]
    assert events_of(run, "run-started")[0].meta == {
        "rerunOf": original.run_id,
        "reason": "fixed the input",
    }
    for letter in "ab":
        step, source = run.step(letter), original.step(letter)
        assert step.status is StepStatus.CACHED
        assert (step.artifact_ids, step.outputs) == (source.artifact_ids, source.outputs)
        assert step.cost_usd == 0
        (cached,) = step_events(run, letter, "step-cached")
        assert cached.artifact_ids == source.artifact_ids
    assert [run.step(s).status for s in "cd"] == [StepStatus.COMPLETED] * 2
    assert run.cost_usd == pytest.approx(COSTS["c"] + COSTS["d"])
    assert (run.pipeline_id, run.tenant_id) == (original.pipeline_id, original.tenant_id)
    assert [(s.step_id, s.depends_on) for s in run.steps] == [
        (s.step_id, s.depends_on) for s in original.steps
    ]
    assert [len(dm.ran(x)) for x in LETTERS] == [1, 1, 2, 1]
    assert [len(dm.ran(x, run.run_id)) for x in LETTERS] == [0, 0, 1, 1]
    [d] = dm.ran("d")
    assert (d["artifacts"], d["outputs"]) == (UPSTREAM_ARTIFACTS, UPSTREAM_OUTPUTS)
    assert_audited(h, run.run_id)
    assert_audited(h, original.run_id)


def test_a_rerun_from_b_runs_b_and_d_again_and_carries_a_and_c_over(h: Harness) -> None:
    dm = Diamond(h)
    dm.hooks["d"] = failing_unless_fixed(dm.flags)
    dm.define()
    h.start_worker(pool="threads", concurrency=4)
    original = h.wait_terminal(start(h).run_id)
    assert original.status is PipelineRunStatus.FAILED
    assert [original.step(s).status for s in "abc"] == [StepStatus.COMPLETED] * 3

    dm.flags["fixed"] = True
    run = h.wait_terminal(h.mp.rerun(original.run_id, from_step="b", reason="redo b").run_id)

    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-cached", "a"),
        ("step-cached", "c"),
        ("step-started", "b"),
        ("step-completed", "b"),
        *DIAMOND_TAIL,
    ]
    assert [run.step(s).status for s in LETTERS] == [
        StepStatus.CACHED,
        StepStatus.COMPLETED,
        StepStatus.CACHED,
        StepStatus.COMPLETED,
    ]
    assert [len(dm.ran(x, run.run_id)) for x in LETTERS] == [0, 1, 0, 1]
    assert dm.ran("d", run.run_id)[0]["artifacts"] == UPSTREAM_ARTIFACTS
    assert run.cost_usd == pytest.approx(COSTS["b"] + COSTS["d"])
    assert h.run(original.run_id).reruns == [run.run_id]
    assert_audited(h, run.run_id)


def test_two_concurrent_reruns_of_one_run_create_exactly_one_new_run(h: Harness) -> None:
    dm = rerun_diamond(h, "failure")
    h.start_worker(pool="threads", concurrency=4)
    for attempt in range(3):
        dm.flags["fixed"] = False
        original = ended_run(h, dm, "failure")
        assert original.status is PipelineRunStatus.FAILED
        dm.flags["fixed"] = True
        rerun = functools.partial(h.mp.rerun, original.run_id, reason="both at once")
        got = at_once([rerun, rerun])

        assert len(got) == 2 and all(isinstance(r, PipelineRun) for r in got), got
        new_ids = {r.run_id for r in got if isinstance(r, PipelineRun)}
        assert len(new_ids) == 1
        (new_id,) = new_ids
        run = h.wait_terminal(new_id)
        assert run.status is PipelineRunStatus.COMPLETED, run.error
        assert h.run(original.run_id).reruns == [new_id]
        assert len(h.store.list_runs()) == 2 * (attempt + 1)
        assert len(events_of(run, "run-started")) == 1
        assert [len(dm.ran(x, new_id)) for x in LETTERS] == [0, 0, 1, 1]
        assert_audited(h, new_id)


def test_a_completed_or_a_live_run_cannot_be_rerun(h: Harness) -> None:
    dm = Diamond(h, hooks={"c": held(h, "c")})
    dm.define()
    h.start_worker(pool="threads", concurrency=4)
    live = start(h)
    wait_for(lambda: h.latch("running-c").is_set(), what="c to run")
    before = h.run(live.run_id)
    with pytest.raises(InvalidTransitionError):
        h.mp.rerun(live.run_id)
    assert h.run(live.run_id).version == before.version

    h.latch("c").set()
    completed = h.wait_terminal(live.run_id)
    assert completed.status is PipelineRunStatus.COMPLETED
    with pytest.raises(InvalidTransitionError):
        h.mp.rerun(completed.run_id, from_step="b")
    after = h.run(completed.run_id)
    assert (after.version, after.reruns) == (completed.version, [])
    assert len(h.store.list_runs()) == 1


def test_start_run_with_the_originals_idempotency_key_returns_its_live_rerun(h: Harness) -> None:
    dm = rerun_diamond(h, "failure")
    h.start_worker(pool="threads", concurrency=4)
    key = f"order-{uuid.uuid4().hex[:8]}"
    original = ended_run(h, dm, "failure", tenant_id="acme", idempotency_key=key)
    assert original.status is PipelineRunStatus.FAILED
    dm.flags["fixed"] = True
    dm.hooks["d"] = held(h, "d")

    rerun = h.mp.rerun(original.run_id, reason="fixed")
    h.wait_event(rerun.run_id, "step-started", "d")  # the re-run is live
    again = h.mp.start_run("diamond", diamond_steps(), tenant_id="acme", idempotency_key=key)

    assert again.run_id == rerun.run_id  # followed the original's reruns link
    assert rerun.idempotency_key is None  # the key keeps naming the original
    assert h.run(original.run_id).reruns == [rerun.run_id]
    assert len(h.store.list_runs()) == 2
    h.latch("d").set()
    run = h.wait_terminal(rerun.run_id)
    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert len(dm.ran("d")) == 1
