"""An unreachable Redis is reported as ``StateStoreUnavailableError``, promptly, by every method.

Three kinds of outage, all on loopback: a port nobody listens on (connection refused), a server
that accepts connections and never answers (every read times out), and a real redis-server killed
in the middle of a test and started again on the same port. The error's ``__cause__`` is the
redis-py ``ConnectionError``/``TimeoutError``; contention and missing runs are never reported as
an outage.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from mpstate import (
    InvalidTransitionError,
    LockNotOwnedError,
    LockTimeoutError,
    PipelineStateStore,
    RedisPipelineStateStore,
    RunAlreadyExistsError,
    RunNotFoundError,
    StaleFenceError,
    StateStoreUnavailableError,
    VersionConflictError,
)
from mpstate.testing import RedisServer
from mpstate.testing._servers import free_port

pytestmark = pytest.mark.timeout(60)

#: Longest backoff between two retries: ``from_url`` uses ExponentialBackoff(cap=0.5).
BACKOFF_CAP = 0.5
#: Scheduling slack for a loaded 2-core machine.
SLACK = 0.75

Operation = Callable[[PipelineStateStore, str], object]


def _lock(store: PipelineStateStore, run_id: str) -> None:
    with store.lock(run_id, timeout_ms=100):
        pass


OPERATIONS: dict[str, Operation] = {
    "create": lambda s, r: s.create({"runId": r, "pipelineId": "p", "tenantId": "t"}),
    "create_or_get": lambda s, r: s.create_or_get({"runId": r, "pipelineId": "p"}),
    "get": lambda s, r: s.get(r),
    "update": lambda s, r: s.update(r, {"error": "e"}),
    "commit": lambda s, r: s.commit(r, {"error": "e"}, [{"kind": "run-started", "runId": r}]),
    "cancel": lambda s, r: s.cancel(r, "stop"),
    "append_event": lambda s, r: s.append_event(r, {"kind": "run-started", "runId": r}),
    "list_events": lambda s, r: s.list_events(r, since_seq=0, limit=10),
    "list_runs": lambda s, r: s.list_runs(),
    "list_runs of a tenant": lambda s, r: s.for_tenant("t").list_runs(status="pending", limit=5),
    "find_by_external_job_id": lambda s, r: s.find_by_external_job_id("provider", "job"),
    "find_job_providers": lambda s, r: s.find_job_providers("job"),
    "lock": _lock,
    "with_lock": lambda s, r: s.with_lock(r, lambda run: run.version, timeout_ms=100),
}
#: Operations that create the run themselves; the others need it to exist.
CREATING = {"create", "create_or_get"}


def assert_unavailable(
    operation: Operation, store: PipelineStateStore, run_id: str, within: float
) -> StateStoreUnavailableError:
    started = time.monotonic()
    with pytest.raises(StateStoreUnavailableError) as caught:
        operation(store, run_id)
    elapsed = time.monotonic() - started
    cause = caught.value.__cause__
    assert isinstance(cause, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError), (
        f"cause {cause!r} is not a redis connection error"
    )
    assert elapsed <= within, f"took {elapsed:.2f} s, more than {within:.2f} s"
    return caught.value


# -- (a) connection refused -----------------------------------------------------------------------


@pytest.mark.parametrize("name", OPERATIONS)
def test_a_refused_connection_is_reported_as_unavailable_within_seconds(name: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    store = RedisPipelineStateStore.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, retries=1
    )
    try:
        assert_unavailable(OPERATIONS[name], store, "run-1", within=5.0)
    finally:
        store.close()


# -- (b) a server that accepts and never answers --------------------------------------------------


class SilentServer:
    """A TCP server on loopback that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted.append(connection)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def documented_bound(connect_timeout: float, socket_timeout: float, retries: int) -> float:
    """``from_url``: at most ``(retries + 1) * (socket_connect_timeout + socket_timeout)``, plus
    the backoff between retries (each at most ``BACKOFF_CAP``) and scheduling slack."""
    return (retries + 1) * (connect_timeout + socket_timeout) + retries * BACKOFF_CAP + SLACK


@pytest.mark.parametrize("name", OPERATIONS)
def test_a_server_that_never_answers_is_reported_as_unavailable_within_the_timeout_bound(
    silent_server: SilentServer, name: str
) -> None:
    socket_timeout, retries = 0.05, 1
    store = RedisPipelineStateStore.from_url(
        f"redis://127.0.0.1:{silent_server.port}/0",
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retries=retries,
    )
    try:
        assert_unavailable(
            OPERATIONS[name],
            store,
            "run-1",
            within=documented_bound(socket_timeout, socket_timeout, retries),
        )
    finally:
        store.close()
    assert silent_server.accepted, "the store never reached the silent server"


def test_a_server_that_never_answers_is_reported_within_the_documented_bound_at_default_retries(
    silent_server: SilentServer,
) -> None:
    """With the default ``retries=2`` the wait stays linear in the retries.

    Connecting to the silent server succeeds at once and every read times out, so the
    documented bound is reached only if each retry costs at most one socket timeout; one timeout
    per connection attempt of every retry (redis-py's own connect retries nested inside the
    command retries) would take ``(retries + 1) ** 2`` socket timeouts.
    """
    connect_timeout, socket_timeout, retries = 0.05, 0.5, 2
    store = RedisPipelineStateStore.from_url(
        f"redis://127.0.0.1:{silent_server.port}/0",
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retries=retries,
    )
    try:
        assert_unavailable(
            OPERATIONS["get"],
            store,
            "run-1",
            within=documented_bound(connect_timeout, socket_timeout, retries),
        )
    finally:
        store.close()


# -- (c) a real server killed mid-test, then started again ----------------------------------------


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server this test may kill (never the session's shared one)."""
    server = RedisServer().start()
    yield server
    server.cleanup()


def outage_store(server: RedisServer) -> RedisPipelineStateStore:
    return RedisPipelineStateStore.from_url(
        server.url, socket_timeout=0.5, socket_connect_timeout=0.5, retries=1, prefix="outage"
    )


@pytest.mark.parametrize("name", OPERATIONS)
def test_a_killed_server_is_reported_as_unavailable_and_the_same_store_recovers_after_restart(
    own_server: RedisServer, name: str
) -> None:
    store = outage_store(own_server)
    operation = OPERATIONS[name]
    try:
        store.create({"runId": "before", "pipelineId": "p", "tenantId": "t"})
        assert store.require("before").version == 1  # the pool holds live connections now

        own_server.stop()
        assert_unavailable(operation, store, "before", within=5.0)

        own_server.start()  # same port, empty (no persistence), no scripts loaded
        if name not in CREATING:
            store.create({"runId": "after", "pipelineId": "p", "tenantId": "t"})
        operation(store, "after")
        run = store.require("after")
        assert run.run_id == "after"
        # The data written before the kill is gone; that is "not found", not an outage.
        assert store.get("before") is None
        with pytest.raises(RunNotFoundError):
            store.update("before", {"error": "e"})
    finally:
        store.close()


def test_a_held_lock_cannot_be_extended_or_released_during_an_outage(
    own_server: RedisServer,
) -> None:
    store = outage_store(own_server)
    try:
        store.create({"runId": "r", "pipelineId": "p"})
        block = store.lock("r")
        held = block.__enter__()
        own_server.stop()
        with pytest.raises(StateStoreUnavailableError):
            held.extend()
        with pytest.raises(StateStoreUnavailableError):
            block.__exit__(None, None, None)
    finally:
        store.close()


# -- logic errors are never an outage -------------------------------------------------------------


def test_contention_and_missing_runs_are_not_reported_as_unavailable(
    own_server: RedisServer,
) -> None:
    store = outage_store(own_server)
    try:
        store.create({"runId": "r", "pipelineId": "p"})
        with pytest.raises(RunAlreadyExistsError):
            store.create({"runId": "r", "pipelineId": "p"})
        with pytest.raises(VersionConflictError):
            store.update("r", {"error": "e"}, expected_version=7)
        with pytest.raises(RunNotFoundError):
            store.update("missing", {"error": "e"})
        with pytest.raises(RunNotFoundError):
            store.list_events("missing")
        with pytest.raises(RunNotFoundError), store.lock("missing", timeout_ms=50):
            pass
        with store.lock("r") as first:
            pass
        with store.lock("r") as second:
            with pytest.raises(LockTimeoutError), store.lock("r", timeout_ms=200):
                pass
            store.update("r", {"error": "e"}, fence=second.fence)
        with pytest.raises(StaleFenceError):
            store.update("r", {"error": "e"}, fence=first.fence)
        store.update("r", {"status": "completed"})
        with pytest.raises(InvalidTransitionError):
            store.cancel("r", "too late")
        with pytest.raises(LockNotOwnedError), store.lock("r"):
            store.client.delete(store.keys.lock("r"))  # the lock is lost while held
    finally:
        store.close()


def test_waiting_for_a_held_lock_longer_than_the_socket_timeout_is_a_lock_timeout_not_an_outage(
    own_server: RedisServer,
) -> None:
    """A waiter blocks on the lock's wake-up list for up to ``lock_poll_interval_ms``; a healthy
    server that simply has nothing to say for that long is not unavailable."""
    holder = outage_store(own_server)
    waiter = RedisPipelineStateStore.from_url(
        own_server.url,
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
        retries=1,
        prefix="outage",
        lock_poll_interval_ms=1000,
    )
    try:
        holder.create({"runId": "r", "pipelineId": "p"})
        with holder.lock("r"), pytest.raises(LockTimeoutError), waiter.lock("r", timeout_ms=1500):
            pass
    finally:
        holder.close()
        waiter.close()
