"""The command line: ``python -m benchmarks.scale [--quick] [--runs N]``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import write_results
from benchmarks.scale import __doc__ as scale_doc
from benchmarks.scale.config import (
    PAGE_SIZE,
    PREFIX,
    RESULTS,
    SMALL_TENANT,
    SPREAD_RESULTS,
    Config,
    log,
)
from benchmarks.scale.listing import list_cases, measure_list_runs
from benchmarks.scale.loading import Target, run_load, verify_load
from benchmarks.scale.memory import memory_profile
from benchmarks.scale.spread import measure_spread, spread_goals, spread_table
from benchmarks.scale.tables import (
    evaluate_targets,
    list_table,
    load_table,
    memory_table,
    throughput_table,
)
from benchmarks.scale.throughput import Cell, Clients, measure_throughput, summarize_throughput
from benchmarks.store import machine_info
from benchmarks.tables import render_goals
from mpstate.redis.keys import RedisKeys
from mpstate.testing import RedisServer
from mpstate.testing._cluster import LocalRedisCluster


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=(scale_doc or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="20,000 runs and short rounds")
    parser.add_argument("--runs", type=int, help="runs to load (default 1,000,000; quick 20,000)")
    parser.add_argument("--loaders", type=int, help="loader processes (default 4)")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 5, quick 2)")
    parser.add_argument(
        "--targets", default="single,cluster", help="single, cluster or both (default)"
    )
    parser.add_argument(
        "--spread",
        action="store_true",
        help="only each cluster primary's share of server CPU under a create-heavy load, with the"
        " global indexes in one slot (before) and sharded (runs per load: --runs, default 20,000"
        f" (quick 5,000); --rounds, default 2); results in {SPREAD_RESULTS.name}",
    )
    parser.add_argument("--output", type=Path, help=f"where to write the JSON (default {RESULTS})")
    return parser.parse_args(argv)


def _meminfo(field_name: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _memory_total() -> int | None:
    return _meminfo("MemTotal")


def _memory_available() -> int | None:
    return _meminfo("MemAvailable")


def spread_main(args: argparse.Namespace, config: Config) -> int:
    """``--spread``: each primary's share of server CPU, one slot against the shards."""
    started = time.perf_counter()
    runs = args.runs or (5_000 if args.quick else 20_000)
    rounds = args.rounds or 2
    cluster = LocalRedisCluster(masters=3).start()
    ports = [master.port for master in cluster.masters]
    target = Target("cluster", f"redis+cluster://127.0.0.1:{ports[0]}", ports, cluster.binary)
    try:
        machine = machine_info(target.admins[ports[0]], cluster.masters[0], target.admins[ports[0]])
        log(
            f"spread: {runs:,} runs (create + start) per load, {rounds} rounds, 3 primaries,"
            f" {config.loaders} loader processes; redis {machine['redis_version']}"
        )
        results = measure_spread(
            target,
            config,
            runs=runs,
            rounds=rounds,
            pool_context=multiprocessing.get_context("spawn"),
        )
    finally:
        target.close()
        cluster.cleanup()
    goals = spread_goals(results)
    table = spread_table(results)
    print(f"\nEach primary's share of server CPU (main thread, INFO cpu)\n{table}\n")
    print(render_goals(goals))
    problems = [
        f"{r['shards']} shard(s): {r['errors']} load errors"
        for r in results.values()
        if r["errors"]
    ]
    for problem in problems:
        print(f"  PROBLEM  {problem}")
    result = {
        "benchmark": "benchmarks.scale --spread",
        "machine": machine,
        "config": {"runs": runs, "rounds": rounds, "loaders": config.loaders, "primaries": 3},
        "layouts": results,
        "targets": [goal.as_json() for goal in goals],
        "problems": problems,
        "tables": {"spread": table},
    }
    write_results(args.output or SPREAD_RESULTS, result, started)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config.for_mode(args.quick)
    if args.spread:
        if args.loaders:
            config = dataclasses.replace(config, loaders=args.loaders)
        return spread_main(args, config)
    overrides: dict[str, Any] = {}
    if args.runs:
        overrides["runs"] = args.runs
    if args.loaders:
        overrides["loaders"] = args.loaders
    if args.rounds:
        overrides["rounds"] = args.rounds
    config = dataclasses.replace(config, **overrides)
    if config.runs < config.tenants * 10:
        print(f"--runs must be at least {config.tenants * 10}", file=sys.stderr)
        return 2
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    if not names or any(name not in ("single", "cluster") for name in names):
        print("--targets takes single, cluster or single,cluster", file=sys.stderr)
        return 2
    started = time.perf_counter()
    keys = RedisKeys(PREFIX)
    runs_total = config.runs + config.small_tenant_runs
    pool_context = multiprocessing.get_context("spawn")

    server: RedisServer | None = None
    cluster: LocalRedisCluster | None = None
    targets: dict[str, Target] = {}
    problems: list[str] = []
    loads: dict[str, dict[str, Any]] = {}
    small_loads: dict[str, dict[str, Any]] = {}
    checks: dict[str, dict[str, Any]] = {}
    memory: dict[str, dict[str, Any]] = {}
    lists: dict[str, dict[str, dict[str, Any]]] = {}
    lists_before: dict[str, dict[str, dict[str, Any]]] = {}
    loop = asyncio.new_event_loop()
    clients: dict[str, Clients] = {}
    machine: dict[str, Any] = {}
    cells: dict[tuple[str, str, int, str], Cell] = {}

    def checkpoint(phase: str) -> None:
        """Write what is measured so far, so a long run is not lost to a later failure."""
        partial = {
            "benchmark": "benchmarks.scale",
            "partial": f"after {phase}",
            "machine": machine,
            "config": dataclasses.asdict(config),
            "load": loads,
            "small_tenant_load": small_loads,
            "load_checks": checks,
            "memory": memory,
            "list_runs": lists,
            "list_runs_before_load": lists_before,
            "throughput_cells": {
                "|".join(map(str, key)): dataclasses.asdict(cell) for key, cell in cells.items()
            },
            "problems": problems,
        }
        output = args.output or RESULTS
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(partial, indent=2, default=str) + "\n")

    try:
        if "single" in names:
            server = RedisServer(extra_args=("--maxmemory", "0")).start()
            targets["single"] = Target("single", server.url, [server.port], server.binary)
        if "cluster" in names:
            cluster = LocalRedisCluster(masters=3).start()
            ports = [master.port for master in cluster.masters]
            targets["cluster"] = Target(
                "cluster", f"redis+cluster://127.0.0.1:{ports[0]}", ports, cluster.binary
            )
            for admin in targets["cluster"].admins.values():
                admin.config_set("maxmemory", 0)
        first = next(iter(targets.values()))
        first_admin = next(iter(first.admins.values()))
        machine = machine_info(
            first_admin,
            server if server is not None else cluster.masters[0],
            first_admin,  # type: ignore[union-attr]
        )
        machine["memory_bytes"] = _memory_total()
        machine["deployments"] = {
            name: {
                "ports": list(target.admins),
                "redis_version": next(iter(target.admins.values())).info("server")["redis_version"],
                "masters": len(target.admins),
            }
            for name, target in targets.items()
        }
        log(
            f"mpstate scale benchmark ({config.mode}): {config.runs:,} runs over"
            f" {config.tenants} tenants + a {config.small_tenant_runs:,}-run tenant, on"
            f" {', '.join(names)}; redis {machine['redis_version']}, {machine['cpu_count']} CPUs,"
            f" {config.loaders} loader processes"
        )

        for name, target in targets.items():
            memory_before = target.used_memory()
            small_loads[name] = run_load(
                target, config, count=config.small_tenant_runs, first=0, tenant=SMALL_TENANT,
                loaders=1, pool_context=pool_context,
            )  # fmt: skip
            lists_before[name], found = measure_list_runs(
                target, list_cases(config, runs_total, before_load=True), config.list_samples
            )
            problems += found
            small_samples = list(target.samples)
            target.samples.clear()
            available = _memory_available()
            log(
                f"{name}: loading {config.runs:,} runs"
                + (f" (MemAvailable {available / 2**30:.1f} GB)" if available else "")
            )
            loads[name] = run_load(
                target, config, count=config.runs, first=0, tenant=None,
                loaders=config.loaders, pool_context=pool_context,
            )  # fmt: skip
            load = loads[name]
            log(
                f"{name}: loaded {load['runs']:,} runs in {load['wall_seconds']:,.0f} s"
                f" ({load['runs_per_s']:,.0f}/s), used_memory"
                f" {target.used_memory() / 2**20:,.0f} MB"
            )
            if load["errors"]:
                problems.append(f"{name}: load errors {load['errors']}: {load['first_errors']}")
            checks[name], found = verify_load(target, keys, config, runs_total)
            problems += found
            memory[name] = memory_profile(target, keys, config, runs_total, memory_before)
            target.samples.extend(small_samples)
            log(
                f"{name}: {memory[name]['bytes_per_run_all']:,.0f} bytes per run"
                f" ({memory[name]['bytes_per_run_steady']:,.0f} without op keys)"
            )
            lists[name], found = measure_list_runs(
                target, list_cases(config, runs_total), config.list_samples
            )
            problems += found
            log(f"{name}: list_runs measured")
            checkpoint(f"{name}")

        workers = max(config.concurrency)
        for name, target in targets.items():
            clients[name] = Clients(target, loop)
            clients[name].prepare(workers)
        log(
            f"throughput: {config.rounds} rounds of create and two commits with"
            f" {', '.join(map(str, config.concurrency))} clients (threads, asyncio tasks)"
        )
        cells = measure_throughput(clients, config)
        machine["load_average_at_end"] = list(os.getloadavg())
        checkpoint("throughput")
    finally:
        for client in clients.values():
            client.close()
        loop.close()
        for target in targets.values():
            target.close()
        if server is not None:
            server.cleanup()
        if cluster is not None:
            cluster.cleanup()

    target_names = list(targets)
    rows = summarize_throughput(cells, target_names, config)
    for row in rows:
        for name in target_names:
            if row[name]["errors"]:
                problems.append(
                    f"{name} {row['api']} x{row['clients']} {row['operation']}:"
                    f" {row[name]['errors']} errors, e.g. {row[name]['first_error']}"
                )
    targets_met = evaluate_targets(lists)
    tables = {
        "load": load_table(loads),
        "memory": memory_table(memory),
        "throughput": throughput_table(rows, target_names),
        "list_runs": list_table(lists, lists_before),
    }
    notes = [
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}),"
        f" {(machine['memory_bytes'] or 0) / 2**30:.0f} GB, redis {machine['redis_version']},"
        f" Python {machine['python_version']}, redis-py {machine['redis_py_version']} (hiredis"
        f" {machine['hiredis'] or 'no'}). Clients, loaders and every redis-server share the CPUs.",
        f"Load: {config.loaders} processes, each with its own sync store, create + 2 versioned"
        " commits per run (5 events); every 10th run has an idempotency key, a quarter complete."
        " ms columns: mean wall time per call inside a loader (CPU shared by all processes).",
        "Memory: used_memory (summed over masters) after the load minus before; run hash and"
        " stream from MEMORY USAGE of sampled runs, indexes of every index key, op keys (the"
        " write-dedupe keys kept 10 minutes after each write) counted as keys minus the rest.",
        "Throughput: threads share one sync store, asyncio tasks one async store, in this one"
        " process. x RT: ops/s over a raw EVALSHA of 'return 1' by the same clients with the same"
        " concurrency, measured right before and after; medians over"
        f" {config.rounds} rounds; cluster/single: median of the per-round ratio.",
        f"list_runs: {config.list_samples} samples per page in random order, one connection;"
        " x 1k: p50 over the 1,000-run tenant's page at the same depth.",
    ]
    for name, load in loads.items():
        top = ", ".join(f"{cmd} {n:g}" for cmd, n in list(load["commands_per_run"].items())[:12])
        notes.append(f"{name}: Redis commands per loaded run (scripts' included): {top}")
    print()
    for title, table in (
        ("Load", tables["load"]),
        ("Memory (bytes per run unless said)", tables["memory"]),
        ("Throughput", tables["throughput"]),
        ("list_runs page latency", tables["list_runs"]),
    ):
        print(f"{title}\n{table}\n")
    for line in notes:
        print(line)
    for target in targets_met:
        verdict = "PASS" if target["met"] else "MISS"
        print(
            f"  {verdict}  {target['deployment']}: {target['operation']}: {target['target']},"
            f" measured {target['value']}"
        )
    for problem in problems:
        print(f"  PROBLEM  {problem}")

    result = {
        "benchmark": "benchmarks.scale",
        "mode": config.mode,
        "machine": machine,
        "config": {**dataclasses.asdict(config), "prefix": PREFIX, "page_size": PAGE_SIZE},
        "load": loads,
        "small_tenant_load": small_loads,
        "load_checks": checks,
        "memory": memory,
        "throughput": rows,
        "list_runs": lists,
        "list_runs_before_load": lists_before,
        "targets": targets_met,
        "problems": problems,
        "tables": tables,
        "notes": notes,
    }
    write_results(args.output or RESULTS, result, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
