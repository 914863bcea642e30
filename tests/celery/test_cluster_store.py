"""The harness's ``store_backend="cluster"``: the store is really on the Redis Cluster.

The Celery modules parametrized with ``store_backend`` pass on the cluster only if their store is
there and nowhere else: the broker (and ``Harness.client``) stays the single Redis, the store's
keys spread over the cluster's masters, and the harness deletes every one of them afterwards.
Skipped unless ``MPSTATE_TEST_CLUSTER`` is set, like every cluster case.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery_support import Harness, harness
from redis.cluster import RedisCluster

from mpstate.celery import PipelineTask
from mpstate.models import PipelineRunStatus
from mpstate.redis.keys import RedisKeys

pytestmark = pytest.mark.parametrize("store_backend", ["cluster"], indirect=True)

RUNS = 8


def store_keys_by_master(cluster: RedisCluster, prefix: str) -> dict[str, list[bytes]]:
    """The keys under ``prefix`` on each master of the cluster (masters with none left out)."""
    found: dict[str, list[bytes]] = {}
    for master in cluster.get_primaries():  # type: ignore[no-untyped-call]
        node = cluster.get_redis_connection(master)
        keys = list(node.scan_iter(match=RedisKeys(prefix).pattern(), count=1000))
        if keys:
            found[master.name] = keys
    return found


def define_step(h: Harness) -> None:
    @h.app.task(base=PipelineTask, bind=True, shared=False, name="cluster.step")
    def step(self: Any) -> dict[str, Any]:
        return {"artifactIds": [f"a-{self.request.id}"], "costUsd": 0.01}


def test_the_store_is_on_the_cluster_and_the_broker_queue_on_the_single_redis(
    store_url: str, redis_url: str, cluster_url: str, prefix: str
) -> None:
    cluster = RedisCluster.from_url(cluster_url)
    single = redis.Redis.from_url(redis_url)
    try:
        with harness(
            redis_url,
            store_url,
            prefix,
            client_url=redis_url,
            broker_transport_options={"polling_interval": 0.2},
        ) as h:
            assert isinstance(h.store.client, RedisCluster)
            assert isinstance(h.store_client, RedisCluster)
            assert not isinstance(h.client, RedisCluster)
            define_step(h)
            steps = [{"stepId": "only", "operation": "cluster.step"}]
            run_ids = [h.mp.start_run("cluster", steps).run_id for _ in range(RUNS)]

            # No worker yet: the first steps wait in the broker, read through ``h.client``.
            assert h.client.llen(h.queue) == RUNS
            h.start_worker()
            for run_id in run_ids:
                assert h.wait_terminal(run_id).status is PipelineRunStatus.COMPLETED

            # The runs are hash-tagged by run id: eight of them land on more than one master.
            on_cluster = store_keys_by_master(cluster, prefix)
            assert len(on_cluster) > 1, on_cluster
            assert RedisKeys(prefix).run(run_ids[0]).encode() in {
                key for keys in on_cluster.values() for key in keys
            }
            assert list(single.scan_iter(match=RedisKeys(prefix).pattern())) == []
            # The indexes (a slot of their own) list every run, completed.
            listed = h.store.list_runs(status="completed")
            assert sorted(run.run_id for run in listed) == sorted(run_ids)

        assert store_keys_by_master(cluster, prefix) == {}
    finally:
        cluster.close()
        single.close()
