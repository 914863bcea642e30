"""What the store keeps about webhook deliveries themselves, rather than about runs.

Two things a webhook receiver needs beside the runs: which deliveries it has already taken (a
provider retries a delivery it believes was lost, so the receiver claims each delivery id once:
``claim_delivery``), and the callbacks that matched no run, kept so an operator can see them
(``record_unmatched``, ``list_unmatched``, ``count_unmatched``). Neither belongs to a tenant: a
delivery is claimed before it is matched to a run, and an unmatched callback has no run.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, StrictInt, StringConstraints
from pydantic import ValidationError as PydanticValidationError

from mpstate.errors import InvalidInputError
from mpstate.fields import MAX_SAFE_INTEGER, CamelModel, Identifier, now_ms

__all__ = [
    "MAX_DETAIL_LENGTH",
    "UNMATCHED_KEPT",
    "UnmatchedCallback",
    "UnmatchedReason",
    "counts_field",
    "parse_counts_field",
    "unmatched_callback",
]

#: Longest ``detail`` accepted (characters): room for an error message, not for a payload.
MAX_DETAIL_LENGTH = 2000

#: Unmatched callbacks kept by default (the newest); older ones are dropped, counts are not.
UNMATCHED_KEPT = 10_000

#: A reason: a short lowercase slug, usable as a metrics label and never containing a newline.
_REASON_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class UnmatchedReason(StrEnum):
    """The reasons the webhook receiver records (any slug is accepted; these are the usual)."""

    #: No run recorded this provider job.
    UNKNOWN_JOB = "unknown-job"
    #: No receiver awaits callbacks of this provider name.
    UNKNOWN_PROVIDER = "unknown-provider"
    #: The job is recorded, but under another provider name.
    OTHER_PROVIDER = "other-provider"


def _encodable(value: str) -> str:
    value.encode("utf-8")  # lone surrogates cannot be stored by any backend
    return value


def _plain_reason(value: str) -> str:
    # An UnmatchedReason member is a str subclass: store (and compare) its plain value.
    return str.__str__(value) if isinstance(value, StrEnum) else value


_Reason = Annotated[
    str, StringConstraints(pattern=_REASON_PATTERN, strict=True), AfterValidator(_plain_reason)
]
_Detail = Annotated[
    str, StringConstraints(max_length=MAX_DETAIL_LENGTH, strict=True), AfterValidator(_encodable)
]
_EpochMs = Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INTEGER)]


class UnmatchedCallback(CamelModel):
    """A callback that can never match a run, kept for operators (``list_unmatched``)."""

    model_config = ConfigDict(frozen=True)

    provider: Identifier
    #: The provider's job id, when the callback carried one.
    job_id: Identifier | None = None
    #: Why it matched nothing, e.g. ``unknown-job`` (see ``UnmatchedReason``).
    reason: _Reason
    #: Free text for the operator, at most ``MAX_DETAIL_LENGTH`` characters.
    detail: _Detail = ""
    #: When it arrived, epoch milliseconds.
    at: _EpochMs = Field(default_factory=now_ms)
    #: The provider's delivery id (e.g. Standard Webhooks' ``webhook-id``), when it sent one.
    delivery_id: Identifier | None = None


def unmatched_callback(value: object) -> UnmatchedCallback:
    """Validate a callback to record (a model or its mapping); ``InvalidInputError`` if invalid.

    Goes through JSON and back, so every backend keeps exactly the stored form.
    """
    if not isinstance(value, UnmatchedCallback | Mapping):
        raise InvalidInputError(
            f"an unmatched callback must be an UnmatchedCallback or a mapping, not {value!r}"
        )
    try:
        if isinstance(value, Mapping):
            value = UnmatchedCallback.model_validate(dict(value))
        return UnmatchedCallback.model_validate_json(value.model_dump_json())
    except (PydanticValidationError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"invalid unmatched callback: {exc}") from exc


def counts_field(callback: UnmatchedCallback) -> str:
    """``<provider>\\n<reason>``: the key counts are kept under (a reason has no newline)."""
    return f"{callback.provider}\n{callback.reason}"


def parse_counts_field(field: str) -> tuple[str, str]:
    """(provider, reason) from a ``counts_field`` (split at the last newline: the reason's)."""
    provider, _, reason = field.rpartition("\n")
    return provider, reason
