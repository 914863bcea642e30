"""The per-run lock: one holder at a time, a holder past its TTL cannot hurt its successor.

Contenders count themselves in and out of the locked section (a counter under a mutex for
threads, INCR/DECR on a Redis key for processes) and hold the lock for a few milliseconds, so two
holders at once would be seen. Every grant must also draw a new, larger fence.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from race_helpers import (
    CTX,
    Target,
    hold_lock_repeatedly,
    lock_exclusion_in_process,
    run_processes,
    run_threads,
    warm_pool,
)

from mpstate import (
    LockNotOwnedError,
    LockTimeoutError,
    PipelineStateStore,
    RedisPipelineStateStore,
    StaleFenceError,
)

pytestmark = pytest.mark.timeout(60)

RUN_ID = "locked-run"
HOLD_SECONDS = 0.002


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_the_lock_admits_one_thread_at_a_time_and_a_new_fence_per_grant(
    store: PipelineStateStore,
) -> None:
    threads, rounds = 20, 3
    store.create({"runId": RUN_ID, "pipelineId": "p"})
    if isinstance(store, RedisPipelineStateStore):
        warm_pool(store.client, 2 * threads)
    mutex = threading.Lock()
    inside = 0
    start = threading.Barrier(threads)

    def enter() -> int:
        nonlocal inside
        with mutex:
            inside += 1
            return inside

    def leave() -> None:
        nonlocal inside
        with mutex:
            inside -= 1

    def holder(_: int) -> tuple[int, int, list[int]]:
        start.wait(30)
        return hold_lock_repeatedly(store, RUN_ID, rounds, enter, leave, HOLD_SECONDS)

    results = run_threads(threads, holder)

    assert sum(grants for grants, _, _ in results) == threads * rounds
    assert max(most for _, most, _ in results) == 1
    fences = sorted(fence for _, _, per_holder in results for fence in per_holder)
    assert fences == list(range(1, threads * rounds + 1))


def test_the_lock_admits_one_holder_at_a_time_across_processes(target: Target) -> None:
    processes, threads, rounds = 4, 4, 3
    target.store().create({"runId": RUN_ID, "pipelineId": "p"})
    counter_key = f"{target.prefix}:test:inside"
    start = CTX.Barrier(processes * threads)

    per_process = run_processes(
        lock_exclusion_in_process,
        [(target.url, target.prefix, RUN_ID, counter_key, threads, rounds, HOLD_SECONDS, start)]
        * processes,
    )

    results = [result for per_thread in per_process for result in per_thread]
    assert sum(grants for grants, _, _ in results) == processes * threads * rounds
    assert max(most for _, most, _ in results) == 1
    assert int(target.client.get(counter_key)) == 0
    fences = sorted(fence for _, _, per_holder in results for fence in per_holder)
    assert fences == list(range(1, processes * threads * rounds + 1))


class ExpiredHolder:
    """Holder A whose lock expired while it slept, and holder B who took the lock after it."""

    def __init__(self, store: PipelineStateStore) -> None:
        store.create({"runId": RUN_ID, "pipelineId": "p"})
        self.a_block = store.lock(RUN_ID, timeout_ms=1000)
        self.a = self.a_block.__enter__()
        time.sleep(0.5)  # A stalls (GC pause, slow call) well past its 0.2 s TTL
        self.b_block = store.lock(RUN_ID, timeout_ms=1000)
        self.b = self.b_block.__enter__()
        self.b.extend(10_000)  # B keeps the lock for the rest of the test


def test_a_holder_whose_lock_expired_can_neither_release_its_successors_lock_nor_write(
    make_store: Any,
) -> None:
    store = make_store(lock_ttl_seconds=0.2)
    held = ExpiredHolder(store)
    a, b = held.a, held.b
    assert b.fence > a.fence

    # A leaves its block late: told its lock was lost, and B's lock is untouched.
    with pytest.raises(LockNotOwnedError):
        held.a_block.__exit__(None, None, None)
    with pytest.raises(LockTimeoutError), store.lock(RUN_ID, timeout_ms=50):
        pytest.fail("C was let in while B holds the lock")

    # A's writes carry its old fence and are refused; B's go through.
    with pytest.raises(StaleFenceError):
        store.update(RUN_ID, {"error": "written by A"}, fence=a.fence)
    with pytest.raises(StaleFenceError):
        store.append_event(RUN_ID, {"kind": "run-started", "runId": RUN_ID}, fence=a.fence)
    with pytest.raises(StaleFenceError):
        store.cancel(RUN_ID, "cancelled by A", fence=a.fence)
    written = store.update(RUN_ID, {"error": "written by B"}, fence=b.fence)
    assert (written.error, written.version) == ("written by B", 2)
    run = store.require(RUN_ID)
    assert (run.error, run.version, len(run.events)) == ("written by B", 2, 1)

    held.b_block.__exit__(None, None, None)  # B releases normally
    with store.lock(RUN_ID, timeout_ms=1000) as c:
        assert c.fence > b.fence


def test_an_unconditional_del_on_release_would_let_a_third_holder_in_which_is_why_release_checks_the_token(  # noqa: E501
    redis_client: Any, prefix: str
) -> None:
    """Control for the test above: release-by-token is what keeps C out.

    The TypeScript original released with a plain ``DEL``. Here A's late ``DEL`` is replayed by
    hand on the lock key while B holds it: C then walks in next to B. mpstate's release script
    compares the token first and leaves B's lock alone.
    """
    store = RedisPipelineStateStore(redis_client, prefix=prefix, lock_ttl_seconds=0.2)
    held = ExpiredHolder(store)
    lock_key = store.keys.lock(RUN_ID)

    with pytest.raises(LockNotOwnedError):
        held.a_block.__exit__(None, None, None)  # our release: refused, B's token stays
    assert redis_client.get(lock_key) == held.b.token.encode()
    with pytest.raises(LockTimeoutError), store.lock(RUN_ID, timeout_ms=50):
        pass

    redis_client.delete(lock_key)  # what A's release would have done in the original
    with store.lock(RUN_ID, timeout_ms=50) as c:
        # C is inside while B still believes it holds the lock: exclusion is broken.
        assert c.fence > held.b.fence
        with pytest.raises(LockNotOwnedError):
            held.b.extend()
        # Only the fence still protects the data: B's writes are now refused.
        with pytest.raises(StaleFenceError):
            store.update(RUN_ID, {"error": "written by B"}, fence=held.b.fence)
    with pytest.raises(LockNotOwnedError):
        held.b_block.__exit__(None, None, None)
