"""The command line: ``python -m benchmarks.celery_hooks [--quick] [--profile KIND]``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence
from importlib.metadata import version as package_version
from pathlib import Path

from benchmarks.celery_hooks import __doc__ as package_doc
from benchmarks.celery_hooks.config import KINDS, RESULTS, STORE_PREFIX, Config
from benchmarks.celery_hooks.profiling import breakdown, profile_round
from benchmarks.celery_hooks.summary import evaluate_goals, render_table, summarize
from benchmarks.celery_hooks.worker import Bench, RoundResult
from benchmarks.harness import write_results
from benchmarks.store import machine_info
from benchmarks.tables import render_goals
from mpstate.testing import RedisServer


def round_line(
    index: int, rounds: int, order: Sequence[str], totals: dict[str, RoundResult]
) -> str:
    """A round's progress line: each kind's drain rate and the hooks' ratios."""
    hooks, chained, bare = totals["hooks"], totals["chain"], totals["bare"]
    rates = ", ".join(f"{kind} {totals[kind].rate:,.0f}" for kind in KINDS)
    end_to_end = hooks.end_to_end_rate / chained.end_to_end_rate
    floor = totals["floor"].end_to_end_rate / chained.end_to_end_rate
    return (
        f"round {index + 1}/{rounds} ({', '.join(order)}): {rates} steps/s; hooks x chain"
        f" {hooks.rate / chained.rate:.3f} (e2e {end_to_end:.3f}), x bare"
        f" {hooks.rate / bare.rate:.3f}; floor x chain e2e {floor:.3f}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.celery_hooks", description=(package_doc or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 7, quick 2)")
    parser.add_argument(
        "--chunks", type=int, help="alternations of the kinds per round (default 3, quick 2)"
    )
    parser.add_argument(
        "--runs", type=int, help="runs (chains) per hooks (chain) backlog (default 130, quick 15)"
    )
    parser.add_argument("--steps", type=int, help="no-op steps per run (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--profile",
        choices=KINDS,
        help="instead of the benchmark, cProfile one round of this kind in the worker thread",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config.for_mode(args.quick)
    overrides = {
        key: value
        for key, value in (
            ("rounds", args.rounds),
            ("chunks", args.chunks),
            ("runs", args.runs),
            ("steps", args.steps),
        )
        if value
    }
    config = dataclasses.replace(config, **overrides)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(message, flush=True)

    rounds: list[dict[str, RoundResult]] = []
    with RedisServer() as server:
        bench = Bench(server)
        try:
            machine = machine_info(bench.admin, server, bench.store.client)
            machine.update(
                celery_version=package_version("celery"),
                kombu_version=package_version("kombu"),
                worker="solo pool, in a thread of this process (start_worker)",
            )
            log(
                f"mpstate Celery hooks benchmark ({config.mode}): redis"
                f" {machine['redis_version']} on port {server.port} (broker and store),"
                f" Celery {machine['celery_version']}, Python {machine['python_version']},"
                f" {machine['cpu_count']} CPUs; {config.runs} runs x {config.steps} steps"
                f" per round, {config.rounds} rounds"
            )
            worker_started = time.perf_counter()
            with bench.worker():
                log(f"worker ready in {time.perf_counter() - worker_started:.1f} s")
                # Warm up every kind: script loads, imports, connections, caches.
                for kind in reversed(KINDS):
                    bench.run_chunk(kind, config.warmup_runs, config.steps)
                if args.profile:
                    profile_round(bench, args.profile, config)
                    return 0
                for index in range(config.rounds):
                    shift = index % len(KINDS)
                    order = KINDS[shift:] + KINDS[:shift]
                    totals = {kind: RoundResult(kind) for kind in KINDS}
                    for _ in range(config.chunks):
                        for kind in order:
                            totals[kind].add(bench.run_chunk(kind, config.runs, config.steps))
                    rounds.append(totals)
                    log(round_line(index, config.rounds, order, totals))
                where = breakdown(bench, config, log)
            machine["load_average_at_end"] = list(os.getloadavg())
        finally:
            bench.close()

    rows, commands = summarize(rounds, config)
    goals = evaluate_goals(rows)
    table = render_table(rows)
    goals_table = render_goals(goals)
    hooks = rows[-1]
    footer = [
        f"steps/s: median over {config.rounds} rounds of a solo worker draining backlogs of"
        f" {config.runs * config.steps} tasks (gate released -> last task_postrun), {config.chunks}"
        " per kind and round, the kinds alternating (the order rotates between rounds); a"
        " chain's step is one link. x chain, x bare: medians of the per-round ratios.",
        "e2e: from the first publish to the last task's completion (publish phase, then the"
        " drain); hooks publish with MpState.start_run, bare and chain with .delay() (a chain's"
        " first link; the worker publishes the others, as it does the hooks' next steps).",
        "store RTs: round trips of the store's client per step (publisher's start_run + worker's"
        " hooks); cmds: Redis commands per step, whole backlog, broker's included; store cmds:"
        " hooks minus chain (vs bare: hooks minus bare), commands run inside scripts included;"
        " EVALSHA: per step (server time"
        f" {hooks['evalsha_server_us_per_call']:.0f} us per call); srv us: redis-server"
        " main-thread CPU per step (broker and store); store srv us: hooks minus chain (vs bare).",
        "bare tasks and chains run with MpState bound (its signal receivers return at once for"
        " them).",
    ]
    print()
    print(table)
    print()
    for line in footer:
        print(line)
    for key, title in (("store_per_step", "chain"), ("store_per_step_vs_bare", "bare")):
        print(
            f"store commands per step by command (hooks - {title}): "
            + ", ".join(f"{name} {value:g}" for name, value in commands[key].items())
        )
    print()
    print(goals_table)

    result = {
        "benchmark": "benchmarks.celery_hooks",
        "mode": config.mode,
        "machine": machine,
        "config": {**dataclasses.asdict(config), "store_prefix": STORE_PREFIX},
        "results": rows,
        "redis_commands": commands,
        "breakdown": where,
        "targets": [goal.as_json() for goal in goals],
        "table": table,
        "goals_table": goals_table,
        "notes": footer,
    }
    write_results(args.output, result, started)
    return 0
