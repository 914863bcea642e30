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

from mpstate.aio.memory import AsyncInMemoryPipelineStateStore
from mpstate.aio.redis import AsyncRedisPipelineStateStore
from mpstate.aio.store import AsyncHeldLock, AsyncPipelineStateStore

__all__ = [
    "AsyncHeldLock",
    "AsyncInMemoryPipelineStateStore",
    "AsyncPipelineStateStore",
    "AsyncRedisPipelineStateStore",
]
