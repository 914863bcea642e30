"""The plugin's broker: kombu's in-memory transport, with waits short enough to stop promptly.

Celery's worker loop for a transport without an event loop (``synloop``, the in-memory one's)
waits up to 2 s for a message and looks for a stop request only between waits, so every test's
worker took 2 s to stop. Capping each wait at ``MAX_WAIT_S`` makes it stop within that; messages
are delivered as soon as they arrive either way. Celery uses it with ``broker_url="memory://"``
and ``broker_transport=TRANSPORT`` (the class path wins over the URL's scheme).
"""

from __future__ import annotations

from typing import Any

from kombu.transport.memory import Transport as MemoryTransport

__all__ = ["MAX_WAIT_S", "TRANSPORT", "Transport"]

#: Longest one wait for a message lasts when the caller set a timeout, in seconds.
MAX_WAIT_S = 0.05

#: This transport's class path, for Celery's ``broker_transport`` setting.
TRANSPORT = f"{__name__}:Transport"


class Transport(MemoryTransport):
    """``memory://`` (the same process-wide queues), with each timed wait capped."""

    # kombu's base Transport declares **kwargs; the virtual one it derives from takes timeout.
    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:  # type: ignore[override]
        if timeout is not None:
            timeout = min(timeout, MAX_WAIT_S)
        return super().drain_events(connection, timeout=timeout)  # type: ignore[no-untyped-call]
