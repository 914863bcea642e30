"""``AsyncInMemoryPipelineStateStore``: the in-memory backend behind the asyncio API."""

from __future__ import annotations

import asyncio
from typing import Any

from mpstate.aio.store import AsyncPipelineStateStore
from mpstate.memory import MemoryBackend
from mpstate.plans import Blocking

__all__ = ["AsyncInMemoryPipelineStateStore"]


class AsyncInMemoryPipelineStateStore(MemoryBackend, AsyncPipelineStateStore):
    """The whole contract in process memory, for asyncio code and its tests.

    Its waits (a lock held by another, a quiet ``follow_events``) run in a worker thread, so the
    event loop keeps serving while they block.
    """

    async def _execute(self, request: Any) -> Any:
        assert isinstance(request, Blocking), request
        return await asyncio.to_thread(request.wait)
