"""The Redis layout on a real server: documented keys, a TTL on every key, stale index entries."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from mpstate import (
    IdempotencyKeyInUseError,
    LockTimeoutError,
    PipelineRunStatus,
    RedisPipelineStateStore,
    RunNotFoundError,
    RunStarted,
    StateStoreUnavailableError,
    StepProgress,
)
from mpstate.fields import epoch_ms
from mpstate.redis.keys import RedisKeys
from mpstate.testing import RedisServer, free_port

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


def ids(runs: list[Any]) -> list[str]:
    return [run.run_id for run in runs]


# -- the documented layout ----------------------------------------------------------------------


def test_a_new_run_writes_the_documented_keys(redis_client: redis.Redis, prefix: str) -> None:
    store = new_store(redis_client, prefix)
    k = store.keys
    store.create({"runId": "r1", "pipelineId": "p", "createdAt": T0.isoformat()})

    written = keys_under(redis_client, prefix)
    operations = {key for key in written if key.startswith(f"{k.run('r1')}:op:")}
    assert len(operations) == 1
    assert written - operations == {
        k.run("r1"),
        k.events("r1"),
        k.all_runs(),
        k.by_status(PipelineRunStatus.PENDING),
    }
    assert redis_client.type(k.run("r1")) == b"hash"
    assert redis_client.type(k.events("r1")) == b"stream"
    entries = redis_client.xrange(k.events("r1"))
    assert entries is not None
    assert [entry_id for entry_id, _ in entries] == [b"0-1"]
    assert redis_client.zscore(k.all_runs(), "r1") == epoch_ms(T0)


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
        }
    )
    written = keys_under(redis_client, prefix)
    for key in [
        k.idempotency("t", "key"),
        k.job("fal", "j1"),
        k.job("replicate", "j2"),
        k.by_tenant("t"),
        k.by_tenant_status("t", PipelineRunStatus.PENDING),
        k.by_idempotency_key("key"),
    ]:
        assert key in written
    assert redis_client.get(k.idempotency("t", "key")) == b"r1"
    assert redis_client.get(k.job("fal", "j1")) == b"r1"


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
        assert_every_key_has_a_ttl(redis_client, prefix)
    store.with_lock("r1", lambda run: run)
    store.list_runs()
    store.list_runs(status="running", tenant_id="t1")
    store.find_by_external_job_id("fal", "j0b")

    written = assert_every_key_has_a_ttl(redis_client, prefix)
    for expected_key in [
        k.run("r0"),
        k.events("r0"),
        k.lock_wake("r0"),
        k.idempotency(None, "key0"),
        k.idempotency("t1", "key1"),
        k.job("fal", "j0b"),
        k.job("legacy", "l1"),
        k.all_runs(),
        k.by_status(PipelineRunStatus.CANCELLED),
        k.by_tenant("t2"),
        k.by_tenant_status("t1", PipelineRunStatus.RUNNING),
        k.by_idempotency_key("key2"),
    ]:
        assert expected_key in written
    assert any(":op:" in key for key in written)


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
        {"runId": "r1", "pipelineId": "p", "idempotencyKey": "k", "externalJobIds": {"f": "j"}}
    )

    def ttl_s(key: str) -> float:
        return float(redis_client.pttl(key)) / 1000

    for key in [k.run("r1"), k.events("r1")]:
        assert 995 < ttl_s(key) <= 1000, key
    # Indexes live twice the run TTL, re-asserted by each run every half run TTL (index_run.lua).
    for key in [k.all_runs(), k.by_idempotency_key("k")]:
        assert 1995 < ttl_s(key) <= 2000, key
    assert 495 < ttl_s(k.idempotency(None, "k")) <= 500
    assert 295 < ttl_s(k.job("f", "j")) <= 300
    with store.lock("r1"):
        assert 55 < ttl_s(k.lock("r1")) <= 60


def test_a_run_kept_alive_by_writes_stays_listed(redis_client: redis.Redis, prefix: str) -> None:
    store = new_store(redis_client, prefix, run_ttl_seconds=0.6)
    for run_id in ["kept", "dropped"]:
        store.create(
            {"runId": run_id, "pipelineId": "p", "tenantId": "t", "idempotencyKey": "k" + run_id}
        )
    time.sleep(0.35)
    store.update("kept", {"error": "still going"})
    store.append_event("kept", RunStarted(run_id="kept"))
    time.sleep(0.4)

    assert store.get("dropped") is None
    assert store.get("kept") is not None
    assert ids(store.list_runs()) == ["kept"]
    assert ids(store.list_runs(status="pending")) == ["kept"]
    assert ids(store.list_runs(tenant_id="t")) == ["kept"]
    assert ids(store.list_runs(tenant_id="t", status="pending")) == ["kept"]
    assert ids(store.list_runs(idempotency_key="kkept")) == ["kept"]


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
    time.sleep(0.3)

    assert store.get("first") is not None
    assert store.find_by_external_job_id("f", "j") is None
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


def test_an_index_entry_whose_run_is_gone_is_never_listed_and_is_pruned(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = new_store(redis_client, prefix)
    k = store.keys
    run_ids = make_runs(store, 8)
    expire(redis_client, store, "r00", "r03", "r04")
    live = [r for r in run_ids if r not in {"r00", "r03", "r04"}]
    assert "r03" in index_members(redis_client, k.all_runs())

    assert ids(store.list_runs()) == live
    assert index_members(redis_client, k.all_runs()) == live

    assert ids(store.list_runs(status="pending")) == live
    assert index_members(redis_client, k.by_status(PipelineRunStatus.PENDING)) == live
    assert ids(store.list_runs(tenant_id="t1")) == ["r01", "r05", "r07"]
    assert index_members(redis_client, k.by_tenant("t1")) == ["r01", "r05", "r07"]
    assert store.list_runs(idempotency_key="k") == []
    assert store.list_runs(tenant_id="t") == []
    assert index_members(redis_client, k.by_idempotency_key("k")) == []


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


@pytest.mark.xfail(
    strict=True,
    reason="Redis Cluster support is issue 6: create/commit also maintain index keys that live in "
    "other slots; on Cluster those become idempotent follow-up writes",
)
def test_every_write_script_touches_one_cluster_slot() -> None:
    # A one-node cluster owning every slot still refuses a script whose keys hash to different
    # slots (CROSSSLOT): this pins today's limit on a real server and flips when Cluster lands.
    with RedisServer(
        extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    ) as server:
        client = redis.Redis.from_url(server.url)
        try:
            command: Any = client.execute_command
            command("CLUSTER", "ADDSLOTS", *range(16384))
            deadline = time.monotonic() + 5
            while b"cluster_state:ok" not in command("CLUSTER", "INFO"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            store = RedisPipelineStateStore(client, prefix="mp")
            store.create({"runId": "r1", "pipelineId": "p", "tenantId": "t"})
            store.commit("r1", {"status": "running"}, [RunStarted(run_id="r1")])
            with store.lock("r1") as held:
                store.update("r1", {"error": "x"}, fence=held.fence)
            store.cancel("r1", "stop")
            assert ids(store.list_runs(status="cancelled")) == ["r1"]
        finally:
            client.close()


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
        store._wait_for_release("r1", 1.0)
        assert time.monotonic() - started < 1.0
