"""The interface every signature scheme implements, and the input checks they share.

A scheme reads untrusted headers and body bytes, so every check here turns malformed input into
``WebhookSignatureError`` (the receiver answers 401) and never lets another exception escape.
Configuration mistakes (no secret, a negative tolerance) raise ``InvalidInputError`` when the
scheme is built, before any request arrives.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mpstate.errors import InvalidInputError, WebhookSignatureError

__all__ = ["MAX_HEADER_CHARS", "SignatureScheme", "Verified"]

#: Longest header value read; a longer one is refused before any parsing or hashing.
MAX_HEADER_CHARS = 4096

#: Unix seconds have 10 digits until 2286; 12 leaves room and keeps ``int()`` cheap.
_MAX_TIMESTAMP_DIGITS = 12


@dataclass(frozen=True, slots=True)
class Verified:
    """What a verified callback's headers vouch for.

    ``delivery_id`` stays the same across the sender's retries of one event (``webhook-id``, fal's
    request id), so the receiver can drop duplicates with it; ``None`` where the scheme has none.
    ``timestamp`` is the signed send time in unix seconds, where the scheme signs one.
    """

    delivery_id: str | None
    timestamp: int | None


@runtime_checkable
class SignatureScheme(Protocol):
    """A way a provider signs its callbacks; ``verify`` raises ``WebhookSignatureError`` only.

    A verified callback may still be a replay inside the tolerance window: schemes are stateless,
    and dropping a second delivery of the same ``delivery_id`` is the receiver's job.
    """

    @property
    def name(self) -> str:
        """The registry name (``scheme_for``), e.g. ``"standard-webhooks"``."""
        ...

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        """Check the callback's signature and timestamp (``now``: unix seconds, default the clock).

        Raises ``WebhookSignatureError`` for a missing or malformed header, a stale or future
        timestamp, or a signature no configured secret or key produced; never another exception.
        """
        ...


def header(headers: Mapping[str, str], name: str, *, limit: int = MAX_HEADER_CHARS) -> str | None:
    """``headers[name]`` looked up case-insensitively; ``None`` when absent or empty.

    Starlette's and httpx's headers are case-insensitive already; a plain dict (tests, other
    frameworks) is searched by lower-cased name. Non-ASCII, non-text or over-long values are
    refused: no provider sends them, and refusing early bounds the work an attacker can cause.
    """
    if not isinstance(headers, Mapping):
        raise WebhookSignatureError("headers must be a mapping of names to values")
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next(
            (v for k, v in headers.items() if isinstance(k, str) and k.lower() == wanted), None
        )
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.isascii() or len(value) > limit:
        raise WebhookSignatureError(f"the {name} header is malformed")
    return value


def printable(value: str, what: str) -> str:
    """Refuse control characters (a newline could shift fields inside a signed message)."""
    if not all(" " <= char <= "~" for char in value):
        raise WebhookSignatureError(f"the {what} header is malformed")
    return value


def parse_timestamp(raw: str, what: str) -> int:
    """Unix seconds written as plain ASCII digits (no sign, space, fraction or exponent)."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_TIMESTAMP_DIGITS):
        raise WebhookSignatureError(f"{what} must be unix seconds")
    return int(raw)


def check_window(timestamp: int, tolerance_s: float, now: float | None) -> None:
    """Refuse a timestamp more than ``tolerance_s`` away from ``now``, in either direction."""
    clock = time.time() if now is None else now
    if not abs(clock - timestamp) <= tolerance_s:  # written so that a NaN clock fails closed
        raise WebhookSignatureError(f"timestamp is outside the {tolerance_s:.0f} s replay window")


def body_bytes(body: object) -> bytes:
    """The raw body as ``bytes``; anything but bytes-like is refused rather than guessed at."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    raise WebhookSignatureError("the body must be the raw request bytes")


def body_to_sign(body: object) -> bytes:
    """``body_bytes`` for the signing helpers, where a wrong type is the caller's mistake."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    raise InvalidInputError("the body to sign must be bytes")


def check_secrets(secrets: str | Sequence[str], what: str) -> tuple[str, ...]:
    """One secret or several (a rotation), each a non-empty string; never echoed in errors."""
    values = [secrets] if isinstance(secrets, str) else secrets
    if isinstance(values, Sequence) and values and all(isinstance(s, str) and s for s in values):
        return tuple(values)
    raise InvalidInputError(f"{what} needs at least one non-empty secret (a string)")
