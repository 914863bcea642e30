"""``replica_acks`` on the asyncio Redis store: a durable write is followed by WAIT on its own
connection, as on the sync store (tests/redis/test_failover.py shows why it matters).

* on a Redis with no replica, ``replica_acks=1`` reports every durable write as failed
  (``WriteNotReplicatedError``) although the primary applied it, and ``replica_acks=0`` does not;
* with a replica attached, the same writes are acknowledged;
* on a Redis Cluster the WAIT goes to the node serving the run: acknowledged while its replica
  follows, reported failed once the replica's link is cut.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from replica_links import cut_replication

from mpstate import RedisPipelineStateStore, WriteNotReplicatedError
from mpstate.aio import AsyncRedisPipelineStateStore
from mpstate.testing import RedisServer
from mpstate.testing._cluster import LocalRedisCluster

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

#: WAIT's timeout when no replica can answer: short, the test waits it out on every write.
SHORT_WAIT_MS = 50


@pytest.fixture
def primary_with_replica() -> Iterator[RedisServer]:
    """A private Redis with one replica attached (and in sync) for the test."""
    with RedisServer() as primary:
        replica_of = ("--replicaof", "127.0.0.1", str(primary.port))
        with RedisServer(extra_args=replica_of), redis.Redis(port=primary.port) as admin:
            deadline = time.monotonic() + 10
            while int(admin.info("replication")["connected_slaves"]) != 1:
                assert time.monotonic() < deadline, "the replica did not attach"
                time.sleep(0.02)
            yield primary


@pytest.fixture
def cluster_with_replicas() -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(masters=3, replicas=1) as started:
        yield started


def new_run(run_id: str) -> dict[str, str]:
    return {"runId": run_id, "pipelineId": "p", "tenantId": "t"}


async def test_a_write_no_replica_confirmed_is_applied_but_reported_failed(
    redis_url: str, redis_client: redis.Redis, prefix: str
) -> None:
    store = AsyncRedisPipelineStateStore(
        AsyncRedis.from_url(redis_url),
        prefix,
        replica_acks=1,
        replica_ack_timeout_ms=SHORT_WAIT_MS,
    )
    try:
        with pytest.raises(WriteNotReplicatedError) as caught:
            await store.create(new_run("r1"))
    finally:
        await store.aclose()

    assert (caught.value.wanted, caught.value.acknowledged) == (1, 0)
    # The primary applied it: only its confirmation is missing (a retry with the same id is safe).
    assert RedisPipelineStateStore(redis_client, prefix=prefix).require("r1").version == 1


async def test_without_replica_acks_the_same_writes_are_acknowledged(
    redis_url: str, prefix: str
) -> None:
    store = AsyncRedisPipelineStateStore(
        AsyncRedis.from_url(redis_url), prefix, replica_acks=0, replica_ack_timeout_ms=SHORT_WAIT_MS
    )
    try:
        assert (await store.create(new_run("r1"))).version == 1
        assert (await store.update("r1", {"status": "running"}, expected_version=1)).version == 2
    finally:
        await store.aclose()


async def test_every_durable_write_confirmed_by_a_replica_is_acknowledged(
    primary_with_replica: RedisServer,
) -> None:
    store = AsyncRedisPipelineStateStore.from_url(
        primary_with_replica.url, prefix="acked", replica_acks=1, replica_ack_timeout_ms=5000
    )
    try:
        await store.create({**new_run("r1"), "idempotencyKey": "k1"})  # claim + create
        async with store.lock("r1") as held:  # acquire_lock
            await store.update("r1", {"status": "running"}, fence=held.fence)  # commit_run
        assert (await store.require("r1")).version == 2
    finally:
        await store.aclose()


async def test_on_a_cluster_the_wait_goes_to_the_node_serving_the_run(
    cluster_with_replicas: LocalRedisCluster,
) -> None:
    cluster = cluster_with_replicas
    store = AsyncRedisPipelineStateStore(
        AsyncRedisCluster.from_url(cluster.url), replica_acks=1, replica_ack_timeout_ms=2000
    )
    try:
        # Runs on every master: each WAIT is answered by that master's own replica.
        run_ids = [f"run-{n}" for n in range(24)]
        for run_id in run_ids:
            await store.create(new_run(run_id))
        served_by = {cluster.master_for_key(store.keys.run(r)).port: r for r in run_ids}
        assert len(served_by) == 3

        primary = cluster.masters[0]
        (replica,) = cluster.replicas_of(primary)
        cut_replication(primary, replica)
        on_cut, elsewhere = served_by.pop(primary.port), next(iter(served_by.values()))

        with pytest.raises(WriteNotReplicatedError):
            await store.update(on_cut, {"status": "running"})
        assert (await store.update(elsewhere, {"status": "running"})).version == 2
    finally:
        await store.aclose()
