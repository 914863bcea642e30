"""``AsyncRedisExecutor``: carries out a Redis plan's requests with ``redis.asyncio``.

The asyncio twin of ``mpstate.redis.execution.RedisExecutor``, on a ``redis.asyncio.Redis`` or
``redis.asyncio.cluster.RedisCluster`` client: the same requests, retries and replica
acknowledgements (``mpstate.redis.replication``), awaited.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.asyncio.cluster import PipelineCommand
from redis.asyncio.retry import Retry

from mpstate.errors import InvalidInputError
from mpstate.plans import Pause, drive_async
from mpstate.redis.dispatch import Call, Pipeline, carry_out
from mpstate.redis.replication import OnNode, RefreshSlots, ReplicaAcks
from mpstate.redis.requests import UNAVAILABLE, Batch, Command, Ordered, Script, reachable

__all__ = ["AsyncClient", "AsyncRedisExecutor"]

log = logging.getLogger("mpstate.redis")

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


class AsyncRedisExecutor:
    """The asyncio I/O of a Redis store: ``await executor(request)`` is one request's reply."""

    def __init__(
        self, client: AsyncClient, *, retry: Retry | None = None, acks: ReplicaAcks | None = None
    ) -> None:
        if not isinstance(client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster):
            raise InvalidInputError(
                "client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster, "
                f"not {client!r}"
            )
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidInputError(f"retry must be a redis.asyncio.retry.Retry, not {retry!r}")
        self.client = client
        self._retry = retry
        self._acks = acks or ReplicaAcks()
        #: Whether the client is a Redis Cluster's (index groups then live on other nodes).
        self.cluster = isinstance(client, redis.asyncio.cluster.RedisCluster)
        if isinstance(client, redis.asyncio.cluster.RedisCluster):
            kwargs: dict[str, Any] = client.connection_kwargs
        else:
            kwargs = client.connection_pool.connection_kwargs
        #: The client's socket timeout in seconds (None: unknown); bounds blocking reads.
        self.socket_timeout: float | None = kwargs.get("socket_timeout")
        self._initialized = not self.cluster
        self._initializing: asyncio.Lock | None = None

    async def __call__(self, request: Any) -> Any:
        """See ``RedisExecutor.__call__``."""
        with reachable():
            if not self._initialized:
                await self._initialize()
            if self._retry is None:
                return await self._once(request)
            return await self._retry.call_with_retry(
                lambda: self._once(request), lambda _error: _nothing()
            )

    async def aclose(self) -> None:
        """Close the client's connections (a cluster client reads its slot map again on reuse)."""
        await self.client.aclose()
        self._initialized = not self.cluster

    def reset_connections(self) -> None:
        """See ``PipelineStateStore.reset_connections``: a cluster client's every node's
        connections (redis-py's asyncio cluster nodes pool their own, with no reset of their
        own), and the initialization lock, which belongs to the parent's event loop."""
        self._initializing = None
        client = self.client
        if not isinstance(client, redis.asyncio.cluster.RedisCluster):
            client.connection_pool.reset()  # type: ignore[no-untyped-call]
            return
        manager = client.nodes_manager
        for node in [*manager.nodes_cache.values(), *manager.startup_nodes.values()]:
            node._connections.clear()
            node._free.clear()

    async def _initialize(self) -> None:
        """Read the cluster's slot map once, before the first request.

        redis-py's asyncio cluster client initializes itself on first use, and several tasks
        doing that at once tear down each other's connections (seen here: 'NoneType' object has
        no attribute 'writelines'); one initialization under a lock avoids it.
        """
        if self._initializing is None:
            self._initializing = asyncio.Lock()
        async with self._initializing:
            if not self._initialized:
                assert isinstance(self.client, redis.asyncio.cluster.RedisCluster)
                await self.client.initialize()
                self._initialized = True

    async def _once(self, request: Command | Script | Batch | Ordered | Pause) -> Any:
        cluster = self.cluster
        return await drive_async(carry_out(request, cluster=cluster, acks=self._acks), self._call)

    async def _call(self, call: Call | Pipeline | Pause | OnNode | RefreshSlots) -> Any:
        """One client call ``carry_out`` asks for."""
        if isinstance(call, Call):
            return await self.client.execute_command(*call.args)
        if isinstance(call, Pipeline):
            return await self._pipeline(self.client, call.commands)
        if isinstance(call, Pause):
            return await asyncio.sleep(call.seconds)
        return await self._on_node(call)

    async def _on_node(self, request: OnNode | RefreshSlots) -> Any:
        """Carry out a request of ``replicated``: a pipeline on one connection to the node
        serving a key (on a cluster, through that node's own connections), or a slot refresh."""
        client = self.client
        if isinstance(request, RefreshSlots):
            await self._refresh_slots()
            return None
        if not isinstance(client, redis.asyncio.cluster.RedisCluster):
            return await self._pipeline(client, request.commands)
        try:
            node = client.get_node_from_key(request.key)
        except redis.exceptions.RedisClusterException:
            return None
        if node is None:
            return None
        commands = [PipelineCommand(n, *args) for n, args in enumerate(request.commands)]
        await node.execute_pipeline(commands)  # errors are left in each command's result
        return [command.result for command in commands]

    async def _refresh_slots(self) -> None:
        if isinstance(self.client, redis.asyncio.cluster.RedisCluster):
            try:
                await self.client.nodes_manager.initialize()
            except (*UNAVAILABLE, redis.exceptions.RedisClusterException):
                log.info("could not refresh the cluster's slot map yet", exc_info=True)

    @staticmethod
    async def _pipeline(client: AsyncClient, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        """The replies of ``commands`` sent in one pipeline (errors as values)."""
        pipe = client.pipeline(transaction=False)
        try:
            for args in commands:
                pipe.execute_command(*args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        finally:
            await _reset(pipe)
        return replies


async def _nothing() -> None:
    """The retry's failure callback: nothing to undo between attempts."""


async def _reset(pipe: Any) -> None:
    reset = getattr(pipe, "reset", None)
    if reset is not None:
        outcome = reset()
        if hasattr(outcome, "__await__"):
            await outcome
