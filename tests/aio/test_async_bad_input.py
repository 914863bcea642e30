"""Bad input to the asyncio stores raises the sync store's typed errors, before any I/O.

The Redis stores here point at a port nobody listens on: a call that reached the network would
fail with ``StateStoreUnavailableError`` (plain client) or a cluster client's connect error, so
an ``InvalidInputError`` shows the argument was refused first. The control tests prove the port
really is closed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from mpstate import InvalidInputError, PipelineRun, StateStoreUnavailableError
from mpstate.aio import (
    AsyncHeldLock,
    AsyncInMemoryPipelineStateStore,
    AsyncPipelineStateStore,
    AsyncRedisPipelineStateStore,
)
from mpstate.testing._servers import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

Call = Callable[[AsyncPipelineStateStore], Awaitable[object]]


async def _lock(store: AsyncPipelineStateStore, run_id: Any, **options: Any) -> None:
    async with store.lock(run_id, **options):
        pass


async def _first_event(store: AsyncPipelineStateStore, *args: Any, **kwargs: Any) -> object:
    feed: AsyncIterator[object] = store.follow_events(*args, **kwargs)
    return await feed.__anext__()


async def _extend(store: AsyncPipelineStateStore, ttl_ms: Any) -> None:
    run = PipelineRun.model_validate({"runId": "r1", "pipelineId": "p"})
    await AsyncHeldLock("r1", "token", 1, run, store._extend).extend(ttl_ms)


async def _for_tenant(store: AsyncPipelineStateStore) -> object:
    return store.for_tenant("")


BAD_CALLS: dict[str, Call] = {
    "create without a pipeline id": lambda s: s.create({"runId": "r1"}),
    "create of a non-mapping": lambda s: s.create(["r1"]),  # type: ignore[arg-type]
    "create with events": lambda s: s.create(
        {"runId": "r1", "pipelineId": "p", "events": [{"kind": "run-started", "runId": "r1"}]}
    ),
    "create_or_get with an empty run id": lambda s: s.create_or_get(
        {"runId": "", "pipelineId": "p"}
    ),
    "get with an empty run id": lambda s: s.get(""),
    "require with a non-string run id": lambda s: s.require(7),  # type: ignore[arg-type]
    "get with a run id too long": lambda s: s.get("r" * 10_000),
    "list_events with a negative since_seq": lambda s: s.list_events("r1", since_seq=-1),
    "list_events with a zero limit": lambda s: s.list_events("r1", limit=0),
    "follow_events with a negative timeout": lambda s: _first_event(s, "r1", timeout_s=-1),
    "follow_events with a bool since_seq": lambda s: _first_event(s, "r1", since_seq=True),
    "list_runs of an unknown status": lambda s: s.list_runs(status="bogus"),
    "list_runs with a zero limit": lambda s: s.list_runs(limit=0),
    "find_by_external_job_id with an empty provider": lambda s: s.find_by_external_job_id(
        "", "job"
    ),
    "find_job_providers with an empty job id": lambda s: s.find_job_providers(""),
    "update of an unknown field": lambda s: s.update("r1", {"nope": 1}),
    "update of the version": lambda s: s.update("r1", {"version": 3}),
    "update with expected_version 0": lambda s: s.update("r1", {"error": "e"}, expected_version=0),
    "update with a bool fence": lambda s: s.update("r1", {"error": "e"}, fence=True),
    "commit of nothing": lambda s: s.commit("r1"),
    "commit of another run's event": lambda s: s.commit(
        "r1", events=[{"kind": "run-started", "runId": "r2"}]
    ),
    "commit of events after the terminal one": lambda s: s.commit(
        "r1",
        events=[
            {"kind": "run-completed", "runId": "r1", "totalCostUsd": 0},
            {"kind": "run-started", "runId": "r1"},
        ],
    ),
    "commit of too many events": lambda s: s.commit(
        "r1", events=[{"kind": "run-started", "runId": "r1"}] * 101
    ),
    "append_event of an unknown kind": lambda s: s.append_event(
        "r1", {"kind": "bogus", "runId": "r1"}
    ),
    "cancel with a non-string reason": lambda s: s.cancel("r1", 5),  # type: ignore[arg-type]
    "lock of an empty run id": lambda s: _lock(s, ""),
    "lock with a negative timeout": lambda s: _lock(s, "r1", timeout_ms=-1),
    "lock with a float timeout": lambda s: _lock(s, "r1", timeout_ms=1.5),
    "with_lock of a non-callable": lambda s: s.with_lock("r1", "not callable"),  # type: ignore[arg-type]
    "extend with a zero ttl": lambda s: _extend(s, 0),
    "for_tenant with an empty tenant": _for_tenant,
}


def closed_port_store(kind: str) -> AsyncPipelineStateStore:
    port = free_port()  # nothing listens there
    if kind == "memory":
        return AsyncInMemoryPipelineStateStore()
    if kind == "redis":
        client = redis.asyncio.Redis(
            host="127.0.0.1",
            port=port,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=AsyncRetry(NoBackoff(), 0),
        )
        return AsyncRedisPipelineStateStore(client, "bad")
    cluster = redis.asyncio.cluster.RedisCluster(
        host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5
    )
    return AsyncRedisPipelineStateStore(cluster, "bad")


@pytest.fixture(params=["memory", "redis", "cluster"])
async def offline_store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    store = closed_port_store(str(request.param))
    yield store
    if isinstance(store, AsyncRedisPipelineStateStore):
        await store.aclose()


@pytest.mark.parametrize("name", BAD_CALLS)
async def test_bad_input_is_refused_as_invalid_input_before_any_io(
    offline_store: AsyncPipelineStateStore, name: str
) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInputError):
        await BAD_CALLS[name](offline_store)
    assert time.monotonic() - started < 0.5


async def test_control_a_valid_call_to_the_closed_port_does_reach_the_network() -> None:
    store = closed_port_store("redis")
    try:
        with pytest.raises(StateStoreUnavailableError):
            await store.get("r1")
    finally:
        await store.aclose()


async def test_control_a_valid_call_to_the_closed_cluster_port_does_reach_the_network() -> None:
    store = closed_port_store("cluster")
    try:
        with pytest.raises(Exception) as caught:
            await store.get("r1")
        assert not isinstance(caught.value, InvalidInputError)
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "construct",
    [
        lambda url: AsyncRedisPipelineStateStore(redis.Redis.from_url(url)),  # type: ignore[arg-type]
        lambda url: AsyncRedisPipelineStateStore("redis://localhost"),  # type: ignore[arg-type]
        lambda url: AsyncRedisPipelineStateStore(
            redis.asyncio.Redis.from_url(url),
            retry=SyncRetry(NoBackoff(), 1),
        ),
        lambda url: AsyncRedisPipelineStateStore(redis.asyncio.Redis.from_url(url), ""),
        lambda url: AsyncRedisPipelineStateStore(redis.asyncio.Redis.from_url(url), "a{b}"),
        lambda url: AsyncRedisPipelineStateStore(
            redis.asyncio.Redis.from_url(url), lock_ttl_seconds=0
        ),
        lambda url: AsyncRedisPipelineStateStore(
            redis.asyncio.Redis.from_url(url), run_ttl_seconds=float("nan")
        ),
        lambda url: AsyncRedisPipelineStateStore.from_url(url, retries=-1),
        lambda url: AsyncRedisPipelineStateStore.from_url(url, retries=True),
        lambda url: AsyncRedisPipelineStateStore.from_url(url, lock_poll_interval_ms=0),
        lambda url: AsyncInMemoryPipelineStateStore(lock_ttl_seconds=-1),
        lambda url: AsyncInMemoryPipelineStateStore(lock_acquire_timeout_ms=1.5),
    ],
    ids=[
        "sync-client",
        "url-as-client",
        "sync-retry",
        "empty-prefix",
        "hash-tag-prefix",
        "zero-lock-ttl",
        "nan-run-ttl",
        "negative-retries",
        "bool-retries",
        "zero-poll-interval",
        "memory-negative-ttl",
        "memory-float-timeout",
    ],
)
async def test_bad_store_arguments_are_refused_as_invalid_input_when_the_store_is_built(
    construct: Callable[[str], object],
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(InvalidInputError):
        construct(url)


async def test_an_asyncio_retry_is_accepted_where_a_sync_one_is_refused() -> None:
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    store = AsyncRedisPipelineStateStore(client, retry=AsyncRetry(NoBackoff(), 1))
    await store.aclose()
