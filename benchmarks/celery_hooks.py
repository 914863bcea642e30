"""Benchmark of mpstate's Celery step hooks: no-op ``PipelineTask`` steps against bare no-op tasks.

Run ``make bench`` (or ``python -m benchmarks.celery_hooks [--quick]``). It starts a private
redis-server on a free loopback port (``mpstate.testing.RedisServer``) that is both the Celery
broker (kombu's keys) and the store (``RedisPipelineStateStore`` under the key prefix
``mpbench``), and one real Celery worker: the solo pool in a thread of this process
(``celery.contrib.testing.worker.start_worker``). The same worker, broker and app serve both sides.

Each round measures both kinds in short alternating backlogs (bare, hooks, bare, hooks, ...; the
next round starts with hooks) so both see the same machine load, which on this kind of shared
2-CPU machine flips between fast and slow regimes every few seconds:

- **bare**: ``runs x steps`` no-op tasks (``@app.task``, no arguments, results ignored);
- **hooks**: ``runs`` runs of ``steps`` no-op ``PipelineTask`` steps, each started with
  ``MpState.start_run``. Every step goes through step-started and step-completed (each a read and
  a versioned commit of the run), and all but the last enqueue the next step from the worker.

A round is a backlog drain, like the baseline in ``notes/celery-facts.md``: a gate task holds the
solo worker while the backlog is published (``.delay()`` for bare, ``start_run`` for hooks), then
the gate is released and the clock runs until the last task's ``task_postrun`` (for hooks the last
run is then completed; every backlog checks that all its runs are). steps/s is the drain rate of a
kind's backlogs in a round taken together; the ratio is hooks over bare in the same round, and the
report gives medians over rounds. The target is hooks >= 0.8 x bare.
"end to end" adds the publish phase (from the first publish to the last run completed).

The worker runs in a thread so that the clock, the store's round-trip counter and the profiler
see it directly; the main thread only waits on an event while the worker drains, so it does not
compete for the GIL. Store round trips are counted on the store client's connections (one per
request written), split into the publisher's (``start_run``) and the worker's (the hooks). Redis
commands come from ``INFO commandstats`` over the whole round (publish and drain), so the broker's
commands per task are the same on both sides and the difference is the store's (including the
commands its scripts run).

After the measured rounds, one more hooks round runs with timing wrappers around the hooks, the
store calls and the enqueue (instance and module attributes patched in this process only) and
prints where a step's time goes. ``--profile hooks|bare`` instead runs cProfile inside the worker
thread for one round.

Targets are reported as PASS/MISS and never fail the run: the machine is shared and noisy.
Results go to ``benchmarks/results/celery_hooks.json`` (``--output`` to change).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import os
import pstats
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import redis
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker

import mpstate.celery.lifecycle as lifecycle_module
import mpstate.core as core_module
import mpstate.redis.backend as redis_backend_module
import mpstate.redis.claims as redis_claims_module
import mpstate.redis.selection as redis_selection_module
import mpstate.redis.writes as redis_writes_module
from benchmarks.harness import main_thread_cpu_seconds, write_results
from benchmarks.store import machine_info
from benchmarks.tables import number, render
from mpstate.celery import MpState, PipelineTask
from mpstate.models import PipelineRunStatus
from mpstate.redis import RedisPipelineStateStore
from mpstate.testing import RedisServer

RESULTS = Path(__file__).resolve().parent / "results" / "celery_hooks.json"
STORE_PREFIX = "mpbench"
NOOP = "bench.noop"
STEP = "bench.step"
GATE = "bench.gate"
PIPELINE = "bench-noop"
RATIO_TARGET = 0.8
#: How long the gate task waits to be released, and the slowest drain rate waited for.
GATE_TIMEOUT_S = 120.0
MIN_DRAIN_RATE = 10.0
#: Server commands that are the benchmark's own bookkeeping, not the broker's or the store's.
OWN_COMMANDS = ("cmdstat_info", "cmdstat_client", "cmdstat_config")


@dataclass(frozen=True, slots=True)
class Config:
    mode: str
    rounds: int
    #: Alternations of bare and hooks backlogs per round (each kind's round total is their sum).
    chunks: int
    #: Runs per hooks backlog; a bare backlog has ``runs * steps`` tasks.
    runs: int
    steps: int
    warmup_runs: int
    breakdown_runs: int

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        if quick:
            return cls("quick", 2, 2, 15, 3, 10, 20)
        return cls("full", 7, 3, 130, 3, 60, 200)


# -- counting and timing ------------------------------------------------------------------------


class RoundTrips:
    """Requests written by the store client's connections (one per round trip)."""

    def __init__(self) -> None:
        self.count = 0


def count_round_trips(client: redis.Redis) -> RoundTrips:
    """Make every connection ``client`` opens from now on count the requests it writes.

    The store keeps its own client configuration (``from_url``); only the pool's connection class
    is swapped for a counting subclass, before the first connection is made.
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
    return counter


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """Calls and microseconds per command (commands run inside scripts included, our own INFO
    left out) and the server's main-thread CPU seconds."""

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

    def __sub__(self, before: ServerSnapshot) -> ServerSnapshot:
        return ServerSnapshot(
            self.calls - before.calls,
            self.usec - before.usec,
            self.cpu_seconds - before.cpu_seconds,
        )


class Spans:
    """Inclusive wall time of wrapped calls, keyed by their call path ("a>b>c"), per thread."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._local = threading.local()
        self._patched: list[Callable[[], None]] = []

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def snapshot(self) -> Spans:
        """A copy of what was recorded so far (for reporting; it wraps nothing)."""
        copy = Spans()
        copy.seconds.update(self.seconds)
        copy.calls.update(self.calls)
        return copy

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        local = self._local
        seconds, calls = self.seconds, self.calls
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = getattr(local, "stack", None)
            if stack is None:
                stack = local.stack = []
            path = f"{stack[-1]}>{name}" if stack else name
            stack.append(path)
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[path] += clock() - start
                calls[path] += 1
                stack.pop()

        return timed

    def patch(self, owner: Any, attribute: str, name: str) -> None:
        """Replace ``owner.attribute`` (an instance's or a module's) with a timed wrapper."""
        had_own = attribute in vars(owner)
        original = getattr(owner, attribute)
        setattr(owner, attribute, self.wrap(name, original))

        def restore() -> None:
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)

        self._patched.append(restore)

    def unpatch(self) -> None:
        while self._patched:
            self._patched.pop()()

    def tree(self, per: int) -> list[tuple[int, str, float, float]]:
        """``(depth, name, us per unit, calls per unit)``, children under their parent, with an
        "other" line for a parent's time outside its children."""
        rows: list[tuple[int, str, float, float]] = []

        def visit(prefix: str | None, depth: int) -> float:
            children = sorted(
                (
                    path
                    for path in self.seconds
                    if (path.rpartition(">")[0] or None) == prefix
                    and (prefix is not None or ">" not in path)
                ),
                key=lambda path: -self.seconds[path],
            )
            total = 0.0
            for path in children:
                us = 1e6 * self.seconds[path] / per
                rows.append((depth, path.rpartition(">")[2], us, self.calls[path] / per))
                inner = visit(path, depth + 1)
                if inner:
                    rows.append((depth + 1, "(other)", us - inner, 0.0))
                total += us
            return total

        visit(None, 0)
        return rows


# -- the app, the worker and one round ----------------------------------------------------------


@dataclass
class RoundResult:
    """One kind's totals in a round (the sum of its chunks)."""

    kind: str
    chunks: int = 0
    steps: int = 0
    publish_seconds: float = 0.0
    drain_seconds: float = 0.0
    publish_round_trips: int = 0
    drain_round_trips: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    command_usec: Counter[str] = field(default_factory=Counter)
    server_cpu_seconds: float = 0.0

    def add(self, other: RoundResult) -> None:
        self.chunks += other.chunks
        self.steps += other.steps
        self.publish_seconds += other.publish_seconds
        self.drain_seconds += other.drain_seconds
        self.publish_round_trips += other.publish_round_trips
        self.drain_round_trips += other.drain_round_trips
        self.commands.update(other.commands)
        self.command_usec.update(other.command_usec)
        self.server_cpu_seconds += other.server_cpu_seconds

    @property
    def rate(self) -> float:
        return self.steps / self.drain_seconds

    @property
    def end_to_end_rate(self) -> float:
        return self.steps / (self.publish_seconds + self.drain_seconds)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "chunks": self.chunks,
            "steps": self.steps,
            "publish_seconds": round(self.publish_seconds, 4),
            "drain_seconds": round(self.drain_seconds, 4),
            "steps_per_s": round(self.rate, 2),
            "end_to_end_steps_per_s": round(self.end_to_end_rate, 2),
            "store_round_trips_publish": self.publish_round_trips,
            "store_round_trips_worker": self.drain_round_trips,
            "redis_commands": sum(self.commands.values()),
            "server_cpu_seconds": round(self.server_cpu_seconds, 4),
        }


@dataclass
class Drain:
    """What the worker thread and the main thread share during a round."""

    gate_started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    counted: str = NOOP
    target: int = 0
    count: int = 0
    ended_at: float = 0.0
    states: Counter[str] = field(default_factory=Counter)
    profiler: cProfile.Profile | None = None
    task_started_at: float = 0.0
    task_seconds: float = 0.0

    def arm(self, counted: str, target: int) -> None:
        self.gate_started.clear()
        self.release.clear()
        self.done.clear()
        self.counted, self.target, self.count = counted, target, 0
        self.ended_at = 0.0
        self.states.clear()
        self.task_seconds = 0.0

    # Receivers run in the worker thread.
    def on_prerun(self, task: Any = None, **_: Any) -> None:
        if task is not None and task.name == self.counted:
            self.task_started_at = time.perf_counter()

    def on_postrun(self, task: Any = None, state: str | None = None, **_: Any) -> None:
        if task is None or task.name != self.counted:
            return
        now = time.perf_counter()
        self.task_seconds += now - self.task_started_at
        self.states[state or "?"] += 1
        self.count += 1
        if self.count == self.target:
            self.ended_at = now
            if self.profiler is not None:
                self.profiler.disable()
            self.done.set()


class Bench:
    """The app, its tasks, the MpState binding and the counters of one benchmark run."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.admin = redis.Redis(
            host="127.0.0.1", port=server.port, client_name="mpstate-bench-admin"
        )
        self.store = RedisPipelineStateStore.from_url(server.url, prefix=STORE_PREFIX)
        self.trips = count_round_trips(self.store.client)
        app = Celery("mpstate-bench", broker=server.url, set_as_current=False)
        app.conf.update(
            task_ignore_result=True,
            worker_hijack_root_logger=False,
            broker_connection_retry_on_startup=True,
        )
        self.app = app
        self.drain = Drain()
        drain = self.drain

        @app.task(name=NOOP, shared=False)
        def noop() -> None:
            return None

        @app.task(name=STEP, base=PipelineTask, bind=True, shared=False)
        def step(self: Any) -> None:
            return None

        @app.task(name=GATE, shared=False)
        def gate() -> None:
            drain.gate_started.set()
            if not drain.release.wait(GATE_TIMEOUT_S):
                raise RuntimeError("the benchmark never released the gate")
            if drain.profiler is not None:
                drain.profiler.enable()

        self.noop, self.step, self.gate = noop, step, gate
        self.mp = MpState(app, self.store)
        signals.task_prerun.connect(drain.on_prerun, weak=False)
        signals.task_postrun.connect(drain.on_postrun, weak=False)
        self.chunk_index = 0
        self.publisher_spans = Spans()
        self.worker_spans = Spans()

    def close(self) -> None:
        signals.task_prerun.disconnect(self.drain.on_prerun)
        signals.task_postrun.disconnect(self.drain.on_postrun)
        self.mp.close()
        self.store.close()
        self.admin.close()

    @contextmanager
    def worker(self) -> Iterator[Any]:
        with start_worker(
            self.app, pool="solo", perform_ping_check=False, shutdown_timeout=30
        ) as worker:
            yield worker

    def run_chunk(
        self,
        kind: str,
        runs: int,
        steps: int,
        *,
        spans: Spans | None = None,
        profiler: cProfile.Profile | None = None,
    ) -> RoundResult:
        """Publish a backlog behind the gate, release it, and time the drain."""
        self.chunk_index += 1
        tenant = f"bench-{self.chunk_index}"
        total = runs * steps
        drain = self.drain
        drain.arm(STEP if kind == "hooks" else NOOP, total)
        drain.profiler = profiler
        self.gate.delay()
        if not drain.gate_started.wait(30):
            raise RuntimeError("the worker did not start the gate task within 30 s")

        gc.collect()
        if spans is not None:
            spans.reset()
        server_before = ServerSnapshot.take(self.admin)
        trips_before = self.trips.count
        publish_started = time.perf_counter()
        if kind == "hooks":
            definition = [{"stepId": f"s{index}", "operation": STEP} for index in range(steps)]
            for _ in range(runs):
                self.mp.start_run(PIPELINE, definition, tenant_id=tenant)
        else:
            for _ in range(total):
                self.noop.delay()
        published = time.perf_counter()
        trips_published = self.trips.count
        if spans is not None:
            self.publisher_spans = spans.snapshot()
            spans.reset()  # from here on, only the worker's calls

        drain_started = time.perf_counter()
        drain.release.set()
        if not drain.done.wait(max(60.0, total / MIN_DRAIN_RATE)):
            raise RuntimeError(
                f"{kind} backlog: {drain.count} of {total} tasks ran ({dict(drain.states)})"
            )
        drain_seconds = drain.ended_at - drain_started
        trips_drained = self.trips.count
        server = ServerSnapshot.take(self.admin) - server_before
        drain.profiler = None
        if spans is not None:
            self.worker_spans = spans.snapshot()

        if set(drain.states) != {"SUCCESS"}:
            raise RuntimeError(f"{kind} backlog: task states {dict(drain.states)}")
        if kind == "hooks":
            stored = self.store.list_runs(tenant_id=tenant, limit=max(runs, 1) + 1)
            statuses = Counter(str(run.status) for run in stored)
            if len(stored) != runs or statuses[str(PipelineRunStatus.COMPLETED)] != runs:
                raise RuntimeError(f"hooks backlog: {runs} runs started, stored {dict(statuses)}")
        return RoundResult(
            kind,
            chunks=1,
            steps=total,
            publish_seconds=published - publish_started,
            drain_seconds=drain_seconds,
            publish_round_trips=trips_published - trips_before,
            drain_round_trips=trips_drained - trips_published,
            commands=server.calls,
            command_usec=server.usec,
            server_cpu_seconds=server.cpu_seconds,
        )

    def instrument(self, spans: Spans) -> None:
        """Timing wrappers on the hooks, the store calls, the codec and the enqueue."""
        mp, store = self.mp, self.store
        spans.patch(mp, "start_run", "start_run")
        spans.patch(mp.lifecycle, "start_step", "lifecycle.start_step (step-started)")
        spans.patch(mp.lifecycle, "complete_step", "lifecycle.complete_step (step-completed)")
        spans.patch(mp.lifecycle, "apply", "lifecycle.apply")
        spans.patch(mp.lifecycle, "enqueue", "enqueue next step")
        spans.patch(self.app, "send_task", "app.send_task (publish)")
        spans.patch(store, "create_or_get", "store.create_or_get")
        spans.patch(store, "get", "store.get")
        spans.patch(store, "commit", "store.commit")
        spans.patch(store, "_execute", "redis request (a script, command or pipeline)")
        spans.patch(store, "_own_events", "validate events")
        spans.patch(core_module, "validate_patch", "validate_patch")
        for module in (
            redis_backend_module,
            redis_claims_module,
            redis_selection_module,
            redis_writes_module,
        ):
            spans.patch(module, "decode_run", "decode_run (pydantic)")
        spans.patch(redis_writes_module, "encode_fields", "encode_fields")
        spans.patch(redis_writes_module, "event_document", "event_document")
        spans.patch(lifecycle_module, "start_step", "decide: start_step")
        spans.patch(lifecycle_module, "complete_step", "decide: complete_step")


# -- reporting ----------------------------------------------------------------------------------


def summarize(
    rounds: list[tuple[RoundResult, RoundResult]], config: Config
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    bare = [pair[0] for pair in rounds]
    hooks = [pair[1] for pair in rounds]
    ratios = [h.rate / b.rate for b, h in zip(bare, hooks, strict=True)]
    e2e_ratios = [h.end_to_end_rate / b.end_to_end_rate for b, h in zip(bare, hooks, strict=True)]

    def per_step(results: list[RoundResult]) -> Counter[str]:
        steps = sum(r.steps for r in results)
        merged: Counter[str] = Counter()
        for result in results:
            merged.update(result.commands)
        return Counter({name: calls / steps for name, calls in merged.items()})

    bare_commands, hooks_commands = per_step(bare), per_step(hooks)
    store_commands = {
        name: round(hooks_commands[name] - bare_commands[name], 2)
        for name in sorted(set(hooks_commands) | set(bare_commands))
        if abs(hooks_commands[name] - bare_commands[name]) >= 0.02
    }

    def row(kind: str, label: str, results: list[RoundResult]) -> dict[str, Any]:
        steps = sum(r.steps for r in results)
        rate = statistics.median(r.rate for r in results)
        publish_trips = sum(r.publish_round_trips for r in results) / steps
        worker_trips = sum(r.drain_round_trips for r in results) / steps
        commands = per_step(results)
        return {
            "name": kind,
            "label": label,
            "steps_per_s": round(rate, 1),
            "us_per_step": round(1e6 / rate, 0),
            "end_to_end_steps_per_s": round(
                statistics.median(r.end_to_end_rate for r in results), 1
            ),
            "publish_per_s": round(
                statistics.median(r.steps / r.publish_seconds for r in results), 1
            ),
            "store_round_trips_per_step": round(publish_trips + worker_trips, 2),
            "store_round_trips_per_step_publisher": round(publish_trips, 2),
            "store_round_trips_per_step_worker": round(worker_trips, 2),
            "redis_commands_per_step": round(sum(commands.values()), 2),
            "evalsha_per_step": round(commands.get("evalsha", 0.0), 2),
            "server_cpu_us_per_step": round(
                1e6 * sum(r.server_cpu_seconds for r in results) / steps, 1
            ),
            "steps_measured": steps,
            "rounds": [r.as_json() for r in results],
        }

    rows = [
        row("bare", "bare no-op task", bare),
        row("hooks", f"PipelineTask no-op step ({config.steps}-step runs)", hooks),
    ]
    rows[0]["ratio_to_bare"] = 1.0
    rows[0]["end_to_end_ratio_to_bare"] = 1.0
    rows[1]["ratio_to_bare"] = round(statistics.median(ratios), 4)
    rows[1]["ratio_to_bare_per_round"] = [round(r, 4) for r in ratios]
    rows[1]["end_to_end_ratio_to_bare"] = round(statistics.median(e2e_ratios), 4)
    rows[1]["store_redis_commands_per_step"] = round(
        rows[1]["redis_commands_per_step"] - rows[0]["redis_commands_per_step"], 2
    )
    rows[0]["store_redis_commands_per_step"] = 0.0
    evalsha_calls = sum(r.commands["evalsha"] for r in hooks)
    rows[1]["evalsha_server_us_per_call"] = round(
        sum(r.command_usec["evalsha"] for r in hooks) / max(evalsha_calls, 1), 1
    )
    commands = {
        "broker_per_task": {k: round(v, 2) for k, v in sorted(bare_commands.items())},
        "store_per_step": store_commands,
        "note": "server commands per task over whole rounds (publish + drain), from INFO "
        "commandstats; store_per_step = hooks rounds minus bare rounds (the broker's "
        "commands per task are the same on both sides), script-internal commands included",
    }
    return rows, commands


def render_table(rows: list[dict[str, Any]], target: dict[str, Any]) -> str:
    headers = (
        "kind", "steps/s", "us/step", "x bare", "e2e/s", "e2e x", "store RTs/step",
        "(pub+worker)", "cmds/step", "store cmds", "EVALSHA", "srv us", "target", "result",
    )  # fmt: skip
    lines = []
    for row in rows:
        hooks = row["name"] == "hooks"
        lines.append(
            (
                row["label"],
                number(row["steps_per_s"]),
                number(row["us_per_step"]),
                f"{row['ratio_to_bare']:.3f}",
                number(row["end_to_end_steps_per_s"]),
                f"{row['end_to_end_ratio_to_bare']:.3f}",
                number(row["store_round_trips_per_step"], 2),
                f"{row['store_round_trips_per_step_publisher']:.2f}"
                f"+{row['store_round_trips_per_step_worker']:.2f}",
                number(row["redis_commands_per_step"], 1),
                number(row["store_redis_commands_per_step"], 1),
                number(row["evalsha_per_step"], 2),
                number(row["server_cpu_us_per_step"]),
                target["target"] if hooks else "",
                ("PASS" if target["met"] else "MISS") if hooks else "",
            )
        )
    return render(headers, lines, left=(0, 12, 13))


def render_tree(rows: list[tuple[int, str, float, float]], unit: str) -> str:
    width = max((2 * depth + len(name) for depth, name, _, _ in rows), default=10)
    lines = [f"  {'':<{width}}  {'us/' + unit:>9}  {'calls/' + unit:>10}"]
    for depth, name, us, calls in rows:
        label = "  " * depth + name
        calls_text = f"{calls:.2f}" if calls else ""
        lines.append(f"  {label:<{width}}  {us:>9,.0f}  {calls_text:>10}")
    return "\n".join(lines)


def breakdown(bench: Bench, config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """One hooks backlog with timing wrappers: where a step's (and a start_run's) time goes.

    A bare backlog of the same size right before and right after it gives the comparison point
    for Celery's own work (the machine's speed drifts between rounds).
    """
    spans = Spans()
    runs = config.breakdown_runs
    before = bench.run_chunk("bare", runs, config.steps)
    bench.instrument(spans)
    try:
        result = bench.run_chunk("hooks", runs, config.steps, spans=spans)
    finally:
        spans.unpatch()
    after = bench.run_chunk("bare", runs, config.steps)
    bare_us = 1e6 * (before.drain_seconds + after.drain_seconds) / (before.steps + after.steps)
    publisher, spans = bench.publisher_spans, bench.worker_spans
    steps = result.steps
    step_us = 1e6 * result.drain_seconds / steps
    task_us = 1e6 * bench.drain.task_seconds / steps
    worker_rows = spans.tree(steps)
    hooks_us = sum(us for depth, _, us, _ in worker_rows if depth == 0)
    publish_rows = publisher.tree(runs)
    summary = [
        (0, "step wall time in the drain (1 / rate)", step_us, 0.0),
        (1, "mpstate hooks: start + complete (below)", hooks_us, 0.0),
        (1, "the rest: Celery's own work for the task", step_us - hooks_us, 0.0),
        (2, "a bare no-op task's wall time (backlogs just before and after)", bare_us, 0.0),
        (
            2,
            "difference (bigger message: identity kwargs + headers, __call__)",
            step_us - hooks_us - bare_us,
            0.0,
        ),
    ]
    log("")
    log(
        f"where a step's time goes (one instrumented hooks backlog, {steps} steps at"
        f" {1e6 / step_us:,.0f} steps/s; wrappers add ~1 us per wrapped call):"
    )
    log(render_tree(summary, "step"))
    log(render_tree(worker_rows, "step"))
    log("")
    run_us = 1e6 * result.publish_seconds / runs
    log(f"the publisher's start_run ({runs} runs, {run_us:,.0f} us per run in all):")
    log(render_tree(publish_rows, "run"))
    return {
        "steps": steps,
        "steps_per_s": round(1e6 / step_us, 1),
        "bare_us_per_task": round(bare_us, 1),
        "trace_us_per_step": round(task_us, 1),
        "summary_us_per_step": [
            {"depth": d, "name": n, "us": round(us, 1)} for d, n, us, _ in summary
        ],
        "worker_us_per_step": [
            {"depth": d, "name": n, "us": round(us, 1), "calls": round(c, 3)}
            for d, n, us, c in worker_rows
        ],
        "start_run_us_per_run": [
            {"depth": d, "name": n, "us": round(us, 1), "calls": round(c, 3)}
            for d, n, us, c in publish_rows
        ],
    }


def profile_round(bench: Bench, kind: str, config: Config) -> None:
    """cProfile the worker thread for one round (from the gate's release to the last task)."""
    profiler = cProfile.Profile()
    result = bench.run_chunk(kind, config.runs * config.chunks, config.steps, profiler=profiler)
    print(
        f"profile of a {kind} round: {result.steps} tasks at {result.rate:,.0f}/s under cProfile"
        f" (unprofiled rates are higher; cProfile inflates Python-heavy code most)"
    )
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(40)
        print(out.getvalue())


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.celery_hooks", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 7, quick 2)")
    parser.add_argument(
        "--chunks", type=int, help="bare/hooks alternations per round (default 3, quick 2)"
    )
    parser.add_argument("--runs", type=int, help="runs per hooks backlog (default 130, quick 15)")
    parser.add_argument("--steps", type=int, help="no-op steps per run (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--profile",
        choices=("hooks", "bare"),
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

    rounds: list[tuple[RoundResult, RoundResult]] = []
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
                # Warm up both sides: script loads, imports, connections, caches.
                bench.run_chunk("hooks", config.warmup_runs, config.steps)
                bench.run_chunk("bare", config.warmup_runs, config.steps)
                if args.profile:
                    profile_round(bench, args.profile, config)
                    return 0
                for index in range(config.rounds):
                    order = ("bare", "hooks") if index % 2 == 0 else ("hooks", "bare")
                    bare, hooks = RoundResult("bare"), RoundResult("hooks")
                    totals = {"bare": bare, "hooks": hooks}
                    for _ in range(config.chunks):
                        for kind in order:
                            totals[kind].add(bench.run_chunk(kind, config.runs, config.steps))
                    rounds.append((bare, hooks))
                    log(
                        f"round {index + 1}/{config.rounds} ({' then '.join(order)}): bare"
                        f" {bare.rate:,.0f}/s, hooks {hooks.rate:,.0f} steps/s, ratio"
                        f" {hooks.rate / bare.rate:.3f}"
                    )
                where = breakdown(bench, config, log)
            machine["load_average_at_end"] = list(os.getloadavg())
        finally:
            bench.close()

    rows, commands = summarize(rounds, config)
    ratio = rows[1]["ratio_to_bare"]
    target = {
        "operation": "hooks",
        "target": f">= {RATIO_TARGET} x bare",
        "value": ratio,
        "met": ratio >= RATIO_TARGET,
    }
    table = render_table(rows, target)
    footer = [
        f"steps/s: median over {config.rounds} rounds of a solo worker draining backlogs of"
        f" {config.runs * config.steps} tasks (gate released -> last task_postrun), {config.chunks}"
        " per kind and round, bare and hooks alternating; x bare: median of the per-round ratio.",
        "e2e: from the first publish to the last run completed (publish phase, then the drain);"
        " hooks publish with MpState.start_run, bare with .delay().",
        "store RTs: round trips of the store's client per step (publisher's start_run + worker's"
        " hooks); cmds: Redis commands per step, whole round, broker's included; store cmds:"
        " hooks minus bare (incl. commands run inside scripts); EVALSHA: per step (server time"
        f" {rows[1]['evalsha_server_us_per_call']:.0f} us per call); srv us: redis-server"
        " main-thread CPU per step (broker and store).",
        "bare tasks run with MpState bound (its signal receivers return at once for them).",
    ]
    print()
    print(table)
    print()
    for line in footer:
        print(line)
    print(
        "store commands per step by command: "
        + ", ".join(f"{name} {value:g}" for name, value in commands["store_per_step"].items())
    )
    verdict = "PASS" if target["met"] else "MISS"
    print(f"  {verdict}  hooks: {target['target']}, measured {ratio:.3f}")

    result = {
        "benchmark": "benchmarks.celery_hooks",
        "mode": config.mode,
        "machine": machine,
        "config": {**dataclasses.asdict(config), "store_prefix": STORE_PREFIX},
        "results": rows,
        "redis_commands": commands,
        "breakdown": where,
        "targets": [target],
        "table": table,
        "notes": footer,
    }
    write_results(args.output, result, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
