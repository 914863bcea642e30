"""Benchmark at scale: a million runs on one Redis and on a 3-master Redis Cluster.

Run ``make bench-scale`` (or ``python -m benchmarks.scale [--quick] [--runs N]``). It starts a
private redis-server and a private 3-master cluster on free loopback ports
(``mpstate.testing``; never the machine's own Redis), with no snapshots, no AOF and no
``maxmemory``, and then, on each:

1. loads the runs through the public API from several loader processes, each with its own store:
   ``runs`` runs over 100 tenants (plus a 1,000-run tenant), each created with three steps (every
   tenth with an idempotency key), started by a versioned commit (status running, run-started and
   step-started) and advanced by a second one (a quarter complete: step-completed and
   run-completed; the rest log step-progress and step-completed): 5 events per run;
2. measures memory: ``used_memory`` before and after (summed over the masters), and directly,
   with ``MEMORY USAGE``, a sample of run hashes and event streams, every index key, a sample of
   idempotency keys and of the write-dedupe ("op") keys that expire 10 minutes after each write;
3. measures throughput of create, a versioned commit with a status change and one without, with
   1, 8 and 32 concurrent clients: threads sharing one sync store, and asyncio tasks sharing one
   async store, in one client process. Each is a ratio to a raw round trip (EVALSHA of ``return
   1``) measured with the same clients and concurrency right before and after it, and single and
   cluster alternate within each round, so the cluster/single ratio compares like with like;
4. measures ``list_runs`` page latency (50 runs, first page and a deep offset) on the 1,000-run
   tenant, a ``runs / 100`` tenant and the global index of every run, in random order.

Both deployments stay up to the end (the throughput rounds alternate them), so the machine needs
about 9 KB of RAM per run for each: some 19 GB for the default million. Ratios are medians over
rounds. Targets are reported as PASS/MISS and never fail the run: the
machine is shared and noisy. Results go to ``benchmarks/results/scale.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.cluster import RedisCluster
from redis.crc import key_slot

from benchmarks.harness import percentile, write_results
from benchmarks.store import machine_info
from benchmarks.workload import run_document
from mpstate.aio import AsyncRedisPipelineStateStore
from mpstate.models import PipelineRun
from mpstate.redis import RedisPipelineStateStore
from mpstate.redis.keys import RedisKeys
from mpstate.testing import LocalRedisCluster, RedisServer

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
PREFIX = "mp"
SMALL_TENANT = "tenant-1k"
BENCH_TENANT = "tenant-bench"
PAGE_SIZE = 50
#: A page of an index of a million runs may take at most this many times a 1,000-run page.
PAGE_FLAT_TARGET = 1.5
#: Runs each update worker cycles over (so a commit is not always to the same run).
RUNS_PER_UPDATER = 8
#: How long the store keeps a write's outcome for retries (``_OPERATION_TTL_MS``), in seconds.
OP_KEY_TTL_SECONDS = 600
#: ``stream-node-max-bytes`` tried on a copy of a run's stream (the default is 4096).
STREAM_NODE_PROBE_BYTES = 1024
OPS = ("create", "commit_status", "commit")
OP_LABELS = {
    "create": "create",
    "commit_status": "commit, versioned, status change + 1 event",
    "commit": "commit, versioned, no status change, 1 event",
    "baseline": "raw round trip (EVALSHA 'return 1')",
}
APIS = ("threads", "asyncio")


@dataclass(frozen=True, slots=True)
class Config:
    mode: str
    runs: int
    tenants: int
    small_tenant_runs: int
    loaders: int
    idempotent_every: int
    completed_every: int
    rounds: int
    baseline_seconds: float
    op_seconds: float
    concurrency: tuple[int, ...]
    list_samples: int
    memory_samples: int
    progress_seconds: float

    @classmethod
    def for_mode(cls, quick: bool) -> Config:
        if quick:
            return cls(
                "quick", 20_000, 100, 1_000, 4, 10, 4, 2, 0.25, 0.4, (1, 8, 32), 40, 300, 5.0
            )
        return cls(
            "full", 1_000_000, 100, 1_000, 4, 10, 4, 5, 0.5, 1.0, (1, 8, 32), 300, 2_000, 30.0
        )


def tenant_name(index: int) -> str:
    return f"tenant-{index:03d}"


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


# -- loading ----------------------------------------------------------------------------------


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
) -> dict[str, Any]:
    """Load ``count`` runs into ``target`` from ``loaders`` processes; return the figures."""
    progress = pool_context.Array("q", loaders, lock=False)
    per_loader_samples = max(1, config.memory_samples // loaders)
    sample_every = max(1, count // loaders // per_loader_samples)
    jobs = [
        LoadJob(
            target.url, worker, loaders, first, first + count, tenant, config.tenants,
            config.idempotent_every, config.completed_every, sample_every,
        )
        for worker in range(loaders)
    ]  # fmt: skip
    cpu_before = target.server_cpu()
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
    group = keys.global_group()
    by_status = {
        key.rsplit(":", 1)[1]: int(target.admin_for(key).zcard(key)) for key in group.statuses()
    }
    indexed = int(target.admin_for(group.everything).zcard(group.everything))
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


# -- memory -----------------------------------------------------------------------------------

#: Stored values that only repeat a field's default (null, empty, zero, false).
_DEFAULTISH = {b"null", b"[]", b"{}", b"0", b"0.0", b"false", b'""'}


def memory_profile(
    target: Target, keys: RedisKeys, config: Config, runs_total: int, memory_before: int
) -> dict[str, Any]:
    """Where the memory of the loaded runs goes, per run, measured with MEMORY USAGE."""
    used = target.used_memory()
    per_master = {
        port: int(admin.info("memory")["used_memory"]) for port, admin in target.admins.items()
    }
    rss = int(target.info_sum("memory", "used_memory_rss")["used_memory_rss"])
    delta = used - memory_before
    dbsize = target.dbsize()

    hash_bytes: list[int] = []
    json_bytes: list[int] = []
    bookkeeping_bytes: list[int] = []
    field_counts: list[int] = []
    default_fields: list[int] = []
    default_bytes: list[int] = []
    stream_bytes: list[int] = []
    stream_events: list[int] = []
    event_json: list[int] = []
    encodings: Counter[str] = Counter()
    samples = target.samples[: config.memory_samples]
    for run_id, _tenant, _key in samples:
        run_key, events_key = keys.run(run_id), keys.events(run_id)
        admin = target.admin_for(run_key)
        with admin.pipeline(transaction=False) as pipe:
            pipe.memory_usage(run_key, samples=0)
            pipe.hgetall(run_key)
            pipe.object("encoding", run_key)
            pipe.memory_usage(events_key, samples=0)
            pipe.xrange(events_key)
            pipe.object("encoding", events_key)
            usage, fields, encoding, events_usage, entries, events_encoding = pipe.execute()
        hash_bytes.append(int(usage))
        document = {name: value for name, value in fields.items() if not name.startswith(b"_")}
        json_bytes.append(sum(len(name) + len(value) for name, value in document.items()))
        bookkeeping_bytes.append(
            sum(len(name) + len(value) for name, value in fields.items() if name.startswith(b"_"))
        )
        field_counts.append(len(fields))
        defaults = [(name, value) for name, value in document.items() if value in _DEFAULTISH]
        default_fields.append(len(defaults))
        default_bytes.append(sum(len(name) + len(value) for name, value in defaults))
        stream_bytes.append(int(events_usage))
        stream_events.append(len(entries))
        event_json.extend(len(entry[1][b"e"]) for entry in entries)
        encodings[f"hash {_text(encoding)}"] += 1
        encodings[f"stream {_text(events_encoding)}"] += 1

    index_usage: dict[str, int] = {}
    groups = [keys.global_group()] + [
        keys.tenant_group(tenant)
        for tenant in [*(tenant_name(i) for i in range(config.tenants)), SMALL_TENANT]
    ]
    for group in groups:
        for key in (group.everything, *group.statuses(), group.entries):
            usage = target.admin_for(key).memory_usage(key, samples=0)
            if usage is not None:
                index_usage[key] = int(usage)
    zset_total = sum(v for k, v in index_usage.items() if not k.endswith(":entries"))
    entries_total = sum(v for k, v in index_usage.items() if k.endswith(":entries"))
    global_total = sum(v for k, v in index_usage.items() if "{all}" in k)

    idem_bytes: list[int] = []
    for _run_id, tenant, key in samples:
        if key is None:
            continue
        group = keys.idempotency_group(key)
        total = 0
        for name in (keys.idempotency(tenant, key), group.everything, group.entries):
            total += int(target.admin_for(name).memory_usage(name, samples=0) or 0)
        idem_bytes.append(total)
    idem_each = statistics.mean(idem_bytes) if idem_bytes else 0.0

    op_bytes: list[int] = []
    census: Counter[str] = Counter()
    op_samples = max(1, 200 // len(target.admins))
    for admin in target.admins.values():
        found: list[bytes] = []
        cursor = 0
        while len(found) < op_samples:
            cursor, batch = admin.scan(cursor, match=f"{PREFIX}:run:*:op:*", count=2000)
            found.extend(batch)
            if cursor == 0:
                break
        for name in found[:op_samples]:
            usage = admin.memory_usage(name, samples=0)
            if usage is not None:
                op_bytes.append(int(usage))
        for _ in range(300):
            name = admin.randomkey()
            if name is not None:
                census[_key_kind(_text(name))] += 1
    op_each = statistics.mean(op_bytes) if op_bytes else 0.0
    idem_keys = 3 * target.idempotent_runs
    op_keys = max(0, dbsize - 2 * runs_total - idem_keys - len(index_usage))
    census_total = sum(census.values())
    census_share = {kind: round(count / census_total, 3) for kind, count in census.most_common()}

    run_each = statistics.mean(hash_bytes)
    stream_each = statistics.mean(stream_bytes)
    measured = (
        run_each * runs_total
        + stream_each * runs_total
        + zset_total
        + entries_total
        + idem_each * target.idempotent_runs
        + op_each * op_keys
    )
    rest = delta - measured
    events_per_run = statistics.mean(stream_events)

    probe = marginal_event_bytes(target, keys)
    listpack = listpack_probe(target, keys.run(samples[0][0]))
    small_nodes = stream_node_probe(target, keys.events(samples[0][0]), STREAM_NODE_PROBE_BYTES)
    return {
        "runs": runs_total,
        "used_memory_before": memory_before,
        "used_memory_after": used,
        "used_memory_per_master": per_master,
        "used_memory_rss_after": rss,
        "used_memory_delta": delta,
        "keys": dbsize,
        "bytes_per_run_all": round(delta / runs_total, 1),
        "bytes_per_run_steady": round((delta - op_each * op_keys) / runs_total, 1),
        "sampled_runs": len(samples),
        "run_hash_bytes": round(run_each, 1),
        "run_hash_encoding": encodings.most_common(1)[0][0] if encodings else None,
        "encodings": dict(encodings),
        "run_hash_fields": round(statistics.mean(field_counts), 1),
        "run_json_bytes": round(statistics.mean(json_bytes), 1),
        "run_bookkeeping_bytes": round(statistics.mean(bookkeeping_bytes), 1),
        "run_default_fields": round(statistics.mean(default_fields), 1),
        "run_default_bytes": round(statistics.mean(default_bytes), 1),
        "run_hash_as_listpack_bytes": listpack,
        "stream_node_probe_bytes": STREAM_NODE_PROBE_BYTES,
        "stream_bytes_per_run_small_nodes": small_nodes,
        "events_per_run": round(events_per_run, 2),
        "stream_bytes_per_run": round(stream_each, 1),
        "stream_bytes_per_event": round(stream_each / events_per_run, 1),
        "marginal_bytes_per_event": probe,
        "event_json_bytes": round(statistics.mean(event_json), 1),
        "index_bytes_per_run": round((zset_total + entries_total) / runs_total, 1),
        "index_zset_bytes_per_run": round(zset_total / runs_total, 1),
        "index_entries_bytes_per_run": round(entries_total / runs_total, 1),
        "index_global_bytes_per_run": round(global_total / runs_total, 1),
        "index_keys": len(index_usage),
        "idempotent_runs": target.idempotent_runs,
        "idempotency_bytes_per_keyed_run": round(idem_each, 1),
        "op_keys_live": op_keys,
        "op_key_bytes": round(op_each, 1),
        "op_bytes_per_run": round(op_each * op_keys / runs_total, 1),
        "keyspace_overhead_bytes_per_run": round(rest / runs_total, 1),
        "key_census_share": census_share,
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _key_kind(name: str) -> str:
    if f"{PREFIX}:idx:" in name:
        return "index"
    if name.startswith(f"{PREFIX}:idem:"):
        return "idempotency claim"
    if ":op:" in name:
        return "op (write dedupe)"
    if name.endswith(":events"):
        return "event stream"
    if name.startswith(f"{PREFIX}:run:") and name.endswith("}"):
        return "run hash"
    return "other"


def marginal_event_bytes(target: Target, keys: RedisKeys) -> float:
    """Bytes one more event adds to a run's stream: 100 appended to a fresh run."""
    store = target.sync_store()
    try:
        run_id = f"mem-probe-{uuid.uuid4()}"
        store.create(run_document(run_id, BENCH_TENANT))
        events_key = keys.events(run_id)
        admin = target.admin_for(events_key)
        before = int(admin.memory_usage(events_key, samples=0))
        for chunk in range(5):
            store.commit(
                run_id,
                None,
                [_progress_event(run_id, chunk * 20 + i) for i in range(20)],
            )
        after = int(admin.memory_usage(events_key, samples=0))
        return round((after - before) / 100, 1)
    finally:
        store.close()


def _progress_event(run_id: str, n: int) -> dict[str, Any]:
    return {
        "kind": "step-progress",
        "runId": run_id,
        "stepId": "transcode",
        "pct": float(n % 100),
        "etaMs": 12_000,
        "message": "encoding",
    }


def listpack_probe(target: Target, run_key: str) -> int | None:
    """MEMORY USAGE of a copy of one run hash stored as a listpack (the limit on value size
    raised on that node for a moment), to show what the hashtable encoding costs."""
    admin = target.admin_for(run_key)
    setting = "hash-max-ziplist-value"  # 7.x knows it as an alias of hash-max-listpack-value
    original = admin.config_get(setting).get(setting)
    scratch = f"{run_key}:listpack-probe"
    try:
        admin.config_set(setting, 65536)
        admin.hset(scratch, mapping=admin.hgetall(run_key))
        encoding = _text(admin.object("encoding", scratch))
        usage = admin.memory_usage(scratch, samples=0)
        return int(usage) if usage is not None and encoding in ("listpack", "ziplist") else None
    finally:
        admin.delete(scratch)
        if original is not None:
            admin.config_set(setting, original)


def stream_node_probe(target: Target, events_key: str, node_bytes: int) -> int | None:
    """MEMORY USAGE of a copy of one run's event stream made with ``stream-node-max-bytes`` set
    to ``node_bytes`` on that node for a moment: Redis preallocates a new stream's first node at
    that size (4096 by default), which dominates a short log."""
    admin = target.admin_for(events_key)
    setting = "stream-node-max-bytes"
    original = admin.config_get(setting).get(setting)
    scratch = f"{events_key}:node-probe"
    try:
        admin.config_set(setting, node_bytes)
        for entry_id, fields in admin.xrange(events_key):
            admin.xadd(scratch, fields, id=entry_id)
        usage = admin.memory_usage(scratch, samples=0)
        return int(usage) if usage is not None else None
    finally:
        admin.delete(scratch)
        if original is not None:
            admin.config_set(setting, original)


# -- list_runs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListCase:
    name: str
    label: str
    index_runs: int
    filters: dict[str, Any]


def list_cases(config: Config, runs_total: int, *, before_load: bool = False) -> list[ListCase]:
    small = config.small_tenant_runs
    if before_load:
        return [
            ListCase("global_first", "global, first page", small, {}),
            ListCase(
                "global_deep", f"global, offset {small // 2:,}", small, {"offset": small // 2}
            ),
        ]
    per_tenant = len(range(0, config.runs, config.tenants))
    return [
        ListCase("small_first", f"tenant of {small:,}, first page", small,
                 {"tenant_id": SMALL_TENANT}),
        ListCase("small_deep", f"tenant of {small:,}, offset {small // 2:,}", small,
                 {"tenant_id": SMALL_TENANT, "offset": small // 2}),
        ListCase("tenant_first", f"tenant of {per_tenant:,}, first page", per_tenant,
                 {"tenant_id": tenant_name(0)}),
        ListCase("tenant_deep", f"tenant of {per_tenant:,}, offset {per_tenant // 2:,}",
                 per_tenant, {"tenant_id": tenant_name(0), "offset": per_tenant // 2}),
        ListCase("global_first", f"global ({runs_total:,}), first page", runs_total, {}),
        ListCase("global_deep", f"global ({runs_total:,}), offset {runs_total // 2:,}",
                 runs_total, {"offset": runs_total // 2}),
    ]  # fmt: skip


def measure_list_runs(
    target: Target, cases: list[ListCase], samples: int
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Median and p95 latency of each page, the cases taken in a fresh random order each time."""
    store = target.sync_store()
    problems: list[str] = []
    timings: dict[str, list[float]] = {case.name: [] for case in cases}
    try:
        for case in cases:
            page = store.list_runs(limit=PAGE_SIZE, **case.filters)
            problem = _check_page(page, case)
            if problem:
                problems.append(f"{target.name}: list_runs {case.label}: {problem}")
        order = list(cases)
        for _ in range(samples):
            random.shuffle(order)
            for case in order:
                started = time.perf_counter()
                store.list_runs(limit=PAGE_SIZE, **case.filters)
                timings[case.name].append(time.perf_counter() - started)
    finally:
        store.close()
    results = {}
    for case in cases:
        values = timings[case.name]
        results[case.name] = {
            "label": case.label,
            "index_runs": case.index_runs,
            "p50_ms": round(statistics.median(values) * 1000, 3),
            "p95_ms": round(percentile(values, 0.95) * 1000, 3),
            "samples": len(values),
        }
    return results, problems


def _check_page(page: list[PipelineRun], case: ListCase) -> str | None:
    expected = max(0, min(PAGE_SIZE, case.index_runs - case.filters.get("offset", 0)))
    if len(page) != expected:
        return f"{len(page)} runs, not {expected}"
    tenant = case.filters.get("tenant_id")
    if tenant is not None and any(run.tenant_id != tenant for run in page):
        return "runs of another tenant"
    order = [(run.created_at, run.run_id) for run in page]
    if order != sorted(order):
        return "not in created_at order"
    return None


# -- throughput -------------------------------------------------------------------------------


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
    return patch, [_progress_event(run_id, state.version)], state.status


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


# -- report -----------------------------------------------------------------------------------


def render(headers: Sequence[str], lines: list[Sequence[str]], left: int = 1) -> str:
    """An aligned text table; the first ``left`` columns are left-aligned, the rest right."""
    widths = [max(len(str(cells[i])) for cells in [headers, *lines]) for i in range(len(headers))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(widths[i]) if i < left else str(cell).rjust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([fmt(headers), rule, *(fmt(line) for line in lines)])


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def load_table(loads: dict[str, dict[str, Any]]) -> str:
    headers = (
        "deployment", "runs", "wall s", "runs/s", "client CPU ms/run", "server CPU ms/run",
        "create ms", "start commit ms", "second commit ms", "errors",
    )  # fmt: skip
    lines = [
        (
            name, _n(load["runs"]), _n(load["wall_seconds"], 1), _n(load["runs_per_s"]),
            _n(load["client_cpu_ms_per_run"], 2), _n(load["server_cpu_ms_per_run"], 2),
            _n(load["ms_per_call"]["create"], 2), _n(load["ms_per_call"]["start"], 2),
            _n(load["ms_per_call"]["advance"], 2), _n(sum(load["errors"].values())),
        )
        for name, load in loads.items()
    ]  # fmt: skip
    return render(headers, lines)


MEMORY_ROWS: tuple[tuple[str, str, int], ...] = (
    ("runs loaded", "runs", 0),
    ("used_memory added, MB", "used_memory_delta_mb", 0),
    ("bytes per run, all (used_memory / runs)", "bytes_per_run_all", 0),
    ("bytes per run, without op keys (steady state)", "bytes_per_run_steady", 0),
    ("  run hash (MEMORY USAGE)", "run_hash_bytes", 0),
    ("    run document JSON (names + values)", "run_json_bytes", 0),
    ("    fields stored / of them defaults", "fields", 0),
    ("    the same hash as a listpack", "run_hash_as_listpack_bytes", 0),
    ("  event stream (per run)", "stream_bytes_per_run", 0),
    ("    events per run", "events_per_run", 1),
    ("    bytes per event in the stream", "stream_bytes_per_event", 0),
    ("    marginal bytes per appended event", "marginal_bytes_per_event", 0),
    ("    event JSON", "event_json_bytes", 0),
    ("    the stream with stream-node-max-bytes 1024", "stream_bytes_per_run_small_nodes", 0),
    ("  indexes (zsets + entries hashes)", "index_bytes_per_run", 0),
    ("    zsets (all, by status; global + tenant)", "index_zset_bytes_per_run", 0),
    ("    entries hashes", "index_entries_bytes_per_run", 0),
    ("  idempotency keys, per run", "idempotency_bytes_per_run", 0),
    ("    per run with a key (3 keys)", "idempotency_bytes_per_keyed_run", 0),
    ("  key-space overhead (the rest)", "keyspace_overhead_bytes_per_run", 0),
    ("op keys (10 min TTL): live", "op_keys_live", 0),
    ("  bytes each / per run", "op_bytes", 0),
    ("used_memory_rss after the load, MB", "rss_mb", 0),
    ("used_memory per master after the load, MB", "per_master_mb", 0),
)


def memory_table(memory: dict[str, dict[str, Any]]) -> str:
    names = list(memory)
    lines = []
    for label, key, digits in MEMORY_ROWS:
        cells = [label]
        for name in names:
            m = memory[name]
            if key == "used_memory_delta_mb":
                cells.append(_n(m["used_memory_delta"] / 2**20))
            elif key == "fields":
                cells.append(f"{m['run_hash_fields']:.0f} / {m['run_default_fields']:.0f}")
            elif key == "idempotency_bytes_per_run":
                per_run = m["idempotency_bytes_per_keyed_run"] * m["idempotent_runs"] / m["runs"]
                cells.append(_n(per_run))
            elif key == "rss_mb":
                cells.append(_n(m["used_memory_rss_after"] / 2**20))
            elif key == "per_master_mb":
                cells.append(
                    " / ".join(f"{v / 2**20:,.0f}" for v in m["used_memory_per_master"].values())
                )
            elif key == "op_bytes":
                cells.append(f"{m['op_key_bytes']:.0f} / {m['op_bytes_per_run']:.0f}")
            else:
                cells.append(_n(m[key], digits))
        lines.append(cells)
    return render(("memory", *names), lines)


def throughput_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    headers: list[str] = ["api", "clients", "operation"]
    for name in names:
        headers += [f"{name} ops/s", "x RT"]
    if len(names) == 2:
        headers.append("cluster/single")
    lines = []
    for row in rows:
        cells = [row["api"], str(row["clients"]), row["label"]]
        for name in names:
            cell = row[name]
            cells += [_n(cell["ops_per_s"]), f"{cell['ratio_to_round_trip']:.2f}"]
        if len(names) == 2:
            cells.append(f"{row['cluster_over_single']:.2f}")
        lines.append(cells)
    return render(headers, lines, left=1)


def list_table(
    lists: dict[str, dict[str, dict[str, Any]]], before: dict[str, dict[str, dict[str, Any]]]
) -> str:
    names = list(lists)
    headers: list[str] = ["list_runs, 50 runs", "index runs"]
    for name in names:
        headers += [f"{name} p50 ms", "p95 ms", "x 1k"]
    lines = []
    first = next(iter(lists.values()))
    reference = {"first": "small_first", "deep": "small_deep"}
    for case in first:
        cells = [first[case]["label"], _n(first[case]["index_runs"])]
        for name in names:
            result = lists[name][case]
            ref = lists[name][reference[case.rsplit("_", 1)[1]]]
            cells += [
                _n(result["p50_ms"], 2), _n(result["p95_ms"], 2),
                f"{result['p50_ms'] / ref['p50_ms']:.2f}",
            ]  # fmt: skip
        lines.append(cells)
    for case, result in next(iter(before.values())).items():
        cells = [f"{result['label']} (before the load)", _n(result["index_runs"])]
        for name in names:
            entry = before[name][case]
            ref = lists[name][reference[case.rsplit("_", 1)[1]]]
            cells += [
                _n(entry["p50_ms"], 2), _n(entry["p95_ms"], 2),
                f"{entry['p50_ms'] / ref['p50_ms']:.2f}",
            ]  # fmt: skip
        lines.append(cells)
    return render(headers, lines)


def evaluate_targets(lists: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    targets = []
    for name, cases in lists.items():
        for page, small in (("global_first", "small_first"), ("global_deep", "small_deep")):
            ratio = cases[page]["p50_ms"] / cases[small]["p50_ms"]
            targets.append(
                {
                    "deployment": name,
                    "operation": f"list_runs {cases[page]['label']}",
                    "target": f"p50 <= {PAGE_FLAT_TARGET} x {cases[small]['label']}",
                    "value": round(ratio, 3),
                    "met": ratio <= PAGE_FLAT_TARGET,
                }
            )
    return targets


# -- entry point ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="20,000 runs and short rounds")
    parser.add_argument("--runs", type=int, help="runs to load (default 1,000,000; quick 20,000)")
    parser.add_argument("--loaders", type=int, help="loader processes (default 4)")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 5, quick 2)")
    parser.add_argument(
        "--targets", default="single,cluster", help="single, cluster or both (default)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config.for_mode(args.quick)
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
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(partial, indent=2, default=str) + "\n")

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
    write_results(args.output, result, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
