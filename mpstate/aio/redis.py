"""``AsyncRedisPipelineStateStore``: the Redis backend behind the asyncio API.

The same plans, keys and Lua scripts as ``RedisPipelineStateStore``; this shell carries out
their requests with ``redis.asyncio`` (a ``Redis`` or a ``RedisCluster`` client).
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mpstate.aio.store import AsyncPipelineStateStore
from mpstate.errors import InvalidInputError
from mpstate.plans import Pause
from mpstate.redis.backend import RedisBackend
from mpstate.redis.requests import (
    Batch,
    Command,
    Ordered,
    Script,
    batch_args,
    eval_args,
    reachable,
    scripts_to_reload,
)
from mpstate.redis.urls import client_settings

__all__ = ["AsyncRedisPipelineStateStore"]

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


class AsyncRedisPipelineStateStore(RedisBackend, AsyncPipelineStateStore):
    """The store on Redis >= 6.2 or a Redis Cluster, for asyncio."""

    def __init__(
        self,
        client: AsyncClient,
        prefix: str = "mp",
        *,
        retry: Retry | None = None,
        **options: Any,
    ) -> None:
        super().__init__(prefix, **options)
        if not isinstance(client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster):
            raise InvalidInputError(
                "client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster, "
                f"not {client!r}"
            )
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidInputError(f"retry must be a redis.asyncio.retry.Retry, not {retry!r}")
        self.client = client
        self._retry = retry
        if isinstance(client, redis.asyncio.cluster.RedisCluster):
            kwargs: dict[str, Any] = client.connection_kwargs
        else:
            kwargs = client.connection_pool.connection_kwargs
        self._socket_timeout = kwargs.get("socket_timeout")
        self._initialized = not isinstance(client, redis.asyncio.cluster.RedisCluster)
        self._initializing: asyncio.Lock | None = None

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
        return cls(client, retry=Retry(**settings.retry_args()), **options)

    async def aclose(self) -> None:
        """Close the client's connections (a cluster client reads its slot map again on reuse)."""
        await self.client.aclose()
        self._initialized = not isinstance(self.client, redis.asyncio.cluster.RedisCluster)

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

    async def _execute(self, request: Any) -> Any:
        with reachable():
            if not self._initialized:
                await self._initialize()
            if self._retry is None:
                return await self._once(request)
            return await self._retry.call_with_retry(
                lambda: self._once(request), lambda _error: _nothing()
            )

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
        if isinstance(request, Pause):
            return await asyncio.sleep(request.seconds)
        if isinstance(request, Command):
            return await self.client.execute_command(*request.args)
        if isinstance(request, Script):
            return await self._eval(request)
        if isinstance(request, Ordered):
            return await self._in_order(request)
        if not request.items:
            return []
        pipe = self.client.pipeline(transaction=False)
        try:
            for item in request.items:
                pipe.execute_command(*batch_args(item))
            replies = await pipe.execute(raise_on_error=False)
        finally:
            await _reset(pipe)
        for position in scripts_to_reload(request, replies):
            script = request.items[position]
            assert isinstance(script, Script)
            replies[position] = await self.client.execute_command(*eval_args(script, by_sha=False))
        return replies

    async def _in_order(self, ordered: Ordered) -> list[Any]:
        if isinstance(self.client, redis.asyncio.cluster.RedisCluster):
            return [await self._once(request) for request in ordered.requests]
        pipe = self.client.pipeline(transaction=False)
        try:
            for item in ordered.commands():
                pipe.execute_command(*batch_args(item))
            flat = await pipe.execute(raise_on_error=False)
        finally:
            await _reset(pipe)
        if scripts_to_reload(ordered, flat):  # the server lost its scripts: again, one by one
            return [await self._once(request) for request in ordered.requests]
        return ordered.regroup(flat)

    async def _eval(self, script: Script) -> Any:
        try:
            return await self.client.execute_command(*eval_args(script, by_sha=True))
        except redis.exceptions.NoScriptError:
            return await self.client.execute_command(*eval_args(script, by_sha=False))


async def _nothing() -> None:
    """The retry's failure callback: nothing to undo between attempts."""


async def _reset(pipe: Any) -> None:
    reset = getattr(pipe, "reset", None)
    if reset is not None:
        outcome = reset()
        if hasattr(outcome, "__await__"):
            await outcome
