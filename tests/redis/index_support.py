"""What the index tests read back from Redis: replies as text, an index zset, listed run ids,
and a group's TTL record (checked against the keys it names)."""

from __future__ import annotations

from typing import Any

from mpstate.models import PipelineRunStatus

__all__ = ["entries_without_ttl_record", "ids", "members", "text"]


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def members(client: Any, key: str) -> dict[str, float]:
    """An index zset as {run id: score}."""
    return {text(member): score for member, score in client.zrange(key, 0, -1, withscores=True)}


def ids(runs: list[Any]) -> list[str]:
    return [run.run_id for run in runs]


def entries_without_ttl_record(client: Any, entries_key: str) -> dict[str, str]:
    """An entries hash as {run id: field}, without the group's TTL record (its "" field:
    ``"<renewed ms>:<keys>"``), after checking that every key the record says holds the index
    TTL does (or no longer exists), and that the entries hash itself has one."""
    fields = {text(f): text(v) for f, v in client.hgetall(entries_key).items()}
    record = fields.pop("", None)
    if record is not None:
        assert client.pttl(entries_key) > 0, entries_key
        renewed, _, known = record.partition(":")
        assert renewed.isdigit(), record
        everything = entries_key.removesuffix(":entries")
        statuses = list(PipelineRunStatus)
        for letter in known:
            key = (
                everything
                if letter == "a"
                else f"{everything}:status:{statuses[int(letter) - 1].value}"
            )
            assert client.pttl(key) != -1, (key, record)  # a TTL, or gone (-2)
    return fields
