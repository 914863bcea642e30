"""``RedisPipelineStateStore``: the store contract on Redis or Redis Cluster, synchronously.

Composed of the Redis backend (``RedisBackend``: the plans, keys and scripts), the sync executor
(``RedisExecutor``: a redis-py ``redis.Redis`` or ``redis.cluster.RedisCluster`` client, retries,
replica acknowledgements) and the ``StoreOptions``.
"""

from __future__ import annotations

from typing import Self, Unpack

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from mpstate.options import StoreOptionFields, StoreOptions
from mpstate.redis.backend import RedisBackend
from mpstate.redis.execution import RedisExecutor, SyncClient
from mpstate.redis.keys import RedisKeys
from mpstate.redis.replication import ReplicaAcks
from mpstate.redis.requests import reachable
from mpstate.redis.urls import StoreArguments, client_settings
from mpstate.store import PipelineStateStore

__all__ = ["RedisPipelineStateStore"]


class RedisPipelineStateStore(PipelineStateStore):
    """The store on Redis >= 6.2 or a Redis Cluster. Keys are listed in ``mpstate.redis.keys``.

    ``options`` and the keyword overrides are ``StoreOptions``; ``retry``, ``replica_acks`` and
    ``replica_ack_timeout_ms`` are the executor's (``AsyncRedisPipelineStateStore`` takes the
    same arguments). ``indexes_in_script`` (default: on a single Redis, yes) has a run's own
    script settle its index entries, so a create or a status change is one script; False keeps
    the cluster's follow-up writes (``mpstate.redis.indexing``) on a single Redis too.
    """

    _backend: RedisBackend
    _executor: RedisExecutor

    def __init__(
        self,
        client: SyncClient,
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
        executor = RedisExecutor(client, retry=retry, acks=acks)
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
        """A store on a new client for ``url`` with bounded timeouts and retries.

        A ``redis+cluster://`` (or ``rediss+cluster://``) URL names a Redis Cluster by any of its
        nodes and gets a ``RedisCluster`` client; ``cluster=True`` says the same of a plain URL.
        The client itself does not retry (redis-py would retry the connect inside every command
        retry, multiplying the wait); the store retries each whole request ``retries`` times with
        a short exponential backoff. An unreachable server therefore raises
        ``StateStoreUnavailableError`` after about ``(retries + 1) * (socket_connect_timeout +
        socket_timeout)`` at most. Retried writes are safe: every write script is idempotent per
        operation id. The other arguments are the constructor's.
        """
        settings = client_settings(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            retries=retries,
            cluster=cluster,
        )
        client: SyncClient
        no_retry = Retry(NoBackoff(), 0)
        if settings.cluster:
            with reachable():  # a cluster client asks a node for the slot map right away
                client = RedisCluster.from_url(settings.url, retry=no_retry, **settings.timeouts)
        else:
            client = redis.Redis.from_url(
                settings.url, retry=no_retry, health_check_interval=30, **settings.timeouts
            )
        return cls(client, retry=Retry(**settings.retry_args()), **arguments)

    @property
    def client(self) -> SyncClient:
        """The redis-py client the store sends its requests with."""
        return self._executor.client

    @property
    def keys(self) -> RedisKeys:
        """The store's key names (``mpstate.redis.keys``), from its prefix."""
        return self._backend.keys
