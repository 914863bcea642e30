"""Fixtures for the asyncio-only tests: async stores awaited natively on the test's event loop.

The tests run under anyio's pytest plugin (``@pytest.mark.anyio``) on the asyncio backend only:
the stores use asyncio itself (``asyncio.create_task``, ``asyncio.to_thread``), not anyio.
Each store writes under the test's ``prefix``, which is deleted afterwards (Redis and Cluster).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from aio_support import AIO_BACKENDS, AsyncStoreFactory
from key_cleanup import delete_prefix, delete_prefix_on_cluster
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from mpstate import PipelineStateStore, RedisPipelineStateStore
from mpstate.aio import (
    AsyncInMemoryPipelineStateStore,
    AsyncPipelineStateStore,
    AsyncRedisPipelineStateStore,
)

#: Longest a store's ``aclose`` may take in a teardown, in seconds.
ACLOSE_TIMEOUT_S = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=AIO_BACKENDS)
def aio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server_url(aio_backend: str, request: pytest.FixtureRequest) -> str | None:
    """The Redis (or Cluster startup node) the backend uses; None for the in-memory store."""
    if aio_backend == "aio-redis":
        return str(request.getfixturevalue("redis_url"))
    if aio_backend == "aio-cluster":
        return str(request.getfixturevalue("cluster_url"))
    return None


@pytest.fixture
async def make_async_store(
    aio_backend: str, server_url: str | None, prefix: str
) -> AsyncIterator[AsyncStoreFactory]:
    """Build asyncio stores of the current backend (all on one prefix) with the given options."""
    made: list[AsyncPipelineStateStore] = []

    def factory(**options: Any) -> AsyncPipelineStateStore:
        store: AsyncPipelineStateStore
        if aio_backend == "aio-memory":
            store = AsyncInMemoryPipelineStateStore(**options)
        elif aio_backend == "aio-redis":
            assert server_url is not None
            store = AsyncRedisPipelineStateStore(AsyncRedis.from_url(server_url), prefix, **options)
        else:
            assert server_url is not None
            client = AsyncRedisCluster.from_url(server_url)
            store = AsyncRedisPipelineStateStore(client, prefix, **options)
        made.append(store)
        return store

    yield factory
    for store in made:
        if isinstance(store, AsyncRedisPipelineStateStore):
            # Bounded: a test stopped by its timeout leaves its tasks running in this event
            # loop, and they can keep the client busy forever (the teardown would hang the run).
            await asyncio.wait_for(store.aclose(), ACLOSE_TIMEOUT_S)
    if aio_backend == "aio-redis":
        assert server_url is not None
        sync_client = redis.Redis.from_url(server_url)
        delete_prefix(sync_client, prefix)
        sync_client.close()
    elif aio_backend == "aio-cluster":
        assert server_url is not None
        cluster = RedisCluster.from_url(server_url)
        delete_prefix_on_cluster(cluster, prefix)
        cluster.close()


@pytest.fixture
def async_store(make_async_store: AsyncStoreFactory) -> AsyncPipelineStateStore:
    """An asyncio store of each backend with default options."""
    return make_async_store()


@pytest.fixture
def sync_store(
    aio_backend: str, server_url: str | None, prefix: str, make_async_store: AsyncStoreFactory
) -> Iterator[PipelineStateStore]:
    """The sync store on the same Redis (or Cluster) and prefix as the backend's async stores.

    The prefix is deleted by ``make_async_store`` (torn down after this fixture).
    """
    if server_url is None:
        pytest.skip("the in-memory stores share nothing across instances")
    client: redis.Redis | RedisCluster
    if aio_backend == "aio-cluster":
        client = RedisCluster.from_url(server_url)
    else:
        client = redis.Redis.from_url(server_url)
    store = RedisPipelineStateStore(client, prefix=prefix)
    yield store
    client.close()
