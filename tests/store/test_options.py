"""One typed options path: every store takes ``options=StoreOptions(...)`` and every one of its
fields as a keyword override, and the Redis stores take the same executor settings, sync or
asyncio."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster

from mpstate import InMemoryPipelineStateStore, InvalidInputError, RedisPipelineStateStore
from mpstate.aio import AsyncInMemoryPipelineStateStore, AsyncRedisPipelineStateStore
from mpstate.options import StoreOptionFields, StoreOptions
from mpstate.testing._servers import free_port

#: A value other than the default for every field.
CHANGED: dict[str, Any] = {
    "run_ttl_seconds": 1000.0,
    "lock_ttl_seconds": 7.5,
    "idempotency_ttl_seconds": 600.0,
    "external_job_ttl_seconds": 1200.0,
    "lock_acquire_timeout_ms": 250,
    "lock_poll_interval_ms": 20,
    "unmatched_kept": 50,
}

Build = Callable[..., Any]


def closed_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: building a store needs no I/O


STORES: dict[str, Build] = {
    "memory": InMemoryPipelineStateStore,
    "aio-memory": AsyncInMemoryPipelineStateStore,
    "redis": lambda **kw: RedisPipelineStateStore(redis.Redis.from_url(closed_url()), **kw),
    "aio-redis": lambda **kw: AsyncRedisPipelineStateStore(
        redis.asyncio.Redis.from_url(closed_url()), **kw
    ),
    "aio-cluster": lambda **kw: AsyncRedisPipelineStateStore(
        redis.asyncio.cluster.RedisCluster.from_url(closed_url()), **kw
    ),
    "redis-from-url": lambda **kw: RedisPipelineStateStore.from_url(closed_url(), **kw),
    "aio-redis-from-url": lambda **kw: AsyncRedisPipelineStateStore.from_url(closed_url(), **kw),
}


def test_the_typed_keyword_overrides_are_exactly_the_options_fields() -> None:
    fields = {field.name: field.type for field in dataclasses.fields(StoreOptions)}
    assert set(StoreOptionFields.__annotations__) == set(fields) == set(CHANGED)
    hints = get_type_hints(StoreOptionFields)
    assert {name: hints[name].__name__ for name in fields} == fields


@pytest.mark.parametrize("kind", STORES)
def test_every_store_takes_every_option_as_a_keyword(kind: str) -> None:
    store = STORES[kind](**CHANGED)
    assert store.options == StoreOptions(**CHANGED)


@pytest.mark.parametrize("kind", STORES)
def test_every_store_takes_an_options_object_and_overrides_on_top_of_it(kind: str) -> None:
    shared = StoreOptions(**CHANGED)

    assert STORES[kind](options=shared).options == shared
    tweaked = STORES[kind](options=shared, lock_ttl_seconds=3)
    assert tweaked.options == dataclasses.replace(shared, lock_ttl_seconds=3)
    assert STORES[kind]().options == StoreOptions()


@pytest.mark.parametrize("kind", STORES)
def test_options_that_are_not_store_options_are_refused(kind: str) -> None:
    with pytest.raises(InvalidInputError, match="options must be a StoreOptions"):
        STORES[kind](options={"lock_ttl_seconds": 3})
    with pytest.raises(InvalidInputError, match="lock_ttl_seconds"):
        STORES[kind](options=StoreOptions(), lock_ttl_seconds=0)


@pytest.mark.parametrize(
    ("sync", "asyncio"),
    [
        (RedisPipelineStateStore.__init__, AsyncRedisPipelineStateStore.__init__),
        (RedisPipelineStateStore.from_url, AsyncRedisPipelineStateStore.from_url),
        (InMemoryPipelineStateStore.__init__, AsyncInMemoryPipelineStateStore.__init__),
    ],
)
def test_the_asyncio_stores_take_the_same_arguments_as_the_sync_ones(
    sync: Callable[..., Any], asyncio: Callable[..., Any]
) -> None:
    def arguments(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
        parameters = inspect.signature(function).parameters.values()
        return [(p.name, p.kind, p.default) for p in parameters]

    assert arguments(sync) == arguments(asyncio)


@pytest.mark.parametrize("kind", ["redis", "aio-redis", "redis-from-url", "aio-redis-from-url"])
def test_the_redis_stores_check_their_replica_settings(kind: str) -> None:
    STORES[kind](replica_acks=2, replica_ack_timeout_ms=10)  # accepted by both flavours
    with pytest.raises(InvalidInputError, match="replica_acks"):
        STORES[kind](replica_acks=-1)
    with pytest.raises(InvalidInputError, match="replica_ack_timeout_ms"):
        STORES[kind](replica_ack_timeout_ms=0)
