"""Signing provider callbacks: HMAC-SHA256 over ``"{timestamp}." + body``, with a replay window.

A signed request carries two headers::

    X-Mpstate-Timestamp: 1732406400
    X-Mpstate-Signature: v1=5f2b...e9

The signature covers the timestamp and the exact body bytes, so neither can be changed or
replayed later than ``tolerance_s`` seconds. Several ``v1=`` values (comma separated) and several
secrets per provider are accepted, so a secret can be rotated without dropping callbacks.
Pure functions, no I/O: the receiver verifies with them, and a provider (or a test) signs.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

from mpstate._checks import check_id
from mpstate.errors import InvalidInputError, WebhookSignatureError

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "parse_secrets",
    "sign",
    "signed_headers",
    "verify",
]

TIMESTAMP_HEADER = "X-Mpstate-Timestamp"
SIGNATURE_HEADER = "X-Mpstate-Signature"

#: How far a callback's timestamp may be from the receiver's clock, either way.
DEFAULT_TOLERANCE_S = 300.0

_SCHEME = "v1="


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Mpstate-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return _SCHEME + mac.hexdigest()


def signed_headers(secret: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The two headers a provider sends with ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, body)}


def verify(
    secrets: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a callback's signature and timestamp; return the timestamp.

    ``headers`` is looked up case-insensitively when it is a case-insensitive mapping (as web
    frameworks' headers are); plain dicts must use the names above. Raises
    ``WebhookSignatureError`` saying what was wrong, never which secret was tried.
    """
    candidates = [secrets] if isinstance(secrets, str) else list(secrets)
    if not candidates or not all(isinstance(s, str) and s for s in candidates):
        raise WebhookSignatureError("no signing secret is configured for this provider")
    raw_ts = headers.get(TIMESTAMP_HEADER)
    raw_signature = headers.get(SIGNATURE_HEADER)
    if not raw_ts or not raw_signature:
        raise WebhookSignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 12:
        raise WebhookSignatureError(f"{TIMESTAMP_HEADER} must be unix seconds")
    timestamp = int(raw_ts)
    clock = time.time() if now is None else now
    if not abs(clock - timestamp) <= tolerance_s:  # written so that a NaN window fails closed
        raise WebhookSignatureError(f"timestamp is outside the {tolerance_s:.0f} s replay window")
    offered = [part.strip() for part in raw_signature.split(",")]
    expected = [sign(secret, timestamp, body) for secret in candidates]
    if not any(
        hmac.compare_digest(mine.encode(), theirs.encode("utf-8", "replace"))
        for mine in expected
        for theirs in offered
    ):
        raise WebhookSignatureError("signature does not match")
    return timestamp


def parse_secrets(spec: str) -> dict[str, list[str]]:
    """``"video=s1,video=s0,image=s2"`` -> ``{"video": ["s1", "s0"], "image": ["s2"]}``.

    The environment form of the per-provider secrets; a provider named twice has both secrets
    (rotation). Raises ``InvalidInputError`` on a malformed entry.
    """
    secrets: dict[str, list[str]] = {}
    for number, entry in enumerate((part.strip() for part in spec.split(",")), start=1):
        if not entry:
            continue
        provider, sep, secret = (part.strip() for part in entry.partition("="))
        if not sep or not provider or not secret:
            # The entry may be a secret typed without its provider: never echo it.
            raise InvalidInputError(f"webhook secret entry {number} is not provider=secret")
        secrets.setdefault(check_id(provider, "provider"), []).append(secret)
    return secrets
