"""``reset_connections`` on the asyncio stores: every pooled connection is forgotten (a single
client's pool, each node's connections of a cluster client), and the store opens new ones."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from mpstate.aio import AsyncPipelineStateStore, AsyncRedisPipelineStateStore

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def pooled(store: AsyncRedisPipelineStateStore) -> list[Any]:
    """Every connection the client pools, idle or in use."""
    client = store.client
    if isinstance(client, AsyncRedisCluster):
        manager = client.nodes_manager
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        return list({id(c): c for node in nodes for c in node._connections}.values())
    pool: Any = client.connection_pool
    return [*pool._available_connections, *pool._in_use_connections]


async def test_after_a_reset_no_pool_holds_a_connection_and_the_store_still_works(
    async_store: AsyncPipelineStateStore,
) -> None:
    for i in range(12):  # a run per slot range on a cluster: every node gets connections
        await async_store.create({"runId": f"r{i}", "pipelineId": "p"})
    if not isinstance(async_store, AsyncRedisPipelineStateStore):
        async_store.reset_connections()  # nothing pooled: nothing to forget
        assert await async_store.get("r0") is not None
        return
    inherited = pooled(async_store)
    assert inherited
    if isinstance(async_store.client, AsyncRedisCluster):
        assert len(async_store.client.nodes_manager.nodes_cache) == 3
        assert all(node._connections for node in async_store.client.get_nodes())

    async_store.reset_connections()

    assert pooled(async_store) == []
    for i in range(12):
        assert await async_store.get(f"r{i}") is not None
    assert not {id(c) for c in pooled(async_store)} & {id(c) for c in inherited}
    for connection in inherited:  # a forked child would leave them to its parent
        await connection.disconnect()
