"""Throughput of create and commit with 1 to 32 concurrent clients (threads and asyncio
tasks), each as a ratio to a raw round trip measured with the same clients."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.cluster import RedisCluster

from benchmarks.scale.config import (
    APIS,
    BENCH_TENANT,
    OP_LABELS,
    OPS,
    RUNS_PER_UPDATER,
    Config,
    log,
)
from benchmarks.scale.loading import Target
from benchmarks.workload import progress_event, run_document
from mpstate.aio import AsyncRedisPipelineStateStore
from mpstate.redis import RedisPipelineStateStore


@dataclass(slots=True)
class RunState:
    version: int
    status: str


class UpdateRuns:
    """Runs each update worker commits to in turn; their versions and statuses as last written."""

    def __init__(self, run_ids: list[str]) -> None:
        self.state = {run_id: RunState(2, "running") for run_id in run_ids}
        self.run_ids = run_ids

    def of_worker(self, worker: int) -> list[str]:
        return self.run_ids[worker * RUNS_PER_UPDATER : (worker + 1) * RUNS_PER_UPDATER]


def commit_arguments(op: str, run_id: str, state: RunState) -> tuple[dict[str, Any], Any, str]:
    """(patch, events, new status) of the next versioned commit ``op`` makes to the run."""
    if op == "commit_status":
        if state.status == "running":
            event = {"kind": "run-suspended", "runId": run_id, "reason": "webhook",
                     "resumeToken": f"rt-{state.version}"}  # fmt: skip
            return {"status": "suspended"}, [event], "suspended"
        event = {"kind": "run-resumed", "runId": run_id, "fromStepId": "transcode"}
        return {"status": "running"}, [event], "running"
    patch = {"currentStepIndex": state.version % 3, "costUsd": round(state.version * 0.001, 6)}
    return patch, [progress_event(run_id, float(state.version % 100), meta=False)], state.status


class Cycle:
    def __init__(self, items: list[str]) -> None:
        self.items = items
        self.position = 0

    def next(self) -> str:
        item = self.items[self.position % len(self.items)]
        self.position += 1
        return item


def sync_call(
    op: str, store: RedisPipelineStateStore, runs: UpdateRuns, worker: int
) -> Callable[[], object]:
    if op == "create":
        return lambda: store.create(run_document(str(uuid.uuid4()), BENCH_TENANT))
    cycle = Cycle(runs.of_worker(worker))

    def call() -> None:
        run_id = cycle.next()
        state = runs.state[run_id]
        patch, events, status = commit_arguments(op, run_id, state)
        try:
            result = store.commit(run_id, patch, events, expected_version=state.version)
        except Exception:
            current = store.require(run_id, include_events=False)
            state.version, state.status = current.version, current.status
            raise
        state.version, state.status = result.run.version, status

    return call


def async_call(
    op: str, store: AsyncRedisPipelineStateStore, runs: UpdateRuns, worker: int
) -> Callable[[], Awaitable[object]]:
    if op == "create":

        async def create() -> None:
            await store.create(run_document(str(uuid.uuid4()), BENCH_TENANT))

        return create
    cycle = Cycle(runs.of_worker(worker))

    async def call() -> None:
        run_id = cycle.next()
        state = runs.state[run_id]
        patch, events, status = commit_arguments(op, run_id, state)
        try:
            result = await store.commit(run_id, patch, events, expected_version=state.version)
        except Exception:
            current = await store.require(run_id, include_events=False)
            state.version, state.status = current.version, current.status
            raise
        state.version, state.status = result.run.version, status

    return call


@dataclass(slots=True)
class SegmentResult:
    ops: int
    seconds: float
    errors: int
    first_error: str | None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds


def thread_segment(calls: list[Callable[[], object]], seconds: float) -> SegmentResult:
    """Every call in its own thread, all started together, each looping for ``seconds``."""
    count = len(calls)
    done = [0] * count
    ends = [0.0] * count
    errors = [0] * count
    first_error: list[str] = []
    gate = threading.Barrier(count + 1)
    deadline = [0.0]

    def worker(index: int) -> None:
        call = calls[index]
        gate.wait()
        stop = deadline[0]
        ops = failed = 0
        while True:
            try:
                call()
                ops += 1
            except Exception as exc:
                failed += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
            now = time.perf_counter()
            if now >= stop:
                break
        done[index], ends[index], errors[index] = ops, now, failed

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline[0] = started + seconds
    gate.wait()
    for thread in threads:
        thread.join()
    return SegmentResult(
        sum(done), max(ends) - started, sum(errors), first_error[0] if first_error else None
    )


async def task_segment(
    calls: list[Callable[[], Awaitable[object]]], seconds: float
) -> SegmentResult:
    """Every call in its own asyncio task on one loop, each looping for ``seconds``."""
    first_error: list[str] = []
    started = time.perf_counter()
    stop = started + seconds

    async def worker(call: Callable[[], Awaitable[object]]) -> tuple[int, int, float]:
        ops = failed = 0
        while True:
            try:
                await call()
                ops += 1
            except Exception as exc:
                failed += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
            now = time.perf_counter()
            if now >= stop:
                return ops, failed, now

    outcomes = await asyncio.gather(*(worker(call) for call in calls))
    return SegmentResult(
        sum(o[0] for o in outcomes),
        max(o[2] for o in outcomes) - started,
        sum(o[1] for o in outcomes),
        first_error[0] if first_error else None,
    )


def _baseline_keys(worker: int) -> Cycle:
    # Hash tags spread over the slots, so on the cluster a worker's calls reach every master.
    return Cycle([f"bench:rt:{{{worker}-{n}}}" for n in range(8)])


class Clients:
    """One target's clients for the throughput phase: a sync and an async store and raw
    clients for the round-trip baseline (each shared by all workers of its kind)."""

    def __init__(self, target: Target, loop: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self.loop = loop
        self.store = target.sync_store()
        self.raw: redis.Redis | RedisCluster = (
            RedisCluster.from_url(target.plain_url)
            if target.cluster
            else redis.Redis.from_url(target.plain_url)
        )
        self.raw_script = self.raw.register_script("return 1")
        self.astore: AsyncRedisPipelineStateStore = loop.run_until_complete(self._astore())
        self.araw: Any = (
            redis.asyncio.cluster.RedisCluster.from_url(target.plain_url)
            if target.cluster
            else redis.asyncio.Redis.from_url(target.plain_url)
        )
        self.araw_script = self.araw.register_script("return 1")
        self.runs = UpdateRuns([])

    async def _astore(self) -> AsyncRedisPipelineStateStore:
        return AsyncRedisPipelineStateStore.from_url(self.target.url)

    def prepare(self, workers: int) -> None:
        """Create the runs the update workers commit to, and warm every path up once."""
        run_ids = [str(uuid.uuid4()) for _ in range(workers * RUNS_PER_UPDATER)]
        for run_id in run_ids:
            self.store.create(run_document(run_id, BENCH_TENANT))
            self.store.commit(
                run_id, {"status": "running"}, [{"kind": "run-started", "runId": run_id}],
                expected_version=1,
            )  # fmt: skip
        self.runs = UpdateRuns(run_ids)
        # Each store learns every run's placement on its first status change (then it is cached).
        for op in OPS:
            for worker in range(workers):
                for _ in range(RUNS_PER_UPDATER if op != "create" else 1):
                    sync_call(op, self.store, self.runs, worker)()
                    self.loop.run_until_complete(async_call(op, self.astore, self.runs, worker)())
        self.raw_script(keys=["bench:rt:{warm}"])
        self.loop.run_until_complete(self.araw_script(keys=["bench:rt:{warm}"]))

    def segment(self, api: str, op: str, clients: int, seconds: float) -> SegmentResult:
        if api == "threads":
            calls: list[Callable[[], object]] = []
            for worker in range(clients):
                if op == "baseline":
                    keys = _baseline_keys(worker)
                    calls.append(lambda keys=keys: self.raw_script(keys=[keys.next()]))
                else:
                    calls.append(sync_call(op, self.store, self.runs, worker))
            return thread_segment(calls, seconds)
        acalls: list[Callable[[], Awaitable[object]]] = []
        for worker in range(clients):
            if op == "baseline":
                keys = _baseline_keys(worker)
                acalls.append(lambda keys=keys: self.araw_script(keys=[keys.next()]))
            else:
                acalls.append(async_call(op, self.astore, self.runs, worker))
        return self.loop.run_until_complete(task_segment(acalls, seconds))

    def close(self) -> None:
        self.store.close()
        self.raw.close()
        self.loop.run_until_complete(self.astore.aclose())
        self.loop.run_until_complete(self.araw.aclose())


@dataclass
class Cell:
    """One (target, api, clients, operation): its rate and baseline rate in each round."""

    rates: list[float] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)
    ops: int = 0
    errors: int = 0
    first_error: str | None = None


def measure_throughput(
    clients_by_target: dict[str, Clients], config: Config
) -> dict[tuple[str, str, int, str], Cell]:
    cells: dict[tuple[str, str, int, str], Cell] = {}
    names = list(clients_by_target)
    for round_index in range(config.rounds):
        round_started = time.perf_counter()
        order = names if round_index % 2 == 0 else names[::-1]
        for api in APIS:
            for clients in config.concurrency:
                for name in order:
                    target_clients = clients_by_target[name]
                    before = target_clients.segment(
                        api, "baseline", clients, config.baseline_seconds
                    )
                    measured = {
                        op: target_clients.segment(api, op, clients, config.op_seconds)
                        for op in OPS
                    }
                    after = target_clients.segment(
                        api, "baseline", clients, config.baseline_seconds
                    )
                    baseline_rate = (before.ops_per_s + after.ops_per_s) / 2
                    for op, result in (
                        *measured.items(),
                        ("baseline", before),
                        ("baseline", after),
                    ):
                        cell = cells.setdefault((name, api, clients, op), Cell())
                        cell.ops += result.ops
                        cell.errors += result.errors
                        cell.first_error = cell.first_error or result.first_error
                    for op, result in measured.items():
                        cell = cells[(name, api, clients, op)]
                        cell.rates.append(result.ops_per_s)
                        cell.baselines.append(baseline_rate)
                    base_cell = cells[(name, api, clients, "baseline")]
                    base_cell.rates.append(baseline_rate)
                    base_cell.baselines.append(baseline_rate)
        log(
            f"throughput round {round_index + 1}/{config.rounds} done in"
            f" {time.perf_counter() - round_started:.0f} s"
        )
    return cells


def summarize_throughput(
    cells: dict[tuple[str, str, int, str], Cell], names: list[str], config: Config
) -> list[dict[str, Any]]:
    rows = []
    for api in APIS:
        for clients in config.concurrency:
            for op in ("baseline", *OPS):
                row: dict[str, Any] = {
                    "api": api, "clients": clients, "operation": op, "label": OP_LABELS[op],
                }  # fmt: skip
                for name in names:
                    cell = cells[(name, api, clients, op)]
                    ratios = [r / b for r, b in zip(cell.rates, cell.baselines, strict=True)]
                    row[name] = {
                        "ops_per_s": round(statistics.median(cell.rates), 1),
                        "ratio_to_round_trip": round(statistics.median(ratios), 4),
                        "rounds_ops_per_s": [round(rate, 1) for rate in cell.rates],
                        "rounds_baseline_ops_per_s": [round(rate, 1) for rate in cell.baselines],
                        "ops": cell.ops,
                        "errors": cell.errors,
                        "first_error": cell.first_error,
                    }
                if "single" in names and "cluster" in names:
                    single = cells[("single", api, clients, op)].rates
                    cluster = cells[("cluster", api, clients, op)].rates
                    row["cluster_over_single"] = round(
                        statistics.median(c / s for c, s in zip(cluster, single, strict=True)), 3
                    )
                rows.append(row)
    return rows
