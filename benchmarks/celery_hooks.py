"""Benchmark of mpstate's Celery step hooks: no-op ``PipelineTask`` steps against bare Celery.

Run ``make bench`` (or ``python -m benchmarks.celery_hooks [--quick]``). It starts a private
redis-server on a free loopback port (``mpstate.testing.RedisServer``) that is both the Celery
broker (kombu's keys) and the store (``RedisPipelineStateStore`` under the key prefix
``mpbench``), and one real Celery worker: the solo pool in a thread of this process
(``celery.contrib.testing.worker.start_worker``). The same worker, broker and app serve all kinds.

Each round measures three kinds in short alternating backlogs (bare, chain, hooks, bare, ...; the
order rotates from round to round so no kind always goes first) so all see the same machine load,
which on this kind of shared 2-CPU machine flips between fast and slow regimes every few seconds:

- **bare**: ``runs x steps`` no-op tasks (``@app.task``, no arguments, results ignored), all
  published by this process;
- **chain**: ``runs`` bare Celery chains of ``steps`` links of the same no-op task
  (``chain(noop.si(), ...).delay()``): the worker publishes each next link when the previous one
  finishes, as mpstate does for its steps, so this is the fair baseline for the hooks;
- **hooks**: ``runs`` runs of ``steps`` no-op ``PipelineTask`` steps, each started with
  ``MpState.start_run``. Every step goes through step-started and step-completed (each a read and
  a versioned commit of the run), and all but the last enqueue the next step from the worker.

A round is a backlog drain, like the baseline in ``notes/celery-facts.md``: a gate task holds the
solo worker while the backlog is published (``.delay()`` for bare and chain, ``start_run`` for
hooks), then the gate is released and the clock runs until the last task's ``task_postrun`` (for
hooks the last run is then completed; every backlog checks that all its runs are). steps/s is the
drain rate of a kind's backlogs in a round taken together (a chain's step is one link); a ratio
is one kind over another in the same round, and the report gives medians over rounds.
"end to end" adds the publish phase (from the first publish to the last task's completion).

The worker runs in a thread so that the clock, the store's round-trip counter and the profiler
see it directly; the main thread only waits on an event while the worker drains, so it does not
compete for the GIL. Store round trips are counted on the store client's connections (one per
request written), split into the publisher's (``start_run``) and the worker's (the hooks). Redis
commands and their server time come from ``INFO commandstats`` over the whole backlog (publish
and drain), per kind, so the store's share is hooks minus chain (the broker's commands per step
are the same on both sides: one publish per step, by the worker for all but the first); hooks
minus bare is reported too.

The goals (the constants below, issue 17): hooks >= ``CHAIN_RATIO_GOAL`` x the bare chain, end
to end; the store's Redis CPU per step (hooks minus chain) <= ``STORE_SERVER_US_GOAL``; the
store's Redis commands per step (hooks minus chain) <= ``STORE_COMMANDS_GOAL``; and the store's
round trips per step, reported against their floor (``STORE_ROUND_TRIPS_FLOOR``). They are
printed as PASS/MISS and never fail the run: the machine is shared and noisy.

After the measured rounds, one more hooks round runs with timing wrappers around the hooks, the
store calls and the enqueue (instance and module attributes patched in this process only) and
prints where a step's time goes. ``--profile hooks|chain|bare`` instead runs cProfile inside the
worker thread for one round.

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
from celery import Celery, chain, signals
from celery.contrib.testing.worker import start_worker

import mpstate.celery.lifecycle as lifecycle_module
import mpstate.core as core_module
import mpstate.redis.backend as redis_backend_module
import mpstate.redis.claims as redis_claims_module
import mpstate.redis.selection as redis_selection_module
import mpstate.redis.writes as redis_writes_module
from benchmarks.harness import ServerSnapshot, count_round_trips, write_results
from benchmarks.store import machine_info
from benchmarks.tables import Goal, number, render, render_goals
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
#: The kinds measured in every round, in the first round's order (it rotates between rounds).
KINDS = ("bare", "chain", "hooks")

#: Goals (issue 17), reported as PASS/MISS. hooks over the bare Celery chain, end to end (from
#: the first publish to the last task's completion), median of the per-round ratios:
CHAIN_RATIO_GOAL = 0.8
#: The store's redis-server main-thread CPU per step (hooks minus chain), microseconds.
STORE_SERVER_US_GOAL = 250.0
#: The store's Redis commands per step (hooks minus chain), commands run inside scripts included.
STORE_COMMANDS_GOAL = 15.0
#: Informational: the store round trips per step cannot go below one to start a step and one to
#: complete it.
STORE_ROUND_TRIPS_FLOOR = 2.0
#: How long the gate task waits to be released, and the slowest drain rate waited for.
GATE_TIMEOUT_S = 120.0
MIN_DRAIN_RATE = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    mode: str
    rounds: int
    #: Alternations of the kinds' backlogs per round (each kind's round total is their sum).
    chunks: int
    #: Runs (or chains) per hooks (or chain) backlog; a bare backlog has ``runs * steps`` tasks.
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
        """Publish a backlog behind the gate, release it, and time the drain.

        ``runs * steps`` tasks run in every kind: bare publishes them all, chain publishes
        ``runs`` chains of ``steps`` links (the worker publishes the links after the first) and
        hooks starts ``runs`` runs of ``steps`` steps. The drain ends at the last of them.
        """
        self.chunk_index += 1
        tenant = f"bench-{self.chunk_index}"
        total = runs * steps
        drain = self.drain
        # bare tasks and a chain's links all run the no-op task: ``total`` of them either way.
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
        elif kind == "chain":
            for _ in range(runs):
                chain(*(self.noop.si() for _ in range(steps))).delay()
        elif kind == "bare":
            for _ in range(total):
                self.noop.delay()
        else:
            raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
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
        spans.patch(store._executor, "_once", "redis request (a script, command or pipeline)")
        spans.patch(store._backend, "_own_events", "validate events")
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


@dataclass(frozen=True, slots=True)
class KindTotals:
    """One kind's figures per step over all its rounds (unrounded, for the differences)."""

    steps: int
    commands: Counter[str]
    server_us: float

    @classmethod
    def of(cls, results: list[RoundResult]) -> KindTotals:
        steps = sum(r.steps for r in results)
        merged: Counter[str] = Counter()
        for result in results:
            merged.update(result.commands)
        return cls(
            steps,
            Counter({name: calls / steps for name, calls in merged.items()}),
            1e6 * sum(r.server_cpu_seconds for r in results) / steps,
        )

    @property
    def commands_per_step(self) -> float:
        return sum(self.commands.values())


def command_difference(minuend: KindTotals, subtrahend: KindTotals) -> dict[str, float]:
    """Commands per step that ``minuend`` runs beyond ``subtrahend``, by command (>= 0.02)."""
    names = sorted(set(minuend.commands) | set(subtrahend.commands))
    differences = {name: minuend.commands[name] - subtrahend.commands[name] for name in names}
    return {name: round(value, 2) for name, value in differences.items() if abs(value) >= 0.02}


def kind_label(kind: str, steps: int) -> str:
    return {
        "bare": "bare no-op task",
        "chain": f"Celery chain of {steps} no-op tasks",
        "hooks": f"PipelineTask no-op step ({steps}-step runs)",
    }[kind]


def summarize(
    rounds: list[dict[str, RoundResult]], config: Config
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A row per kind (medians over rounds, ratios to bare and to chain), and the commands."""
    results = {kind: [measured[kind] for measured in rounds] for kind in KINDS}
    totals = {kind: KindTotals.of(results[kind]) for kind in KINDS}

    def row(kind: str) -> dict[str, Any]:
        measured = results[kind]
        steps = totals[kind].steps
        rate = statistics.median(r.rate for r in measured)
        publish_trips = sum(r.publish_round_trips for r in measured) / steps
        worker_trips = sum(r.drain_round_trips for r in measured) / steps
        figures: dict[str, Any] = {
            "name": kind,
            "label": kind_label(kind, config.steps),
            "steps_per_s": round(rate, 1),
            "us_per_step": round(1e6 / rate, 0),
            "end_to_end_steps_per_s": round(
                statistics.median(r.end_to_end_rate for r in measured), 1
            ),
            "publish_per_s": round(
                statistics.median(r.steps / r.publish_seconds for r in measured), 1
            ),
            "store_round_trips_per_step": round(publish_trips + worker_trips, 2),
            "store_round_trips_per_step_publisher": round(publish_trips, 2),
            "store_round_trips_per_step_worker": round(worker_trips, 2),
            "redis_commands_per_step": round(totals[kind].commands_per_step, 2),
            "evalsha_per_step": round(totals[kind].commands.get("evalsha", 0.0), 2),
            "server_cpu_us_per_step": round(totals[kind].server_us, 1),
            "steps_measured": steps,
        }
        for base in ("chain", "bare"):
            pairs = list(zip(measured, results[base], strict=True))
            drain = [r.rate / b.rate for r, b in pairs]
            end_to_end = [r.end_to_end_rate / b.end_to_end_rate for r, b in pairs]
            figures[f"ratio_to_{base}"] = round(statistics.median(drain), 4)
            figures[f"end_to_end_ratio_to_{base}"] = round(statistics.median(end_to_end), 4)
            if base != kind:
                figures[f"ratio_to_{base}_per_round"] = [round(r, 4) for r in drain]
                figures[f"end_to_end_ratio_to_{base}_per_round"] = [round(r, 4) for r in end_to_end]
        # The store's share: what hooks cost beyond a chain (and beyond bare tasks); the
        # baselines run no store call.
        for suffix, base in (("", "chain"), ("_vs_bare", "bare")):
            commands = server_us = 0.0
            if kind == "hooks":
                commands = totals[kind].commands_per_step - totals[base].commands_per_step
                server_us = totals[kind].server_us - totals[base].server_us
            figures[f"store_redis_commands_per_step{suffix}"] = round(commands, 2)
            figures[f"store_server_cpu_us_per_step{suffix}"] = round(server_us, 1)
        figures["rounds"] = [r.as_json() for r in measured]
        return figures

    rows = [row(kind) for kind in KINDS]
    hooks = results["hooks"]
    evalsha_calls = sum(r.commands["evalsha"] for r in hooks)
    rows[-1]["evalsha_server_us_per_call"] = round(
        sum(r.command_usec["evalsha"] for r in hooks) / max(evalsha_calls, 1), 1
    )

    def per_task(kind: str) -> dict[str, float]:
        return {k: round(v, 2) for k, v in sorted(totals[kind].commands.items())}

    commands = {
        "broker_per_task": per_task("bare"),
        "chain_per_task": per_task("chain"),
        "store_per_step": command_difference(totals["hooks"], totals["chain"]),
        "store_per_step_vs_bare": command_difference(totals["hooks"], totals["bare"]),
        "note": "server commands per task over whole backlogs (publish + drain), from INFO "
        "commandstats, script-internal commands included; store_per_step = hooks minus chain "
        "(both publish each step after the first from the worker, so the broker's commands per "
        "step are the same on both sides); store_per_step_vs_bare = hooks minus bare tasks "
        "(all published by the benchmark's process)",
    }
    return rows, commands


def evaluate_goals(rows: list[dict[str, Any]]) -> list[Goal]:
    """The issue's goals against this run's rows."""
    by_name = {row["name"]: row for row in rows}
    hooks = by_name["hooks"]
    return [
        Goal(
            "hooks_to_chain_end_to_end",
            "hooks / bare Celery chain, end to end (median of rounds)",
            ">=",
            CHAIN_RATIO_GOAL,
            hooks["end_to_end_ratio_to_chain"],
            unit="x chain",
            note=f"drain {hooks['ratio_to_chain']:.3f} x chain; x bare:"
            f" e2e {hooks['end_to_end_ratio_to_bare']:.3f}, drain {hooks['ratio_to_bare']:.3f}",
        ),
        Goal(
            "store_server_cpu_us_per_step",
            "store's Redis CPU per step (hooks - chain)",
            "<=",
            STORE_SERVER_US_GOAL,
            hooks["store_server_cpu_us_per_step"],
            unit="us",
            digits=0,
            note=f"total {hooks['server_cpu_us_per_step']:,.0f} us/step (broker + store);"
            f" hooks - bare {hooks['store_server_cpu_us_per_step_vs_bare']:,.0f}",
        ),
        Goal(
            "store_redis_commands_per_step",
            "store's Redis commands per step (hooks - chain)",
            "<=",
            STORE_COMMANDS_GOAL,
            hooks["store_redis_commands_per_step"],
            digits=1,
            note=f"total {hooks['redis_commands_per_step']:.1f}/step;"
            f" hooks - bare {hooks['store_redis_commands_per_step_vs_bare']:.1f}",
        ),
        Goal(
            "store_round_trips_per_step",
            "store round trips per step (informational)",
            "floor",
            STORE_ROUND_TRIPS_FLOOR,
            hooks["store_round_trips_per_step"],
            digits=2,
            note=f"publisher {hooks['store_round_trips_per_step_publisher']:.2f}"
            f" + worker {hooks['store_round_trips_per_step_worker']:.2f}",
        ),
    ]


def render_table(rows: list[dict[str, Any]]) -> str:
    headers = (
        "kind", "steps/s", "us/step", "x chain", "x bare", "e2e/s", "e2e x chain", "e2e x bare",
        "store RTs/step", "(pub+worker)", "cmds/step", "store cmds", "(vs bare)", "EVALSHA",
        "srv us", "store srv us", "(vs bare)",
    )  # fmt: skip
    lines = []
    for row in rows:
        hooks = row["name"] == "hooks"
        lines.append(
            (
                row["label"],
                number(row["steps_per_s"]),
                number(row["us_per_step"]),
                f"{row['ratio_to_chain']:.3f}",
                f"{row['ratio_to_bare']:.3f}",
                number(row["end_to_end_steps_per_s"]),
                f"{row['end_to_end_ratio_to_chain']:.3f}",
                f"{row['end_to_end_ratio_to_bare']:.3f}",
                number(row["store_round_trips_per_step"], 2),
                f"{row['store_round_trips_per_step_publisher']:.2f}"
                f"+{row['store_round_trips_per_step_worker']:.2f}",
                number(row["redis_commands_per_step"], 1),
                number(row["store_redis_commands_per_step"], 1) if hooks else "",
                number(row["store_redis_commands_per_step_vs_bare"], 1) if hooks else "",
                number(row["evalsha_per_step"], 2),
                number(row["server_cpu_us_per_step"]),
                number(row["store_server_cpu_us_per_step"]) if hooks else "",
                number(row["store_server_cpu_us_per_step_vs_bare"]) if hooks else "",
            )
        )
    return render(headers, lines)


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


def round_line(
    index: int, rounds: int, order: Sequence[str], totals: dict[str, RoundResult]
) -> str:
    """A round's progress line: each kind's drain rate and the hooks' ratios."""
    hooks, chained, bare = totals["hooks"], totals["chain"], totals["bare"]
    rates = ", ".join(f"{kind} {totals[kind].rate:,.0f}" for kind in KINDS)
    end_to_end = hooks.end_to_end_rate / chained.end_to_end_rate
    return (
        f"round {index + 1}/{rounds} ({', '.join(order)}): {rates} steps/s; hooks x chain"
        f" {hooks.rate / chained.rate:.3f} (e2e {end_to_end:.3f}), x bare"
        f" {hooks.rate / bare.rate:.3f}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.celery_hooks", description=(__doc__ or "").split("\n")[0]
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


if __name__ == "__main__":
    sys.exit(main())
