"""``RedisPipelineStateStore``: the store contract on Redis or Redis Cluster, synchronously.

The plans live in ``RedisBackend``; this shell carries out their requests with a redis-py client
(``redis.Redis`` or ``redis.cluster.RedisCluster``): one command, one script (EVALSHA, EVAL when
the server does not know it yet) or one pipeline per request, retried as a whole on connection
errors. Retrying is safe: every write script is idempotent per operation id.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from mpstate.core import check_int
from mpstate.deliveries import UNMATCHED_KEPT
from mpstate.errors import InvalidInputError, WriteNotReplicatedError
from mpstate.plans import Pause
from mpstate.redis.backend import RedisBackend
from mpstate.redis.requests import (
    DURABLE_SCRIPTS,
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
from mpstate.redis.urls import client_settings, cluster_url
from mpstate.store import PipelineStateStore

__all__ = ["RedisPipelineStateStore", "cluster_url"]

log = logging.getLogger("mpstate.redis")

SyncClient = redis.Redis | RedisCluster


class RedisPipelineStateStore(RedisBackend, PipelineStateStore):
    """The store on Redis >= 6.2 or a Redis Cluster. Keys are listed in ``mpstate.redis.keys``."""

    def __init__(
        self,
        client: SyncClient,
        prefix: str = "mp",
        *,
        run_ttl_seconds: float = 30 * 86400,
        lock_ttl_seconds: float = 60,
        idempotency_ttl_seconds: float = 86400,
        external_job_ttl_seconds: float = 7 * 86400,
        lock_acquire_timeout_ms: int = 5000,
        lock_poll_interval_ms: int = 100,
        unmatched_kept: int = UNMATCHED_KEPT,
        retry: Retry | None = None,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 1000,
    ) -> None:
        super().__init__(
            prefix,
            run_ttl_seconds=run_ttl_seconds,
            lock_ttl_seconds=lock_ttl_seconds,
            idempotency_ttl_seconds=idempotency_ttl_seconds,
            external_job_ttl_seconds=external_job_ttl_seconds,
            lock_acquire_timeout_ms=lock_acquire_timeout_ms,
            lock_poll_interval_ms=lock_poll_interval_ms,
            unmatched_kept=unmatched_kept,
        )
        if not isinstance(client, redis.Redis | RedisCluster):
            raise InvalidInputError(
                f"client must be a redis.Redis or redis.cluster.RedisCluster, not {client!r}"
            )
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidInputError(f"retry must be a redis.retry.Retry, not {retry!r}")
        self.client = client
        self._retry = retry
        self._socket_timeout = _socket_timeout(client)
        self._replica_acks = check_int(replica_acks, "replica_acks", minimum=0)
        self._replica_ack_timeout_ms = check_int(
            replica_ack_timeout_ms, "replica_ack_timeout_ms", minimum=1
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        retries: int = 2,
        cluster: bool = False,
        **options: Any,
    ) -> Self:
        """A store on a new client for ``url`` with bounded timeouts and retries.

        A ``redis+cluster://`` (or ``rediss+cluster://``) URL names a Redis Cluster by any of its
        nodes and gets a ``RedisCluster`` client; ``cluster=True`` says the same of a plain URL.
        The client itself does not retry (redis-py would retry the connect inside every command
        retry, multiplying the wait); the store retries each whole request ``retries`` times with
        a short exponential backoff. An unreachable server therefore raises
        ``StateStoreUnavailableError`` after about ``(retries + 1) * (socket_connect_timeout +
        socket_timeout)`` at most. Retried writes are safe: every write script is idempotent per
        operation id.
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
        return cls(client, retry=Retry(**settings.retry_args()), **options)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def reset_connections(self) -> None:
        """See ``PipelineStateStore.reset_connections``: a cluster client's every node pool."""
        for pool in _pools(self.client):
            pool.reset()

    # -- carrying out requests ------------------------------------------------------------------

    def _execute(self, request: Any) -> Any:
        """One request, retried per ``retry`` on connection errors, which are then reported as
        ``StateStoreUnavailableError``."""
        with reachable():
            if self._retry is None:
                return self._once(request)
            return self._retry.call_with_retry(lambda: self._once(request), lambda _error: None)

    def _once(self, request: Command | Script | Batch | Ordered | Pause) -> Any:
        if isinstance(request, Pause):
            return time.sleep(request.seconds)
        if isinstance(request, Command):
            return self._command(*request.args)
        if isinstance(request, Script):
            if self._replica_acks and request.name in DURABLE_SCRIPTS:
                return self._eval_replicated(request)
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
        if isinstance(self.client, RedisCluster) or self._replica_acks:
            return [self._once(request) for request in ordered.requests]
        pipe: Any
        with self.client.pipeline(transaction=False) as pipe:
            for item in ordered.commands():
                pipe.execute_command(*batch_args(item))
            flat = pipe.execute(raise_on_error=False)
        if scripts_to_reload(ordered, flat):  # the server lost its scripts: again, one by one
            return [self._once(request) for request in ordered.requests]
        return ordered.regroup(flat)

    def _eval_replicated(self, script: Script) -> Any:
        """Run a write script, then WAIT for ``replica_acks`` replicas on the same connection.

        WAIT counts the writes of its own connection, so both go in one pipeline to the node
        that serves the script's slot (on a cluster, that node's own client).
        """
        node = self._node_client(script.keys[0])
        reply: Any = None
        pipe: Any
        for by_sha in (True, False):  # EVAL when the node does not know the script yet
            with node.pipeline(transaction=False) as pipe:
                pipe.execute_command(*eval_args(script, by_sha=by_sha))
                pipe.execute_command("WAIT", self._replica_acks, self._replica_ack_timeout_ms)
                reply, acknowledged = pipe.execute(raise_on_error=False)
            if not isinstance(reply, redis.exceptions.NoScriptError):
                break
        if isinstance(reply, redis.exceptions.MovedError | redis.exceptions.AskError):
            self._refresh_slots()
            raise redis.exceptions.ConnectionError(f"the slot moved: {reply}")  # retried
        if isinstance(reply, BaseException):
            raise reply
        if int(acknowledged) < self._replica_acks:
            raise WriteNotReplicatedError(
                self._replica_acks, int(acknowledged), self._replica_ack_timeout_ms
            )
        return reply

    def _node_client(self, key: str) -> redis.Redis:
        if not isinstance(self.client, RedisCluster):
            return self.client
        try:
            node = self.client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        except redis.exceptions.RedisClusterException as exc:
            raise redis.exceptions.ConnectionError(f"no node serves {key!r}: {exc}") from exc
        if node is None or node.redis_connection is None:
            self._refresh_slots()
            raise redis.exceptions.ConnectionError(f"no node serves {key!r} yet")
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
