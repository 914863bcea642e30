"""The Redis layout on a real server: documented keys, a TTL on every key, stale index entries,
and one Redis Cluster slot per script."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from index_support import entries_without_ttl_record
from plan_steps import PlanSteps, request_names
from redis.crc import key_slot

import mpstate.redis.keys
from mpstate import (
    IdempotencyKeyInUseError,
    LockTimeoutError,
    PipelineRunStatus,
    RedisPipelineStateStore,
    RunNotFoundError,
    RunStarted,
    StateStoreUnavailableError,
    StepProgress,
    UnmatchedCallback,
)
from mpstate.fields import epoch_ms
from mpstate.redis.keys import RedisKeys
from mpstate.redis.requests import Batch, Ordered, Script
from mpstate.redis.scripts import SCRIPT_NAMES
from mpstate.testing import RedisServer
from mpstate.testing._cluster import free_cluster_port
from mpstate.testing._servers import free_port

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def new_store(client: redis.Redis, prefix: str, **options: Any) -> RedisPipelineStateStore:
    return RedisPipelineStateStore(client, prefix=prefix, **options)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def keys_under(client: redis.Redis, prefix: str) -> set[str]:
    pattern = RedisKeys(prefix).pattern()
    return {text(key) for key in client.scan_iter(match=pattern, count=1000)}


def index_members(client: redis.Redis, key: str) -> list[str]:
    members: list[Any] = client.zrange(key, 0, -1)
    return [text(member) for member in members]


def global_members(
    client: redis.Redis, keys: RedisKeys, status: PipelineRunStatus | None = None
) -> list[str]:
    """The members of every global shard (its zset of ``status``, if given), by score."""
    found: list[tuple[float, str]] = []
    for group in keys.global_groups():
        key = group.everything if status is None else group.status(status)
        found += [(score, text(m)) for m, score in client.zrange(key, 0, -1, withscores=True)]
    return [member for _, member in sorted(found)]


def ids(runs: list[Any]) -> list[str]:
    return [run.run_id for run in runs]


# -- the documented layout ----------------------------------------------------------------------


def test_a_new_run_writes_the_documented_keys(redis_client: redis.Redis, prefix: str) -> None:
    store = new_store(redis_client, prefix)
    k = store.keys
    store.create({"runId": "r1", "pipelineId": "p", "createdAt": T0.isoformat()})

    written = keys_under(redis_client, prefix)
    shard = k.global_group("r1")
    assert written == {
        k.run("r1"),
        k.events("r1"),
        shard.everything,
        shard.status(PipelineRunStatus.PENDING),
        shard.entries,
    }
    # r1 is in global shard 2 of 16, whose tag is pinned: moving it would hide stored entries.
    assert shard.everything == f"{prefix}:idx:{{all.2.41}}"
    assert shard.entries == f"{prefix}:idx:{{all.2.41}}:entries"
    assert redis_client.type(k.run("r1")) == b"hash"
    assert redis_client.type(k.events("r1")) == b"stream"
    assert redis_client.type(shard.entries) == b"hash"
    entries = redis_client.xrange(k.events("r1"))
    assert entries is not None
    assert [entry_id for entry_id, _ in entries] == [b"0-1"]
    assert redis_client.zscore(shard.everything, "r1") == epoch_ms(T0)
    assert redis_client.zscore(shard.status(PipelineRunStatus.PENDING), "r1") == epoch_ms(T0)
    # Settled: "score:version:status" (pending is the first status zset) and no pending mark
    # (";expiry:nonce:added") left behind; the group's TTL record, "<renewed>:<keys>": its keys
    # were given the TTL as the run was created, and the all-runs and pending zsets hold it.
    assert entries_without_ttl_record(redis_client, shard.entries) == {"r1": f"{epoch_ms(T0)}:1:1"}
    assert re.fullmatch(r"\d+:a1", text(redis_client.hget(shard.entries, "")))


def test_tenant_key_and_job_keys_are_written_where_documented(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix)
    k = store.keys
    store.create(
        {
            "runId": "r1",
            "pipelineId": "p",
            "tenantId": "t",
            "idempotencyKey": "key",
            "externalJobIds": {"fal": "j1"},
            "externalJobId": "replicate:j2",
            "createdAt": T0.isoformat(),
        }
    )
    written = keys_under(redis_client, prefix)
    assert written == {
        k.run("r1"),
        k.events("r1"),
        k.idempotency("t", "key"),
        k.job("fal", "j1"),
        k.job("replicate", "j2"),
        k.job_providers("j1"),
        k.job_providers("j2"),
        k.global_group("r1").everything,
        k.global_group("r1").status(PipelineRunStatus.PENDING),
        k.global_group("r1").entries,
        k.by_tenant("t"),
        k.tenant_group("t").status(PipelineRunStatus.PENDING),
        k.tenant_group("t").entries,
        k.by_idempotency_key("key"),
        k.idempotency_group("key").entries,
    }
    assert k.idempotency("t", "key") == f"{prefix}:idem:{{t:key}}"
    assert k.tenant_group("t").entries == f"{prefix}:idx:tenant:{{t}}:entries"
    # The claim: "<claim token>:<run id>".
    claim = text(redis_client.get(k.idempotency("t", "key")))
    assert re.fullmatch(r"[0-9a-f]+:r1", claim), claim
    assert redis_client.get(k.job("fal", "j1")) == b"r1"
    assert redis_client.get(k.job("replicate", "j2")) == b"r1"
    assert k.job_providers("j1") == f"{prefix}:jobproviders:{{j1}}"
    assert redis_client.smembers(k.job_providers("j1")) == {b"fal"}
    assert redis_client.smembers(k.job_providers("j2")) == {b"replicate"}
    # "score:version:status", no pending mark left; the idempotency key's group has no status
    # zsets, so no status position.
    settled = {
        k.global_group("r1"): f"{epoch_ms(T0)}:1:1",
        k.tenant_group("t"): f"{epoch_ms(T0)}:1:1",
        k.idempotency_group("key"): f"{epoch_ms(T0)}:1:",
    }
    for group, field in settled.items():
        assert entries_without_ttl_record(redis_client, group.entries) == {"r1": field}, group
        assert redis_client.zscore(group.everything, "r1") == epoch_ms(T0)


#: A placeholder of the layout: an id in a hash tag ({R}, {T:K}, ...) or a segment (<op id>).
_PLACEHOLDER = re.compile(r"(\{[A-Z](?::[A-Z])*\}|<[^>]*>)")


def documented_layout(prefix: str) -> list[tuple[re.Pattern[str], str]]:
    """The "Layout" block of ``mpstate/redis/keys.py``'s docstring, as (key pattern, type)."""
    doc = mpstate.redis.keys.__doc__ or ""
    block = doc[doc.index("Layout (prefix ``mp``)::") :]
    layout = []
    for line in block.splitlines()[1:]:
        found = re.match(r"\s+mp(:\S*(?:<[^>]*>\S*)*)\s+(\w+)\s", line)
        if found is None:
            continue
        name, kind = found.groups()
        regex = ""
        for part in _PLACEHOLDER.split(prefix + name):
            if part.startswith("<"):
                regex += r"[^:{}]+"
            elif _PLACEHOLDER.fullmatch(part):  # one escaped id (never ':{}') per letter
                regex += r"\{" + ":".join([r"[^:{}]*"] * (part.count(":") + 1)) + r"\}"
            else:
                regex += re.escape(part)
        layout.append((re.compile(regex), kind))
    assert len(layout) >= 15, "the layout block of keys.py was not found"
    return layout


def write_everything(store: RedisPipelineStateStore) -> None:
    """Every kind of write, including a stalled keyed create that another create then voids."""
    for n, tenant in enumerate([None, "t1", "t2"]):
        store.create(
            {
                "runId": f"r{n}",
                "pipelineId": "p",
                "tenantId": tenant,
                "idempotencyKey": f"key{n}",
                "externalJobIds": {"fal": f"j{n}"},
                "externalJobId": f"legacy:l{n}",
            }
        )
    store.update("r0", {"status": "running", "externalJobIds": {"fal": "j0b"}})
    store.commit("r1", {"status": "suspended"}, [RunStarted(run_id="r1")])
    store.append_event("r2", StepProgress(run_id="r2", step_id="s", pct=5))
    store.cancel("r2", "stop")
    store.for_tenant("t1").update("r1", {"status": "running"})
    with store.lock("r0") as held:
        store.update("r0", {"error": "x"}, fence=held.fence)
        held.extend()
    store.with_lock("r1", lambda run: run)
    stalled = PlanSteps(
        store,
        store._backend._plan_create(
            {"runId": "stalled", "pipelineId": "p", "tenantId": "t1", "idempotencyKey": "kv"},
            return_existing=True,
        ),
    )
    stalled.run_through("claim_idempotency_key")  # stalls; the next create voids its claim
    store.create_or_get(
        {"runId": "winner", "pipelineId": "p", "tenantId": "t1", "idempotencyKey": "kv"}
    )
    assert stalled.finish()[0].run_id == "winner"
    store.list_runs()
    store.list_runs(status="running", tenant_id="t1")
    store.list_runs(status=["pending", "cancelled"])
    store.list_runs(idempotency_key="key1")
    store.find_by_external_job_id("fal", "j0b")
    assert store.find_job_providers("j0b") == ["fal"]
    assert store.claim_delivery("fal", "req-1", 60)
    store.record_unmatched(UnmatchedCallback(provider="fal", job_id="j9", reason="unknown-job"))
    store.list_unmatched(provider="fal")
    store.count_unmatched()


def undocumented_keys(client: redis.Redis, prefix: str) -> list[str]:
    """Keys under ``prefix`` no line of the layout describes; checks the others' types."""
    layout = documented_layout(prefix)
    undocumented = []
    for key in sorted(keys_under(client, prefix)):
        kinds = {kind for pattern, kind in layout if pattern.fullmatch(key)}
        if not kinds:
            undocumented.append(key)
            continue
        assert text(client.type(key)) in kinds, key
    return undocumented


def test_every_key_written_is_in_the_documented_layout_with_its_type(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix)
    write_everything(store)

    undocumented = undocumented_keys(redis_client, prefix)

    assert store.keys.void("stalled") in keys_under(redis_client, prefix)
    assert undocumented == []


def test_the_idempotency_key_index_entries_hash_is_in_the_documented_layout(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix)
    store.create({"runId": "r1", "pipelineId": "p", "idempotencyKey": "key"})
    assert store.keys.idempotency_group("key").entries in keys_under(redis_client, prefix)

    assert undocumented_keys(redis_client, prefix) == []


def test_stores_with_different_prefixes_do_not_see_each_other(
    redis_client: redis.Redis, prefix: str
) -> None:
    first = new_store(redis_client, prefix)
    second = new_store(redis_client, f"{prefix}:second")
    first.create({"runId": "r1", "pipelineId": "first", "idempotencyKey": "k"})
    second.create({"runId": "r1", "pipelineId": "second", "idempotencyKey": "k"})
    assert first.require("r1").pipeline_id == "first"
    assert second.require("r1").pipeline_id == "second"
    assert ids(first.list_runs()) == ids(second.list_runs()) == ["r1"]


# -- TTLs ---------------------------------------------------------------------------------------


def test_every_key_the_store_writes_has_a_ttl(redis_client: redis.Redis, prefix: str) -> None:
    store = new_store(redis_client, prefix)
    k = store.keys
    write_everything(store)
    with store.lock("r0") as held:
        written = assert_every_key_has_a_ttl(redis_client, prefix)
        assert k.lock("r0") in written
        store.update("r0", {"error": "y"}, fence=held.fence)
    # Repairs on read write too: a run whose hash is gone is settled out of its indexes.
    store.create({"runId": "gone", "pipelineId": "p", "tenantId": "t2"})
    expire(redis_client, store, "gone")
    assert ids(store.list_runs(tenant_id="t2")) == ["r2"]
    assert ids(store.list_runs(status="pending")) == ["winner"]

    written = assert_every_key_has_a_ttl(redis_client, prefix)
    for expected_key in [
        k.run("r0"),
        k.events("r0"),
        k.lock_wake("r0"),
        k.void("stalled"),
        k.idempotency(None, "key0"),
        k.idempotency("t1", "key1"),
        k.idempotency("t1", "kv"),
        k.job("fal", "j0b"),
        k.job("legacy", "l1"),
        k.job_providers("j0b"),
        k.job_providers("l1"),
        k.global_group("r0").everything,
        k.global_group("r2").status(PipelineRunStatus.CANCELLED),
        k.global_group("r0").entries,
        k.by_tenant("t2"),
        k.tenant_group("t1").status(PipelineRunStatus.RUNNING),
        k.tenant_group("t1").entries,
        k.by_idempotency_key("key2"),
        k.idempotency_group("kv").entries,
        k.delivery("fal", "req-1"),
        k.unmatched(),
        k.unmatched_counts(),
    ]:
        assert expected_key in written
    assert any(":op:release-" in key for key in written)  # the lock release's outcome


def test_delivery_claims_and_unmatched_callbacks_are_written_where_documented(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix, run_ttl_seconds=1000, unmatched_kept=100)
    k = store.keys
    assert store.claim_delivery("fal", "a:b", 30)
    callbacks = [
        UnmatchedCallback(provider="fal", job_id=f"j{n}", reason="unknown-job", at=n)
        for n in range(350)
    ]
    for callback in callbacks:
        store.record_unmatched(callback)

    assert k.delivery("fal", "a:b") == f"{prefix}:delivery:{{fal:a%3Ab}}"
    assert keys_under(redis_client, prefix) == {
        k.delivery("fal", "a:b"),
        k.unmatched(),
        k.unmatched_counts(),
    }
    assert re.fullmatch(r"[0-9a-f]{16}", text(redis_client.get(k.delivery("fal", "a:b"))))
    assert 29_000 < redis_client.pttl(k.delivery("fal", "a:b")) <= 30_000
    for key in [k.unmatched(), k.unmatched_counts()]:
        assert 995_000 < redis_client.pttl(key) <= 1_000_000, key  # the run TTL
    assert redis_client.type(k.unmatched()) == b"stream"
    # MAXLEN ~ trims whole stream nodes (100 entries by default): a little over the cap is kept,
    # and only the newest 100 are listed.
    assert 100 <= redis_client.xlen(k.unmatched()) < 250
    entries: Any = redis_client.xrevrange(k.unmatched(), count=1)
    assert entries[0][1] == {b"c": callbacks[-1].model_dump_json().encode()}
    assert store.list_unmatched(limit=1000) == callbacks[::-1][:100]
    assert redis_client.hgetall(k.unmatched_counts()) == {b"fal\nunknown-job": b"350"}


def assert_every_key_has_a_ttl(client: redis.Redis, prefix: str) -> set[str]:
    written = keys_under(client, prefix)
    assert written
    without_ttl = {key for key in written if client.pttl(key) <= 0}
    assert without_ttl == set()
    return written


def test_keys_expire_after_their_configured_lifetimes(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(
        redis_client,
        prefix,
        run_ttl_seconds=1000,
        idempotency_ttl_seconds=500,
        external_job_ttl_seconds=300,
        lock_ttl_seconds=60,
    )
    k = store.keys
    store.create(
        {
            "runId": "r1",
            "pipelineId": "p",
            "tenantId": "t",
            "idempotencyKey": "k",
            "externalJobIds": {"f": "j"},
        }
    )
    stalled = PlanSteps(
        store,
        store._backend._plan_create(
            {"runId": "stalled", "pipelineId": "p", "idempotencyKey": "k2"}, return_existing=True
        ),
    )
    stalled.run_through("claim_idempotency_key")
    store.create_or_get({"runId": "r2", "pipelineId": "p", "idempotencyKey": "k2"})  # voids it

    def ttl_s(key: str) -> float:
        return float(redis_client.pttl(key)) / 1000

    for key in [k.run("r1"), k.events("r1")]:
        assert 995 < ttl_s(key) <= 1000, key
    # Indexes live twice the run TTL, re-asserted by a run's write every half run TTL.
    for key in [
        k.global_group("r1").everything,
        k.global_group("r1").status(PipelineRunStatus.PENDING),
        k.global_group("r1").entries,
        k.by_tenant("t"),
        k.tenant_group("t").status(PipelineRunStatus.PENDING),
        k.tenant_group("t").entries,
        k.by_idempotency_key("k"),
        k.idempotency_group("k").entries,
    ]:
        assert 1995 < ttl_s(key) <= 2000, key
    # A claim, and the void of a claim called off, live as long as the idempotency key.
    for key in [k.idempotency("t", "k"), k.idempotency(None, "k2"), k.void("stalled")]:
        assert 495 < ttl_s(key) <= 500, key
    assert 295 < ttl_s(k.job("f", "j")) <= 300
    assert 295 < ttl_s(k.job_providers("j")) <= 300
    with store.lock("r1"):
        assert 55 < ttl_s(k.lock("r1")) <= 60


def test_a_job_ids_providers_live_as_long_as_its_newest_pointer(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix, external_job_ttl_seconds=300)
    k = store.keys
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"veo": "J"}})
    redis_client.pexpire(k.job_providers("J"), 1000)  # as if written long ago
    store.create({"runId": "r2", "pipelineId": "p"})
    store.update("r2", {"externalJobIds": {"video": "J"}})

    assert redis_client.smembers(k.job_providers("J")) == {b"veo", b"video"}
    assert 295_000 < redis_client.pttl(k.job_providers("J")) <= 300_000
    assert store.find_job_providers("J") == ["veo", "video"]


def test_a_run_kept_alive_by_writes_stays_listed(redis_client: redis.Redis, prefix: str) -> None:
    # Runs live 0.6 s, indexes 1.2 s; a write re-asserts its run's index entries and their TTLs
    # when they were last asserted more than half a run TTL (0.3 s) ago.
    store = new_store(redis_client, prefix, run_ttl_seconds=0.6)
    k = store.keys
    for run_id in ["kept", "dropped"]:
        store.create(
            {"runId": run_id, "pipelineId": "p", "tenantId": "t", "idempotencyKey": "k" + run_id}
        )
    for _ in range(3):  # writes with no status change: only re-indexing touches the indexes
        time.sleep(0.4)
        store.update("kept", {"error": "still going"})
    store.append_event("kept", RunStarted(run_id="kept"))
    time.sleep(0.25)  # 1.45 s in: indexes nobody re-asserted would have expired at 1.2 s

    assert store.get("dropped") is None
    assert store.get("kept") is not None
    assert ids(store.list_runs()) == ["kept"]
    assert ids(store.list_runs(status="pending")) == ["kept"]
    assert ids(store.list_runs(tenant_id="t")) == ["kept"]
    assert ids(store.list_runs(tenant_id="t", status="pending")) == ["kept"]
    assert ids(store.list_runs(idempotency_key="kkept")) == ["kept"]
    kept = k.global_group("kept")
    for key in [kept.everything, kept.entries, k.tenant_group("t").entries]:
        assert redis_client.pttl(key) > 600, key


def test_a_write_renews_its_runs_ttl_only_when_a_tenth_of_it_has_passed(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix, run_ttl_seconds=100)
    k = store.keys
    store.create({"runId": "r1", "pipelineId": "p"})
    run_keys = [k.run("r1"), k.events("r1")]
    for key in run_keys:
        redis_client.pexpire(key, 95_000)  # as if created 5 s ago
    store.update("r1", {"error": "a write 5 s after the last renewal"})
    store.append_event("r1", RunStarted(run_id="r1"))
    for key in run_keys:
        assert 90_000 < redis_client.pttl(key) <= 95_000, key  # not renewed: not due yet

    renewed_at = int(redis_client.hget(k.run("r1"), "_renewed") or 0)
    redis_client.hset(k.run("r1"), "_renewed", renewed_at - 10_001)  # as if renewed 10 s ago
    store.update("r1", {"error": "a write a tenth of the TTL after the last renewal"})
    for key in run_keys:
        assert 99_000 < redis_client.pttl(key) <= 100_000, key
    assert int(redis_client.hget(k.run("r1"), "_renewed") or 0) > renewed_at


def test_an_index_key_gets_its_ttl_when_created_or_when_its_group_is_due_not_on_every_write(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix, run_ttl_seconds=100)  # indexes live 200 s
    k = store.keys
    tenant = k.tenant_group("t")
    store.create({"runId": "r1", "pipelineId": "p", "tenantId": "t"})
    shard = k.global_group("r1")
    assert k.global_group("r5") == shard  # the second run below joins r1's global shard
    kept = [shard.everything, shard.entries, tenant.everything, tenant.entries]
    for key in kept:
        redis_client.pexpire(key, 150_000)  # as if their TTL was set 50 s ago
    store.update("r1", {"status": "running"})
    store.create({"runId": "r5", "pipelineId": "p", "tenantId": "t"})

    for key in kept:  # r1's status change and r5 joining them: not renewed
        assert 140_000 < redis_client.pttl(key) <= 150_000, key
    for key in [shard.status(PipelineRunStatus.RUNNING), tenant.status(PipelineRunStatus.RUNNING)]:
        assert 199_000 < redis_client.pttl(key) <= 200_000, key  # a new key: it gets the TTL

    # r1 leaves running, which empties (deletes) the tenant's running zset; r5 creates it again.
    store.update("r1", {"status": "completed"})
    assert not redis_client.exists(tenant.status(PipelineRunStatus.RUNNING))
    store.update("r5", {"status": "running"})
    assert 199_000 < redis_client.pttl(tenant.status(PipelineRunStatus.RUNNING)) <= 200_000

    # A tenth of the TTL after the group's last renewal, its next write renews every key.
    for group in [shard, tenant]:
        renewed, _, known = text(redis_client.hget(group.entries, "")).partition(":")
        redis_client.hset(group.entries, "", f"{int(renewed) - 20_000}:{known}")
    store.update("r5", {"error": "x"})  # no status change: the groups are not settled
    assert 140_000 < redis_client.pttl(shard.everything) <= 150_000
    store.update("r5", {"status": "completed"})
    for group in [shard, tenant]:
        for key in [group.everything, group.entries, *group.statuses()]:
            assert redis_client.pttl(key) in (-2, *range(199_000, 200_001)), key


def test_idempotency_keys_and_job_ids_expire_after_their_own_ttls(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(
        redis_client, prefix, idempotency_ttl_seconds=0.2, external_job_ttl_seconds=0.2
    )
    store.create(
        {"runId": "first", "pipelineId": "p", "idempotencyKey": "k", "externalJobIds": {"f": "j"}}
    )
    with pytest.raises(IdempotencyKeyInUseError):
        store.create({"runId": "early", "pipelineId": "p", "idempotencyKey": "k"})
    found = store.find_by_external_job_id("f", "j")
    assert found is not None
    assert store.find_job_providers("j") == ["f"]
    time.sleep(0.3)

    assert store.get("first") is not None
    assert store.find_by_external_job_id("f", "j") is None
    assert store.find_job_providers("j") == []
    store.create({"runId": "second", "pipelineId": "p", "idempotencyKey": "k"})
    assert ids(store.list_runs(idempotency_key="k")) == ["first", "second"]
    with pytest.raises(IdempotencyKeyInUseError) as caught:
        store.create({"runId": "third", "pipelineId": "p", "idempotencyKey": "k"})
    assert caught.value.existing_run_id == "second"


# -- stale index entries --------------------------------------------------------------------------


def make_runs(store: RedisPipelineStateStore, count: int) -> list[str]:
    """Runs r00, r01, ... one second apart; r00 alone has tenant "t" and idempotency key "k"."""
    run_ids = []
    for n in range(count):
        run_id = f"r{n:02d}"
        document: dict[str, Any] = {
            "runId": run_id,
            "pipelineId": "p",
            "tenantId": f"t{n % 2}",
            "externalJobIds": {"fal": run_id},
            "createdAt": (T0 + timedelta(seconds=n)).isoformat(),
        }
        if n == 0:
            document.update(tenantId="t", idempotencyKey="k")
        store.create(document)
        run_ids.append(run_id)
    return run_ids


def expire(client: redis.Redis, store: RedisPipelineStateStore, *run_ids: str) -> None:
    """Simulate expiry: the run hash is gone, its index entries are left behind."""
    client.delete(*(store.keys.run(run_id) for run_id in run_ids))


def test_a_run_created_again_over_a_log_left_by_its_expired_hash_starts_a_new_log(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix)
    store.create({"runId": "r1", "pipelineId": "p"})
    store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=10))
    expire(redis_client, store, "r1")  # the hash went first; its stream (seqs 1, 2) is left
    assert redis_client.xlen(store.keys.events("r1")) == 2

    store.create({"runId": "r1", "pipelineId": "p2"})
    run = store.require("r1")
    assert (run.pipeline_id, [(e.seq, e.kind) for e in run.events]) == ("p2", [(1, "run-created")])


def test_an_index_entry_whose_run_is_gone_is_never_listed_and_is_pruned(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix)
    k = store.keys
    run_ids = make_runs(store, 8)
    expire(redis_client, store, "r00", "r03", "r04")
    live = [r for r in run_ids if r not in {"r00", "r03", "r04"}]
    assert "r03" in global_members(redis_client, k)

    assert ids(store.list_runs()) == live
    assert global_members(redis_client, k) == live

    assert ids(store.list_runs(status="pending")) == live
    assert global_members(redis_client, k, PipelineRunStatus.PENDING) == live
    assert ids(store.list_runs(tenant_id="t1")) == ["r01", "r05", "r07"]
    assert index_members(redis_client, k.by_tenant("t1")) == ["r01", "r05", "r07"]
    assert store.list_runs(idempotency_key="k") == []
    assert store.list_runs(tenant_id="t") == []
    assert index_members(redis_client, k.by_idempotency_key("k")) == []
    # Their entries-hash fields went with them.
    for gone in ["r00", "r03", "r04"]:
        for group in [k.global_group(gone), k.tenant_group("t"), k.idempotency_group("k")]:
            assert redis_client.hget(group.entries, gone) is None, (group, gone)
    assert redis_client.hget(k.tenant_group("t1").entries, "r03") is None
    assert redis_client.hget(k.global_group("r01").entries, "r01") is not None


def test_a_run_whose_hash_is_gone_is_missing_everywhere(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix)
    make_runs(store, 3)
    expire(redis_client, store, "r01")
    assert store.get("r01") is None
    assert store.find_by_external_job_id("fal", "r01") is None
    with pytest.raises(RunNotFoundError):
        store.list_events("r01")
    with pytest.raises(RunNotFoundError):
        store.update("r01", {"error": "x"})
    with pytest.raises(RunNotFoundError):
        store.append_event("r01", RunStarted(run_id="r01"))
    with pytest.raises(RunNotFoundError), store.lock("r01", timeout_ms=0):
        pass


@pytest.mark.parametrize("page_size", [1, 2, 3, 5])
def test_paging_stays_correct_around_stale_index_entries(
    redis_client: redis.Redis, prefix: str, page_size: int
) -> None:
    store = new_store(redis_client, prefix)
    run_ids = make_runs(store, 14)
    gone = {"r00", "r01", "r04", "r05", "r06", "r09", "r13"}
    expire(redis_client, store, *gone)
    live = [r for r in run_ids if r not in gone]

    paged: list[str] = []
    for offset in range(0, len(run_ids), page_size):
        page = ids(store.list_runs(limit=page_size, offset=offset))
        assert page == live[offset : offset + page_size]
        paged.extend(page)
    assert paged == live


@pytest.mark.parametrize("page_size", [1, 2, 4])
def test_paging_a_filtered_listing_stays_correct_around_stale_index_entries(
    redis_client: redis.Redis, prefix: str, page_size: int
) -> None:
    store = new_store(redis_client, prefix)
    run_ids = make_runs(store, 16)
    for run_id in run_ids[::3]:
        store.update(run_id, {"status": "running"})
    gone = {"r00", "r02", "r03", "r06", "r07", "r12"}
    expire(redis_client, store, *gone)
    live_running = [r for r in run_ids[::3] if r not in gone]
    live_pending = [r for r in run_ids if r not in gone and r not in run_ids[::3]]

    for status, want in [("running", live_running), (["pending"], live_pending)]:
        paged: list[str] = []
        for offset in range(0, len(run_ids), page_size):
            paged.extend(ids(store.list_runs(status=status, limit=page_size, offset=offset)))
        assert paged == want


def test_an_idempotency_key_whose_run_is_gone_can_be_taken_by_a_new_run(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix)
    store.create({"runId": "old", "pipelineId": "p", "idempotencyKey": "k"})
    expire(redis_client, store, "old")

    assert store.create({"runId": "new", "pipelineId": "p", "idempotencyKey": "k"}).version == 1
    assert ids(store.list_runs(idempotency_key="k")) == ["new"]
    with pytest.raises(IdempotencyKeyInUseError) as caught:
        store.create({"runId": "newer", "pipelineId": "p", "idempotencyKey": "k"})
    assert caught.value.existing_run_id == "new"


def test_a_run_id_created_again_after_it_expired_is_listed_once(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix)
    make_runs(store, 4)
    expire(redis_client, store, "r01")
    later = (T0 + timedelta(minutes=5)).isoformat()
    store.create({"runId": "r01", "pipelineId": "again", "createdAt": later})
    assert ids(store.list_runs()) == ["r00", "r02", "r03", "r01"]
    assert [e.seq for e in store.list_events("r01")] == [1]
    assert store.require("r01").pipeline_id == "again"


# -- more than one store on one server ----------------------------------------------------------


def test_a_status_change_by_another_store_instance_keeps_tenant_listings_right(
    redis_client: redis.Redis, prefix: str
) -> None:
    creator = new_store(redis_client, prefix)
    creator.create({"runId": "r1", "pipelineId": "p", "tenantId": "t"})
    creator.create({"runId": "r2", "pipelineId": "p", "tenantId": "t"})

    other = new_store(redis_client, prefix)
    other.update("r1", {"status": "running"})
    new_store(redis_client, prefix).cancel("r2", "stop")

    for store in [creator, other, new_store(redis_client, prefix)]:
        assert ids(store.list_runs(tenant_id="t", status="running")) == ["r1"]
        assert ids(store.list_runs(tenant_id="t", status="cancelled")) == ["r2"]
        assert store.list_runs(tenant_id="t", status="pending") == []
        assert ids(store.for_tenant("t").list_runs(status="running")) == ["r1"]


def test_two_store_instances_share_locks_and_fences(redis_client: redis.Redis, prefix: str) -> None:
    first = new_store(redis_client, prefix, lock_poll_interval_ms=10)
    second = new_store(redis_client, prefix, lock_poll_interval_ms=10)
    first.create({"runId": "r1", "pipelineId": "p"})
    with (
        first.lock("r1") as held,
        pytest.raises(LockTimeoutError),
        second.lock("r1", timeout_ms=0),
    ):
        pass
    with second.lock("r1", timeout_ms=0) as again:
        assert again.fence > held.fence


# -- an unreachable server ------------------------------------------------------------------------


def test_an_unreachable_server_is_reported_as_unavailable(prefix: str) -> None:
    store = RedisPipelineStateStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retries=0,
        prefix=prefix,
    )
    attempts: list[Any] = [
        lambda: store.create({"runId": "r1", "pipelineId": "p"}),
        lambda: store.get("r1"),
        lambda: store.update("r1", {"error": "x"}),
        lambda: store.append_event("r1", RunStarted(run_id="r1")),
        store.list_runs,
        lambda: store.find_by_external_job_id("fal", "j"),
        lambda: store.with_lock("r1", lambda run: run),
    ]
    started = time.monotonic()
    for attempt in attempts:
        with pytest.raises(StateStoreUnavailableError) as caught:
            attempt()
        assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    assert time.monotonic() - started < 5
    store.close()


# -- Redis Cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_node_cluster() -> Iterator[redis.Redis]:
    """A plain client to a one-node Redis Cluster that owns every slot.

    The node refuses any script or command whose keys hash to different slots (CROSSSLOT), and
    the client is not a cluster client, so nothing but the server checks. A cluster port p needs
    its bus port p + 10000 free too: ``free_cluster_port``, not a random ephemeral port. Shared
    by the module (a new node holds cluster_state:fail for 2 s); tests write under prefix "mp".
    """
    server = RedisServer(port=free_cluster_port())
    server.extra_args = (
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        os.path.join(server.directory, "nodes.conf"),
    )
    with server:
        client = redis.Redis.from_url(server.url)
        try:
            command: Any = client.execute_command
            command("CLUSTER", "ADDSLOTS", *range(16384))
            deadline = time.monotonic() + 5
            while b"cluster_state:ok" not in command("CLUSTER", "INFO"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            yield client
        finally:
            client.close()


class RequestLog:
    """Wraps a store's executor's ``_once`` to record every script and command it sends."""

    def __init__(self, store: RedisPipelineStateStore) -> None:
        self.original = store._executor._once
        self.scripts: list[Script] = []
        self.names: set[str] = set()
        store._executor._once = self  # type: ignore[method-assign]

    def __call__(self, request: Any) -> Any:
        items = (
            request.commands()
            if isinstance(request, Ordered)
            else request.items
            if isinstance(request, Batch)
            else (request,)
        )
        self.scripts += [item for item in items if isinstance(item, Script)]
        self.names.update(request_names(request))
        return self.original(request)


def test_every_write_script_touches_one_cluster_slot(one_node_cluster: redis.Redis) -> None:
    # A plain client cannot tell the node is a cluster's: ask for the cluster's way of indexing
    # (follow-ups), which a RedisCluster client gets by default.
    store = RedisPipelineStateStore(one_node_cluster, prefix="mp", indexes_in_script=False)
    sent = RequestLog(store)

    write_everything(store)  # every write, a voided claim included
    store.commit("r0", {"status": "completed"}, [RunStarted(run_id="r0")])
    expire(one_node_cluster, store, "r1")
    store.list_runs(status="running", tenant_id="t1")  # a repair on read: settles r1 as gone
    assert [event.seq for event in store.list_events("r0")][:1] == [1]
    assert isinstance(store.last_event("r0"), RunStarted)
    assert ids(store.list_runs(status="cancelled")) == ["r2"]
    # A window is paged by page_index, in one zset or merged over the global shards.
    assert ids(store.list_runs(tenant_id="t2", since=T0)) == ["r2"]
    assert store.list_runs(since=T0, offset=100, limit=1) == []

    # Every script ran, so the server checked every one ...
    assert set(SCRIPT_NAMES) <= sent.names
    # ... and each one's keys share a slot (what the server enforced, checked here by hash).
    for script in sent.scripts:
        assert len({key_slot(key.encode()) for key in script.keys}) == 1, script


def test_a_script_whose_keys_span_two_slots_is_refused_by_the_one_node_cluster(
    one_node_cluster: redis.Redis,
) -> None:
    """Control for the test above: the node does refuse a script writing a run and an index."""
    k = RedisKeys("mp")
    assert key_slot(k.run("r1").encode()) != key_slot(k.global_group("r1").everything.encode())
    command: Any = one_node_cluster.execute_command
    with pytest.raises(redis.ResponseError, match="same slot"):  # CROSSSLOT
        command("EVAL", "return redis.call('EXISTS', KEYS[1], KEYS[2])", 2,
                k.run("r1"), k.global_group("r1").everything)  # fmt: skip


def test_creates_write_the_global_indexes_on_every_primary_of_a_cluster(
    cluster_client: Any, prefix: str
) -> None:
    # One slot held the global indexes, so every create wrote to one primary; the shards spread
    # those writes over the 3 primaries of the suite's cluster, about a third each.
    store = RedisPipelineStateStore(cluster_client, prefix=prefix)
    for n in range(300):
        store.create({"runId": f"spread-{n}", "pipelineId": "p", "tenantId": f"t{n % 3}"})
    primaries = {node.name: 0 for node in cluster_client.get_primaries()}
    shards_on: dict[str, int] = dict.fromkeys(primaries, 0)
    for group in store.keys.global_groups():
        node = cluster_client.get_node_from_key(group.everything).name
        shards_on[node] += 1
        primaries[node] += cluster_client.zcard(group.status(PipelineRunStatus.PENDING))

    assert len(primaries) == 3
    assert sum(primaries.values()) == 300
    assert sorted(shards_on.values()) == [5, 5, 6]
    assert all(60 <= entries <= 140 for entries in primaries.values()), primaries
    assert sum(store.count_by_status().values()) == 300
    assert len(store.list_runs(offset=250, limit=100)) == 50


@pytest.mark.parametrize("backend", ["redis", "redis6"], indirect=True)
def test_a_lock_waiter_asked_to_wait_one_millisecond_is_not_blocked_forever(
    make_store: Any,
) -> None:
    # Redis 6.2 reads a BLPOP timeout of 0.001 s as 0 ms, i.e. "block forever": the store must
    # never send such a timeout (regression: a waiter hung until the socket timed out).
    store = make_store()
    store.create({"runId": "r1", "pipelineId": "p"})
    with store.lock("r1"):
        started = time.monotonic()
        store._drive(store._backend._wait_for_release("r1", 1.0))
        assert time.monotonic() - started < 1.0
