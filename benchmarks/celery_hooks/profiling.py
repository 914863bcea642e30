"""Where the time goes: one hooks backlog under timing wrappers, or one round under cProfile."""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Callable
from typing import Any

import mpstate.celery.lifecycle as lifecycle_module
import mpstate.core as core_module
import mpstate.redis.backend as redis_backend_module
import mpstate.redis.claims as redis_claims_module
import mpstate.redis.selection as redis_selection_module
import mpstate.redis.writes as redis_writes_module
from benchmarks.celery_hooks.config import Config
from benchmarks.celery_hooks.spans import Spans
from benchmarks.celery_hooks.summary import render_tree
from benchmarks.celery_hooks.worker import Bench


def instrument(bench: Bench, spans: Spans) -> None:
    """Timing wrappers on the hooks, the store calls, the codec and the enqueue."""
    mp, store = bench.mp, bench.store
    spans.patch(mp, "start_run", "start_run")
    spans.patch(mp.lifecycle, "start_step", "lifecycle.start_step (step-started)")
    spans.patch(mp.lifecycle, "complete_step", "lifecycle.complete_step (step-completed)")
    spans.patch(mp.lifecycle, "apply", "lifecycle.apply")
    spans.patch(mp.lifecycle, "enqueue", "enqueue next step")
    spans.patch(bench.app, "send_task", "app.send_task (publish)")
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


def breakdown(bench: Bench, config: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """One hooks backlog with timing wrappers: where a step's (and a start_run's) time goes.

    A bare backlog of the same size right before and right after it gives the comparison point
    for Celery's own work (the machine's speed drifts between rounds).
    """
    spans = Spans()
    runs = config.breakdown_runs
    before = bench.run_chunk("bare", runs, config.steps)
    instrument(bench, spans)
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
