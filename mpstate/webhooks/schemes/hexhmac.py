"""The ``t=...,v1=<hex>`` family: hex HMAC-SHA256 of ``"{timestamp}." + raw body``.

Stripe made this shape common; ElevenLabs and mpstate's own ``X-Mpstate-Signature`` use it too.
Members differ in the signature header's name, the version tag of the signature values, where
the timestamp travels (``t=`` inside the signature header, or a header of its own) and the
tolerance. The secret string's UTF-8 bytes are the HMAC key (no base64 decoding, unlike
Standard Webhooks), and several comma-separated signature values may be offered.

Sources:

- Stripe: ``stripe/stripe-python`` ``stripe/_webhook.py`` (``WebhookSignature``:
  ``EXPECTED_SCHEME = "v1"``, header items split on ``,`` then ``=``, signed payload
  ``"%d.%s" % (timestamp, payload)``, ``secret.encode("utf-8")`` as the key,
  ``DEFAULT_TOLERANCE = 300``); https://docs.stripe.com/webhooks#verify-manually.
- ElevenLabs: ``elevenlabs/elevenlabs-python`` ``src/elevenlabs/webhooks_custom.py``
  (``construct_event``: ``t=`` and ``v0=`` items, 30-minute tolerance, message
  ``f"{timestamp}.{rawBody}"``, the secret's UTF-8 bytes as the key); the header name
  ``ElevenLabs-Signature`` is from the SDK docs' examples and
  https://trigger.dev/docs/webhooks/providers/elevenlabs.
- mpstate: ``mpstate/webhooks/signing.py`` (separate ``X-Mpstate-Timestamp`` header).

Both Stripe's and ElevenLabs' SDKs refuse only timestamps that are too old; this family refuses
one too far in the future as well (as mpstate always has), so a leaked signed request cannot be
prepared for replay later.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

from mpstate._checks import check_int, check_positive
from mpstate.errors import InvalidInputError, WebhookSignatureError
from mpstate.webhooks.schemes._base import (
    Verified,
    body_bytes,
    body_to_sign,
    check_secrets,
    check_window,
    header,
    parse_timestamp,
)
from mpstate.webhooks.signing import DEFAULT_TOLERANCE_S, SIGNATURE_HEADER, TIMESTAMP_HEADER

__all__ = [
    "ELEVENLABS_SIGNATURE_HEADER",
    "STRIPE_SIGNATURE_HEADER",
    "HexHmacScheme",
    "elevenlabs_scheme",
    "mpstate_scheme",
    "stripe_scheme",
]

STRIPE_SIGNATURE_HEADER = "Stripe-Signature"
ELEVENLABS_SIGNATURE_HEADER = "ElevenLabs-Signature"

#: The key of the timestamp item inside a signature header (``t=1732406400,v1=...``).
_TIMESTAMP_KEY = "t"


class HexHmacScheme:
    """One member of the ``t=...,v1=<hex>`` family; see the module docstring.

    ``timestamp_header=None`` reads the timestamp from a ``t=`` item of ``signature_header``
    (Stripe, ElevenLabs); a name reads it from that header (mpstate). ``delivery_id`` is ``None``:
    none of these schemes signs an event id.
    """

    __slots__ = (
        "_secrets",
        "name",
        "signature_header",
        "timestamp_header",
        "tolerance_s",
        "version",
    )

    def __init__(
        self,
        name: str,
        secrets: str | Sequence[str],
        *,
        signature_header: str,
        version: str = "v1",
        tolerance_s: float = 300.0,
        timestamp_header: str | None = None,
    ) -> None:
        for value, what in ((name, "name"), (signature_header, "signature_header")):
            if not isinstance(value, str) or not value:
                raise InvalidInputError(f"{what} must be a non-empty string")
        if not isinstance(version, str) or not version.isalnum() or version == _TIMESTAMP_KEY:
            raise InvalidInputError("version must be a tag such as 'v1'")
        if timestamp_header is not None and (
            not isinstance(timestamp_header, str) or not timestamp_header
        ):
            raise InvalidInputError("timestamp_header must be a header name or None")
        self.name = name
        self._secrets = tuple(s.encode() for s in check_secrets(secrets, f"the {name} scheme"))
        self.signature_header = signature_header
        self.version = version
        self.tolerance_s = check_positive(tolerance_s, "tolerance_s")
        self.timestamp_header = timestamp_header

    def __repr__(self) -> str:
        return (
            f"HexHmacScheme({self.name!r}, <{len(self._secrets)} secrets>, "
            f"signature_header={self.signature_header!r}, version={self.version!r}, "
            f"tolerance_s={self.tolerance_s}, timestamp_header={self.timestamp_header!r})"
        )

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        """Check the headers against ``body``; see ``SignatureScheme.verify``."""
        payload = body_bytes(body)
        raw_signature = header(headers, self.signature_header)
        items = _items(raw_signature or "")
        if self.timestamp_header is None:
            stamps = {value for key, value in items if key == _TIMESTAMP_KEY}
            if len(stamps) > 1:
                raise WebhookSignatureError(f"{self.signature_header} has several timestamps")
            raw_ts = stamps.pop() if stamps else None
        else:
            raw_ts = header(headers, self.timestamp_header)
        if not raw_signature or not raw_ts:
            where = self.timestamp_header or f"{_TIMESTAMP_KEY}= in {self.signature_header}"
            raise WebhookSignatureError(f"missing {where} or {self.signature_header} header")
        timestamp = parse_timestamp(raw_ts, "the timestamp")
        check_window(timestamp, self.tolerance_s, now)
        offered = [value.encode() for key, value in items if key == self.version]
        if not offered:
            raise WebhookSignatureError(f"{self.signature_header} has no {self.version} signature")
        expected = [self._digest(secret, timestamp, payload) for secret in self._secrets]
        if not any(hmac.compare_digest(e, o) for e in expected for o in offered):
            raise WebhookSignatureError("signature does not match")
        return Verified(delivery_id=None, timestamp=timestamp)

    def sign(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        """The headers a sender attaches, with one signature per configured secret."""
        ts = int(time.time()) if timestamp is None else check_int(timestamp, "timestamp", minimum=0)
        payload = body_to_sign(body)
        signatures = ",".join(
            f"{self.version}={self._digest(secret, ts, payload).decode()}"
            for secret in self._secrets
        )
        if self.timestamp_header is None:
            return {self.signature_header: f"{_TIMESTAMP_KEY}={ts},{signatures}"}
        return {self.timestamp_header: str(ts), self.signature_header: signatures}

    @staticmethod
    def _digest(secret: bytes, timestamp: int, payload: bytes) -> bytes:
        # The canonical integer, as Stripe ("%d") and mpstate's sign() write it.
        return hmac.new(secret, b"%d." % timestamp + payload, hashlib.sha256).hexdigest().encode()


def _items(raw: str) -> list[tuple[str, str]]:
    """``"t=1, v1=ab"`` -> ``[("t", "1"), ("v1", "ab")]``; entries without ``=`` are skipped."""
    pairs = []
    for entry in raw.split(","):
        key, sep, value = entry.strip().partition("=")
        if sep:
            pairs.append((key, value))
    return pairs


def stripe_scheme(secrets: str | Sequence[str], *, tolerance_s: float = 300.0) -> HexHmacScheme:
    """``Stripe-Signature: t=<unix>,v1=<hex>``; the ``whsec_`` secret is used as raw bytes."""
    return HexHmacScheme(
        "stripe",
        secrets,
        signature_header=STRIPE_SIGNATURE_HEADER,
        version="v1",
        tolerance_s=tolerance_s,
    )


def elevenlabs_scheme(
    secrets: str | Sequence[str], *, tolerance_s: float = 1800.0
) -> HexHmacScheme:
    """``ElevenLabs-Signature: t=<unix>,v0=<hex>``, with the SDK's 30-minute tolerance."""
    return HexHmacScheme(
        "elevenlabs",
        secrets,
        signature_header=ELEVENLABS_SIGNATURE_HEADER,
        version="v0",
        tolerance_s=tolerance_s,
    )


def mpstate_scheme(
    secrets: str | Sequence[str], *, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> HexHmacScheme:
    """mpstate's own callbacks: ``X-Mpstate-Timestamp`` and ``X-Mpstate-Signature: v1=<hex>``.

    Verifies exactly what ``mpstate.webhooks.signing.signed_headers`` produces, and its ``sign``
    produces the same headers (byte for byte, for one secret). Unlike ``signing.verify`` it finds
    the headers in a plain dict whatever their case.
    """
    return HexHmacScheme(
        "mpstate",
        secrets,
        signature_header=SIGNATURE_HEADER,
        version="v1",
        tolerance_s=tolerance_s,
        timestamp_header=TIMESTAMP_HEADER,
    )
