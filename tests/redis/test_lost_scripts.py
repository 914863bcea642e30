"""A server that lost its scripts (a restart, a failover, SCRIPT FLUSH) gets them again.

Scripts run as EVALSHA; a server that answers NOSCRIPT gets the script's source (EVAL): for a
lone script, for the scripts of a pipelined batch, and for an ordered sequence (sent again one
by one). ``mpstate.redis.dispatch`` decides this once for the sync and the asyncio store; here
every kind of request runs right after the server's scripts were flushed, on a single Redis
and on a cluster, through both stores. Without the fallback each would raise NoScriptError.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from mpstate import PipelineRunStatus, RedisPipelineStateStore
from mpstate.aio import AsyncRedisPipelineStateStore
from mpstate.redis.scripts import lua_script
from mpstate.testing import RedisServer

pytestmark = pytest.mark.timeout(60)

Flush = Callable[[], None]


@pytest.fixture(params=["redis", "cluster"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool, Flush]]:
    """(URL, is a cluster, flush its scripts) of a server this test may flush: a private Redis,
    or the suite's own cluster (never a cluster given by URL)."""
    if request.param == "redis":
        with RedisServer() as private, redis.Redis(port=private.port) as admin:
            yield private.url, False, admin.script_flush
        return
    if os.environ.get("MPSTATE_TEST_CLUSTER", "").startswith(("redis://", "rediss://")):
        pytest.skip("flushes scripts: only on the suite's own cluster")
    url = request.getfixturevalue("cluster_url")
    with RedisCluster.from_url(url) as admin:
        primaries = RedisCluster.PRIMARIES
        yield url, True, lambda: admin.execute_command("SCRIPT FLUSH", target_nodes=primaries)


def assert_lost(url: str, cluster: bool) -> None:
    """The server really knows no script now (else the test would prove nothing)."""
    shas = [lua_script(name).sha for name in ("create_run", "commit_run", "load_run")]
    client: Any = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    with client:
        assert client.script_exists(*shas) == [False, False, False]


async def exercise(
    call: Callable[[Any], Awaitable[Any]], flush: Flush, url: str, cluster: bool
) -> None:
    """Create, change, read, list and cancel a run, the server's scripts flushed before each."""
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("create", lambda: call(lambda s: s.create({"runId": "r1", "pipelineId": "p"}))),
        ("update", lambda: call(lambda s: s.update("r1", {"status": "running"}))),
        ("get", lambda: call(lambda s: s.require("r1"))),
        ("list", lambda: call(lambda s: s.list_runs(status="running"))),
        ("cancel", lambda: call(lambda s: s.cancel("r1", "done"))),
    ]
    replies = {}
    for name, step in steps:
        flush()
        assert_lost(url, cluster)
        replies[name] = await step()
    assert replies["update"].status is PipelineRunStatus.RUNNING
    assert replies["get"].version == 2
    assert [run.run_id for run in replies["list"]] == ["r1"]
    assert replies["cancel"].status is PipelineRunStatus.CANCELLED


def test_the_sync_store_sends_lost_scripts_again(
    server: tuple[str, bool, Flush], prefix: str
) -> None:
    url, cluster, flush = server
    client: Any = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    store = RedisPipelineStateStore(client, prefix)

    async def call(operation: Callable[[RedisPipelineStateStore], Any]) -> Any:
        return operation(store)

    try:
        asyncio.run(exercise(call, flush, url, cluster))
    finally:
        store.close()


def test_the_asyncio_store_sends_lost_scripts_again(
    server: tuple[str, bool, Flush], prefix: str
) -> None:
    url, cluster, flush = server

    async def main() -> None:
        client: Any = AsyncRedisCluster.from_url(url) if cluster else AsyncRedis.from_url(url)
        store = AsyncRedisPipelineStateStore(client, prefix)

        async def call(operation: Callable[[AsyncRedisPipelineStateStore], Any]) -> Any:
            return await operation(store)

        try:
            await exercise(call, flush, url, cluster)
        finally:
            await store.aclose()

    asyncio.run(main())
