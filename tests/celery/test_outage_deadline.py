"""A store outage ends a transition after ONE outage window, not one per retry layer.

``StepLifecycle.apply`` retries outages, its commit retries them again inside, and the store's
redis-py ``Retry`` sits below both. These tests take a real redis-server away mid-transition and
time ``apply``: it must ride out the whole window, then raise ``StateStoreUnavailableError``
within the window plus what one store call may block (the call in flight at the deadline runs to
its end), having started a bounded number of commits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from mpstate import PipelineRun, RedisPipelineStateStore, StateStoreUnavailableError
from mpstate.celery.lifecycle import StepLifecycle
from mpstate.celery.transitions import start_run
from mpstate.models import PipelineRunStatus, StepState
from mpstate.testing import RedisServer
from mpstate.testing._servers import free_port

WINDOW_S = 1.0
#: The store's client options here: short, so one call's worst case is a fraction of the window.
SOCKET_TIMEOUT_S = 0.1
CONNECT_TIMEOUT_S = 0.25
STORE_RETRIES = 1
#: The store's redis-py backoff between its own retries (``ExponentialBackoff(base=0.05)``).
STORE_BACKOFF_S = sum(min(0.5, 0.05 * 2**failures) for failures in range(1, STORE_RETRIES + 1))
#: Scheduling noise on a loaded test machine.
SLACK_S = 0.4
#: Commits that can start inside one window: the lifecycle waits at least 0.05 s, 0.1 s, 0.2 s,
#: 0.4 s between attempts, and the last wait is cut short at the deadline (one attempt more).
MAX_COMMITS = 6


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of this test's own: the test takes it away."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def store(server: RedisServer, prefix: str) -> Iterator[RedisPipelineStateStore]:
    store = RedisPipelineStateStore.from_url(
        server.url,
        prefix=prefix,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retries=STORE_RETRIES,
    )
    yield store
    store.close()


def _pause(server: RedisServer) -> Callable[[], None]:
    """SIGSTOP: the kernel still accepts connections, every read hits the socket timeout."""
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


def _stop(server: RedisServer) -> Callable[[], None]:
    """Kill the server: every connect is refused at once, so retries come quickly."""
    server.stop()
    return lambda: None


def _demote(server: RedisServer) -> Callable[[], None]:
    """Make the server a replica of nobody: reads still work, every write is refused READONLY
    (a demoted primary), so each transition's read succeeds and its commit is retried."""
    with redis.Redis.from_url(server.url) as client:
        client.replicaof("127.0.0.1", free_port())

    def promote() -> None:
        with redis.Redis.from_url(server.url) as client:
            client.replicaof("NO", "ONE")

    return promote


#: Each outage: how to make it (returns how to undo it), and the longest one store call can block
#: in it, the one in flight at the deadline. Paused: each of the store's attempts connects (the
#: kernel accepts) and times out reading. Stopped: each is refused at once. Read-only: the reply
#: is an error the store does not retry itself.
OUTAGES: dict[str, tuple[Callable[[RedisServer], Callable[[], None]], float]] = {
    "paused": (_pause, (STORE_RETRIES + 1) * SOCKET_TIMEOUT_S + STORE_BACKOFF_S),
    "stopped": (_stop, STORE_BACKOFF_S),
    "read-only": (_demote, 0.05),
}


def _pending_run(store: RedisPipelineStateStore) -> PipelineRun:
    return store.create(
        PipelineRun(
            run_id=uuid.uuid4().hex,
            pipeline_id="deadline",
            steps=[StepState(step_id="s", operation="deadline.step")],
        )
    )


def _count_commits(store: RedisPipelineStateStore, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record when each commit attempt starts (seconds on the monotonic clock)."""
    started: list[float] = []
    commit = store.commit

    def counting(*args: Any, **kwargs: Any) -> Any:
        started.append(time.monotonic())
        return commit(*args, **kwargs)

    monkeypatch.setattr(store, "commit", counting)
    return started


def _enqueue(*_: object) -> None:
    """Publishing is not under test here."""


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_a_transition_gives_up_after_one_outage_window(
    outage: str,
    server: RedisServer,
    store: RedisPipelineStateStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = _pending_run(store)
    lifecycle = StepLifecycle(store, _enqueue, outage_window_s=WINDOW_S)
    commits = _count_commits(store, monkeypatch)
    make_outage, call_worst_s = OUTAGES[outage]
    restore = make_outage(server)
    try:
        began = time.monotonic()
        with pytest.raises(StateStoreUnavailableError):
            lifecycle.apply(run.run_id, start_run, known=run)
        elapsed = time.monotonic() - began
    finally:
        restore()

    bound = WINDOW_S + call_worst_s + SLACK_S
    print(f"{outage}: gave up after {elapsed:.2f} s and {len(commits)} commit attempts")
    assert elapsed >= WINDOW_S - 0.01, f"gave up early, after {elapsed:.2f} s"
    assert elapsed <= bound, f"gave up after {elapsed:.2f} s, more than {bound:.2f} s"
    assert 1 <= len(commits) <= MAX_COMMITS, f"{len(commits)} commit attempts"
    late = [round(start - began, 3) for start in commits if start > began + WINDOW_S + 0.05]
    assert not late, f"commits started past the window, at {late} s"


def test_a_store_back_within_the_window_gets_the_transition(
    server: RedisServer, store: RedisPipelineStateStore
) -> None:
    run = _pending_run(store)
    lifecycle = StepLifecycle(store, _enqueue, outage_window_s=WINDOW_S)
    resume = threading.Timer(0.4, _pause(server))
    resume.start()
    try:
        committed = lifecycle.apply(run.run_id, start_run, known=run)
    finally:
        resume.join()

    assert committed.changed
    stored = store.require(run.run_id)
    assert stored.status is PipelineRunStatus.RUNNING
    assert [event.kind for event in stored.events].count("run-started") == 1
