"""mpstate for asyncio: the same store contract, awaited.

::

    from mpstate.aio import AsyncRedisPipelineStateStore

    store = AsyncRedisPipelineStateStore.from_url("redis://localhost:6379/0")
    run = await store.create({"runId": "r1", "pipelineId": "video"})
    async for event in store.follow_events("r1", timeout_s=30):
        ...

Models, keys, Lua scripts, validation and every guard are the sync store's (``mpstate.core``
plans); these classes only carry out the I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mpstate.aio.memory import AsyncInMemoryPipelineStateStore
from mpstate.aio.store import AsyncHeldLock, AsyncPipelineStateStore

if TYPE_CHECKING:
    from mpstate.aio.redis import AsyncRedisPipelineStateStore

__all__ = [
    "AsyncHeldLock",
    "AsyncInMemoryPipelineStateStore",
    "AsyncPipelineStateStore",
    "AsyncRedisPipelineStateStore",
]


def __getattr__(name: str) -> Any:
    # The Redis backend is imported on first use, as ``mpstate``'s: the asyncio in-memory store
    # needs no redis package.
    if name == "AsyncRedisPipelineStateStore":
        try:
            from mpstate.aio.redis import AsyncRedisPipelineStateStore  # noqa: PLC0415 - lazy
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "AsyncRedisPipelineStateStore needs the redis package: pip install 'mpstate[redis]'"
            ) from exc
        return AsyncRedisPipelineStateStore
    raise AttributeError(f"module 'mpstate.aio' has no attribute {name!r}")
