"""How runs and events are laid out in Redis values (JSON built and read only in Python).

A run is a hash of camelCase field -> JSON value, so a script can set patched fields and bump
``version`` without ever decoding JSON in Lua (whose cjson is lossy). Fields starting with ``_``
are the store's own bookkeeping (last seq, fence, log-ended flag, index score).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic_core import to_json

from mpstate.deliveries import UnmatchedCallback
from mpstate.events import PipelineEvent, parse_stored_event
from mpstate.models import PipelineRun

__all__ = [
    "decode_events",
    "decode_run",
    "decode_run_hash",
    "decode_unmatched",
    "encode_fields",
    "hash_fields",
    "json_value",
    "run_document",
    "text",
]


def text(value: bytes | str | int) -> str:
    """A reply item as text, whether or not the client decodes responses."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def json_value(value: Any) -> str:
    """Compact JSON for one field value."""
    return to_json(value).decode("utf-8")


def encode_fields(document: Mapping[str, Any]) -> list[str | bytes]:
    """``[field, json, field, json, ...]`` for HSET (values as UTF-8 JSON bytes)."""
    return hash_fields({name: to_json(value) for name, value in document.items()})


def hash_fields(encoded: Mapping[str, bytes]) -> list[str | bytes]:
    """``[field, json, ...]`` for HSET from values encoded already (``ValidPatch.encoded``)."""
    flat: list[str | bytes] = []
    for name, text in encoded.items():
        flat += (name, text)
    return flat


def run_document(run: PipelineRun) -> dict[str, Any]:
    """The stored fields of a run (everything but its event log)."""
    return run.model_dump(mode="json", by_alias=True, exclude={"events"})


def decode_run(document: bytes | str, events: list[PipelineEvent] | None = None) -> PipelineRun:
    """Rebuild a run from the JSON object a script builds of its hash (``run_document``)."""
    run = PipelineRun.model_validate_json(document)
    if events:
        run.events = events
    return run


def decode_run_hash(reply: Mapping[Any, Any]) -> PipelineRun | None:
    """Rebuild a run from an HGETALL reply (field names are our own camelCase identifiers)."""
    parts = [
        f'"{text(name)}":{text(value)}' for name, value in reply.items() if text(name)[0] != "_"
    ]
    if not parts:
        return None
    return PipelineRun.model_validate_json("{" + ",".join(parts) + "}")


def _only_field(fields: Mapping[Any, Any] | Sequence[Any], name: str) -> Any:
    """The value of a stream entry's one field, as a mapping or a flat ``[name, value]`` reply."""
    if isinstance(fields, Mapping):
        return fields.get(name.encode(), fields.get(name))
    return fields[1]


def decode_events(entries: Sequence[Any]) -> list[PipelineEvent]:
    """Events from XRANGE entries ``[(id, {e: json}), ...]``; the seq is the id's sequence part."""
    events = []
    for entry_id, fields in entries:
        seq = int(text(entry_id).partition("-")[2])
        events.append(parse_stored_event(_only_field(fields, "e"), seq))
    return events


def decode_unmatched(fields: Mapping[Any, Any] | Sequence[Any]) -> UnmatchedCallback:
    """An unmatched callback from its stream entry's fields ``{c: json}``."""
    return UnmatchedCallback.model_validate_json(_only_field(fields, "c"))
