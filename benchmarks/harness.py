"""Measuring primitives: a one-connection client that counts round trips, server counters, timed
segments and the contended-lock hand-off.

A round trip is one write of a request to the socket followed by waiting for its replies:
redis-py sends a single command and a whole pipeline each with one ``send_packed_command``, so
counting those calls on the benchmark's only connection counts round trips exactly (a NOSCRIPT
retry or a reconnect shows up as extra ones).
"""

from __future__ import annotations

import gc
import itertools
import json
import statistics
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.connection import BlockingConnectionPool

__all__ = [
    "BENCH_CLIENT_NAME",
    "OWN_COMMANDS",
    "HandOff",
    "RoundTrips",
    "Segment",
    "ServerCounters",
    "ServerSnapshot",
    "count_round_trips",
    "interleaved_segments",
    "main_thread_cpu_seconds",
    "measure_lock_handoff",
    "one_connection_client",
    "percentile",
    "round_trips",
    "timed_segment",
]

BENCH_CLIENT_NAME = "mpstate-bench"
#: ``INFO commandstats`` entries of the benchmarks' own bookkeeping, not the broker's or store's.
OWN_COMMANDS = ("cmdstat_info", "cmdstat_client", "cmdstat_config")


class RoundTrips:
    """Requests written by a client's connections (one per round trip)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


#: The counter of each client ``count_round_trips`` has instrumented.
_COUNTERS: weakref.WeakKeyDictionary[redis.Redis, RoundTrips] = weakref.WeakKeyDictionary()


def count_round_trips(client: redis.Redis) -> RoundTrips:
    """Make every connection ``client`` opens from now on count the requests it writes.

    The client keeps its own configuration; only its pool's connection class is swapped for a
    counting subclass (and the pool's connections dropped, so none is made without it).
    """
    counter = RoundTrips()
    pool = client.connection_pool
    base = pool.connection_class

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        counter.count += 1
        base.send_packed_command(self, command, check_health)

    pool.connection_class = type(
        f"Counting{base.__name__}", (base,), {"send_packed_command": send_packed_command}
    )
    pool.disconnect()
    _COUNTERS[client] = counter
    return counter


def one_connection_client(port: int, name: str = BENCH_CLIENT_NAME) -> redis.Redis:
    """A client whose commands and pipelines all share exactly one connection, counting its
    round trips (``round_trips``).

    ``single_connection_client=True`` is not enough: redis-py pipelines still take a second
    connection from the pool. A blocking pool of size one is.
    """
    pool = BlockingConnectionPool(
        host="127.0.0.1", port=port, max_connections=1, timeout=30, client_name=name
    )
    client = redis.Redis(connection_pool=pool)
    count_round_trips(client)
    return client


def round_trips(client: redis.Redis) -> int:
    """Requests written so far by a client instrumented by ``count_round_trips``."""
    return _COUNTERS[client].count


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """Calls and microseconds per command (commands run inside scripts included, the
    benchmarks' own INFO and CLIENT calls left out) and the server's main-thread CPU seconds.

    Taken on a separate admin connection between timed segments, never inside one; the
    difference of two (``after - before``) is what ran in between.
    """

    calls: Counter[str]
    usec: Counter[str]
    cpu_seconds: float

    @classmethod
    def take(cls, admin: redis.Redis) -> ServerSnapshot:
        stats = admin.info("commandstats")
        mine = {
            name.removeprefix("cmdstat_"): entry
            for name, entry in stats.items()
            if not name.startswith(OWN_COMMANDS)
        }
        return cls(
            Counter({name: int(entry["calls"]) for name, entry in mine.items()}),
            Counter({name: int(entry["usec"]) for name, entry in mine.items()}),
            main_thread_cpu_seconds(admin),
        )

    @property
    def commands(self) -> int:
        """Commands executed, of every kind."""
        return sum(self.calls.values())

    def __sub__(self, before: ServerSnapshot) -> ServerSnapshot:
        return ServerSnapshot(
            self.calls - before.calls,
            self.usec - before.usec,
            self.cpu_seconds - before.cpu_seconds,
        )


class ServerCounters:
    """The server a benchmark measures, read through its admin connection."""

    def __init__(self, admin: redis.Redis) -> None:
        self.admin = admin

    def snapshot(self) -> tuple[int, float]:
        """(commands executed so far, main-thread CPU seconds so far)."""
        taken = ServerSnapshot.take(self.admin)
        return taken.commands, taken.cpu_seconds


def main_thread_cpu_seconds(admin: redis.Redis) -> float:
    """The server's main-thread CPU seconds (user + system; all threads' before Redis 7)."""
    cpu = admin.info("cpu")
    if "used_cpu_user_main_thread" in cpu:
        user, system = cpu["used_cpu_user_main_thread"], cpu["used_cpu_sys_main_thread"]
    else:
        user, system = cpu["used_cpu_user"], cpu["used_cpu_sys"]
    return float(user) + float(system)


@dataclass(frozen=True, slots=True)
class Segment:
    """One timed run of an operation: how many calls in how long, and what they cost the server."""

    ops: int
    seconds: float
    round_trips: int
    server_commands: int
    server_cpu_seconds: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds


def timed_segment(
    fn: Callable[[], object],
    *,
    duration: float,
    min_ops: int,
    client: redis.Redis,
    server: ServerCounters,
) -> Segment:
    """Call ``fn`` until ``duration`` seconds have passed and it ran at least ``min_ops`` times."""
    gc.collect()
    commands_before, cpu_before = server.snapshot()
    trips_before = round_trips(client)
    ops = 0
    start = now = time.perf_counter()
    deadline = start + duration
    while ops < min_ops or now < deadline:
        fn()
        ops += 1
        now = time.perf_counter()
    elapsed = now - start
    trips = round_trips(client) - trips_before
    commands_after, cpu_after = server.snapshot()
    return Segment(ops, elapsed, trips, commands_after - commands_before, cpu_after - cpu_before)


def _merge(segments: list[Segment]) -> Segment:
    return Segment(
        sum(s.ops for s in segments),
        sum(s.seconds for s in segments),
        sum(s.round_trips for s in segments),
        sum(s.server_commands for s in segments),
        sum(s.server_cpu_seconds for s in segments),
    )


def interleaved_segments(
    fn: Callable[[], object],
    baseline: Callable[[], object],
    *,
    op_seconds: float,
    baseline_seconds: float,
    chunks: int,
    client: redis.Redis,
    server: ServerCounters,
) -> tuple[Segment, Segment]:
    """Measure ``fn`` and ``baseline`` in alternating chunks: (operation, baseline) totals.

    The machine switches between fast and slow regimes (client and server on one core or two)
    every few seconds; alternating short chunks, with a baseline chunk on both sides of every
    operation chunk, makes both sample the same regimes. An operation slower than its chunk
    runs once per chunk, and stops early once ``op_seconds`` is used up.
    """
    measured: list[Segment] = []
    baselines: list[Segment] = []

    def measure_baseline() -> None:
        baselines.append(
            timed_segment(
                baseline,
                duration=baseline_seconds / (chunks + 1),
                min_ops=1,
                client=client,
                server=server,
            )
        )

    measure_baseline()
    for _ in range(chunks):
        measured.append(
            timed_segment(fn, duration=op_seconds / chunks, min_ops=1, client=client, server=server)
        )
        measure_baseline()
        if sum(segment.seconds for segment in measured) >= op_seconds:
            break
    return _merge(measured), _merge(baselines)


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile (``fraction`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class _Grant:
    thread: int
    requested: float
    entered: float
    releasing: float


@dataclass(frozen=True, slots=True)
class HandOff:
    """Hand-off times (seconds) of one contended round, and how many grants were made."""

    samples: list[float]
    grants: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def measure_lock_handoff(
    stores: list[Any],
    run_id: str,
    *,
    grants: int,
    hold_seconds: float = 0.002,
    rest_seconds: float = 0.001,
) -> HandOff:
    """Threads (one per store, each on its own connection) take turns on one run's lock.

    Each holds the lock ``hold_seconds``, releases, rests ``rest_seconds`` (shorter than a hold,
    so it is blocked in ``lock()`` again before the next release) and asks again. A hand-off is
    the time from a holder's release call (the end of its ``with`` body) to the moment the next
    holder's ``lock()`` returns, counted only when that next holder is another thread that was
    already waiting when the release began.
    """
    records: list[_Grant] = []
    records_mutex = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    start_together = threading.Barrier(len(stores))

    def worker(index: int, store: Any) -> None:
        try:
            start_together.wait()
            while not stop.is_set():
                requested = time.perf_counter()
                with store.lock(run_id, timeout_ms=30_000):
                    entered = time.perf_counter()
                    time.sleep(hold_seconds)
                    releasing = time.perf_counter()
                with records_mutex:
                    records.append(_Grant(index, requested, entered, releasing))
                    if len(records) >= grants:
                        stop.set()
                time.sleep(rest_seconds)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=worker, args=(i, store), name=f"lock-bench-{i}")
        for i, store in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    ordered = sorted(records, key=lambda grant: grant.entered)
    samples = [
        after.entered - before.releasing
        for before, after in itertools.pairwise(ordered)
        if after.thread != before.thread and after.requested < before.releasing
    ]
    if not samples:
        raise RuntimeError("no lock hand-off between two threads was observed")
    return HandOff(samples, len(records))


def write_results(path: Path, result: dict[str, Any], started: float) -> None:
    """Write a benchmark's JSON (with its duration) and say where."""
    result["duration_seconds"] = round(time.perf_counter() - started, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path} ({result['duration_seconds']:.0f} s in all)")
