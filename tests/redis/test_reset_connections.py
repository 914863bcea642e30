"""``reset_connections`` in a forked child: the store forgets every pooled connection it
inherited (a single Redis client's pool, each node's pool of a cluster client), without closing
them, so the child opens its own and the parent keeps using its own.

Celery prefork children call it through ``MpState`` on ``worker_process_init``.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from mpstate import RedisPipelineStateStore

pytestmark = pytest.mark.timeout(60)


def pools_of(client: redis.Redis | RedisCluster) -> list[Any]:
    """The client's connection pools: its own, or each cluster node's."""
    if isinstance(client, RedisCluster):
        return [
            node.redis_connection.connection_pool
            for node in client.get_nodes()
            if node.redis_connection is not None
        ]
    return [client.connection_pool]


def pooled(client: redis.Redis | RedisCluster) -> set[int]:
    """Ids of every connection the client's pools hold, idle or in use."""
    return {
        id(connection)
        for pool in pools_of(client)
        for connection in [*pool._available_connections, *pool._in_use_connections]
    }


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest, prefix: str) -> Any:
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    store = RedisPipelineStateStore.from_url(url, prefix=prefix, cluster=request.param == "cluster")
    yield store
    store.close()


def warm(store: RedisPipelineStateStore) -> None:
    """Use connections on every node: a run per slot range on a cluster."""
    for i in range(12):
        store.create({"runId": f"r{i}", "pipelineId": "p"})
        assert store.get(f"r{i}") is not None


def test_after_a_reset_no_pool_holds_a_connection_and_the_store_still_works(
    store: RedisPipelineStateStore,
) -> None:
    warm(store)
    assert pooled(store.client)
    if isinstance(store.client, RedisCluster):
        assert len(pools_of(store.client)) == 3
        assert all(pool._available_connections for pool in pools_of(store.client))

    store.reset_connections()

    assert pooled(store.client) == set()
    assert store.get("r0") is not None


def test_a_forked_child_that_resets_uses_only_its_own_connections_and_the_parent_keeps_its_own(
    store: RedisPipelineStateStore,
) -> None:
    warm(store)
    inherited = pooled(store.client)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        outcome = "ok"
        try:
            store.reset_connections()
            assert pooled(store.client) == set(), "inherited connections are still pooled"
            for i in range(12):
                assert store.get(f"r{i}") is not None
            assert not pooled(store.client) & inherited, "an inherited connection was used"
        except BaseException:  # reported to the parent
            outcome = traceback.format_exc()
        os.write(write, outcome.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as reply:
        outcome = reply.read()
    os.waitpid(pid, 0)

    assert outcome == "ok"
    assert pooled(store.client) == inherited  # the parent's pools were left alone ...
    for i in range(12):
        assert store.get(f"r{i}") is not None  # ... and their connections still work
    assert pooled(store.client) == inherited


def test_a_new_prefork_child_signal_makes_mpstate_reset_the_stores_connections(
    store: RedisPipelineStateStore,
) -> None:
    from celery import Celery  # noqa: PLC0415 - the Celery extra, only for this test
    from celery.signals import worker_process_init  # noqa: PLC0415

    from mpstate.celery import MpState  # noqa: PLC0415

    app = Celery("reset-test", broker="memory://", set_as_current=False)
    mp = MpState(app, store)
    try:
        warm(store)
        assert pooled(store.client)

        worker_process_init.send(sender=None)

        assert pooled(store.client) == set()
    finally:
        mp.close()
        app.close()
