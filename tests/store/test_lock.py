"""lock / with_lock: exclusion, fences, timeouts, expiry, extension, renewal and prompt hand-off."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from mpstate import (
    InvalidInputError,
    LockNotOwnedError,
    LockTimeoutError,
    PipelineRun,
    PipelineStateStore,
    RunInProgressError,
    RunNotFoundError,
    StaleFenceError,
)

StoreFactory = Callable[..., PipelineStateStore]


def make_run(store: PipelineStateStore, run_id: str = "r1") -> None:
    store.create({"runId": run_id, "pipelineId": "p"})


def assert_lock_is_held(store: PipelineStateStore, run_id: str = "r1") -> None:
    with pytest.raises(LockTimeoutError), store.lock(run_id, timeout_ms=0):
        pass


def assert_lock_is_free(store: PipelineStateStore, run_id: str = "r1") -> None:
    with store.lock(run_id, timeout_ms=0):
        pass


@pytest.mark.parametrize(
    "options",
    [
        {"lock_ttl_seconds": 0},
        {"lock_ttl_seconds": -1},
        {"lock_ttl_seconds": True},
        {"lock_acquire_timeout_ms": -1},
        {"lock_acquire_timeout_ms": 1.5},
        {"lock_poll_interval_ms": 0},
    ],
    ids=["zero-ttl", "negative-ttl", "bool-ttl", "negative-timeout", "float-timeout", "zero-poll"],
)
def test_a_store_refuses_invalid_lock_options(
    make_store: StoreFactory, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        make_store(**options)
    assert isinstance(caught.value, ValueError)


def test_with_lock_returns_what_fn_returns_and_passes_the_current_run(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    store.update("r1", {"currentStepIndex": 4})
    seen: list[PipelineRun] = []

    def fn(run: PipelineRun) -> str:
        seen.append(run)
        assert_lock_is_held(store)
        return f"step {run.current_step_index}"

    assert store.with_lock("r1", fn) == "step 4"
    assert seen[0] == store.get("r1", include_events=False)
    assert_lock_is_free(store)


def test_with_lock_releases_the_lock_when_fn_raises(store: PipelineStateStore) -> None:
    make_run(store)

    def fail(run: PipelineRun) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        store.with_lock("r1", fail)
    assert_lock_is_free(store)


def test_lock_exposes_the_current_run_a_token_and_a_fence(store: PipelineStateStore) -> None:
    make_run(store)
    store.update("r1", {"status": "running"})
    with store.lock("r1") as held:
        assert held.run_id == "r1"
        assert held.run == store.get("r1", include_events=False)
        assert held.run.version == 2
        assert isinstance(held.token, str)
        assert held.token
        assert isinstance(held.fence, int)
        assert held.fence >= 1
        assert store.update("r1", {"error": "x"}, fence=held.fence).version == 3


def test_each_grant_gets_a_new_token_and_a_strictly_greater_fence(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    fences: list[int] = []
    tokens: set[str] = set()
    for _ in range(4):
        with store.lock("r1") as held:
            fences.append(held.fence)
            tokens.add(held.token)
    with store.lock("r1", timeout_ms=0) as held:
        fences.append(held.fence)
        tokens.add(held.token)
    assert all(later > earlier for earlier, later in itertools.pairwise(fences))
    assert len(tokens) == 5


def test_fences_of_different_runs_are_independent_and_both_valid(
    store: PipelineStateStore,
) -> None:
    make_run(store, "a")
    make_run(store, "b")
    with store.lock("a") as lock_a, store.lock("b") as lock_b:
        store.update("a", {"error": "a"}, fence=lock_a.fence)
        store.update("b", {"error": "b"}, fence=lock_b.fence)
    assert store.require("a").error == "a"
    assert store.require("b").error == "b"


def test_locking_a_missing_run_raises_run_not_found(store: PipelineStateStore) -> None:
    with pytest.raises(RunNotFoundError), store.lock("missing"):
        pass
    with pytest.raises(RunNotFoundError):
        store.with_lock("missing", lambda run: run)


@pytest.mark.parametrize("timeout_ms", [-1, 1.5, True, "100"])
def test_lock_refuses_an_invalid_timeout(store: PipelineStateStore, timeout_ms: Any) -> None:
    make_run(store)
    with pytest.raises(InvalidInputError), store.lock("r1", timeout_ms=timeout_ms):
        pass
    assert_lock_is_free(store)


def test_with_lock_needs_a_callable(store: PipelineStateStore) -> None:
    make_run(store)
    with pytest.raises(InvalidInputError):
        store.with_lock("r1", "not callable")  # type: ignore[arg-type]
    assert_lock_is_free(store)


def test_a_held_lock_times_out_other_takers_after_timeout_ms(store: PipelineStateStore) -> None:
    make_run(store)
    with store.lock("r1"):
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as caught, store.lock("r1", timeout_ms=0):
            pass
        assert time.monotonic() - started < 0.2
        error = caught.value
        assert isinstance(error, RunInProgressError)
        assert error.run_id == "r1"
        assert error.timeout_ms == 0

        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as caught:
            store.with_lock("r1", lambda run: None, timeout_ms=300)
        waited = time.monotonic() - started
        assert 0.29 <= waited < 1.0
        assert caught.value.timeout_ms == 300


def test_the_default_timeout_is_lock_acquire_timeout_ms(make_store: StoreFactory) -> None:
    store = make_store(lock_acquire_timeout_ms=250, lock_poll_interval_ms=20)
    make_run(store)
    with store.lock("r1"):
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as caught, store.lock("r1"):
            pass
        waited = time.monotonic() - started
    assert caught.value.timeout_ms == 250
    assert 0.24 <= waited < 1.0


def test_a_stale_lock_holder_cannot_release_the_next_holders_lock(
    make_store: StoreFactory,
) -> None:
    store = make_store(lock_ttl_seconds=0.2, lock_poll_interval_ms=20)
    make_run(store)
    stale_block = store.lock("r1")
    stale = stale_block.__enter__()
    time.sleep(0.3)

    with store.lock("r1", timeout_ms=1000) as current:
        current.extend(10_000)
        assert current.fence > stale.fence

        with pytest.raises(StaleFenceError) as caught:
            store.update("r1", {"error": "stale write"}, fence=stale.fence)
        assert caught.value.fence == stale.fence
        assert caught.value.current == current.fence

        with pytest.raises(LockNotOwnedError) as not_owned:
            stale_block.__exit__(None, None, None)
        assert not_owned.value.run_id == "r1"

        assert_lock_is_held(store)
        assert store.update("r1", {"error": "current write"}, fence=current.fence).version == 2
    assert store.require("r1").error == "current write"
    assert_lock_is_free(store)


def test_a_lost_lock_lets_the_blocks_own_exception_through(make_store: StoreFactory) -> None:
    store = make_store(lock_ttl_seconds=0.1)
    make_run(store)
    with pytest.raises(ZeroDivisionError), store.lock("r1"):
        time.sleep(0.15)
        with store.lock("r1", timeout_ms=0) as other:
            other.extend(10_000)
            _ = 1 / 0


def test_extend_keeps_the_lock_past_its_ttl(make_store: StoreFactory) -> None:
    store = make_store(lock_ttl_seconds=0.3)
    make_run(store)
    with store.lock("r1") as held:
        for _ in range(3):
            time.sleep(0.12)
            held.extend()
        assert_lock_is_held(store)
        held.extend(700)
        time.sleep(0.35)
        assert_lock_is_held(store)
    assert_lock_is_free(store)


def test_extend_of_a_lock_that_was_taken_over_raises_lock_not_owned(
    make_store: StoreFactory,
) -> None:
    store = make_store(lock_ttl_seconds=0.1)
    make_run(store)
    stale_block = store.lock("r1")
    stale = stale_block.__enter__()
    time.sleep(0.15)
    with store.lock("r1", timeout_ms=0) as current:
        current.extend(10_000)
        with pytest.raises(LockNotOwnedError):
            stale.extend()
        assert_lock_is_held(store)
    with pytest.raises(LockNotOwnedError):
        stale_block.__exit__(None, None, None)


def test_extend_of_a_lock_that_expired_raises_lock_not_owned(make_store: StoreFactory) -> None:
    store = make_store(lock_ttl_seconds=0.1)
    make_run(store)
    block = store.lock("r1")
    held = block.__enter__()
    time.sleep(0.15)
    with pytest.raises(LockNotOwnedError):
        held.extend()
    assert_lock_is_free(store)
    with pytest.raises(LockNotOwnedError):
        block.__exit__(None, None, None)


@pytest.mark.parametrize("ttl_ms", [0, -5, 1.5, True])
def test_extend_refuses_an_invalid_ttl(store: PipelineStateStore, ttl_ms: Any) -> None:
    make_run(store)
    with store.lock("r1") as held:
        with pytest.raises(InvalidInputError):
            held.extend(ttl_ms)
        assert_lock_is_held(store)


def test_auto_renew_keeps_the_lock_past_its_ttl(make_store: StoreFactory) -> None:
    store = make_store(lock_ttl_seconds=0.3)
    make_run(store)
    with store.lock("r1", auto_renew=True) as held:
        time.sleep(0.5)
        assert_lock_is_held(store)
        assert store.update("r1", {"error": "still mine"}, fence=held.fence).version == 2
    assert_lock_is_free(store)


def test_without_auto_renew_the_lock_expires_after_its_ttl(make_store: StoreFactory) -> None:
    store = make_store(lock_ttl_seconds=0.15)
    make_run(store)
    block = store.lock("r1")
    block.__enter__()
    time.sleep(0.25)
    assert_lock_is_free(store)
    with pytest.raises(LockNotOwnedError):
        block.__exit__(None, None, None)


def _hold_then_release(
    store: PipelineStateStore, hold_for: float, released_at: list[float], ready: threading.Event
) -> None:
    with store.lock("r1"):
        ready.set()
        time.sleep(hold_for)
        released_at.append(time.monotonic())


def test_a_waiter_is_handed_the_lock_promptly_after_release(make_store: StoreFactory) -> None:
    store = make_store(lock_poll_interval_ms=2000)
    make_run(store)
    released_at: list[float] = []
    ready = threading.Event()
    holder = threading.Thread(target=_hold_then_release, args=(store, 0.3, released_at, ready))
    holder.start()
    assert ready.wait(5)
    started = time.monotonic()
    with store.lock("r1", timeout_ms=5000):
        acquired_at = time.monotonic()
    holder.join()
    assert acquired_at - started >= 0.2
    assert acquired_at - released_at[0] < 0.5


def test_a_waiter_for_a_holder_that_died_gets_the_lock_within_a_poll_interval_of_expiry(
    make_store: StoreFactory,
) -> None:
    ttl, poll = 0.3, 0.05
    store = make_store(lock_ttl_seconds=ttl, lock_poll_interval_ms=int(poll * 1000))
    make_run(store)
    abandoned = store.lock("r1")
    abandoned.__enter__()
    taken_at = time.monotonic()
    with store.lock("r1", timeout_ms=5000) as held:
        waited = time.monotonic() - taken_at
        held.extend(10_000)
    assert ttl - 0.05 <= waited < ttl + poll + 0.25
    with pytest.raises(LockNotOwnedError):
        abandoned.__exit__(None, None, None)


def test_a_waiter_for_a_holder_that_died_does_not_sleep_a_long_poll_interval_past_expiry(
    make_store: StoreFactory,
) -> None:
    ttl = 0.3
    store = make_store(lock_ttl_seconds=ttl, lock_poll_interval_ms=2000)
    make_run(store)
    abandoned = store.lock("r1")
    abandoned.__enter__()
    taken_at = time.monotonic()
    with store.lock("r1", timeout_ms=5000) as held:
        waited = time.monotonic() - taken_at
        held.extend(10_000)
    assert ttl - 0.05 <= waited < ttl + 0.4
    with pytest.raises(LockNotOwnedError):
        abandoned.__exit__(None, None, None)


def test_only_one_holder_at_a_time_so_read_modify_write_loses_nothing(
    make_store: StoreFactory,
) -> None:
    store = make_store(lock_poll_interval_ms=10)
    make_run(store)
    workers, rounds = 4, 5
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(rounds):
                with store.lock("r1", timeout_ms=10_000) as held:
                    step = held.run.current_step_index
                    store.update("r1", {"currentStepIndex": step + 1}, fence=held.fence)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    stored = store.require("r1")
    assert stored.current_step_index == workers * rounds
    assert stored.version == 1 + workers * rounds
