"""``RedisExecutor``: carries out a Redis plan's requests with a sync redis-py client.

A ``redis.Redis`` or a ``redis.cluster.RedisCluster``: one command, one script (EVALSHA, EVAL when
the server does not know it yet) or one pipeline per request, retried as a whole on connection
errors (safe: every write script is idempotent per operation id), which are then reported as
``StateStoreUnavailableError``. Durable scripts are followed by WAIT when replica acknowledgements
are asked for (``replication``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.retry import Retry

from mpstate.errors import InvalidInputError
from mpstate.plans import Pause, drive
from mpstate.redis.dispatch import Call, Pipeline, carry_out
from mpstate.redis.replication import OnNode, RefreshSlots, ReplicaAcks
from mpstate.redis.requests import UNAVAILABLE, Batch, Command, Ordered, Script, reachable

__all__ = ["RedisExecutor", "SyncClient"]

log = logging.getLogger("mpstate.redis")

SyncClient = redis.Redis | RedisCluster


class RedisExecutor:
    """The sync I/O of a Redis store: ``executor(request)`` is one request's reply."""

    def __init__(
        self, client: SyncClient, *, retry: Retry | None = None, acks: ReplicaAcks | None = None
    ) -> None:
        if not isinstance(client, redis.Redis | RedisCluster):
            raise InvalidInputError(
                f"client must be a redis.Redis or redis.cluster.RedisCluster, not {client!r}"
            )
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidInputError(f"retry must be a redis.retry.Retry, not {retry!r}")
        self.client = client
        self._retry = retry
        self._acks = acks or ReplicaAcks()
        #: The client's socket timeout in seconds (None: unknown); bounds blocking reads.
        self.socket_timeout = _socket_timeout(client)
        #: Whether the client is a Redis Cluster's (index groups then live on other nodes).
        self.cluster = isinstance(client, RedisCluster)

    def __call__(self, request: Any) -> Any:
        """One request, retried per ``retry`` on connection errors, which are then reported as
        ``StateStoreUnavailableError``."""
        with reachable():
            if self._retry is None:
                return self._once(request)
            return self._retry.call_with_retry(lambda: self._once(request), lambda _error: None)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def reset_connections(self) -> None:
        """See ``PipelineStateStore.reset_connections``: a cluster client's every node pool."""
        for pool in _pools(self.client):
            pool.reset()

    def _once(self, request: Command | Script | Batch | Ordered | Pause) -> Any:
        return drive(carry_out(request, cluster=self.cluster, acks=self._acks), self._call)

    def _call(self, call: Call | Pipeline | Pause | OnNode | RefreshSlots) -> Any:
        """One client call ``carry_out`` asks for."""
        if isinstance(call, Call):
            return self.client.execute_command(*call.args)  # type: ignore[no-untyped-call]
        if isinstance(call, Pipeline):
            return _pipeline(self.client, call.commands)
        if isinstance(call, Pause):
            return time.sleep(call.seconds)
        return self._on_node(call)

    def _on_node(self, request: OnNode | RefreshSlots) -> Any:
        """Carry out a request of ``replicated``: a pipeline on the node serving a key (on a
        cluster, that node's own client), or a refresh of the slot map."""
        if isinstance(request, RefreshSlots):
            self._refresh_slots()
            return None
        node = self._node_client(request.key)
        return None if node is None else _pipeline(node, request.commands)

    def _node_client(self, key: str) -> redis.Redis | None:
        if not isinstance(self.client, RedisCluster):
            return self.client
        try:
            node = self.client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        except redis.exceptions.RedisClusterException:
            return None
        if node is None or node.redis_connection is None:
            return None
        connection: redis.Redis = node.redis_connection
        return connection

    def _refresh_slots(self) -> None:
        if isinstance(self.client, RedisCluster):
            try:
                self.client.nodes_manager.initialize()
            except (*UNAVAILABLE, redis.exceptions.RedisClusterException):
                log.info("could not refresh the cluster's slot map yet", exc_info=True)


def _pipeline(client: SyncClient, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """The replies of ``commands`` sent in one pipeline (errors as values)."""
    pipe: Any
    with client.pipeline(transaction=False) as pipe:
        for args in commands:
            pipe.execute_command(*args)
        replies: list[Any] = pipe.execute(raise_on_error=False)
    return replies


def _pools(client: SyncClient) -> list[redis.ConnectionPool]:
    """The client's connection pools: its own, or one per cluster node it has met."""
    if not isinstance(client, RedisCluster):
        return [client.connection_pool]
    manager = client.nodes_manager
    pools: dict[int, redis.ConnectionPool] = {}
    for node in [*manager.nodes_cache.values(), *manager.startup_nodes.values()]:
        if node.redis_connection is not None:
            pool = node.redis_connection.connection_pool
            pools[id(pool)] = pool
    return list(pools.values())


def _socket_timeout(client: SyncClient) -> float | None:
    if isinstance(client, RedisCluster):
        kwargs: dict[str, Any] = client.get_connection_kwargs()  # type: ignore[no-untyped-call]
    else:
        kwargs = client.connection_pool.connection_kwargs
    timeout: float | None = kwargs.get("socket_timeout")
    return timeout
