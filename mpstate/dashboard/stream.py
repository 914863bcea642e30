"""A run's event log as server-sent events: each message is one event's JSON, its id the seq.

With an asyncio store the stream follows the log with ``follow_events`` (Redis: a blocking read
on the run's stream, no polling); without one it reads new events with the sync store in a
thread every ``POLL_S``. A comment line is sent at least every ``HEARTBEAT_S`` so proxies keep
the connection, and an ``end`` message closes the stream after the run's terminal event. A client
that reconnects sends ``Last-Event-ID`` and misses nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread

from mpstate.aio.store import AsyncPipelineStateStore
from mpstate.events import TERMINAL_EVENT_KINDS, PipelineEvent
from mpstate.store import PipelineStateStore

__all__ = ["HEARTBEAT_S", "POLL_S", "event_message", "sse_events"]

HEARTBEAT_S = 15.0
POLL_S = 1.0


def event_message(event: PipelineEvent) -> str:
    """One SSE message: ``id`` is the seq, ``data`` the event as JSON (camelCase, with seq)."""
    document = json.dumps(event.model_dump(mode="json", by_alias=True, exclude_none=True))
    return f"id: {event.seq}\ndata: {document}\n\n"


async def sse_events(
    run_id: str,
    since_seq: int,
    store: PipelineStateStore,
    async_store: AsyncPipelineStateStore | None,
    *,
    ended: bool = False,
) -> AsyncIterator[str]:
    """The messages of ``run_id``'s log after ``since_seq``, live, until the run ends.

    ``ended``: the run was already final when the client asked (a reconnect after its terminal
    event then ends at once instead of waiting in the store).
    """
    yield "retry: 2000\n\n"
    cursor = _Cursor(since_seq)
    while True:
        if async_store is not None and not ended:
            async for event in async_store.follow_events(run_id, cursor.seq, timeout_s=HEARTBEAT_S):
                yield cursor.message(event)
                if cursor.ended:
                    break
        else:
            for _ in range(int(HEARTBEAT_S / POLL_S)):
                batch = await anyio.to_thread.run_sync(store.list_events, run_id, cursor.seq)
                for event in batch:
                    yield cursor.message(event)
                    if cursor.ended:
                        break
                if cursor.ended or (ended and not batch):
                    break
                await anyio.sleep(POLL_S)
        if cursor.ended or ended:
            yield "event: end\ndata: {}\n\n"
            return
        yield ": keep-alive\n\n"


class _Cursor:
    """The last seq sent, and whether the terminal event was."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.ended = False

    def message(self, event: PipelineEvent) -> str:
        self.seq = event.seq or self.seq
        self.ended = event.kind in TERMINAL_EVENT_KINDS
        return event_message(event)
