"""Shared workloads for the concurrency tests: run them on threads, or on OS processes.

Process workers live here (not in the test modules) so a child process can import them by name.
Children are started from a ``forkserver`` that has already imported mpstate: each one is a fresh
interpreter (nothing of the parent's threads or sockets is inherited, unlike ``fork``) that starts
in tens of milliseconds instead of the second a ``spawn`` needs on this machine.

Results cross the process boundary as plain tuples, never as exceptions: mpstate's errors carry
keyword-only attributes that do not survive pickling.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

import mpstate.redis.claims
from mpstate import (
    IdempotencyKeyInUseError,
    PipelineStateStore,
    RedisPipelineStateStore,
    RunAlreadyExistsError,
    StepProgress,
    VersionConflictError,
)

CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(["mpstate", "mpstate.redis", "race_helpers"])

#: Longest a thread or process waits for the others at a barrier, in seconds.
BARRIER_TIMEOUT = 30.0


@dataclass(frozen=True)
class Target:
    """One server (or cluster) for a race: the URL children connect to, and the parent's client."""

    url: str
    client: Any
    prefix: str

    def store(self) -> RedisPipelineStateStore:
        return RedisPipelineStateStore(self.client, prefix=self.prefix)


# -- running workloads ----------------------------------------------------------------------------


def run_threads(count: int, target: Callable[[int], Any], timeout: float = 60.0) -> list[Any]:
    """Run ``target(i)`` on ``count`` threads; return their results in order, re-raising errors."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            results[index] = target(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise AssertionError(f"threads still running after {timeout} s")
    if errors:
        raise errors[0]
    return results


def _process_entry(
    target: Callable[..., Any], index: int, results: Any, args: tuple[Any, ...]
) -> None:
    try:
        results.put((index, "ok", target(*args)))
    except BaseException:
        results.put((index, "error", traceback.format_exc()))


def run_processes(
    target: Callable[..., Any], args_per_process: Sequence[tuple[Any, ...]], timeout: float = 60.0
) -> list[Any]:
    """Run ``target(*args)`` in one OS process per ``args``; return their results in order.

    A worker that raised is reported with its traceback; a worker that does not finish within
    ``timeout`` is killed and reported.
    """
    results_queue = CTX.Queue()
    processes = [
        CTX.Process(target=_process_entry, args=(target, i, results_queue, args), daemon=True)
        for i, args in enumerate(args_per_process)
    ]
    for process in processes:
        process.start()
    results: dict[int, Any] = {}
    failures: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(failures) < len(processes):
            try:
                index, outcome, value = results_queue.get(
                    timeout=max(0.01, deadline - time.monotonic())
                )
            except queue.Empty:
                break
            if outcome == "ok":
                results[index] = value
            else:
                failures.append(f"process {index} failed:\n{value}")
    finally:
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()) + 1)
            if process.is_alive():
                process.kill()
                process.join(5)
        results_queue.close()
    if failures:
        raise AssertionError("\n".join(failures))
    missing = [i for i in range(len(processes)) if i not in results]
    if missing:
        raise AssertionError(f"processes {missing} reported nothing within {timeout} s")
    return [results[i] for i in range(len(processes))]


def warm_pool(client: redis.Redis | RedisCluster, connections: int) -> None:
    """Open ``connections`` pooled connections now (to every master of a cluster), so threads
    released by a barrier do not spend their first milliseconds connecting (which would spread
    out their start)."""
    if isinstance(client, RedisCluster):
        pools = [node.redis_connection.connection_pool for node in client.get_primaries()]
    else:
        pools = [client.connection_pool]
    for pool in pools:
        opened = [pool.get_connection() for _ in range(connections)]
        for connection in opened:
            pool.release(connection)


def raw_client(url: str) -> redis.Redis | RedisCluster:
    """A plain client for ``url``: a cluster client for a ``redis+cluster://`` URL."""
    scheme, _, rest = url.partition("://")
    if scheme.lower().endswith("+cluster"):
        return RedisCluster.from_url(f"{scheme[: -len('+cluster')]}://{rest}")
    return redis.Redis.from_url(url)


# -- workloads ------------------------------------------------------------------------------------


def increment_with_retries(store: PipelineStateStore, run_id: str, times: int) -> int:
    """Add one to ``cost_usd`` ``times`` times by compare-and-set; return the conflicts met."""
    conflicts = 0
    for _ in range(times):
        while True:
            current = store.get(run_id, include_events=False)
            assert current is not None
            time.sleep(0)  # let the other writers run between this read and the write
            try:
                store.update(
                    run_id, {"costUsd": current.cost_usd + 1}, expected_version=current.version
                )
                break
            except VersionConflictError:
                conflicts += 1
    return conflicts


def increment_blindly(store: PipelineStateStore, run_id: str, times: int, pause: float) -> None:
    """The same read-modify-write without ``expected_version``: last writer wins."""
    for _ in range(times):
        current = store.get(run_id, include_events=False)
        assert current is not None
        time.sleep(pause)
        store.update(run_id, {"costUsd": current.cost_usd + 1})


def commit_progress_events(
    store: PipelineStateStore, run_id: str, writer: int, commits: int, *, guarded: bool
) -> list[tuple[int, ...]]:
    """Commit ``commits`` patches, each with 1-3 step-progress events naming the writer.

    With ``guarded`` each commit is a compare-and-set retried on conflict. Returns the seqs every
    successful commit was given, in order; each event's message is ``"<writer>:<commit>:<k>"``.
    """
    given: list[tuple[int, ...]] = []
    for i in range(commits):
        events = [
            StepProgress(run_id=run_id, step_id=f"w{writer}", pct=k, message=f"{writer}:{i}:{k}")
            for k in range(1 + (writer + i) % 3)
        ]
        while True:
            current = store.get(run_id, include_events=False) if guarded else None
            time.sleep(0)
            try:
                result = store.commit(
                    run_id,
                    {"currentStepIndex": writer},
                    events,
                    expected_version=current.version if current is not None else None,
                )
                break
            except VersionConflictError:
                continue
        given.append(result.seqs)
    return given


def cas_increments_in_process(
    redis_url: str, prefix: str, run_id: str, threads: int, times: int, barrier: Any
) -> int:
    """Process worker: ``threads`` threads each add ``times`` by compare-and-set.

    Returns the conflicts they met."""
    store = RedisPipelineStateStore.from_url(redis_url, prefix=prefix)
    try:
        warm_pool(store.client, threads)

        def writer(_: int) -> int:
            barrier.wait(BARRIER_TIMEOUT)
            return increment_with_retries(store, run_id, times)

        return sum(run_threads(threads, writer))
    finally:
        store.close()


def create_outcome(store: PipelineStateStore, run: dict[str, Any]) -> tuple[Any, ...]:
    """``create(run)`` as a picklable outcome: created / exists / key-in-use (with the holder)."""
    try:
        created = store.create(run)
    except RunAlreadyExistsError as exc:
        return ("exists", exc.run_id)
    except IdempotencyKeyInUseError as exc:
        return ("key-in-use", run["runId"], exc.existing_run_id)
    return ("created", created.run_id, created.pipeline_id)


def create_or_get_outcome(store: PipelineStateStore, run: dict[str, Any]) -> tuple[Any, ...]:
    """``create_or_get(run)`` as a picklable outcome: (run id, pipeline id, created)."""
    stored, created = store.create_or_get(run)
    return (stored.run_id, stored.pipeline_id, created)


def racing_creates_in_process(
    redis_url: str,
    prefix: str,
    runs: list[dict[str, Any]],
    barrier: Any,
    or_get: bool,
) -> list[tuple[Any, ...]]:
    """Process worker: one thread per run document, all creating at once after the barrier."""
    store = RedisPipelineStateStore.from_url(redis_url, prefix=prefix)
    try:
        warm_pool(store.client, len(runs))

        def creator(i: int) -> tuple[Any, ...]:
            barrier.wait(BARRIER_TIMEOUT)
            if or_get:
                return create_or_get_outcome(store, runs[i])
            return create_outcome(store, runs[i])

        return run_threads(len(runs), creator)
    finally:
        store.close()


def create_or_get_rounds_in_process(
    redis_url: str,
    prefix: str,
    rounds: list[list[dict[str, Any]]],
    barrier: Any,
    claim_grace: tuple[float, ...] | None = None,
) -> list[list[tuple[Any, ...]]]:
    """Process worker: one thread per run document of a round; all threads of all processes
    start each round together (after the barrier) with ``create_or_get``.

    ``claim_grace`` replaces, in this process, the pauses a claimant waits for a claim's run to
    appear before voiding the claim (``()``: void at once, so claims are voided far more often).
    Returns, per round, this process's outcomes in thread order."""
    if claim_grace is not None:
        mpstate.redis.claims._CLAIM_GRACE_S = claim_grace
    store = RedisPipelineStateStore.from_url(redis_url, prefix=prefix)
    try:
        threads = len(rounds[0])
        warm_pool(store.client, threads)

        def creator(i: int) -> list[tuple[Any, ...]]:
            outcomes = []
            for runs in rounds:
                barrier.wait(BARRIER_TIMEOUT)
                outcomes.append(create_or_get_outcome(store, runs[i]))
            return outcomes

        per_thread = run_threads(threads, creator)
        return [[outcomes[r] for outcomes in per_thread] for r in range(len(rounds))]
    finally:
        store.close()


def hold_lock_repeatedly(
    store: PipelineStateStore,
    run_id: str,
    rounds: int,
    enter: Callable[[], int],
    leave: Callable[[], object],
    hold_seconds: float,
) -> tuple[int, int, list[int]]:
    """Take the run's lock ``rounds`` times; inside, ``enter()`` reports how many are inside.

    Returns (grants, most holders seen inside at once, fences granted).
    """
    most_inside = 0
    fences: list[int] = []
    for _ in range(rounds):
        with store.lock(run_id, timeout_ms=30_000) as held:
            inside = enter()
            most_inside = max(most_inside, inside)
            fences.append(held.fence)
            time.sleep(hold_seconds)
            leave()
    return rounds, most_inside, fences


def lock_exclusion_in_process(
    redis_url: str,
    prefix: str,
    run_id: str,
    counter_key: str,
    threads: int,
    rounds: int,
    hold_seconds: float,
    barrier: Any,
) -> list[tuple[int, int, list[int]]]:
    """Process worker: threads taking the lock; "inside" is counted with INCR/DECR in Redis."""
    store = RedisPipelineStateStore.from_url(redis_url, prefix=prefix)
    counter = raw_client(redis_url)
    try:
        warm_pool(store.client, 2 * threads)
        warm_pool(counter, threads)

        def holder(_: int) -> tuple[int, int, list[int]]:
            barrier.wait(BARRIER_TIMEOUT)
            return hold_lock_repeatedly(
                store,
                run_id,
                rounds,
                enter=lambda: int(counter.incr(counter_key)),
                leave=lambda: counter.decr(counter_key),
                hold_seconds=hold_seconds,
            )

        return run_threads(threads, holder)
    finally:
        store.close()
        counter.close()
