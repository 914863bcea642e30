"""Loading runs through the public API from loader processes, and the two deployments
(one Redis, a 3-master cluster) they are loaded into."""

from __future__ import annotations

import resource
import time
import uuid
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.crc import key_slot

import mpstate.redis.keys
from benchmarks.scale.config import Config, log, tenant_name
from benchmarks.workload import run_document
from mpstate.models import PipelineRunStatus
from mpstate.redis import RedisPipelineStateStore
from mpstate.redis.keys import RedisKeys


@dataclass(frozen=True, slots=True)
class LoadJob:
    """One loader process's share: runs ``first + worker``, ``+ workers``, ... below ``end``."""

    url: str
    worker: int
    workers: int
    first: int
    end: int
    tenant: str | None
    tenants: int
    idempotent_every: int
    completed_every: int
    sample_every: int
    #: Writes per run: 1 create, 2 and a start (a status change), 3 and an advance (5 events).
    writes: int = 3
    #: ``mpstate.redis.keys.GLOBAL_SHARDS`` in this loader (None: the shipped one).
    index_shards: int | None = None


_progress: Any = None


def _init_loader(progress: Any) -> None:
    global _progress  # noqa: PLW0603 - the shared counter array of this loader process
    _progress = progress


def _run_events(run_id: str, index: int, completes: bool) -> tuple[list[Any], dict[str, Any]]:
    """The second commit's events and patch (the first is always the same)."""
    if completes:
        return (
            [
                {"kind": "step-completed", "runId": run_id, "stepId": "caption",
                 "artifactIds": [f"art-{index}-c"], "costUsd": 0.004},
                {"kind": "run-completed", "runId": run_id, "totalCostUsd": 0.011},
            ],
            {"status": "completed", "currentStepIndex": 2, "costUsd": 0.011,
             "completedAt": datetime.now(UTC).isoformat()},
        )  # fmt: skip
    return (
        [
            {"kind": "step-progress", "runId": run_id, "stepId": "probe", "pct": 100.0,
             "etaMs": 0, "message": "probed"},
            {"kind": "step-completed", "runId": run_id, "stepId": "probe",
             "artifactIds": [f"art-{index}-p"], "costUsd": 0.002},
        ],
        {"currentStepIndex": 1, "costUsd": 0.002},
    )  # fmt: skip


def load_runs(job: LoadJob) -> dict[str, Any]:
    """Create this loader's runs through the public API (runs in a loader process)."""
    if job.index_shards is not None:  # before any store (and its RedisKeys) is built
        mpstate.redis.keys.GLOBAL_SHARDS = job.index_shards
    store = RedisPipelineStateStore.from_url(job.url)
    spent = {"create": 0.0, "start": 0.0, "advance": 0.0}
    errors: Counter[str] = Counter()
    first_errors: list[str] = []
    samples: list[tuple[str, str, str | None]] = []
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    done = 0
    indices = range(job.first + job.worker, job.end, job.workers)
    for position, index in enumerate(indices):
        run_id = str(uuid.uuid4())
        tenant = job.tenant or tenant_name(index % job.tenants)
        document = run_document(run_id, tenant)
        key = None
        if job.idempotent_every and index % job.idempotent_every == 0:
            key = f"{tenant}-order-{index:08d}"
            document["idempotencyKey"] = key
        completes = bool(job.completed_every) and index % job.completed_every == 1
        events, patch = _run_events(run_id, index, completes)
        try:
            t0 = time.perf_counter()
            store.create(document)
            t1 = time.perf_counter()
            if job.writes >= 2:
                store.commit(
                    run_id,
                    {"status": "running", "startedAt": datetime.now(UTC).isoformat()},
                    [
                        {"kind": "run-started", "runId": run_id},
                        {"kind": "step-started", "runId": run_id, "stepId": "probe", "attempt": 1},
                    ],
                    expected_version=1,
                )
            t2 = time.perf_counter()
            if job.writes >= 3:
                store.commit(run_id, patch, events, expected_version=2)
            t3 = time.perf_counter()
        except Exception as exc:
            errors[type(exc).__name__] += 1
            if len(first_errors) < 3:
                first_errors.append(f"{type(exc).__name__}: {exc}")
            if sum(errors.values()) > max(20, len(indices) // 100):
                break
            continue
        spent["create"] += t1 - t0
        spent["start"] += t2 - t1
        spent["advance"] += t3 - t2
        done += 1
        if position % job.sample_every == 0:
            samples.append((run_id, tenant, key))
        if position % 50 == 0 and _progress is not None:
            _progress[job.worker] = done
    if _progress is not None:
        _progress[job.worker] = done
    usage = resource.getrusage(resource.RUSAGE_SELF)
    store.close()
    return {
        "done": done,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": (usage.ru_utime - usage_before.ru_utime)
        + (usage.ru_stime - usage_before.ru_stime),
        "spent": spent,
        "errors": dict(errors),
        "first_errors": first_errors,
        "samples": samples,
        "idempotent": sum(
            1 for index in indices if job.idempotent_every and index % job.idempotent_every == 0
        ),
        "completed": sum(
            1 for index in indices if job.completed_every and index % job.completed_every == 1
        ),
    }


# -- the two deployments ----------------------------------------------------------------------


class Target:
    """One deployment under test: its store URL and a plain admin client per master."""

    def __init__(self, name: str, url: str, ports: list[int], binary: str) -> None:
        self.name = name
        self.url = url
        self.binary = binary
        self.cluster = url.startswith("redis+cluster://")
        self.admins = {
            port: redis.Redis(
                host="127.0.0.1", port=port, socket_timeout=120, client_name="mpstate-bench-admin"
            )
            for port in ports
        }
        self._slot_owner: list[int] = []
        # Filled in as the benchmark goes.
        self.loaded: dict[str, Any] = {}
        self.samples: list[tuple[str, str, str | None]] = []
        self.idempotent_runs = 0
        self.completed_runs = 0

    @property
    def plain_url(self) -> str:
        return self.url.replace("redis+cluster://", "redis://")

    def admin_for(self, key: str) -> redis.Redis:
        """The admin client of the master that holds ``key``."""
        if not self.cluster:
            return next(iter(self.admins.values()))
        if not self._slot_owner:
            owner = [0] * 16384
            first_admin = next(iter(self.admins.values()))
            for first, last, primary, *_ in first_admin.execute_command("CLUSTER SLOTS"):
                for slot in range(first, last + 1):
                    owner[slot] = int(primary[1])
            self._slot_owner = owner
        return self.admins[self._slot_owner[key_slot(key.encode())]]

    def info_sum(self, section: str, *names: str) -> dict[str, float]:
        totals = dict.fromkeys(names, 0.0)
        for admin in self.admins.values():
            info = admin.info(section)
            for name in names:
                totals[name] += float(info.get(name, 0))
        return totals

    def used_memory(self) -> int:
        return int(self.info_sum("memory", "used_memory")["used_memory"])

    def command_calls(self) -> Counter[str]:
        """Calls per command so far (commands run inside scripts included), over all masters."""
        calls: Counter[str] = Counter()
        for admin in self.admins.values():
            for name, entry in admin.info("commandstats").items():
                calls[name.removeprefix("cmdstat_")] += int(entry["calls"])
        return calls

    def server_cpu(self) -> float:
        cpu = self.info_sum("cpu", "used_cpu_user", "used_cpu_sys")
        return cpu["used_cpu_user"] + cpu["used_cpu_sys"]

    def server_cpu_by_primary(self) -> dict[int, float]:
        """Each primary's CPU seconds so far: its main thread's where INFO reports it (Redis
        6.2+: the commands and scripts, without I/O threads and background saves), else the
        process's."""
        cpu: dict[int, float] = {}
        for port, admin in self.admins.items():
            info = admin.info("cpu")
            if "used_cpu_sys_main_thread" in info:
                cpu[port] = info["used_cpu_sys_main_thread"] + info["used_cpu_user_main_thread"]
            else:
                cpu[port] = info["used_cpu_sys"] + info["used_cpu_user"]
        return cpu

    def dbsize(self) -> int:
        return sum(int(admin.dbsize()) for admin in self.admins.values())

    def sync_store(self) -> RedisPipelineStateStore:
        return RedisPipelineStateStore.from_url(self.url)

    def close(self) -> None:
        for admin in self.admins.values():
            admin.close()


def run_load(
    target: Target,
    config: Config,
    *,
    count: int,
    first: int,
    tenant: str | None,
    loaders: int,
    pool_context: Any,
    writes: int = 3,
    index_shards: int | None = None,
) -> dict[str, Any]:
    """Load ``count`` runs into ``target`` from ``loaders`` processes; return the figures
    (``writes`` and ``index_shards``: ``LoadJob``'s)."""
    progress = pool_context.Array("q", loaders, lock=False)
    per_loader_samples = max(1, config.memory_samples // loaders)
    sample_every = max(1, count // loaders // per_loader_samples)
    jobs = [
        LoadJob(
            target.url, worker, loaders, first, first + count, tenant, config.tenants,
            config.idempotent_every, config.completed_every, sample_every, writes, index_shards,
        )
        for worker in range(loaders)
    ]  # fmt: skip
    cpu_before = target.server_cpu()
    cpu_by_primary_before = target.server_cpu_by_primary()
    calls_before = target.command_calls()
    started = time.perf_counter()
    last_report = started
    with ProcessPoolExecutor(
        max_workers=loaders,
        mp_context=pool_context,
        initializer=_init_loader,
        initargs=(progress,),
    ) as pool:
        futures = [pool.submit(load_runs, job) for job in jobs]
        pending: set[Future[dict[str, Any]]] = set(futures)
        while pending:
            _, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            now = time.perf_counter()
            if pending and now - last_report >= config.progress_seconds:
                last_report = now
                loaded = sum(progress)
                log(
                    f"  {target.name}: {loaded:,} / {count:,} runs"
                    f" ({loaded / (now - started):,.0f}/s), used_memory"
                    f" {target.used_memory() / 2**20:,.0f} MB"
                )
        results = [future.result() for future in futures]
    wall = time.perf_counter() - started
    server_cpu = target.server_cpu() - cpu_before
    cpu_by_primary = {
        port: seconds - cpu_by_primary_before[port]
        for port, seconds in target.server_cpu_by_primary().items()
    }
    calls = target.command_calls()
    calls.subtract(calls_before)
    done = sum(result["done"] for result in results)
    errors: Counter[str] = Counter()
    for result in results:
        errors.update(result["errors"])
    first_errors = [message for result in results for message in result["first_errors"]][:5]
    for result in results:
        target.samples.extend(tuple(sample) for sample in result["samples"])
    target.idempotent_runs += sum(result["idempotent"] for result in results)
    target.completed_runs += sum(result["completed"] for result in results)
    per_run = 1000 / max(done, 1)
    return {
        "runs": done,
        "loaders": loaders,
        "wall_seconds": round(wall, 2),
        "runs_per_s": round(done / wall, 1),
        "client_cpu_ms_per_run": round(sum(r["cpu_seconds"] for r in results) * per_run, 3),
        "server_cpu_ms_per_run": round(server_cpu * per_run, 3),
        "main_thread_cpu_seconds_by_primary": {
            str(port): round(seconds, 3) for port, seconds in cpu_by_primary.items()
        },
        "ms_per_call": {
            name: round(sum(r["spent"][name] for r in results) * per_run, 3)
            for name in ("create", "start", "advance")
        },
        "errors": dict(errors),
        "first_errors": first_errors,
        "commands_per_run": {
            name: round(count / max(done, 1), 2)
            for name, count in calls.most_common()
            if count >= 0.05 * done and name not in ("info", "ping")
        },
    }


def verify_load(
    target: Target, keys: RedisKeys, config: Config, runs_total: int
) -> tuple[dict[str, Any], list[str]]:
    """Check the load through the indexes and the public API: counts by status, one run."""
    problems: list[str] = []
    shards = keys.global_groups()
    by_status = {
        status.value: sum(
            int(target.admin_for(key).zcard(key)) for key in (g.status(status) for g in shards)
        )
        for status in PipelineRunStatus
    }
    indexed = sum(int(target.admin_for(g.everything).zcard(g.everything)) for g in shards)
    tenant_key = keys.tenant_group(tenant_name(0)).everything
    tenant_indexed = int(target.admin_for(tenant_key).zcard(tenant_key))
    expected_tenant = len(range(0, config.runs, config.tenants))
    if indexed != runs_total:
        problems.append(
            f"{target.name}: the global index holds {indexed:,} runs, not {runs_total:,}"
        )
    if sum(by_status.values()) != indexed:
        problems.append(
            f"{target.name}: the status indexes hold {sum(by_status.values()):,} runs, the global"
            f" index {indexed:,}: {by_status}"
        )
    if tenant_indexed != expected_tenant:
        problems.append(
            f"{target.name}: {tenant_name(0)} has {tenant_indexed:,} indexed runs, not"
            f" {expected_tenant:,}"
        )
    store = target.sync_store()
    try:
        run_id, tenant, _ = target.samples[-1]
        run = store.get(run_id)
        if run is None:
            problems.append(f"{target.name}: sampled run {run_id} is missing")
        elif run.tenant_id != tenant or len(run.events) != 5 or run.version != 3:
            problems.append(
                f"{target.name}: run {run_id} reads back as tenant {run.tenant_id}, version"
                f" {run.version}, {len(run.events)} events (expected {tenant}, 3, 5)"
            )
    finally:
        store.close()
    return {"indexed": indexed, "by_status": by_status, tenant_name(0): tenant_indexed}, problems
