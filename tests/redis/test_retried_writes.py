"""A write script that runs twice for one operation applies once (a retry after a lost reply).

The store retries a whole request when the connection fails, and the retry re-sends the whole
EVALSHA (or the pipeline carrying it): when the first one ran and only its reply was lost, the
script runs a second time. Every write carries an operation id (a run's write records it in the
run hash, a lock release in an op key) so the second run reports the first one's outcome; the
follow-up scripts in other slots (the idempotency claim, the void of a claim, index entries) are
idempotent by themselves.

Two ways to make a script run twice, both against the real redis-server:

* ``run_twice``: the store's request execution (``_once``) is wrapped so each request carrying
  the named script executes it twice with identical keys and arguments and hands the store the
  second reply (an ``Ordered`` request is carried out one request at a time for that, as the
  store does on a cluster);
* ``LossyProxy``: a TCP proxy between the store and Redis forwards one request carrying the
  script and then drops the connection instead of its reply, so the store itself reconnects and
  retries.

The controls re-send the same write under a fresh operation id and show it is then applied
twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from index_support import text
from plan_steps import PlanSteps, request_names

import mpstate.redis.writes
from mpstate import (
    IdempotencyKeyInUseError,
    LockNotOwnedError,
    PipelineRunStatus,
    RedisPipelineStateStore,
    RunAlreadyExistsError,
    RunStarted,
    StepProgress,
)
from mpstate.redis.requests import Batch, Ordered, Script
from mpstate.redis.scripts import LuaScript, lua_script

pytestmark = pytest.mark.timeout(30)

RUN_ID = "retried"


class RunTwice:
    """Wraps a store's executor's ``_once``: every request carrying script ``name`` runs that
    script twice and gets the second reply, as a retry after the first reply was lost does."""

    def __init__(
        self, store: RedisPipelineStateStore, name: str, *, fresh_op_key: bool = False
    ) -> None:
        self.original = store._executor._once
        self.name = name
        self.fresh_op_key = fresh_op_key
        self.replies: list[tuple[Any, Any]] = []
        store._executor._once = self  # type: ignore[method-assign]

    def __call__(self, request: Any) -> Any:
        if self.name not in request_names(request):
            return self.original(request)
        if isinstance(request, Ordered):  # one by one, in order, as on a cluster
            return [self(inner) for inner in request.requests]
        if isinstance(request, Batch):
            replies = list(self.original(request))
            for position, item in enumerate(request.items):
                if isinstance(item, Script) and item.name == self.name:
                    replies[position] = self._again(item, replies[position])
            return replies
        return self._again(request, self.original(request))

    def _again(self, script: Script, first: Any) -> Any:
        if self.fresh_op_key:  # control: the retry is not recognised as the same operation
            script = with_fresh_operation(script)
        second = self.original(script)
        self.replies.append((first, second))
        return second


def with_fresh_operation(script: Script) -> Script:
    """The same script under another operation id: a run's writes carry it in their options
    (``op``), a lock release in its op key."""
    if any(":op:" in key for key in script.keys):
        keys = [
            f"{k.rpartition(':')[0]}:{uuid.uuid4().hex}" if ":op:" in k else k for k in script.keys
        ]
        return dataclasses.replace(script, keys=keys)
    options = json.loads(script.args[0])
    assert options["op"]
    fresh = [json.dumps(options | {"op": uuid.uuid4().hex}), *script.args[1:]]
    return dataclasses.replace(script, args=fresh)


def run_twice(store: RedisPipelineStateStore, name: str, **options: Any) -> RunTwice:
    return RunTwice(store, name, **options)


@pytest.fixture
def store(redis_client: redis.Redis, prefix: str) -> RedisPipelineStateStore:
    return RedisPipelineStateStore(redis_client, prefix=prefix)


def created(store: RedisPipelineStateStore) -> RedisPipelineStateStore:
    store.create({"runId": RUN_ID, "pipelineId": "p"})
    return store


def ids(runs: list[Any]) -> list[str]:
    return [run.run_id for run in runs]


def progress(message: str) -> StepProgress:
    return StepProgress(run_id=RUN_ID, step_id="s", pct=50, message=message)


# -- the script run twice, directly ---------------------------------------------------------------


def test_a_commit_run_twice_with_one_operation_id_applies_once_and_reports_its_own_seqs(
    store: RedisPipelineStateStore,
) -> None:
    created(store)
    twice = run_twice(store, "commit_run")

    result = store.commit(RUN_ID, {"costUsd": 2.5}, [progress("a"), progress("b")])

    assert result.seqs == (2, 3)
    assert (result.run.version, result.run.cost_usd) == (2, 2.5)
    run = store.require(RUN_ID)
    assert run.version == 2
    assert [(e.seq, e.kind) for e in run.events] == [
        (1, "run-created"),
        (2, "step-progress"),
        (3, "step-progress"),
    ]
    ((first, second),) = twice.replies
    assert int(first[0]) == 1 and int(second[0]) == 2  # written, then recognised as a replay


def test_a_versioned_update_run_twice_is_not_refused_as_a_conflict_with_itself(
    store: RedisPipelineStateStore,
) -> None:
    created(store)
    twice = run_twice(store, "commit_run")

    run = store.update(RUN_ID, {"error": "e"}, expected_version=1)

    assert run.version == 2
    assert store.require(RUN_ID).version == 2
    ((first, second),) = twice.replies
    assert int(first[0]) == 1 and int(second[0]) == 2


def test_an_append_event_run_twice_appends_one_event_and_returns_its_seq(
    store: RedisPipelineStateStore,
) -> None:
    created(store)
    twice = run_twice(store, "commit_run")

    assert store.append_event(RUN_ID, RunStarted(run_id=RUN_ID)) == 2
    assert len(twice.replies) == 1

    assert [e.seq for e in store.list_events(RUN_ID)] == [1, 2]
    assert store.require(RUN_ID).version == 1


def test_a_cancel_run_twice_logs_one_run_cancelled(store: RedisPipelineStateStore) -> None:
    created(store)
    twice = run_twice(store, "commit_run")

    run = store.cancel(RUN_ID, "stop")

    assert (run.status, run.version) == ("cancelled", 2)
    assert [e.kind for e in store.list_events(RUN_ID)] == ["run-created", "run-cancelled"]
    assert len(twice.replies) == 1
    # The replay settled the index entries of the write it replayed.
    assert ids(store.list_runs(status="cancelled")) == [RUN_ID]
    assert store.list_runs(status="pending") == []


def test_a_create_run_twice_succeeds_with_one_run_created_event(
    store: RedisPipelineStateStore,
) -> None:
    twice = run_twice(store, "create_run")

    run = store.create({"runId": RUN_ID, "pipelineId": "p", "idempotencyKey": "k"})

    assert run.version == 1
    stored = store.require(RUN_ID)
    assert [(e.seq, e.kind) for e in stored.events] == [(1, "run-created")]
    assert [r.run_id for r in store.list_runs()] == [RUN_ID]
    ((first, second),) = twice.replies
    assert int(first[0]) == 1 and int(second[0]) == 2


def test_a_create_or_get_run_twice_reports_created(store: RedisPipelineStateStore) -> None:
    twice = run_twice(store, "create_run")

    run, was_created = store.create_or_get({"runId": RUN_ID, "pipelineId": "p"})

    assert (run.run_id, was_created) == (RUN_ID, True)
    assert len(twice.replies) == 1


def test_a_lock_acquire_run_twice_grants_one_fence(store: RedisPipelineStateStore) -> None:
    created(store)
    twice = run_twice(store, "acquire_lock")

    with store.lock(RUN_ID) as held:
        assert held.fence == 1
        store.update(RUN_ID, {"error": "e"}, fence=held.fence)
    with store.lock(RUN_ID) as held:
        assert held.fence == 2
    assert len(twice.replies) == 2


def test_a_lock_extend_run_twice_keeps_the_lock(store: RedisPipelineStateStore) -> None:
    created(store)
    twice = run_twice(store, "extend_lock")

    with store.lock(RUN_ID) as held:
        held.extend(30_000)
        assert 0 < store.client.pttl(store.keys.lock(RUN_ID)) <= 30_000
    assert len(twice.replies) == 1


def test_a_lock_release_run_twice_is_not_reported_as_a_lost_lock(
    store: RedisPipelineStateStore,
) -> None:
    """The first run released the lock; the retry finds no lock with its token. That is the
    outcome of this very release, not a lock lost to another holder."""
    created(store)
    twice = run_twice(store, "release_lock")

    with store.lock(RUN_ID):
        pass

    assert store.client.get(store.keys.lock(RUN_ID)) is None
    ((first, second),) = twice.replies
    assert int(first) == 1 and int(second) == 1  # released, then recognised as this release


# -- where the outcomes are kept: the run hash's _ops, for OPERATION_TTL_MS -----------------------


def recorded_operations(redis_client: redis.Redis, store: RedisPipelineStateStore) -> list[str]:
    """The operation ids in the run's ``_ops`` (``;<expiry> <op id> <outcome>`` each)."""
    ops = redis_client.hget(store.keys.run(RUN_ID), "_ops")
    assert ops is not None
    return [entry.split(" ")[1] for entry in ops.decode().split(";")[1:]]


def test_each_write_of_a_run_records_its_outcome_in_the_run_hash_and_no_key_of_its_own(
    store: RedisPipelineStateStore, redis_client: redis.Redis
) -> None:
    created(store)
    store.commit(RUN_ID, None, [progress("a")], operation_id="op-a")
    store.commit(RUN_ID, {"error": "e"}, operation_id="op-b")

    recorded = recorded_operations(redis_client, store)
    assert recorded[1:] == ["op-a", "op-b"]  # after the create's own
    assert not [key for key in redis_client.scan_iter(match=f"{store.keys.run(RUN_ID)}:op:*")]


def test_outcomes_older_than_the_operation_ttl_are_dropped_by_the_next_write(
    store: RedisPipelineStateStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mpstate.redis.writes, "OPERATION_TTL_MS", 300)
    created(store)
    store.commit(RUN_ID, None, [progress("a")], operation_id="op-a")
    assert len(recorded_operations(redis_client, store)) == 2
    time.sleep(0.4)

    store.commit(RUN_ID, None, [progress("b")], operation_id="op-b")
    assert recorded_operations(redis_client, store) == ["op-b"]
    # An operation retried after its outcome was dropped is a new write: the bound is the TTL.
    store.commit(RUN_ID, None, [progress("a again")], operation_id="op-a")
    assert [e.seq for e in store.require(RUN_ID).events] == [1, 2, 3, 4]
    store.commit(RUN_ID, None, [progress("b again")], operation_id="op-b")
    assert [e.seq for e in store.require(RUN_ID).events] == [1, 2, 3, 4]  # op-b: replayed


def test_a_run_written_more_often_keeps_older_outcomes_in_its_spill_hash_for_the_ttl(
    store: RedisPipelineStateStore, redis_client: redis.Redis
) -> None:
    created(store)
    for n in range(100):
        store.commit(RUN_ID, None, [progress(f"p{n}")], operation_id=f"op-{n:03d}")

    ops = redis_client.hget(store.keys.run(RUN_ID), "_ops")
    assert ops is not None and len(ops) <= 1024  # bounded, so every write's cost is
    recorded = recorded_operations(redis_client, store)
    assert recorded == [f"op-{n:03d}" for n in range(100 - len(recorded), 100)]  # the newest
    spill = store.keys.operations(RUN_ID)
    spilled = {text(op) for op in redis_client.hkeys(spill)}
    assert spilled | set(recorded) >= {f"op-{n:03d}" for n in range(100)}  # every outcome kept
    assert redis_client.hget(spill, "op-000") == b"2:2"  # its outcome: version 2, seq 2
    assert 0 < redis_client.pttl(spill) <= mpstate.redis.writes.OPERATION_TTL_MS
    for n in (0, 50, 99):  # retried after many other writes: replayed, not written again
        store.commit(RUN_ID, None, [progress("again")], operation_id=f"op-{n:03d}")
    assert len(store.require(RUN_ID).events) == 101


def test_an_operation_id_longer_than_the_outcomes_kept_is_still_recorded(
    store: RedisPipelineStateStore, redis_client: redis.Redis
) -> None:
    created(store)
    long_id = "x" * 2000
    store.commit(RUN_ID, None, [progress("a")], operation_id=long_id)
    store.commit(RUN_ID, None, [progress("a")], operation_id=long_id)
    assert recorded_operations(redis_client, store) == [long_id]  # the create's was spilled
    assert len(store.require(RUN_ID).events) == 2


# -- follow-up writes in other slots: idempotent without an op key ------------------------------


def test_a_claim_run_twice_is_recognised_as_its_own_and_creates_one_run_holding_the_key(
    store: RedisPipelineStateStore,
) -> None:
    twice = run_twice(store, "claim_idempotency_key")

    run = store.create({"runId": RUN_ID, "pipelineId": "p", "idempotencyKey": "k"})

    assert run.version == 1
    first, second = twice.replies[0]
    assert int(first[0]) == 1 and int(second[0]) == 1  # the retry found its own claim
    assert store.client.exists(store.keys.void(RUN_ID)) == 0  # nothing voided
    with pytest.raises(IdempotencyKeyInUseError) as caught:
        store.create({"runId": "other", "pipelineId": "p", "idempotencyKey": "k"})
    assert caught.value.existing_run_id == RUN_ID
    assert ids(store.list_runs(idempotency_key="k")) == [RUN_ID]


def test_a_void_run_twice_still_lets_exactly_one_run_take_the_key(
    store: RedisPipelineStateStore, redis_client: redis.Redis, prefix: str
) -> None:
    slow_store = RedisPipelineStateStore(redis_client, prefix=prefix)
    slow = PlanSteps(
        slow_store,
        slow_store._backend._plan_create(
            {"runId": "slow", "pipelineId": "p", "idempotencyKey": "k"}, return_existing=True
        ),
    )
    slow.run_through("claim_idempotency_key")  # stalls before create_run
    twice = run_twice(store, "void_claim")

    run, created_now = store.create_or_get(
        {"runId": RUN_ID, "pipelineId": "p", "idempotencyKey": "k"}
    )

    assert (run.run_id, created_now) == (RUN_ID, True)
    ((first, second),) = twice.replies
    assert int(first[0]) == 1 and int(second[0]) == 1  # voided, and voided again: the same
    slow_claim = slow.executed[-1].args[0]  # "<claim token>:slow", as claimed
    voided = store.client.smembers(store.keys.void("slow"))
    assert voided == {slow_claim.partition(":")[0].encode()}  # one token, voided once
    stored, slow_created = slow.finish()
    assert (stored.run_id, slow_created) == (RUN_ID, False)
    assert store.get("slow") is None
    assert ids(store.list_runs(idempotency_key="k")) == [RUN_ID]


@pytest.mark.parametrize("name", ["add_index_entries", "settle_index_entries"])
def test_index_follow_ups_run_twice_leave_every_index_as_the_run_says(
    redis_client: redis.Redis, prefix: str, name: str
) -> None:
    # The follow-ups a cluster writes (a single Redis settles in the run's script by default).
    store = RedisPipelineStateStore(redis_client, prefix=prefix, indexes_in_script=False)
    twice = run_twice(store, name)
    store.create({"runId": RUN_ID, "pipelineId": "p", "tenantId": "t", "idempotencyKey": "k"})
    store.update(RUN_ID, {"status": "running"})
    run = store.cancel(RUN_ID, "stop")

    assert len(twice.replies) >= 3 * 2  # create, update and cancel; 2+ groups each
    k = store.keys
    assert ids(store.list_runs(status="cancelled")) == [RUN_ID]
    assert ids(store.list_runs(tenant_id="t", status="cancelled")) == [RUN_ID]
    assert ids(store.list_runs(idempotency_key="k")) == [RUN_ID]
    assert store.list_runs(status=["pending", "running"]) == []
    assert store.list_runs(tenant_id="t", status=["pending", "running"]) == []
    for group in [k.global_group(RUN_ID), k.tenant_group("t")]:
        for status in [PipelineRunStatus.PENDING, PipelineRunStatus.RUNNING]:
            assert redis_client.zscore(group.status(status), RUN_ID) is None
        assert redis_client.zscore(group.status(PipelineRunStatus.CANCELLED), RUN_ID) is not None
        settled = redis_client.hget(group.entries, RUN_ID)
        assert settled is not None
        # "score:version:status" (cancelled is the sixth status zset), no pending mark
        assert settled.decode().split(":")[1:] == [str(run.version), "6"]


# -- controls: the operation id is what makes the second run a replay -------------------------


def test_control_a_commit_sent_again_under_a_fresh_op_key_is_applied_twice(
    store: RedisPipelineStateStore,
) -> None:
    created(store)
    run_twice(store, "commit_run", fresh_op_key=True)

    store.commit(RUN_ID, {"error": "e"}, [progress("a")])

    run = store.require(RUN_ID)
    assert run.version == 3
    assert [e.seq for e in run.events] == [1, 2, 3]


def test_control_a_create_sent_again_under_a_fresh_op_key_reports_its_own_run_as_existing(
    store: RedisPipelineStateStore,
) -> None:
    run_twice(store, "create_run", fresh_op_key=True)

    with pytest.raises(RunAlreadyExistsError):
        store.create({"runId": RUN_ID, "pipelineId": "p"})
    assert store.require(RUN_ID).version == 1


def test_control_a_lock_release_sent_again_under_a_fresh_op_key_is_reported_as_a_lost_lock(
    store: RedisPipelineStateStore,
) -> None:
    created(store)
    run_twice(store, "release_lock", fresh_op_key=True)

    with pytest.raises(LockNotOwnedError), store.lock(RUN_ID):
        pass


# -- a real lost reply: the store retries through a connection that dropped ----------------------


class LossyProxy:
    """A loopback TCP proxy to a real Redis that can lose the reply to one command.

    ``lose_reply_to(marker)``: the next request containing ``marker`` (a script's SHA, alone or
    in a pipeline) is forwarded, and the connection is then closed instead of passing its reply
    back.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.marker: bytes | None = None
        self.armed = False
        self.forwarded = 0  # requests containing the marker sent to Redis
        self.dropped = 0  # replies lost
        self.mutex = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def lose_reply_to(self, marker: str) -> None:
        with self.mutex:
            self.marker, self.armed, self.forwarded, self.dropped = marker.encode(), True, 0, 0

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self.upstream)
            self.sockets += [client, upstream]
            lose = threading.Event()
            threading.Thread(
                target=self._requests, args=(client, upstream, lose), daemon=True
            ).start()
            threading.Thread(
                target=self._replies, args=(upstream, client, lose), daemon=True
            ).start()

    def _requests(
        self, client: socket.socket, upstream: socket.socket, lose: threading.Event
    ) -> None:
        try:
            while data := client.recv(65536):
                with self.mutex:
                    if self.marker is not None and self.marker in data:
                        self.forwarded += 1
                        if self.armed:
                            self.armed = False
                            lose.set()  # before forwarding: the reply cannot overtake the flag
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _replies(
        self, upstream: socket.socket, client: socket.socket, lose: threading.Event
    ) -> None:
        try:
            while data := upstream.recv(65536):
                if lose.is_set():
                    with self.mutex:
                        self.dropped += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()
        for sock in self.sockets:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def proxied(
    redis_client: redis.Redis, prefix: str
) -> Iterator[tuple[LossyProxy, RedisPipelineStateStore]]:
    kwargs = redis_client.connection_pool.connection_kwargs
    proxy = LossyProxy(kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379)))
    store = RedisPipelineStateStore.from_url(
        f"redis://127.0.0.1:{proxy.port}/{kwargs.get('db', 0)}",
        prefix=prefix,
        socket_timeout=2,
        retries=2,
    )
    # Load every script into Redis first: a lost reply must be that of a script that ran, not
    # of a NOSCRIPT error.
    store.create({"runId": "warm-up", "pipelineId": "p"})
    with store.lock("warm-up"):
        store.commit("warm-up", {"error": "e"}, [RunStarted(run_id="warm-up")])
    yield proxy, store
    store.close()
    proxy.close()


def lose_one_reply(proxy: LossyProxy, script: LuaScript) -> Callable[[], None]:
    proxy.lose_reply_to(script.sha)

    def check() -> None:
        assert proxy.dropped == 1, "no reply was lost: the test did not exercise a retry"
        assert proxy.forwarded == 2, f"the script was sent {proxy.forwarded} times, not twice"

    return check


def test_a_commit_whose_reply_was_lost_is_retried_by_the_store_and_applied_once(
    proxied: tuple[LossyProxy, RedisPipelineStateStore],
) -> None:
    proxy, store = proxied
    created(store)
    retried = lose_one_reply(proxy, lua_script("commit_run"))

    result = store.commit(RUN_ID, {"costUsd": 1.0}, [progress("once")], expected_version=1)

    retried()
    assert (result.seqs, result.run.version) == ((2,), 2)
    run = store.require(RUN_ID)
    assert (run.version, run.cost_usd) == (2, 1.0)
    assert [e.seq for e in run.events] == [1, 2]


def test_a_create_whose_reply_was_lost_is_retried_by_the_store_and_reported_created(
    proxied: tuple[LossyProxy, RedisPipelineStateStore],
) -> None:
    proxy, store = proxied
    retried = lose_one_reply(proxy, lua_script("create_run"))

    run = store.create({"runId": RUN_ID, "pipelineId": "p"})

    retried()
    assert run.version == 1
    assert [e.kind for e in store.require(RUN_ID).events] == ["run-created"]


def test_a_lock_release_whose_reply_was_lost_is_retried_without_reporting_a_lost_lock(
    proxied: tuple[LossyProxy, RedisPipelineStateStore],
) -> None:
    proxy, store = proxied
    created(store)

    with store.lock(RUN_ID):
        retried = lose_one_reply(proxy, lua_script("release_lock"))

    retried()
    assert store.client.get(store.keys.lock(RUN_ID)) is None
