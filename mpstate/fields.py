"""Field types shared by the models: identifiers, timestamps and the camelCase model base.

Timestamps are kept at millisecond precision in UTC, the precision of the TypeScript original
and of the events' ``at``: both backends then order runs identically (Redis scores are epoch
milliseconds) and documents round-trip through JavaScript unchanged.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, PlainSerializer, StringConstraints
from pydantic.alias_generators import to_camel

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_SAFE_INTEGER",
    "CamelModel",
    "Identifier",
    "UtcDatetime",
    "ensure_storable",
    "epoch_ms",
    "iso_z",
    "now_ms",
    "to_utc_ms",
    "utc_now",
]

#: Longest id accepted (run, pipeline, step, tenant, provider, job and idempotency ids).
MAX_ID_LENGTH = 4096


def _encodable(value: str) -> str:
    # Lone surrogates cannot be stored as UTF-8 by any backend: refuse them up front.
    value.encode("utf-8")
    return value


#: A non-empty id. Any character is allowed (colons, braces, spaces, unicode); keys escape it.
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, strict=True),
    AfterValidator(_encodable),
]


def to_utc_ms(value: datetime) -> datetime:
    """Return ``value`` in UTC, truncated to milliseconds (naive datetimes are taken as UTC)."""
    # Every timestamp of every run read back passes here: build a new datetime only when the
    # value is not UTC, or not whole milliseconds, already.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    if value.microsecond % 1000:
        value = value.replace(microsecond=value.microsecond // 1000 * 1000)
    return value


def iso_z(value: datetime) -> str:
    """``2024-05-01T12:00:00.000Z``: ISO-8601 in UTC with milliseconds, as JavaScript writes it."""
    # Formatted by hand: strftime("%Y") does not zero-pad years before 1000 on every platform.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


#: A timestamp: accepts datetimes and ISO-8601 strings, serialises as ``2024-05-01T12:00:00.000Z``.
UtcDatetime = Annotated[
    datetime,
    AfterValidator(to_utc_ms),
    PlainSerializer(iso_z, return_type=str, when_used="json"),
]


#: Largest integer accepted for seqs, versions, fences, limits and timeouts (exact in JSON).
MAX_SAFE_INTEGER = 2**53 - 1


def _as_text(value: Any) -> Any:
    # Non-JSON python values (datetimes, enums, sets) have a JSON form; only their text matters.
    return list(value) if isinstance(value, set | frozenset) else str(value)


#: The encoder ``ensure_storable`` runs, built once (``json.dumps`` with options builds one per
#: call). It keeps no state between calls, so threads share it.
_STORABLE = json.JSONEncoder(allow_nan=False, ensure_ascii=False, default=_as_text)


def ensure_storable(value: Any, where: str = "value") -> None:
    """Refuse what no backend can keep exactly, anywhere inside ``value`` (python-mode data).

    NaN and infinities have no JSON form and lone surrogates cannot be written as UTF-8: pydantic's
    JSON mode would silently turn them into null and replacement characters, so they are refused
    here (``ValueError``), in dict keys too. One pass of the C JSON encoder finds both.
    """
    try:
        _STORABLE.encode(value).encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        raise ValueError(f"{where} cannot be stored: {exc}") from exc


def utc_now() -> datetime:
    """The current time as stored by mpstate (UTC, millisecond precision)."""
    return to_utc_ms(datetime.now(UTC))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the Unix epoch, computed exactly (no float rounding)."""
    return (to_utc_ms(value) - _EPOCH) // timedelta(milliseconds=1)


def now_ms() -> int:
    """The current time in epoch milliseconds, the unit of every event's ``at``."""
    return time.time_ns() // 1_000_000


class CamelModel(BaseModel):
    """Base of every document: snake_case in Python, camelCase in JSON, both accepted on input."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        allow_inf_nan=False,
        validate_assignment=True,
    )

    def to_json_dict(self) -> dict[str, Any]:
        """The document as the TypeScript original stores it (camelCase, ISO timestamps)."""
        return self.model_dump(mode="json", by_alias=True)
