"""How runs and events are laid out in Redis values (JSON built and read only in Python).

A run is a hash of camelCase field -> JSON value, so a script can set patched fields and bump
``version`` without ever decoding JSON in Lua (whose cjson is lossy). Fields starting with ``_``
are the store's own bookkeeping (last seq, fence, log-ended flag, index score).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mpstate.events import PipelineEvent, parse_stored_event
from mpstate.models import PipelineRun

__all__ = ["decode_events", "decode_run", "encode_fields", "json_value", "text"]


def text(value: bytes | str | int) -> str:
    """A reply item as text, whether or not the client decodes responses."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def json_value(value: Any) -> str:
    """Compact JSON for one field value."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_fields(document: Mapping[str, Any]) -> list[str]:
    """``[field, json, field, json, ...]`` for HSET."""
    flat: list[str] = []
    for name, value in document.items():
        flat.append(name)
        flat.append(json_value(value))
    return flat


def run_document(run: PipelineRun) -> dict[str, Any]:
    """The stored fields of a run (everything but its event log)."""
    return run.model_dump(mode="json", by_alias=True, exclude={"events"})


def _pairs(reply: Mapping[Any, Any] | Sequence[Any]) -> Iterable[tuple[str, str]]:
    if isinstance(reply, Mapping):
        return ((text(k), text(v)) for k, v in reply.items())
    items = [text(item) for item in reply]
    return zip(items[0::2], items[1::2], strict=True)


def decode_run(
    reply: Mapping[Any, Any] | Sequence[Any], events: list[PipelineEvent] | None = None
) -> PipelineRun | None:
    """Rebuild a run from HGETALL (a dict or a flat list); None for an empty reply."""
    parts = [f"{json_value(name)}:{value}" for name, value in _pairs(reply) if name[0] != "_"]
    if not parts:
        return None
    run = PipelineRun.model_validate_json("{" + ",".join(parts) + "}")
    if events:
        run.events = events
    return run


def decode_events(entries: Sequence[Any]) -> list[PipelineEvent]:
    """Events from XRANGE entries ``[(id, {e: json}), ...]``; the seq is the id's sequence part."""
    events = []
    for entry_id, fields in entries:
        seq = int(text(entry_id).partition("-")[2])
        document = fields.get(b"e", fields.get("e")) if isinstance(fields, Mapping) else fields[1]
        events.append(parse_stored_event(document, seq))
    return events
