"""Label values with a bound: the first ``limit`` distinct values are kept, the rest are ``other``.

For label values that come from outside your code (a provider's error codes): one misbehaving
provider must not create a series per message.
"""

from __future__ import annotations

import threading

from mpstate.metrics.families import OTHER

__all__ = ["BoundedValues"]


class BoundedValues:
    """Maps values to themselves until ``limit`` distinct ones were seen, then new ones to
    ``other`` (per process)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(value)
            return value
