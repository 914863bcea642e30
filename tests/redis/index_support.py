"""What the index tests read back from Redis: replies as text, an index zset, listed run ids."""

from __future__ import annotations

from typing import Any

__all__ = ["ids", "members", "text"]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def members(client: Any, key: str) -> dict[str, float]:
    """An index zset as {run id: score}."""
    return {text(member): score for member, score in client.zrange(key, 0, -1, withscores=True)}


def ids(runs: list[Any]) -> list[str]:
    return [run.run_id for run in runs]
