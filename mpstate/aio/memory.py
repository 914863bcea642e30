"""``AsyncInMemoryPipelineStateStore``: the in-memory backend behind the asyncio API."""

from __future__ import annotations

import asyncio
from typing import Any, Unpack

from mpstate.aio.store import AsyncPipelineStateStore
from mpstate.memory import MemoryBackend
from mpstate.options import StoreOptionFields, StoreOptions
from mpstate.plans import Blocking

__all__ = ["AsyncInMemoryPipelineStateStore", "AsyncMemoryExecutor"]


class AsyncMemoryExecutor:
    """Runs the in-memory plans' waits (a lock held by another, a quiet ``follow_events``) in a
    worker thread, so the event loop keeps serving while they block."""

    async def __call__(self, request: Any) -> Any:
        assert isinstance(request, Blocking), request
        return await asyncio.to_thread(request.wait)

    async def aclose(self) -> None:
        """Nothing to close."""

    def reset_connections(self) -> None:
        """No connections to forget."""


class AsyncInMemoryPipelineStateStore(AsyncPipelineStateStore):
    """The whole contract in process memory, for asyncio code and its tests.

    Takes the same options as ``InMemoryPipelineStateStore``.
    """

    def __init__(
        self, options: StoreOptions | None = None, **overrides: Unpack[StoreOptionFields]
    ) -> None:
        backend = MemoryBackend(StoreOptions.merged(options, overrides))
        super().__init__(backend, AsyncMemoryExecutor())
