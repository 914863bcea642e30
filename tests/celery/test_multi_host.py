"""One pipeline over three worker processes, each with its own hostname and queue.

Three real ``celery worker`` subprocesses (prefork, one child each) share the suite's Redis as
broker and store, started once for the module:

- ``gen@hostA`` consumes ``gpu``: ``generate`` and ``publish``;
- ``up@hostB`` consumes ``cpu``: ``upscale``, ``hold`` (runs until released) and ``submit_video``
  (hands a job to a provider and suspends the run);
- ``hook@hostC`` consumes ``webhooks``: ``mpstate.resolve_webhook``.

The "hosts" share this machine: each is its own process, under its own node name.
Steps reach their queue through Celery's ``task_routes`` (``multi_host_app.routes``); the default
queue has no consumer. Which process ran a step is proved three ways that do not depend on each
other: the step body records ``self.request.hostname`` and its parent pid (the worker's main
process, whose pid this module knows), mpstate's events record the worker in their meta, and
Celery's own signals (``task_received``, ``task_postrun``, ``task_revoked``) are logged by each
worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from celery_support import DEADLINE, assert_never, kinds, wait_for
from key_cleanup import delete_prefix, delete_queue
from multi_host_app import (
    PROVIDER,
    build_app,
    celery_log_key,
    queue_name,
    release_key,
    trace_key,
)

from mpstate import RedisPipelineStateStore, audit_run
from mpstate.celery import MpState
from mpstate.events import TERMINAL_EVENT_KINDS
from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus

HERE = Path(__file__).parent

GEN, UP, HOOK = "gen@hostA", "up@hostB", "hook@hostC"
#: Worker node name -> the queue it consumes (the only one).
WORKERS = {GEN: "gpu", UP: "cpu", HOOK: "webhooks"}
#: Seconds the workers may take to answer a ping after they were started.
READY_TIMEOUT_S = 30.0

ADVANCE = [
    {"stepId": "generate", "operation": "mh.generate", "inputs": {"prompt": "bike"}},
    {"stepId": "upscale", "operation": "mh.upscale"},
    {"stepId": "publish", "operation": "mh.publish"},
]
ADVANCE_HOSTS = [("generate", GEN), ("upscale", UP), ("publish", GEN)]
ADVANCE_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "generate"),
    ("step-completed", "generate"),
    ("step-started", "upscale"),
    ("step-completed", "upscale"),
    ("step-started", "publish"),
    ("step-completed", "publish"),
    ("run-completed", None),
]

HOLD = [
    {"stepId": "generate", "operation": "mh.generate", "inputs": {"prompt": "boat"}},
    {"stepId": "hold", "operation": "mh.hold"},
    {"stepId": "publish", "operation": "mh.publish"},
]
CANCELLED_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "generate"),
    ("step-completed", "generate"),
    ("step-started", "hold"),
    ("run-cancelled", None),
]

VIDEO_HOSTS = [("generate", GEN), ("submit", UP), ("publish", GEN)]
VIDEO_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "generate"),
    ("step-completed", "generate"),
    ("step-started", "submit"),
    ("step-waiting", "submit"),
    ("run-suspended", None),
    ("run-resumed", None),
    ("step-completed", "submit"),
    ("step-started", "publish"),
    ("step-completed", "publish"),
    ("run-completed", None),
]
SUCCEEDED = {"status": "succeeded", "artifactIds": ["vid-1"], "costUsd": 0.5}


def video_steps(job_id: str) -> list[dict[str, Any]]:
    return [
        {"stepId": "generate", "operation": "mh.generate", "inputs": {"prompt": "film"}},
        {"stepId": "submit", "operation": "mh.submit_video", "inputs": {"job_id": job_id}},
        {"stepId": "publish", "operation": "mh.publish"},
    ]


# -- the workers -----------------------------------------------------------------------------------


@dataclass
class Worker:
    """One ``celery worker`` subprocess, in its own process group."""

    name: str
    queue: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, last: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-last:]

    def live_children(self) -> set[int]:
        """Pids of the worker's pool children that are alive."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return set()
        return {child.pid for child in children if alive(child.pid)}


@dataclass
class Cluster:
    """The module's app (as the test process sees it), store and worker subprocesses."""

    mp: MpState
    store: RedisPipelineStateStore
    notes: redis.Redis
    prefix: str
    workers: dict[str, Worker]

    def run(self, run_id: str) -> PipelineRun:
        return self.store.require(run_id)

    def wait_run(self, run_id: str, done: Callable[[PipelineRun], bool], what: str) -> PipelineRun:
        def reached() -> PipelineRun | None:
            run = self.run(run_id)
            return run if done(run) else None

        try:
            return wait_for(reached, what=what)
        except AssertionError:
            self.print_worker_logs()
            raise

    def wait_terminal(self, run_id: str) -> PipelineRun:
        return self.wait_run(run_id, lambda run: run.is_terminal, f"run {run_id} to finish")

    def trace(self, run_id: str) -> list[dict[str, Any]]:
        """What the step bodies of ``run_id`` recorded about themselves, in order."""
        return [
            json.loads(entry) for entry in self.notes.lrange(trace_key(self.prefix, run_id), 0, -1)
        ]

    def celery_log(self, signal_name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Celery's signals as the workers logged them, filtered by signal and field values."""
        entries = [json.loads(e) for e in self.notes.lrange(celery_log_key(self.prefix), 0, -1)]
        return [
            e
            for e in entries
            if (signal_name is None or e["signal"] == signal_name)
            and all(e.get(key) == value for key, value in match.items())
        ]

    def queue_length(self, name: str) -> int:
        return int(self.notes.llen(queue_name(self.prefix, name)))

    def print_worker_logs(self) -> None:
        lengths = {q: self.queue_length(q) for q in [*WORKERS.values(), "unrouted"]}
        print(f"messages waiting in the queues: {lengths}")
        for worker in self.workers.values():
            print(f"---- {worker.name} (pid {worker.pid}) ----\n{worker.output()}")


def start_worker(name: str, queue: str, env: dict[str, str]) -> Worker:
    log = Path(tempfile.mkstemp(prefix=f"mpstate-{name.partition('@')[0]}-", suffix=".log")[1])
    command = [
        sys.executable, "-m", "celery", "-A", "multi_host_app", "worker",
        "-P", "prefork", "-c", "1", "-n", name, "-Q", queue,
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its pool children go with it
        )
    return Worker(name, queue, process, log)


def wait_ready(mp: MpState, workers: dict[str, Worker]) -> None:
    """Poll until every worker answers a ping (its consumer and remote control are up)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    answered: set[str] = set()
    while answered != set(workers):
        for worker in workers.values():
            if worker.process.poll() is not None:
                raise AssertionError(f"{worker.name} exited:\n{worker.output()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"{w.name}:\n{w.output()}" for w in workers.values())
            raise AssertionError(f"workers {set(workers) - answered} never answered:\n{logs}")
        replies = mp.app.control.ping(destination=sorted(set(workers) - answered), timeout=0.3)
        answered |= {name for reply in replies for name in reply}


def stop_workers(workers: dict[str, Worker]) -> list[str]:
    """Warm shutdown (SIGTERM) of every worker; SIGKILL what is left of a group after 15 s.

    Returns what had to be killed: a clean stop leaves nothing behind by itself.
    """
    for worker in workers.values():
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    leftovers = []
    for worker in workers.values():
        try:
            worker.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            leftovers.append(f"{worker.name} ignored SIGTERM")
        with suppress(ProcessLookupError):
            # Anything still in the group (the main process, an orphaned pool child) is killed.
            os.killpg(worker.pid, 0)
            leftovers.append(f"processes of {worker.name}'s group outlived it")
            os.killpg(worker.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=10)
        worker.log.unlink(missing_ok=True)
    return leftovers


@pytest.fixture(scope="module")
def cluster(redis_url: str) -> Iterator[Cluster]:
    prefix = f"mh{uuid.uuid4().hex[:10]}"
    mp = build_app(redis_url, redis_url, prefix)
    assert isinstance(mp.store, RedisPipelineStateStore)
    notes = redis.Redis.from_url(redis_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MPSTATE_", "CELERY_"))},
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "MPSTATE_MH_BROKER": redis_url,
        "MPSTATE_MH_STORE": redis_url,
        "MPSTATE_MH_PREFIX": prefix,
    }
    workers: dict[str, Worker] = {}
    try:
        for name, queue in WORKERS.items():
            workers[name] = start_worker(name, queue_name(prefix, queue), env)
        wait_ready(mp, workers)
        yield Cluster(mp, mp.store, notes, prefix, workers)
    finally:
        leftovers = stop_workers(workers)
        mp.close()
        for queue in [*WORKERS.values(), "unrouted"]:
            delete_queue(notes, queue_name(prefix, queue))
        delete_prefix(notes, prefix)  # the store's keys
        for key in notes.scan_iter(match=f"{prefix}:*"):  # the traces and Celery's records
            notes.delete(key)
        mp.store.close()
        mp.app.close()
        notes.close()
    assert not leftovers, leftovers


# -- what a run's steps did, seen three ways -------------------------------------------------------


def assert_steps_ran_on(c: Cluster, run: PipelineRun, expected: list[tuple[str, str]]) -> None:
    """Each step of ``expected`` (step id, worker) ran once, in that order, on that worker.

    The body's own record (hostname, and a parent pid that is that worker subprocess's pid),
    mpstate's step events (meta: task id and worker) and Celery's task_received / task_postrun
    records of the step's task id must all agree. (A step resumed by a webhook was completed by
    the webhook's task: its step-completed is checked by the webhook test.)
    """
    started = [(t["step"], t["host"], t["ppid"]) for t in c.trace(run.run_id)]
    assert started == [(step, host, c.workers[host].pid) for step, host in expected]
    resumed = {e.from_step_id for e in run.events if e.kind == "run-resumed"}
    for step_id, host in expected:
        task_id = run.step(step_id).task_id
        assert task_id
        for kind in ("step-started", "step-completed"):
            if kind == "step-completed" and step_id in resumed:
                continue
            (event,) = [
                e for e in run.events if e.kind == kind and getattr(e, "step_id", None) == step_id
            ]
            assert (event.meta["taskId"], event.meta["worker"]) == (task_id, host), (step_id, kind)
        received = c.celery_log("task_received", id=task_id)
        assert [(r["host"], r["pid"]) for r in received] == [(host, c.workers[host].pid)]
        # The run is terminal inside its last task, before Celery's task_postrun is logged.
        (postrun,) = wait_for(
            lambda task_id=task_id: c.celery_log("task_postrun", id=task_id),
            what="task_postrun logged",
        )
        body_pid = next(t["pid"] for t in c.trace(run.run_id) if t["step"] == step_id)
        assert (postrun["host"], postrun["state"], postrun["pid"]) == (host, "SUCCESS", body_pid)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie is dead, only not reaped by its parent yet)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def terminal_events(run: PipelineRun) -> list[str]:
    return [event.kind for event in run.events if event.kind in TERMINAL_EVENT_KINDS]


# -- the tests -------------------------------------------------------------------------------------


def test_the_workers_consume_only_their_own_queues_under_their_own_hostnames(
    cluster: Cluster,
) -> None:
    active = cluster.mp.app.control.inspect(destination=list(WORKERS), timeout=2).active_queues()
    assert active is not None
    consumed = {node: sorted(q["name"] for q in queues) for node, queues in active.items()}
    assert consumed == {
        node: [queue_name(cluster.prefix, queue)] for node, queue in WORKERS.items()
    }


def test_each_step_runs_on_the_worker_of_its_queue_in_order_and_the_run_completes(
    cluster: Cluster,
) -> None:
    run = cluster.mp.start_run("multi-host", ADVANCE)
    run = cluster.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert kinds(run) == ADVANCE_LOG
    assert_steps_ran_on(cluster, run, ADVANCE_HOSTS)
    # Each step read what the step before it produced on another host, through the store.
    assert run.step("publish").artifact_ids == [
        f"post(img(bike)@{GEN}+4k(img(bike)@{GEN})@{UP})@{GEN}"
    ]
    assert run.cost_usd == pytest.approx(0.07)
    assert cluster.queue_length("unrouted") == 0
    assert audit_run(run) == []


@pytest.mark.parametrize("terminate", [False, True], ids=["revoke", "terminate"])
def test_cancelling_a_run_while_its_step_runs_on_another_host_starts_no_later_step_anywhere(
    cluster: Cluster, terminate: bool
) -> None:
    c = cluster
    run_id = c.mp.start_run("multi-host-cancel", HOLD).run_id
    wait_for(lambda: any(t["step"] == "hold" for t in c.trace(run_id)), what="hold to start")
    (held,) = c.trace(run_id)[1:]
    assert (held["host"], held["ppid"]) == (UP, c.workers[UP].pid)
    task_id = c.run(run_id).step("hold").task_id
    assert task_id

    cancelled = c.mp.cancel_run(run_id, "customer cancelled", terminate=terminate)
    assert cancelled.status is PipelineRunStatus.CANCELLED

    if terminate:
        # up@hostB's main process killed the pool child running the body.
        wait_for(
            lambda: c.celery_log("task_revoked", id=task_id, terminated=True),
            what="the hold task to be terminated",
        )
        assert c.celery_log("task_revoked", id=task_id)[0]["host"] == UP
        wait_for(lambda: not alive(held["pid"]), what="the body's process to die")
        # The worker replaces its pool child (billiard reaps the dead one within a few seconds):
        # up@hostB serves the later tests.
        wait_for(lambda: c.workers[UP].live_children() - {held["pid"]}, what="a new pool child")
    else:
        # The body runs on to its end; its result arrives after the cancel and changes nothing.
        c.notes.rpush(release_key(c.prefix, run_id), "go")
        wait_for(lambda: c.celery_log("task_postrun", id=task_id), what="the hold task to end")
    after_cancel = c.run(run_id)

    def something_after_the_cancel() -> object:
        return (
            c.run(run_id).events != after_cancel.events
            or [t for t in c.trace(run_id) if t["step"] == "publish"]
            or c.celery_log("task_received", run=run_id, name="mh.publish")
        )

    assert_never(something_after_the_cancel, 1.0, "an event, a body or a task after the cancel")
    run = c.run(run_id)
    assert run.status is PipelineRunStatus.CANCELLED
    assert run.error == "customer cancelled"
    assert kinds(run) == CANCELLED_LOG
    assert terminal_events(run) == ["run-cancelled"]
    assert run.step("publish").status is StepStatus.PENDING
    bodies = [(t["step"], t["what"], t["host"]) for t in c.trace(run_id)]
    if terminate:
        assert bodies == [("generate", "started", GEN), ("hold", "started", UP)]
        # The SIGTERM ended the body inside its wait: no "released", and no state Celery reports
        # (task_postrun fires with state None as the exception unwinds the child, or not at all).
        assert [p["state"] for p in c.celery_log("task_postrun", id=task_id)] in ([], [None])
    else:
        assert bodies == [
            ("generate", "started", GEN),
            ("hold", "started", UP),
            ("hold", "released", UP),
        ]
        assert [p["state"] for p in c.celery_log("task_postrun", id=task_id)] == ["SUCCESS"]
    # Across every worker, Celery received only the two steps that ran, each once on its host.
    received = [(r["name"], r["host"]) for r in c.celery_log("task_received", run=run_id)]
    assert received == [("mh.generate", GEN), ("mh.hold", UP)]
    assert c.queue_length("gpu") == c.queue_length("unrouted") == 0
    assert audit_run(run) == []


def test_a_step_suspended_on_one_host_is_resumed_by_the_webhook_worker_and_ends_on_another(
    cluster: Cluster,
) -> None:
    c = cluster
    job_id = f"job-{uuid.uuid4().hex[:10]}"
    run_id = c.mp.start_run("multi-host-video", video_steps(job_id)).run_id
    suspended = c.wait_run(run_id, lambda r: r.status == "suspended", "the run to suspend")

    assert suspended.external_job_ids == {PROVIDER: job_id}
    found = c.store.find_by_external_job_id(PROVIDER, job_id)
    assert found is not None and found.run_id == run_id
    assert suspended.events[-1].kind == "run-suspended"
    assert suspended.events[-1].meta["worker"] == UP
    assert [t["step"] for t in c.trace(run_id)] == ["generate", "submit"]

    # The provider's callback, as the receiver publishes it: routed to hook@hostC's queue.
    callback = c.mp.resolve_webhook.delay(PROVIDER, job_id, SUCCEEDED)
    run = c.wait_terminal(run_id)

    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert kinds(run) == VIDEO_LOG
    resumed = next(e for e in run.events if e.kind == "run-resumed")
    completed = next(e for e in run.events if e.kind == "step-completed" and e.step_id == "submit")
    for event in (resumed, completed):
        assert (event.meta["worker"], event.meta["taskId"], event.meta["jobId"]) == (
            HOOK,
            callback.id,
            job_id,
        )
    (received,) = c.celery_log("task_received", id=callback.id)
    assert (received["name"], received["host"]) == ("mpstate.resolve_webhook", HOOK)
    (postrun,) = wait_for(
        lambda: c.celery_log("task_postrun", id=callback.id), what="task_postrun logged"
    )
    assert (postrun["host"], postrun["state"]) == (HOOK, "SUCCESS")
    # submit's body ran on up@hostB; publish, enqueued by hook@hostC, ran on gen@hostA.
    assert_steps_ran_on(c, run, VIDEO_HOSTS)
    assert run.step("submit").artifact_ids == ["vid-1"]
    assert run.step("publish").artifact_ids == [f"post(img(film)@{GEN}+vid-1)@{GEN}"]
    assert run.cost_usd == pytest.approx(0.55)
    assert audit_run(run) == []


def test_many_runs_started_at_once_spread_over_the_workers_and_all_complete_with_sound_logs(
    cluster: Cluster,
) -> None:
    c = cluster
    jobs: dict[str, str] = {}  # run id -> job id, for the video runs
    expected: dict[str, list[tuple[str, str]]] = {}
    for index in range(8):
        if index % 2:
            job_id = f"job-{uuid.uuid4().hex[:10]}"
            run_id = c.mp.start_run("multi-host-video", video_steps(job_id)).run_id
            jobs[run_id] = job_id
            expected[run_id] = VIDEO_HOSTS
        else:
            run_id = c.mp.start_run("multi-host", ADVANCE).run_id
            expected[run_id] = ADVANCE_HOSTS

    delivered: dict[str, str] = {}  # run id -> callback task id

    def all_finished() -> bool:
        finished = True
        for run_id in expected:
            run = c.run(run_id)
            if run.status == "suspended" and run_id not in delivered:
                delivered[run_id] = c.mp.resolve_webhook.delay(PROVIDER, jobs[run_id], SUCCEEDED).id
            finished = finished and run.is_terminal
        return finished

    try:
        wait_for(all_finished, timeout=2 * DEADLINE, what="every run to finish")
    except AssertionError:
        c.print_worker_logs()
        raise

    for run_id, hosts in expected.items():
        run = c.run(run_id)
        assert run.status is PipelineRunStatus.COMPLETED, (run_id, run.error)
        assert audit_run(run) == [], run_id
        assert terminal_events(run) == ["run-completed"]
        assert kinds(run) == (VIDEO_LOG if run_id in jobs else ADVANCE_LOG)
        assert_steps_ran_on(c, run, hosts)
    assert set(delivered) == set(jobs)
    for callback_id in delivered.values():
        assert [r["host"] for r in c.celery_log("task_received", id=callback_id)] == [HOOK]
    # The runs overlapped: the workers received some run's tasks between two of another's.
    received = [e["run"] for e in c.celery_log("task_received") if e["run"] in expected]
    blocks = [run for i, run in enumerate(received) if i == 0 or received[i - 1] != run]
    assert len(blocks) > len(expected)
    assert c.queue_length("unrouted") == 0
