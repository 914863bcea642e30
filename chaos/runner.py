"""One chaos run, start to finish: deploy, load, shake, wait, check, report."""

from __future__ import annotations

import json
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from celery_app.application import create_app, store_for
from celery_app.settings import Settings
from chaos.checks import check_runs
from chaos.config import ChaosConfig
from chaos.deployment import Deployment
from chaos.load import Load, PlannedRun, plan
from chaos.probes import Canaries, ProbeResult, job_of, receiver_probes, store_probes
from chaos.report import Summary
from chaos.suspensions import Operator, plan_suspensions
from mpstate import PipelineRun, PipelineRunStatus
from mpstate.celery import MpState
from mpstate.store import PipelineStateStore
from mpstate.webhooks import signed_headers

__all__ = ["run_chaos"]

log = logging.getLogger("chaos")

#: Seconds given to accepted-but-absorbed callbacks to be processed before runs are compared.
SETTLE_S = 3.0
#: Completed runs whose callback is delivered once more, validly signed.
REPLAYS = 5
#: Seconds a canary may take to complete once its valid callback is accepted.
CANARY_TIMEOUT_S = 30.0


def run_chaos(
    config: ChaosConfig,
    *,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Summary:
    """Run the chaos suite once; the summary says whether every guarantee held."""
    began = time.monotonic()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="mpstate-chaos-"))
    summary = Summary(config=config.model_dump())
    deployment = Deployment(config, workdir)
    try:
        deployment.start()
        progress(f"deployment up in {time.monotonic() - began:.1f} s (logs in {workdir})")
        _shake(config, deployment, summary, progress)
    finally:
        deployment.stop()
    summary.child_kills = deployment.child_kills
    summary.worker_kills = deployment.worker_kills
    summary.redis_restarts = deployment.redis_restarts
    summary.elapsed_s = round(time.monotonic() - began, 1)
    return summary


def _shake(
    config: ChaosConfig, deployment: Deployment, summary: Summary, progress: Callable[[str], None]
) -> None:
    rng = random.Random(config.seed)
    settings = deployment.settings
    store = store_for(settings)
    app = create_app(settings, store)
    mp = MpState.of(app)
    canaries = Canaries(store).create()
    planned = plan(config, rng)
    # Its own generator: the kills and restarts keep the schedule a seed gave them before.
    plan_suspensions(config, planned, random.Random(config.seed + 1))
    load = Load(config, mp, planned)
    operator = Operator(mp, planned)
    stop = threading.Event()
    background = [
        threading.Thread(target=load.reconcile_until_stopped, name="reconciler"),
        threading.Thread(target=operator.answer_until_stopped, name="operator"),
        threading.Thread(target=_sample, args=(load, stop), name="sampler"),
        threading.Thread(
            target=_kill_workers, args=(config, deployment, rng, stop, progress), name="killer"
        ),
    ]
    for thread in background:
        thread.daemon = True
        thread.start()
    restarter = _schedule_redis_restart(config, deployment, progress)
    probes: list[ProbeResult] = []
    prober = threading.Timer(config.launch_s / 2, _probe, args=(settings, canaries, probes))
    prober.start()
    load.start_all()
    progress(f"{len(planned)} runs started")
    prober.join()
    live = load.wait_until_terminal(config.run_bound_s)
    progress(f"waited for runs: {len(live)} still live")
    stop.set()
    load.stop()
    operator.stop()
    if restarter is not None:
        restarter.join()
    for thread in background:
        thread.join(timeout=30)

    _judge(
        config, deployment=deployment, summary=summary, load=load, canaries=canaries, probes=probes
    )
    mp.close()  # its signal receivers are process-wide: leave none behind
    app.close()


def _judge(
    config: ChaosConfig,
    *,
    deployment: Deployment,
    summary: Summary,
    load: Load,
    canaries: Canaries,
    probes: list[ProbeResult],
) -> None:
    """Check every run, the canaries and the probes; fill in the summary."""
    settings, store, planned = deployment.settings, canaries.store, load.runs
    verdicts = check_runs(store, planned, bound_s=config.run_bound_s)
    summary.runs = len(planned)
    summary.max_in_flight = load.max_in_flight
    summary.statuses = dict(verdicts.statuses)
    summary.failure_codes = dict(verdicts.failure_codes)
    summary.cancels_too_late = sum(p.cancel_too_late for p in planned)
    summary.reconciler = dict(load.reconciled)
    summary.worker_lost_steps = verdicts.reconciler_requeues
    summary.retried_steps = verdicts.retried_steps
    summary.cache_hits = verdicts.cache_hits
    summary.parallel_runs = verdicts.parallel_runs
    summary.polled_results = verdicts.polled_results
    summary.suspensions = dict(verdicts.suspensions)
    summary.total_cost_usd = verdicts.total_cost_usd
    summary.violations = [str(v) for v in verdicts.violations]
    summary.violating_runs = _as_stored(store, {v.run_id for v in verdicts.violations})

    replayed = _replay_finished(settings, store, planned)
    time.sleep(SETTLE_S)
    replays = [
        ProbeResult(
            "receiver",
            f"replayed within the window, run {run.run_id}",
            "202, run unchanged",
            f"{status}, run {'unchanged' if _unchanged(store, run) else 'changed'}",
        )
        for run, status in replayed
    ]
    probes.extend(replays)
    summary.canaries_unchanged = not canaries.changed()
    if not summary.canaries_unchanged:
        summary.violations.append(f"probes changed canaries {canaries.changed()}")
    summary.canaries_completed = _complete_canaries(settings, store, canaries)
    if not summary.canaries_completed:
        summary.violations.append("a canary did not complete on a valid callback")
    summary.receiver_probes = sum(p.target == "receiver" for p in probes)
    summary.store_probes = sum(p.target == "store" for p in probes)
    summary.bad_inputs_refused = sum(p.refused for p in probes)
    summary.violations.extend(
        f"probe {p.target} {p.name!r}: expected {p.expected}, got {p.actual}"
        for p in probes
        if not p.refused
    )
    summary.provider = {k: v for k, v in deployment.provider_stats().items() if isinstance(v, int)}
    delivered = summary.provider.get("callbacks_sent", 0) + len(replays)
    summary.callbacks_applied = verdicts.callbacks_applied
    summary.duplicate_callbacks_absorbed = delivered - verdicts.callbacks_applied
    if summary.provider.get("delivery_errors", 0):
        summary.violations.append(
            f"{summary.provider['delivery_errors']} provider callbacks were never accepted"
        )


def _as_stored(store: PipelineStateStore, run_ids: set[str]) -> dict[str, Any]:
    """The runs named by violations as the store holds them, events included (a violation for
    a run never started names its plan, ``#<index>``, and has none)."""
    found = {}
    for run_id in sorted(run_ids):
        run = None if run_id.startswith("#") else store.get(run_id)
        if run is not None:
            found[run_id] = run.to_json_dict()
    return found


def _sample(load: Load, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        load.sample_in_flight()


def _kill_workers(
    config: ChaosConfig,
    deployment: Deployment,
    rng: random.Random,
    stop: threading.Event,
    progress: Callable[[str], None],
) -> None:
    if not config.kill_every_s:
        return
    kills = 0
    while not stop.wait(config.kill_every_s * rng.uniform(0.5, 1.5)):
        if config.max_kills is not None and kills >= config.max_kills:
            return
        progress(f"SIGKILL {deployment.kill_something(rng)}")
        kills += 1


def _schedule_redis_restart(
    config: ChaosConfig, deployment: Deployment, progress: Callable[[str], None]
) -> threading.Timer | None:
    if config.redis_restart_after_s is None:
        return None

    def restart() -> None:
        progress("SIGKILL redis-server; restarting from its AOF")
        deployment.restart_redis()
        progress("redis-server back")

    timer = threading.Timer(config.redis_restart_after_s, restart)
    timer.daemon = True
    timer.start()
    return timer


def _probe(settings: Settings, canaries: Canaries, into: list[ProbeResult]) -> None:
    secret = settings.secret_for("video")
    for run_id in canaries.run_ids:
        job_id = job_of(canaries.store.require(run_id))
        into.extend(receiver_probes(settings.receiver_url, secret, job_id))
        into.extend(store_probes(canaries.store, run_id))


def _callback(settings: Settings, job_id: str) -> int:
    """Deliver one valid, signed success callback for ``job_id``; the receiver's status."""
    body = json.dumps(
        {"jobId": job_id, "status": "succeeded", "artifactIds": [job_id], "costUsd": 0.5}
    ).encode()
    headers = {"Content-Type": "application/json"}
    headers |= signed_headers(settings.secret_for("video"), body)
    url = f"{settings.receiver_url}/webhooks/video"
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def _replay_finished(
    settings: Settings, store: PipelineStateStore, planned: list[PlannedRun]
) -> list[tuple[PipelineRun, int]]:
    """Deliver a completed run's callback again, validly signed (a replay inside the window)."""
    replayed = []
    for planned_run in planned:
        run_id = planned_run.run_id
        run = store.get(run_id, include_events=False) if run_id else None
        if run is None or run.status is not PipelineRunStatus.COMPLETED:
            continue
        job_id = run.external_job_ids.get("video")
        if job_id is not None:
            replayed.append((run, _callback(settings, job_id)))
        if len(replayed) == REPLAYS:
            break
    return replayed


def _unchanged(store: PipelineStateStore, run: PipelineRun) -> bool:
    now = store.require(run.run_id, include_events=False)
    return (now.version, now.updated_at) == (run.version, run.updated_at)


def _complete_canaries(settings: Settings, store: PipelineStateStore, canaries: Canaries) -> bool:
    """One valid callback per canary: each must complete (the receiver path still works)."""
    for run_id in canaries.run_ids:
        if _callback(settings, job_of(store.require(run_id))) != 202:
            return False
    deadline = time.monotonic() + CANARY_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = [store.require(run_id, include_events=False) for run_id in canaries.run_ids]
        if all(run.status is PipelineRunStatus.COMPLETED for run in runs):
            return True
        time.sleep(0.2)
    return False
