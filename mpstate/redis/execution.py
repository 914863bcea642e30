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
from mpstate.redis.replication import OnNode, RefreshSlots, ReplicaAcks, replicated
from mpstate.redis.requests import (
    UNAVAILABLE,
    Batch,
    Command,
    Ordered,
    Script,
    batch_args,
    eval_args,
    reachable,
    scripts_to_reload,
)

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
        if isinstance(request, Pause):
            return time.sleep(request.seconds)
        if isinstance(request, Command):
            return self._command(*request.args)
        if isinstance(request, Script):
            if self._acks.wanted_for(request):
                return drive(replicated(request, self._acks), self._on_node)
            return self._eval(request)
        if isinstance(request, Ordered):
            return self._in_order(request)
        if not request.items:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for item in request.items:
                pipe.execute_command(*batch_args(item))
            replies = pipe.execute(raise_on_error=False)
        for position in scripts_to_reload(request, replies):
            script = request.items[position]
            assert isinstance(script, Script)
            replies[position] = self._command(*eval_args(script, by_sha=False))
        return replies

    def _in_order(self, ordered: Ordered) -> list[Any]:
        if isinstance(self.client, RedisCluster) or self._acks.count:
            return [self._once(request) for request in ordered.requests]
        pipe: Any
        with self.client.pipeline(transaction=False) as pipe:
            for item in ordered.commands():
                pipe.execute_command(*batch_args(item))
            flat = pipe.execute(raise_on_error=False)
        if scripts_to_reload(ordered, flat):  # the server lost its scripts: again, one by one
            return [self._once(request) for request in ordered.requests]
        return ordered.regroup(flat)

    def _on_node(self, request: OnNode | RefreshSlots) -> Any:
        """Carry out a request of ``replicated``: a pipeline on the node serving a key (on a
        cluster, that node's own client), or a refresh of the slot map."""
        if isinstance(request, RefreshSlots):
            self._refresh_slots()
            return None
        node = self._node_client(request.key)
        if node is None:
            return None
        pipe: Any
        with node.pipeline(transaction=False) as pipe:
            for args in request.commands:
                pipe.execute_command(*args)
            return pipe.execute(raise_on_error=False)

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

    def _command(self, *args: Any) -> Any:
        return self.client.execute_command(*args)  # type: ignore[no-untyped-call]

    def _eval(self, script: Script) -> Any:
        try:
            return self._command(*eval_args(script, by_sha=True))
        except redis.exceptions.NoScriptError:
            return self._command(*eval_args(script, by_sha=False))


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
