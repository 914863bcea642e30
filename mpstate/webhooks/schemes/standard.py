"""Standard Webhooks: Replicate, OpenAI and every Svix-powered sender sign callbacks this way.

Headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``; the signed content is
``"{id}.{timestamp}." + raw body``, HMAC-SHA256 keyed with the base64-decoded part of a
``whsec_<base64>`` secret; the signature header is a space-separated list of ``v1,<base64>``
values (several during a sender's key rotation; ``v1a`` ed25519 entries are skipped).

Sources:

- spec: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
  (signature scheme, headers, "use the webhook-id header as an idempotency key");
- reference library ``standardwebhooks`` (PyPI 1.3.0,
  ``libraries/python/standardwebhooks/webhooks.py``): ``whsec_`` prefix optional, ±5 min;
- svix ``python/svix/webhooks.py``: the same scheme under ``svix-id``/``svix-timestamp``/
  ``svix-signature`` headers, accepted here too;
- Replicate https://replicate.com/docs/topics/webhooks/verify-webhook and OpenAI
  ``openai-python`` ``src/openai/resources/webhooks.py`` (``tolerance=300``, ``v1,`` list, any
  match accepted) follow this spec.

Why not the ``standardwebhooks`` package itself: it fixes the tolerance at 5 minutes and reads
the wall clock (no ``now``, so no fixed-clock tests), takes one secret per ``Webhook`` object,
parses the body as JSON, accepts fractional timestamps, raises its own exception types and
ignores the ``svix-`` names. What is left to reuse is about twenty lines of HMAC.
"""

from __future__ import annotations

import base64
import binascii
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
    printable,
)

__all__ = ["SECRET_PREFIX", "StandardWebhooksScheme"]

SECRET_PREFIX = "whsec_"

#: Header triples read, in order of preference (svix's own library tries the ``svix-`` names
#: first and falls back to the ``webhook-`` ones; either set alone is enough).
_HEADER_SETS = (
    ("webhook-id", "webhook-timestamp", "webhook-signature"),
    ("svix-id", "svix-timestamp", "svix-signature"),
)

_MAX_ID_CHARS = 256
_DIGEST_SIZE = hashlib.sha256().digest_size


def _decode_secret(secret: str) -> bytes:
    """``whsec_<base64>`` (or bare base64, as the reference library accepts) to HMAC key bytes."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(
            "a Standard Webhooks secret must be whsec_ followed by base64"
        ) from exc
    if not key:
        raise InvalidInputError("a Standard Webhooks secret must not be empty")
    return key


def _check_message_id(msg_id: str, *, error: type[Exception]) -> str:
    """The spec forbids ``.`` in the id: ``a.1.{body}`` must not parse two ways."""
    if len(msg_id) > _MAX_ID_CHARS or "." in msg_id or " " in msg_id:
        raise error("the webhook-id must be at most 256 characters without '.' or spaces")
    return msg_id


class StandardWebhooksScheme:
    """Verify (and, for tests and simulated providers, sign) Standard Webhooks callbacks.

    ``secrets``: the endpoint's ``whsec_...`` secret, or several while rotating (any verifies).
    ``delivery_id`` of the result is the ``webhook-id``, the same on every retry of one event.
    """

    name = "standard-webhooks"

    __slots__ = ("_keys", "tolerance_s")

    def __init__(self, secrets: str | Sequence[str], *, tolerance_s: float = 300.0) -> None:
        self._keys = tuple(
            _decode_secret(s) for s in check_secrets(secrets, "the Standard Webhooks scheme")
        )
        self.tolerance_s = check_positive(tolerance_s, "tolerance_s")

    def __repr__(self) -> str:
        return (
            f"StandardWebhooksScheme(<{len(self._keys)} secrets>, tolerance_s={self.tolerance_s})"
        )

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        """Check the headers against ``body``; see ``SignatureScheme.verify``."""
        payload = body_bytes(body)
        msg_id, raw_ts, raw_signature = self._read_headers(headers)
        _check_message_id(printable(msg_id, "webhook-id"), error=WebhookSignatureError)
        timestamp = parse_timestamp(raw_ts, "webhook-timestamp")
        check_window(timestamp, self.tolerance_s, now)
        offered = [_decode_signature(entry) for entry in raw_signature.split()]
        candidates = [sig for sig in offered if sig is not None]
        if not candidates:
            raise WebhookSignatureError("webhook-signature has no v1 signature")
        content = f"{msg_id}.{timestamp}.".encode() + payload
        expected = [hmac.new(key, content, hashlib.sha256).digest() for key in self._keys]
        if not any(hmac.compare_digest(e, c) for e in expected for c in candidates):
            raise WebhookSignatureError("signature does not match")
        return Verified(delivery_id=msg_id, timestamp=timestamp)

    def sign(self, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        """The three headers a sender attaches, signed with every configured secret."""
        if not isinstance(msg_id, str) or not msg_id or not msg_id.isascii():
            raise InvalidInputError("msg_id must be a non-empty ASCII string")
        _check_message_id(msg_id, error=InvalidInputError)
        ts = int(time.time()) if timestamp is None else check_int(timestamp, "timestamp", minimum=0)
        content = f"{msg_id}.{ts}.".encode() + body_to_sign(body)
        signatures = " ".join(
            "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
            for key in self._keys
        )
        return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signatures}

    @staticmethod
    def _read_headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
        for id_name, ts_name, signature_name in _HEADER_SETS:
            msg_id = header(headers, id_name)
            raw_ts = header(headers, ts_name)
            raw_signature = header(headers, signature_name)
            if msg_id and raw_ts and raw_signature:
                return msg_id, raw_ts, raw_signature
        raise WebhookSignatureError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )


def _decode_signature(entry: str) -> bytes | None:
    """The digest of one ``v1,<base64>`` entry; ``None`` for other versions or bad base64."""
    version, sep, encoded = entry.partition(",")
    if version != "v1" or not sep:
        return None
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == _DIGEST_SIZE else None
