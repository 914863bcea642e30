"""Timing wrappers: patch a call in this process and add up its wall time by call path."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any


class Spans:
    """Inclusive wall time of wrapped calls, keyed by their call path ("a>b>c"), per thread."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._local = threading.local()
        self._patched: list[Callable[[], None]] = []

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def snapshot(self) -> Spans:
        """A copy of what was recorded so far (for reporting; it wraps nothing)."""
        copy = Spans()
        copy.seconds.update(self.seconds)
        copy.calls.update(self.calls)
        return copy

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        local = self._local
        seconds, calls = self.seconds, self.calls
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = getattr(local, "stack", None)
            if stack is None:
                stack = local.stack = []
            path = f"{stack[-1]}>{name}" if stack else name
            stack.append(path)
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[path] += clock() - start
                calls[path] += 1
                stack.pop()

        return timed

    def patch(self, owner: Any, attribute: str, name: str) -> None:
        """Replace ``owner.attribute`` (an instance's or a module's) with a timed wrapper."""
        had_own = attribute in vars(owner)
        original = getattr(owner, attribute)
        setattr(owner, attribute, self.wrap(name, original))

        def restore() -> None:
            if had_own:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)

        self._patched.append(restore)

    def unpatch(self) -> None:
        while self._patched:
            self._patched.pop()()

    def tree(self, per: int) -> list[tuple[int, str, float, float]]:
        """``(depth, name, us per unit, calls per unit)``, children under their parent, with an
        "other" line for a parent's time outside its children."""
        rows: list[tuple[int, str, float, float]] = []

        def visit(prefix: str | None, depth: int) -> float:
            children = sorted(
                (
                    path
                    for path in self.seconds
                    if (path.rpartition(">")[0] or None) == prefix
                    and (prefix is not None or ">" not in path)
                ),
                key=lambda path: -self.seconds[path],
            )
            total = 0.0
            for path in children:
                us = 1e6 * self.seconds[path] / per
                rows.append((depth, path.rpartition(">")[2], us, self.calls[path] / per))
                inner = visit(path, depth + 1)
                if inner:
                    rows.append((depth + 1, "(other)", us - inner, 0.0))
                total += us
            return total

        visit(None, 0)
        return rows
