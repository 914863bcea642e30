"""Benchmark of ``RedisPipelineStateStore`` on one connection, against a raw EVALSHA baseline.

Run ``make bench`` (or ``python -m benchmarks.store [--quick]``). It starts a private
redis-server on a free loopback port (``mpstate.testing.RedisServer``; never the machine's own
Redis), loads a 1,000-run and a 100,000-run tenant, then measures every operation in rounds.

Each round measures every operation in turn, alternating short chunks of the operation with
chunks of the baseline (one EVALSHA of ``return 1``) on the same single connection, so both see
the same machine load (the scheduler flips between client and server on one core or on two, and
the round trip time with it, every few seconds). An operation's ratio is its rate over the
baseline's in that round; the report gives the median over rounds. Round trips are counted on
the connection (one per request written); server commands (including those inside scripts) and
server CPU come from INFO on a second, admin connection between timed chunks.

Goals (the constants below) are reported as PASS/MISS and never fail the run: the machine is
shared and noisy. Every single-run operation that writes or finds a run by a key should run at
``SINGLE_RUN_RATIO_GOAL`` x the raw EVALSHA or faster, a create (which also writes the run's index
entries in other slots) at ``CREATE_RATIO_GOAL`` x, on a single Redis.
Results go to ``benchmarks/results/store.json`` (``--output`` to change).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import itertools
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import redis

from benchmarks.harness import (
    BENCH_CLIENT_NAME,
    Segment,
    ServerCounters,
    interleaved_segments,
    measure_lock_handoff,
    one_connection_client,
    percentile,
    write_results,
)
from benchmarks.tables import Goal, goal_cells, number, render, render_goals
from benchmarks.workload import (
    bulk_create,
    bulk_run_id,
    progress_event,
    run_document,
    verify_bulk,
)
from mpstate.redis import RedisPipelineStateStore
from mpstate.testing import RedisServer

RESULTS = Path(__file__).resolve().parent / "results" / "store.json"
PREFIX = "bench"
OPS_TENANT = "tenant-ops"

#: The TypeScript original on the same kind of machine (shared/notes/redis-facts.md): ops/s and
#: round trips per operation, one client. Its listRuns figure lists a whole 1,000-run tenant.
TS_ORIGINAL: dict[str, tuple[float | None, int | None]] = {
    "create": (1_854, 6),
    "get_new": (5_179, 2),
    "update": (5_376, 2),
    "append_event": (3_853, 3),
    "list_events_100": (3_388, None),
    "list_runs_all_1k": (4.9, 2_001),
    "find_by_external_job_id": (3_208, 3),
    "lock": (2_631, 4),
}

#: Goals (issue 17), as ratios to the raw EVALSHA measured in the same rounds on one Redis: the
#: single-run operations (named by their ``Operation.name``) and a create.
SINGLE_RUN_RATIO_GOAL = 0.7
SINGLE_RUN_OPERATIONS = ("update", "append_event", "find_by_external_job_id", "lock")
CREATE_RATIO_GOAL = 0.5
#: A page from the big tenant takes at most this many times the small tenant's page.
PAGE_SCALING_GOAL = 1.5
HANDOFF_GOAL_MS = 2.0
#: How long each contending thread holds the lock (the waiters are blocked meanwhile).
HANDOFF_HOLD_SECONDS = 0.002


@dataclass(frozen=True, slots=True)
class Config:
    mode: str
    rounds: int
    baseline_seconds: float
    op_seconds: float
    small_tenant_runs: int
    big_tenant_runs: int
    page_size: int
    chunks: int
    handoff_threads: int
    handoff_grants_per_round: int

    @classmethod
    def for_mode(cls, quick: bool, *, smoke: bool = False) -> Config:
        if smoke:  # the test suite's: every operation measured once, on small tenants
            return cls("smoke", 1, 0.01, 0.02, 100, 500, 50, 1, 3, 10)
        if quick:
            return cls("quick", 2, 0.02, 0.04, 1_000, 10_000, 50, 2, 3, 30)
        return cls("full", 5, 0.25, 0.5, 1_000, 100_000, 50, 5, 3, 200)


@dataclass
class Operation:
    """One measured operation: ``call`` does it once on the benchmark's connection."""

    name: str
    label: str
    call: Callable[[], object]
    segments: list[Segment] = field(default_factory=list)
    baselines: list[Segment] = field(default_factory=list)


def _tenant_label(count: int) -> str:
    return f"{count:,}"


def build_operations(store: RedisPipelineStateStore, config: Config) -> list[Operation]:
    """Create the runs each operation works on, check them once, and return the operations.

    Creates and status changes are measured twice: with the run's script settling its indexes
    (a single Redis' default) and with the follow-up writes a cluster needs
    (``indexes_in_script=False``), in the same run, so the saving is measured, not assumed.
    """
    counter = itertools.count()
    follow_ups = RedisPipelineStateStore(store.client, prefix=PREFIX, indexes_in_script=False)

    def create_fresh(prefix: str, writer: RedisPipelineStateStore = store, **extra: Any) -> str:
        run_id = f"{prefix}-{next(counter)}"
        writer.create(run_document(run_id, OPS_TENANT, **extra))
        return run_id

    def create() -> None:
        create_fresh("created")

    def create_with_follow_ups() -> None:
        create_fresh("created-f", follow_ups)

    def status_changes(writer: RedisPipelineStateStore) -> Callable[[], None]:
        """A run moved running -> suspended -> running ... with expected versions."""
        run_id = create_fresh("status", writer)
        current = writer.update(run_id, {"status": "running"})
        flip = {"running": "suspended", "suspended": "running"}

        def change() -> None:
            nonlocal current
            current = writer.update(
                run_id, {"status": flip[current.status]}, expected_version=current.version
            )

        return change

    new_run = create_fresh("new")

    run_20 = create_fresh("events20")
    for index in range(19):
        store.append_event(run_20, progress_event(run_20, index))
    if len(store.require(run_20).events) != 20:
        raise RuntimeError("the 20-event run does not read back 20 events")

    run_100 = create_fresh("events100")
    for index in range(99):
        store.append_event(run_100, progress_event(run_100, index % 100))
    if len(store.list_events(run_100)) != 100:
        raise RuntimeError("the 100-event run does not list 100 events")

    update_run = create_fresh("update")
    version = store.require(update_run, include_events=False).version

    def update() -> None:
        nonlocal version
        version = store.update(
            update_run,
            {"currentStepIndex": version % 3, "costUsd": version * 0.001},
            expected_version=version,
        ).version

    append_run = create_fresh("append")
    pct = itertools.cycle(range(100))

    def append_event() -> None:
        store.append_event(append_run, progress_event(append_run, next(pct)))

    job_run = create_fresh("job", external_job_ids={"replicate": "pred-7f3a9c"})
    found = store.find_by_external_job_id("replicate", "pred-7f3a9c")
    if found is None or found.run_id != job_run:
        raise RuntimeError("find_by_external_job_id does not find the job's run")

    lock_run = create_fresh("lock")

    def lock() -> None:
        with store.lock(lock_run):
            pass

    small, big = "tenant-small", "tenant-big"
    small_offset = config.small_tenant_runs // 2
    big_offset = config.big_tenant_runs // 2
    size = config.page_size
    for tenant, offset in ((small, small_offset), (big, big_offset)):
        page = store.list_runs(tenant_id=tenant, limit=size, offset=offset)
        expected = [bulk_run_id(tenant, index) for index in range(offset, offset + size)]
        if [run.run_id for run in page] != expected:
            raise RuntimeError(f"list_runs of {tenant} at offset {offset} returns the wrong page")
    everything = store.list_runs(tenant_id=small, limit=config.small_tenant_runs)
    if len(everything) != config.small_tenant_runs:
        raise RuntimeError("listing the whole small tenant returns the wrong number of runs")

    small_n = _tenant_label(config.small_tenant_runs)
    big_n = _tenant_label(config.big_tenant_runs)
    return [
        Operation("create", "create", create),
        Operation(
            "create_follow_ups",
            "create, indexes as follow-ups (cluster)",
            create_with_follow_ups,
        ),
        Operation("status_change", "status change", status_changes(store)),
        Operation(
            "status_change_follow_ups",
            "status change, follow-ups (cluster)",
            status_changes(follow_ups),
        ),
        Operation(
            "get_new",
            "get, new run (1 event: run-created)",
            lambda: store.get(new_run),
        ),
        Operation("get_20_events", "get, 20 events", lambda: store.get(run_20)),
        Operation(
            "get_no_events",
            "get, include_events=False",
            lambda: store.get(run_20, include_events=False),
        ),
        Operation("update", "update with expected_version", update),
        Operation("append_event", "append_event", append_event),
        Operation("list_events_100", "list_events, 100 events", lambda: store.list_events(run_100)),
        Operation(
            "list_runs_page_small",
            f"list_runs {size} at offset {small_offset:,} of {small_n}",
            lambda: store.list_runs(tenant_id=small, limit=size, offset=small_offset),
        ),
        Operation(
            "list_runs_page_big",
            f"list_runs {size} at offset {big_offset:,} of {big_n}",
            lambda: store.list_runs(tenant_id=big, limit=size, offset=big_offset),
        ),
        Operation(
            "list_runs_all_1k",
            f"list_runs all {small_n} of a tenant",
            lambda: store.list_runs(tenant_id=small, limit=config.small_tenant_runs),
        ),
        Operation(
            "find_by_external_job_id",
            "find_by_external_job_id",
            lambda: store.find_by_external_job_id("replicate", "pred-7f3a9c"),
        ),
        Operation("lock", "lock round trip, uncontended", lock),
    ]


def machine_info(admin: redis.Redis, server: RedisServer, client: redis.Redis) -> dict[str, Any]:
    info = admin.info("server")
    connection = client.connection_pool.get_connection()
    try:
        protocol = connection.protocol
    finally:
        client.connection_pool.release(connection)
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    try:
        hiredis = package_version("hiredis")
    except Exception:
        hiredis = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "redis_version": info.get("redis_version"),
        "redis_server": server.binary,
        "redis_hz": admin.config_get("hz").get("hz"),
        "python_version": platform.python_version(),
        "redis_py_version": redis.__version__,
        "hiredis": hiredis,
        "resp_protocol": protocol,
        "mpstate_version": package_version("mpstate"),
        "git_commit": commit or None,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "load_average_at_start": list(os.getloadavg()),
    }


def summarize(op: Operation) -> dict[str, Any]:
    rates = [segment.ops_per_s for segment in op.segments]
    base_rates = [segment.ops_per_s for segment in op.baselines]
    ratios = [rate / base for rate, base in zip(rates, base_rates, strict=True)]
    ops = sum(segment.ops for segment in op.segments)
    median_rate = statistics.median(rates)
    ts_ops, ts_trips = TS_ORIGINAL.get(op.name, (None, None))
    return {
        "name": op.name,
        "label": op.label,
        "ops_per_s": round(median_rate, 2),
        "us_per_op": round(1e6 / median_rate, 1),
        "ratio_to_evalsha": round(statistics.median(ratios), 5),
        "baseline_ops_per_s": round(statistics.median(base_rates), 1),
        "round_trips": round(sum(s.round_trips for s in op.segments) / ops, 2),
        "server_commands_per_op": round(sum(s.server_commands for s in op.segments) / ops, 1),
        "server_cpu_us_per_op": round(
            1e6 * sum(s.server_cpu_seconds for s in op.segments) / ops, 1
        ),
        "ts_original_ops_per_s": ts_ops,
        "ts_original_round_trips": ts_trips,
        "ops_measured": ops,
        "rounds": [
            {
                "ops": segment.ops,
                "seconds": round(segment.seconds, 4),
                "ops_per_s": round(segment.ops_per_s, 2),
                "baseline_ops_per_s": round(base.ops_per_s, 1),
                "ratio": round(segment.ops_per_s / base.ops_per_s, 4),
            }
            for segment, base in zip(op.segments, op.baselines, strict=True)
        ],
    }


def with_ceiling(row: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``ceiling_ratio_to_evalsha``: the ratio the operation would reach if its
    client's own work cost nothing. A raw EVALSHA round trip takes ``T`` (the baseline
    interleaved with this operation) of which the server spends ``S`` (the baseline's server
    CPU); an operation of ``R`` round trips whose server spends ``s`` on it cannot take less
    than ``R * (T - S) + s``. A goal above the ceiling cannot be met by client work: the
    operation's server time (its scripts and commands) must fall first."""
    trips, server_us = row.get("round_trips"), row.get("server_cpu_us_per_op")
    if not trips or server_us is None or not row.get("baseline_ops_per_s"):
        return {**row, "ceiling_ratio_to_evalsha": None}
    round_trip_us = 1e6 / row["baseline_ops_per_s"]
    floor_us = trips * (round_trip_us - baseline["server_cpu_us_per_op"]) + server_us
    return {**row, "ceiling_ratio_to_evalsha": round(round_trip_us / floor_us, 4)}


def evaluate_goals(rows: dict[str, dict[str, Any]], handoff: dict[str, Any]) -> list[Goal]:
    """The goals (the constants at the top) against this run's rows and lock hand-off."""
    ratio_goals = [("create", CREATE_RATIO_GOAL)]
    ratio_goals += [(name, SINGLE_RUN_RATIO_GOAL) for name in SINGLE_RUN_OPERATIONS]
    goals = [
        Goal(
            name,
            rows[name]["label"],
            ">=",
            goal,
            rows[name]["ratio_to_evalsha"],
            unit="x raw EVALSHA",
            note=f"{rows[name]['us_per_op']:,.0f} us/op, RTs {rows[name]['round_trips']:g};"
            f" ceiling {rows[name]['ceiling_ratio_to_evalsha']:.3f} (a client costing nothing)",
        )
        for name, goal in ratio_goals
    ]
    small = rows["list_runs_page_small"]["us_per_op"]
    big = rows["list_runs_page_big"]["us_per_op"]
    goals.append(
        Goal(
            "list_runs_page_big",
            rows["list_runs_page_big"]["label"],
            "<=",
            PAGE_SCALING_GOAL,
            round(big / small, 2),
            unit="x the small tenant's page",
            digits=2,
        )
    )
    goals.append(
        Goal(
            "lock_handoff",
            "lock hand-off, contended: median",
            "<",
            HANDOFF_GOAL_MS,
            handoff["median_ms"],
            unit="ms",
            digits=2,
            note=f"p90 {handoff['p90_ms']:.2f} ms",
        )
    )
    return goals


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value >= 0.01 else f"{value:.5f}"


def _trips(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def render_table(rows: list[dict[str, Any]], goals: list[Goal]) -> str:
    by_operation = {goal.operation: goal for goal in goals}
    headers = (
        "operation", "ops/s", "us/op", "x EVALSHA", "ceiling", "RTs", "cmds", "srv us",
        "TS ops/s", "TS RTs", "target", "result",
    )  # fmt: skip
    lines = []
    for row in rows:
        trips = row["round_trips"]
        ts_ops = row["ts_original_ops_per_s"]
        lines.append(
            (
                row["label"],
                number(row["ops_per_s"], 1 if row["ops_per_s"] < 100 else 0),
                number(row["us_per_op"], 0),
                _ratio(row["ratio_to_evalsha"]),
                _ratio(row.get("ceiling_ratio_to_evalsha")),
                _trips(trips),
                number(row.get("server_commands_per_op"), 0),
                number(row.get("server_cpu_us_per_op"), 0),
                number(ts_ops, 1 if ts_ops is not None and ts_ops < 100 else 0),
                number(row["ts_original_round_trips"]),
                *goal_cells(by_operation.get(row["name"])),
            )
        )
    return render(headers, lines, left=(0, 10, 11))


def run_handoff(
    port: int, run_id: str, config: Config, log: Callable[[str], None]
) -> dict[str, Any]:
    clients = [
        one_connection_client(port, f"{BENCH_CLIENT_NAME}-lock-{i}")
        for i in range(config.handoff_threads)
    ]
    stores = [RedisPipelineStateStore(client, prefix=PREFIX) for client in clients]
    try:
        samples: list[float] = []
        round_medians: list[float] = []
        grants = 0
        for _ in range(config.rounds):
            result = measure_lock_handoff(
                stores,
                run_id,
                grants=config.handoff_grants_per_round,
                hold_seconds=HANDOFF_HOLD_SECONDS,
            )
            samples.extend(result.samples)
            round_medians.append(result.median)
            grants += result.grants
        median_ms = statistics.median(samples) * 1000
        p90_ms = percentile(samples, 0.9) * 1000
        log(f"lock hand-off: median {median_ms:.2f} ms, p90 {p90_ms:.2f} ms ({len(samples)})")
        return {
            "threads": config.handoff_threads,
            "hold_ms": HANDOFF_HOLD_SECONDS * 1000,
            "grants": grants,
            "handoffs": len(samples),
            "median_ms": round(median_ms, 3),
            "p90_ms": round(p90_ms, 3),
            "min_ms": round(min(samples) * 1000, 3),
            "max_ms": round(max(samples) * 1000, 3),
            "per_round_median_ms": [round(m * 1000, 3) for m in round_medians],
        }
    finally:
        for client in clients:
            client.close()


def profile_operation(op: Operation, seconds: float) -> None:
    """Print where ``op`` spends its time (cProfile, by own time and by cumulative time)."""
    op.call()
    profiler = cProfile.Profile()
    deadline = time.perf_counter() + seconds
    calls = 0
    profiler.enable()
    while time.perf_counter() < deadline:
        op.call()
        calls += 1
    profiler.disable()
    print(f"profile of {op.label}: {calls} calls in {seconds:g} s (with cProfile's overhead)")
    for order in ("tottime", "cumulative"):
        pstats.Stats(profiler).strip_dirs().sort_stats(order).print_stats(25)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.store", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run of about 10 s")
    parser.add_argument(
        "--smoke", action="store_true", help="each operation once on small tenants (for tests)"
    )
    parser.add_argument("--rounds", type=int, help="rounds per measurement (default 5, quick 2)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--profile",
        metavar="OPERATION",
        help="instead of the benchmark, cProfile one operation (e.g. create, update, lock)",
    )
    parser.add_argument("--profile-seconds", type=float, default=3.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config.for_mode(args.quick, smoke=args.smoke)
    if args.rounds:
        config = dataclasses.replace(config, rounds=args.rounds)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(message, flush=True)

    with RedisServer() as server:
        admin = redis.Redis(host="127.0.0.1", port=server.port, client_name="mpstate-bench-admin")
        loader = redis.Redis(host="127.0.0.1", port=server.port, client_name="mpstate-bench-loader")
        client = one_connection_client(server.port)
        try:
            store = RedisPipelineStateStore(client, prefix=PREFIX)
            machine = machine_info(admin, server, client)
            log(
                f"mpstate store benchmark ({config.mode}): redis {machine['redis_version']} on port"
                f" {server.port}, Python {machine['python_version']}, redis-py"
                f" {machine['redis_py_version']} (RESP{machine['resp_protocol']},"
                f" hiredis {machine['hiredis'] or 'no'}), {machine['cpu_count']} CPUs"
            )

            load_started = time.perf_counter()
            methods = {}
            for tenant, count in (
                ("tenant-small", config.small_tenant_runs),
                ("tenant-big", config.big_tenant_runs),
            ):
                methods[tenant] = bulk_create(loader, PREFIX, tenant, count, progress=log)
                verify_bulk(store, tenant, count)
            load_seconds = time.perf_counter() - load_started
            log(
                f"loaded {config.small_tenant_runs:,} + {config.big_tenant_runs:,} runs in"
                f" {load_seconds:.1f} s ({methods['tenant-big']}); redis uses"
                f" {admin.info('memory')['used_memory_human']}"
            )

            operations = build_operations(store, config)
            if args.profile:
                chosen = [op for op in operations if op.name == args.profile]
                if not chosen:
                    names = ", ".join(op.name for op in operations)
                    print(f"unknown operation {args.profile!r}; one of: {names}", file=sys.stderr)
                    return 2
                profile_operation(chosen[0], args.profile_seconds)
                return 0

            baseline_script = client.register_script("return 1")

            def baseline() -> None:
                baseline_script()

            counters = ServerCounters(admin)
            for op in (*operations, Operation("baseline", "baseline", baseline)):
                op.call()  # warm up: loads scripts, fills caches
            for round_index in range(config.rounds):
                round_started = time.perf_counter()
                for op in operations:
                    measured, base = interleaved_segments(
                        op.call,
                        baseline,
                        op_seconds=config.op_seconds,
                        baseline_seconds=config.baseline_seconds,
                        chunks=config.chunks,
                        client=client,
                        server=counters,
                    )
                    op.segments.append(measured)
                    op.baselines.append(base)
                log(
                    f"round {round_index + 1}/{config.rounds} done in"
                    f" {time.perf_counter() - round_started:.1f} s"
                )

            handoff_run = "handoff-run"
            store.create(run_document(handoff_run, OPS_TENANT))
            handoff = run_handoff(server.port, handoff_run, config, log)

            bench_connections = [
                entry for entry in admin.client_list() if entry.get("name") == BENCH_CLIENT_NAME
            ]
            machine["load_average_at_end"] = list(os.getloadavg())
        finally:
            client.close()
            loader.close()
            admin.close()

    rows = [summarize(op) for op in operations]
    all_baselines = [segment for op in operations for segment in op.baselines]
    baseline_row = summarize(
        Operation(
            "baseline",
            "raw EVALSHA of 'return 1' (baseline)",
            baseline,
            segments=all_baselines,
            baselines=all_baselines,
        )
    )
    del baseline_row["rounds"]
    rows = [with_ceiling(row, baseline_row) for row in rows]
    handoff_row = {
        "name": "lock_handoff",
        "label": f"lock hand-off, contended ({config.handoff_threads} threads), p50",
        "ops_per_s": round(1000 / handoff["median_ms"], 1),
        "us_per_op": round(handoff["median_ms"] * 1000, 0),
        "ratio_to_evalsha": None,
        "round_trips": None,
        "server_commands_per_op": None,
        "server_cpu_us_per_op": None,
        "ts_original_ops_per_s": None,
        "ts_original_round_trips": None,
        "note": "ops_per_s is 1 / median hand-off time",
        **{key: handoff[key] for key in ("median_ms", "p90_ms", "handoffs")},
    }
    rows.append(handoff_row)
    goals = evaluate_goals({row["name"]: row for row in rows}, handoff)
    table = render_table([baseline_row, *rows], goals)
    goals_table = render_goals(goals)

    baseline_median = baseline_row["ops_per_s"]
    footer = [
        f"baseline: raw EVALSHA of 'return 1' on the same connection, median"
        f" {baseline_median:,.0f}/s ({1e6 / baseline_median:.0f} us). In each of {config.rounds}"
        f" rounds every operation alternates with it in {config.chunks} chunks (a baseline chunk"
        " on both sides of each); 'x EVALSHA' is the median over rounds of op rate / baseline.",
        f"lock hand-off: median {handoff['median_ms']:.2f} ms, p90 {handoff['p90_ms']:.2f} ms"
        f" ({handoff['handoffs']} hand-offs: release call -> waiter's lock() returns).",
        "RTs: round trips counted on the connection; cmds: Redis commands run per op, including"
        " inside scripts; srv us: redis-server main-thread CPU per op.",
        "ceiling: the x EVALSHA the op would reach if its client's work cost nothing: a raw"
        " round trip's time over RTs x (that time - the baseline's srv us) + the op's srv us.",
        "TS: the TypeScript original (notes/redis-facts.md), another run: compare loosely."
        " Its listRuns figure lists a whole 1,000-run tenant.",
        f"connections of the benchmark client seen by the server: {len(bench_connections)}",
    ]
    print()
    print(table)
    print()
    for line in footer:
        print(line)
    print()
    print(goals_table)

    result = {
        "benchmark": "benchmarks.store",
        "mode": config.mode,
        "machine": machine,
        "config": {**dataclasses.asdict(config), "prefix": PREFIX},
        "load": {"seconds": round(load_seconds, 2), "methods": methods},
        "baseline": {
            **baseline_row,
            "operation": "EVALSHA of a registered 'return 1' script (register_script)",
        },
        "bench_client_connections": len(bench_connections),
        "operations": rows,
        "lock_handoff": handoff,
        "targets": [goal.as_json() for goal in goals],
        "table": table,
        "goals_table": goals_table,
        "notes": footer,
    }
    write_results(args.output, result, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
