"""Memory probes: ``used_memory`` before and after a load, and ``MEMORY USAGE`` of samples of
every kind of key."""

from __future__ import annotations

import statistics
import uuid
from collections import Counter
from typing import Any

from benchmarks.scale.config import (
    BENCH_TENANT,
    PREFIX,
    SMALL_TENANT,
    STREAM_NODE_PROBE_BYTES,
    Config,
    tenant_name,
)
from benchmarks.scale.loading import Target
from benchmarks.workload import progress_event, run_document
from mpstate.redis.keys import RedisKeys

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
    shards = keys.global_groups()
    groups = [*shards] + [
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
    shard_keys = {
        key for group in shards for key in (group.everything, *group.statuses(), group.entries)
    }
    global_total = sum(v for k, v in index_usage.items() if k in shard_keys)

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
                [
                    progress_event(run_id, float((chunk * 20 + i) % 100), meta=False)
                    for i in range(20)
                ],
            )
        after = int(admin.memory_usage(events_key, samples=0))
        return round((after - before) / 100, 1)
    finally:
        store.close()


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
