"""Helpers for the Celery integration tests: a real broker, a real worker, a real store.

``Harness`` bundles one test's Celery app (its own ``main`` name and queue), the
``RedisPipelineStateStore`` under the test's prefix, the ``MpState`` bound to them, and the
in-thread workers started for the test. Everything waits by polling the store (or the record of
finished tasks) with a deadline: there are no fixed sleeps.

The store may be on a Redis Cluster (a ``redis+cluster://`` store URL) while the broker stays a
single Redis: kombu has no Redis Cluster transport. ``Harness.client`` is then a plain client of
the broker's Redis (where the test's queue lives) and ``Harness.store_client`` a ``RedisCluster``
client for the store's own keys.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state
from key_cleanup import delete_prefix, delete_prefix_on_cluster
from redis.cluster import RedisCluster

from mpstate import RedisPipelineStateStore
from mpstate.celery import MpState
from mpstate.celery.identity import identity_of
from mpstate.events import PipelineEvent
from mpstate.models import PipelineRun
from mpstate.redis.urls import cluster_url

T = TypeVar("T")

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"

#: The values of the ``store_backend`` fixture (tests/celery/conftest.py): where the store lives.
STORE_BACKENDS = ("redis", "cluster")

#: Longest any single wait in these tests may take, in seconds.
DEADLINE = 20.0

#: Longest ``Harness.wait_terminal`` waits, once the run is terminal, for the worker to finish
#: the tasks of that run it is executing (one held on purpose must not stall the test long).
SETTLE = 2.0


def rabbitmq_available() -> bool:
    """True when something accepts TCP connections on RabbitMQ's port on loopback."""
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], T], timeout: float = DEADLINE, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.03)


def assert_never(predicate: Callable[[], object], duration: float, what: str = "") -> None:
    """Poll ``predicate`` for ``duration`` seconds and fail as soon as it becomes truthy."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            raise AssertionError(f"unexpected: {what or predicate} -> {value!r}")
        time.sleep(0.03)


# -- reading a run's log ---------------------------------------------------------------------------


def kinds(run: PipelineRun) -> list[tuple[str, str | None]]:
    """The log as (kind, step id) pairs."""
    return [(event.kind, getattr(event, "step_id", None)) for event in run.events]


def step_events(run: PipelineRun, step_id: str, kind: str | None = None) -> list[PipelineEvent]:
    return [
        event
        for event in run.events
        if getattr(event, "step_id", None) == step_id and (kind is None or event.kind == kind)
    ]


def events_of(run: PipelineRun, kind: str) -> list[PipelineEvent]:
    return [event for event in run.events if event.kind == kind]


def assert_seqs_contiguous(run: PipelineRun) -> None:
    assert [event.seq for event in run.events] == list(range(1, len(run.events) + 1))


# -- what the worker did ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """One task execution as task_postrun reported it."""

    name: str
    task_id: str
    state: str
    retval: Any
    headers: dict[str, Any]


@dataclass
class Harness:
    """One test's app, store, MpState and workers."""

    app: Celery
    store: RedisPipelineStateStore
    mp: MpState
    #: A plain client of the suite's single Redis: the store's server when the store is on a
    #: single Redis (the broker's too, unless a test gives the broker a server of its own); the
    #: broker's server when the store is on a Redis Cluster. Tests read queue lengths through it.
    client: redis.Redis
    queue: str
    prefix: str
    broker_url: str
    stack: ExitStack
    #: A client for the store's own keys: ``client`` itself, or a ``RedisCluster`` client when
    #: the store is on a cluster (every key is hash-tagged: one multi-key command per slot).
    store_client: redis.Redis | RedisCluster
    finished: list[Finished] = field(default_factory=list)
    latches: dict[str, threading.Event] = field(default_factory=dict)
    #: Tasks between task_prerun and task_postrun: task id -> the run it belongs to, if any.
    executing: dict[str, str | None] = field(default_factory=dict)

    # -- workers ----------------------------------------------------------------------------

    def start_worker(self, pool: str = "solo", concurrency: int = 1) -> None:
        """Start a real worker thread consuming this test's queue (stopped at teardown)."""
        # Runs after the worker's context exits, even when it raised (ExitStack is LIFO).
        self.stack.callback(let_workers_start)
        self.stack.enter_context(
            start_worker(
                self.app,
                pool=pool,
                concurrency=concurrency,
                perform_ping_check=False,
                shutdown_timeout=20,
                hostname=f"{self.app.main}@localhost",
                queues=[self.queue],
            )
        )
        # Anything a test still holds is released before the worker is asked to stop.
        self.stack.callback(self.release_all)

    def latch(self, name: str) -> threading.Event:
        """A named event a task can wait on (every latch is set at teardown)."""
        return self.latches.setdefault(name, threading.Event())

    def release_all(self) -> None:
        for event in self.latches.values():
            event.set()

    # -- the store --------------------------------------------------------------------------

    def run(self, run_id: str) -> PipelineRun:
        return self.store.require(run_id)

    def wait_terminal(self, run_id: str, timeout: float = DEADLINE) -> PipelineRun:
        """The run once it is terminal, and once the worker has finished (task_postrun) the
        tasks of that run it was executing, for up to ``SETTLE`` seconds more.

        The run turns terminal inside the task that ends it (its body, or mpstate's hooks before
        task_postrun), so without the second wait ``finished_tasks`` could still miss that task.
        """
        run = wait_for(
            lambda: (run := self.run(run_id)).is_terminal and run,
            timeout,
            f"run {run_id} to finish",
        )
        deadline = time.monotonic() + SETTLE
        while run_id in list(self.executing.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return run

    def wait_status(self, run_id: str, status: str, timeout: float = DEADLINE) -> PipelineRun:
        return wait_for(
            lambda: (run := self.run(run_id)).status == status and run,
            timeout,
            f"run {run_id} to be {status}",
        )

    def wait_event(
        self, run_id: str, kind: str, step_id: str | None = None, timeout: float = DEADLINE
    ) -> PipelineEvent:
        def found() -> PipelineEvent | None:
            for event in self.run(run_id).events:
                if event.kind == kind and (
                    step_id is None or getattr(event, "step_id", None) == step_id
                ):
                    return event
            return None

        return wait_for(found, timeout, f"{kind} {step_id or ''} in run {run_id}")

    # -- finished tasks ---------------------------------------------------------------------

    def finished_tasks(self, name: str | None = None, task_id: str | None = None) -> list[Finished]:
        return [
            f
            for f in list(self.finished)
            if (name is None or f.name == name) and (task_id is None or f.task_id == task_id)
        ]

    def wait_finished(
        self,
        task_id: str,
        states: Iterable[str] = ("SUCCESS", "FAILURE", "IGNORED", "REJECTED"),
        timeout: float = DEADLINE,
    ) -> Finished:
        wanted = set(states)
        return wait_for(
            lambda: next(
                (f for f in self.finished_tasks(task_id=task_id) if f.state in wanted), None
            ),
            timeout,
            f"task {task_id} to end in {sorted(wanted)}",
        )


HarnessFactory = Callable[..., Harness]


def let_workers_start() -> None:
    """Undo the stop request Celery's ``start_worker`` leaves behind when its thread is slow.

    At exit ``start_worker`` sets ``celery.worker.state.should_terminate`` to stop its thread and
    resets it once the thread has exited; a thread that outlives ``shutdown_timeout`` makes it
    raise before the reset (the test fails: correct), but every later worker of this process (of
    this xdist worker) would then stop before it is ready while ``start_worker`` waits for ready
    forever: each later test hangs until pytest-timeout.
    """
    worker_state.should_terminate = None


@contextmanager
def harness(
    broker_url: str, store_url: str, prefix: str, *, client_url: str | None = None, **conf: Any
) -> Iterator[Harness]:
    """Build a harness; on exit stop its workers, close MpState and delete what it wrote.

    ``store_url`` is a single Redis (``redis://``) or a Redis Cluster (``redis+cluster://`` and
    any node's address). ``client_url`` is the single Redis ``Harness.client`` connects to: by
    default the store's, or the broker's when the store is a cluster (then name a Redis here if
    the broker is not one). ``conf`` is Celery configuration.
    """
    name = f"mpstate-test-{uuid.uuid4().hex[:10]}"
    queue = f"{prefix}-q"
    app = Celery(name, broker=broker_url, set_as_current=False)
    defaults: dict[str, Any] = {
        "task_default_queue": queue,
        "task_acks_late": True,
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "mpstate_webhook_retry_interval_s": 0.2,
    }
    app.conf.update({**defaults, **conf})  # the test's settings win
    store = RedisPipelineStateStore.from_url(store_url, prefix=prefix)
    cluster_node_url = cluster_url(store_url)
    if client_url is None:
        client_url = store_url if cluster_node_url is None else broker_url
    client = redis.Redis.from_url(client_url)
    store_client: redis.Redis | RedisCluster = client
    if cluster_node_url is not None:
        store_client = RedisCluster.from_url(cluster_node_url)
    with ExitStack() as stack:
        mp = MpState(app, store)
        h = Harness(app, store, mp, client, queue, prefix, broker_url, stack, store_client)

        def on_prerun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
            if sender is not None and sender.app is app:
                identity = identity_of(sender.request)
                h.executing[task_id or ""] = identity.run_id if identity else None

        def on_postrun(
            sender: Any = None,
            task_id: str | None = None,
            retval: Any = None,
            state: str | None = None,
            **_: Any,
        ) -> None:
            if sender is not None and sender.app is app:
                headers = dict(getattr(sender.request, "headers", None) or {})
                h.finished.append(
                    Finished(sender.name, task_id or "", state or "", retval, headers)
                )
                h.executing.pop(task_id or "", None)

        signals.task_prerun.connect(on_prerun, weak=False)
        signals.task_postrun.connect(on_postrun, weak=False)
        stack.callback(_cleanup, h, on_prerun, on_postrun)
        yield h
        # ExitStack unwinds in reverse: workers stop (latches released first), then cleanup.


def _cleanup(h: Harness, on_prerun: Callable[..., None], on_postrun: Callable[..., None]) -> None:
    signals.task_prerun.disconnect(on_prerun)
    signals.task_postrun.disconnect(on_postrun)
    h.mp.close()
    try:
        with h.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(h.queue)
    except Exception:  # the broker went away: nothing left to tidy
        pass
    if isinstance(h.store_client, RedisCluster):
        delete_prefix_on_cluster(h.store_client, h.prefix)
        h.store_client.close()
    else:
        delete_prefix(h.store_client, h.prefix)
    h.store.close()
    h.client.close()
    h.app.close()


# -- a real prefork worker in a subprocess -------------------------------------------------------


@dataclass
class PreforkWorker:
    """A ``celery worker -P prefork`` subprocess (its own process group) and its log file."""

    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM its group, SIGKILL after 10 s, and drop its log."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.unlink(missing_ok=True)


def start_prefork_worker(h: Harness, app_module: str, env: dict[str, str]) -> PreforkWorker:
    """Run ``app_module`` (importable from tests/celery) as a 2-process prefork worker on the
    harness's queue, with ``env`` added to this process's environment."""
    here = Path(__file__).resolve().parent
    log = Path(tempfile.mkstemp(prefix=f"mpstate-{app_module}-", suffix=".log")[1])
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    command = [
        sys.executable, "-m", "celery", "-A", app_module, "worker", "-P", "prefork", "-c", "2",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-Q", h.queue, "-n", f"{h.prefix}@localhost", "-l", "INFO",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=here,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return PreforkWorker(process, log)
