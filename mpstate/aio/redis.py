"""``AsyncRedisPipelineStateStore``: the Redis store for asyncio.

The same backend (``RedisBackend``: plans, keys and Lua scripts) and options as
``RedisPipelineStateStore``, with the asyncio executor (``AsyncRedisExecutor``, on a
``redis.asyncio`` ``Redis`` or ``RedisCluster`` client); it takes the same arguments.
"""

from __future__ import annotations

from typing import Self, Unpack

import redis.asyncio
import redis.asyncio.cluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mpstate.aio.redis_execution import AsyncClient, AsyncRedisExecutor
from mpstate.aio.store import AsyncPipelineStateStore
from mpstate.options import StoreOptionFields, StoreOptions
from mpstate.redis.backend import RedisBackend
from mpstate.redis.keys import RedisKeys
from mpstate.redis.replication import ReplicaAcks
from mpstate.redis.urls import StoreArguments, client_settings

__all__ = ["AsyncRedisPipelineStateStore"]


class AsyncRedisPipelineStateStore(AsyncPipelineStateStore):
    """The store on Redis >= 6.2 or a Redis Cluster, for asyncio.

    Takes ``RedisPipelineStateStore``'s arguments, with a ``redis.asyncio`` client and retry.
    """

    _backend: RedisBackend
    _executor: AsyncRedisExecutor

    def __init__(
        self,
        client: AsyncClient,
        prefix: str = "mp",
        *,
        options: StoreOptions | None = None,
        retry: Retry | None = None,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 1000,
        indexes_in_script: bool | None = None,
        **overrides: Unpack[StoreOptionFields],
    ) -> None:
        acks = ReplicaAcks(replica_acks, replica_ack_timeout_ms)
        executor = AsyncRedisExecutor(client, retry=retry, acks=acks)
        merged = StoreOptions.merged(options, overrides)
        backend = RedisBackend.for_client(
            prefix, merged, executor, indexes_in_script=indexes_in_script
        )
        super().__init__(backend, executor)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        retries: int = 2,
        cluster: bool = False,
        **arguments: Unpack[StoreArguments],
    ) -> Self:
        """See ``RedisPipelineStateStore.from_url`` (the asyncio cluster client connects lazily)."""
        settings = client_settings(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            retries=retries,
            cluster=cluster,
        )
        client: AsyncClient
        if settings.cluster:
            client = redis.asyncio.cluster.RedisCluster.from_url(settings.url, **settings.timeouts)
        else:
            client = redis.asyncio.Redis.from_url(
                settings.url,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=30,
                **settings.timeouts,
            )
        return cls(client, retry=Retry(**settings.retry_args()), **arguments)

    @property
    def client(self) -> AsyncClient:
        """The ``redis.asyncio`` client the store sends its requests with."""
        return self._executor.client

    @property
    def keys(self) -> RedisKeys:
        """The store's key names (``mpstate.redis.keys``), from its prefix."""
        return self._backend.keys
