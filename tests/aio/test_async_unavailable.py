"""An unreachable Redis makes the asyncio store raise ``StateStoreUnavailableError``, promptly.

A refused port, a server that accepts and never answers, and a real redis-server stopped under a
waiting feed and an auto-renewed lock. The bounds follow ``from_url``'s: about
``(retries + 1) * (socket_connect_timeout + socket_timeout)`` plus a backoff of at most 0.5 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis
from aio_support import renew_tasks

from mpstate import StateStoreUnavailableError
from mpstate.aio import AsyncPipelineStateStore, AsyncRedisPipelineStateStore
from mpstate.testing import RedisServer
from mpstate.testing._servers import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

#: socket_timeout = socket_connect_timeout = 0.5 s and one retry: two attempts and one backoff.
WITHIN_S = 5.0

Operation = Callable[[AsyncPipelineStateStore, str], Awaitable[object]]


async def _lock(store: AsyncPipelineStateStore, run_id: str) -> None:
    async with store.lock(run_id, timeout_ms=100):
        pass


async def _follow(store: AsyncPipelineStateStore, run_id: str) -> None:
    async for _ in store.follow_events(run_id, timeout_s=1):
        pass


OPERATIONS: dict[str, Operation] = {
    "create": lambda s, r: s.create({"runId": r, "pipelineId": "p"}),
    "create_or_get": lambda s, r: s.create_or_get({"runId": r, "pipelineId": "p"}),
    "get": lambda s, r: s.get(r),
    "update": lambda s, r: s.update(r, {"error": "e"}),
    "commit": lambda s, r: s.commit(r, {"error": "e"}, [{"kind": "run-started", "runId": r}]),
    "cancel": lambda s, r: s.cancel(r, "stop"),
    "append_event": lambda s, r: s.append_event(r, {"kind": "run-started", "runId": r}),
    "list_events": lambda s, r: s.list_events(r),
    "follow_events": _follow,
    "list_runs": lambda s, r: s.list_runs(),
    "find_by_external_job_id": lambda s, r: s.find_by_external_job_id("provider", "job"),
    "find_job_providers": lambda s, r: s.find_job_providers("job"),
    "lock": _lock,
    "with_lock": lambda s, r: s.with_lock(r, lambda run: run.version, timeout_ms=100),
}


def outage_store(url: str) -> AsyncRedisPipelineStateStore:
    return AsyncRedisPipelineStateStore.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, retries=1, prefix="outage"
    )


async def assert_unavailable(
    operation: Operation, store: AsyncPipelineStateStore, within: float = WITHIN_S
) -> StateStoreUnavailableError:
    started = time.monotonic()
    with pytest.raises(StateStoreUnavailableError) as caught:
        await operation(store, "r1")
    elapsed = time.monotonic() - started
    cause = caught.value.__cause__
    assert isinstance(cause, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError), (
        f"cause {cause!r} is not a redis connection error"
    )
    assert elapsed <= within, f"took {elapsed:.2f} s, more than {within:.2f} s"
    return caught.value


@pytest.mark.parametrize("name", OPERATIONS)
async def test_a_refused_connection_raises_unavailable_within_seconds(name: str) -> None:
    store = outage_store(f"redis://127.0.0.1:{free_port()}/0")
    try:
        await assert_unavailable(OPERATIONS[name], store)
    finally:
        await store.aclose()


@pytest.fixture
async def silent_url() -> AsyncIterator[str]:
    """A server on this loop that accepts every connection and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client hangs up

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    server.close()
    for writer in held:
        writer.close()
    await server.wait_closed()


@pytest.mark.parametrize("name", ["create", "get", "list_runs", "lock", "follow_events"])
async def test_a_server_that_never_answers_raises_unavailable_within_seconds(
    silent_url: str, name: str
) -> None:
    store = outage_store(silent_url)
    try:
        error = await assert_unavailable(OPERATIONS[name], store)
        assert isinstance(error.__cause__, redis.exceptions.TimeoutError)
    finally:
        await store.aclose()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server this test may stop (never the session's shared one)."""
    server = RedisServer().start()
    yield server
    server.cleanup()


async def test_a_feed_waiting_when_the_server_dies_raises_unavailable_and_the_store_recovers(
    own_server: RedisServer,
) -> None:
    store = outage_store(own_server.url)
    try:
        await store.create({"runId": "r1", "pipelineId": "p"})

        async def follow() -> None:
            async for _ in store.follow_events("r1", since_seq=1, timeout_s=30):
                pass

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.2)  # the feed waits in XREAD BLOCK
        stopped_at = time.monotonic()
        await asyncio.to_thread(own_server.stop)
        with pytest.raises(StateStoreUnavailableError):
            await asyncio.wait_for(follower, 10)
        assert time.monotonic() - stopped_at < WITHIN_S

        await asyncio.to_thread(own_server.start)  # same port, empty
        assert await store.get("r1") is None
        await store.create({"runId": "r2", "pipelineId": "p"})
        assert (await store.require("r2")).version == 1
    finally:
        await store.aclose()


async def test_an_outage_under_an_auto_renewed_lock_raises_unavailable_on_exit_and_stops_renewing(
    own_server: RedisServer,
) -> None:
    store = AsyncRedisPipelineStateStore.from_url(
        own_server.url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retries=1,
        prefix="outage",
        lock_ttl_seconds=0.3,
    )
    try:
        await store.create({"runId": "r1", "pipelineId": "p"})
        started = time.monotonic()
        with pytest.raises(StateStoreUnavailableError):
            async with store.lock("r1", auto_renew=True):
                renewers = renew_tasks()
                await asyncio.to_thread(own_server.stop)
                await asyncio.sleep(0.5)  # the renewer meets the outage and keeps trying
                assert not any(task.done() for task in renewers)
        assert time.monotonic() - started < 0.5 + WITHIN_S
        assert len(renewers) == 1 and all(task.done() for task in renewers)
        assert renew_tasks() == set()
    finally:
        await store.aclose()


@pytest.mark.parametrize("name", ["get", "create", "lock"])
async def test_an_unreachable_cluster_raises_unavailable_within_seconds(name: str) -> None:
    store = outage_store(f"redis+cluster://127.0.0.1:{free_port()}/0")
    try:
        started = time.monotonic()
        try:
            await OPERATIONS[name](store, "r1")
        except StateStoreUnavailableError:
            pass
        except Exception as exc:
            raise AssertionError(f"raised {type(exc).__module__}.{exc!r}") from exc
        else:
            raise AssertionError("an unreachable cluster answered")
        assert time.monotonic() - started <= WITHIN_S
    finally:
        await store.aclose()
