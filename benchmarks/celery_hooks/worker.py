"""The app, its tasks and its solo worker thread, and one backlog published and drained."""

from __future__ import annotations

import cProfile
import gc
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery, chain, signals
from celery.contrib.testing.worker import start_worker

from benchmarks.celery_hooks.config import (
    FLOOR,
    FLOOR_WRITE,
    GATE,
    GATE_TIMEOUT_S,
    KINDS,
    MIN_DRAIN_RATE,
    NOOP,
    PIPELINE,
    STEP,
    STORE_PREFIX,
)
from benchmarks.celery_hooks.spans import Spans
from benchmarks.harness import ServerSnapshot, count_round_trips
from mpstate.celery import MpState, PipelineTask
from mpstate.models import PipelineRunStatus
from mpstate.redis import RedisPipelineStateStore
from mpstate.testing import RedisServer


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

        self.floor_steps = 0
        floor_write = self.store.client.register_script(FLOOR_WRITE)
        bench = self

        @app.task(name=FLOOR, bind=True, shared=False)
        def floor(self: Any, run_id: str, step_id: str) -> None:
            bench.floor_write(floor_write, run_id, step_id, "running")
            bench.floor_write(floor_write, run_id, step_id, "completed")
            following = int(step_id[1:]) + 1
            if following < bench.floor_steps:
                bench.floor_publish(run_id, following)

        self.floor_script = floor_write
        self.noop, self.step, self.gate = noop, step, gate
        self.mp = MpState(app, self.store)
        signals.task_prerun.connect(drain.on_prerun, weak=False)
        signals.task_postrun.connect(drain.on_postrun, weak=False)
        self.chunk_index = 0
        self.publisher_spans = Spans()
        self.worker_spans = Spans()

    def floor_write(self, script: Any, run_id: str, step_id: str, status: str) -> None:
        """One round trip of the floor: the least durable write a step's start or completion
        needs (its state, and an event)."""
        key = f"{STORE_PREFIX}:floor:{{{run_id}}}"
        event = f'{{"runId":"{run_id}","stepId":"{step_id}","kind":"step-{status}"}}'
        script(keys=[key, f"{key}:events"], args=[step_id, status, event])

    def floor_publish(self, run_id: str, index: int) -> None:
        """Publish a floor step with a message like the hooks' (kwargs and headers naming the
        run and step, an explicit task id, publish retries), under names mpstate ignores."""
        step_id = f"s{index}"
        self.app.send_task(
            FLOOR,
            kwargs={"run_id": run_id, "step_id": step_id},
            headers={
                "floor_run_id": run_id,
                "floor_step_id": step_id,
                "floor_role": "step",
                "floor_attempt_base": 0,
                "floor_run_version": index + 1,
            },
            task_id=uuid.uuid4().hex,
            retry=True,
            retry_policy=self.mp.publish_retry_policy,
        )

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
        drain.arm({"hooks": STEP, "floor": FLOOR}.get(kind, NOOP), total)
        self.floor_steps = steps
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
        elif kind == "floor":
            for _ in range(runs):
                run_id = uuid.uuid4().hex
                self.floor_write(self.floor_script, run_id, "s0", "pending")
                self.floor_publish(run_id, 0)
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
