"""fal.ai: Ed25519 signatures checked against the public keys fal publishes as a JWKS.

Headers ``X-Fal-Webhook-Request-Id``, ``X-Fal-Webhook-User-Id``, ``X-Fal-Webhook-Timestamp``
and ``X-Fal-Webhook-Signature`` (hex). The signed message is the request id, the user id, the
timestamp and the hex SHA-256 of the raw body, joined by newlines. A callback is genuine when
the signature verifies under any Ed25519 key of the set at
``https://rest.alpha.fal.ai/.well-known/jwks.json`` (``kty=OKP``, ``crv=Ed25519``, ``x`` in
base64url), which clients cache for at most 24 hours; the timestamp must be within ±300 s.

Sources: https://docs.fal.ai/model-apis/model-endpoints/webhooks ("Verifying Your Webhook") and
https://fal.ai/docs/documentation/model-apis/inference/webhooks; the same headers, message,
JWKS URL, 24 h cache and 300 s window in independent implementations, e.g.
``smarenkov/fal-ai-webhook-verification`` (README, ``fal-ai.service.js``).

fal's headers name no key id, so a key fal has just started signing with shows up as a failed
verification: the key set is then loaded again, once, and at most once per
``min_refresh_interval_s`` so a flood of forged callbacks cannot hammer the JWKS URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mpstate._checks import check_int, check_positive
from mpstate.errors import InvalidInputError, WebhookSignatureError
from mpstate.webhooks.schemes._base import (
    Verified,
    body_bytes,
    body_to_sign,
    check_window,
    header,
    parse_timestamp,
    printable,
)

__all__ = [
    "FAL_JWKS_URL",
    "REQUEST_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "USER_ID_HEADER",
    "FalScheme",
    "JwksKeySet",
    "JwksUnavailableError",
    "ed25519_jwk",
    "fal_signed_headers",
]

FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"

_SIGNATURE_HEX = re.compile(r"[0-9a-fA-F]{128}")  # an Ed25519 signature is 64 bytes
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_ED25519_KEY_BYTES = 32
_MAX_ID_CHARS = 256

PublicKeys = tuple[Ed25519PublicKey, ...]


class JwksUnavailableError(WebhookSignatureError):
    """The key set could not be loaded, so no fal callback can be verified for now.

    A ``WebhookSignatureError`` (the callback is not accepted), but not the sender's fault: a
    receiver may answer 503 instead of 401 so that fal retries (10 times over 2 hours).
    """


class JwksKeySet:
    """Ed25519 public keys from a JWKS URL (cached) or a local JWKS file; thread-safe.

    ``keys()`` returns the cached keys, loading them first when there are none or they are older
    than ``max_age_s``. ``refreshed(tried)`` reloads after a failed verification, at most once
    per ``min_refresh_interval_s`` (whatever the outcome). An HTTP fetch gives up after
    ``timeout_s`` per network operation and about ``timeout_s`` overall, reads at most
    ``max_bytes``, and follows no redirect. Keys are never used past ``max_age_s``: when they
    cannot be reloaded, verification fails with ``JwksUnavailableError``. ``clock`` (monotonic
    seconds) is for tests.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        file: str | os.PathLike[str] | None = None,
        max_age_s: float = 24 * 3600.0,
        min_refresh_interval_s: float = 60.0,
        timeout_s: float = 5.0,
        max_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (url is None) == (file is None):
            raise InvalidInputError("give a JWKS url or a JWKS file, not both or neither")
        if url is not None and not (
            isinstance(url, str) and url.startswith(("https://", "http://"))
        ):
            raise InvalidInputError("the JWKS url must be an http(s) URL")
        self.url = url
        self.file = None if file is None else Path(file)
        self.max_age_s = check_positive(max_age_s, "max_age_s")
        self.min_refresh_interval_s = check_positive(
            min_refresh_interval_s, "min_refresh_interval_s", zero_ok=True
        )
        if self.min_refresh_interval_s > self.max_age_s:
            raise InvalidInputError("min_refresh_interval_s must not exceed max_age_s")
        self.timeout_s = check_positive(timeout_s, "timeout_s")
        self.max_bytes = check_int(max_bytes, "max_bytes", minimum=1)
        self._clock = clock
        self._lock = threading.Lock()
        # (keys, monotonic load time), replaced whole so that readers need no lock.
        self._state: tuple[PublicKeys, float] | None = None
        self._attempted_at: float | None = None
        if self.file is not None:  # a missing or broken file is a configuration error: say so now
            try:
                self._load()
            except JwksUnavailableError as exc:
                raise InvalidInputError(str(exc)) from exc

    def __repr__(self) -> str:
        source = self.url if self.url is not None else str(self.file)
        return f"JwksKeySet({source!r}, keys={len(self._state[0]) if self._state else 0})"

    def keys(self) -> PublicKeys:
        """The current keys, (re)loaded when missing or expired; raises ``JwksUnavailableError``."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        with self._lock:
            fresh = self._fresh()  # another thread may have loaded them meanwhile
            if fresh is not None:
                return fresh
            if self._recently_attempted():
                raise JwksUnavailableError(
                    "the JWKS could not be loaded a moment ago; not retrying yet"
                )
            return self._load()

    def refreshed(self, tried: PublicKeys) -> PublicKeys | None:
        """Keys other than ``tried`` after a failed verification, or ``None`` if there are none.

        Another thread may have reloaded meanwhile (its keys are returned without a fetch);
        otherwise the set is loaded again unless it was within ``min_refresh_interval_s``.
        """
        with self._lock:
            current = self._fresh()
            if current is not None and current != tried:
                return current
            if self._recently_attempted():
                return None
            try:
                loaded = self._load()
            except JwksUnavailableError:
                return None  # the cached keys stay in use until they expire
            return loaded if loaded != tried else None

    def _fresh(self) -> PublicKeys | None:
        state = self._state  # one read: the keys and their load time always match
        if state is not None and self._clock() - state[1] < self.max_age_s:
            return state[0]
        return None

    def _recently_attempted(self) -> bool:
        return (
            self._attempted_at is not None
            and self._clock() - self._attempted_at < self.min_refresh_interval_s
        )

    def _load(self) -> PublicKeys:
        """Read and parse the key set; called with the lock held (or from ``__init__``)."""
        self._attempted_at = self._clock()
        keys = _parse_jwks(self._read())
        self._state = (keys, self._clock())
        return keys

    def _read(self) -> bytes:
        if self.file is not None:
            try:
                with self.file.open("rb") as stream:
                    data = stream.read(self.max_bytes + 1)
            except OSError as exc:
                raise JwksUnavailableError(f"cannot read the JWKS file {self.file}: {exc}") from exc
            if len(data) > self.max_bytes:
                raise JwksUnavailableError(f"the JWKS file is larger than {self.max_bytes} bytes")
            return data
        assert self.url is not None
        return self._fetch(self.url)

    def _fetch(self, url: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        chunks: list[bytes] = []
        size = 0
        try:
            with (
                httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client,
                client.stream("GET", url, headers={"Accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    raise JwksUnavailableError(f"the JWKS URL answered HTTP {response.status_code}")
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise JwksUnavailableError(
                            f"the JWKS is larger than {self.max_bytes} bytes"
                        )
                    if time.monotonic() > deadline:  # a server trickling bytes forever
                        raise JwksUnavailableError("the JWKS URL did not answer in time")
                    chunks.append(chunk)
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as exc:
            raise JwksUnavailableError(f"cannot fetch the JWKS: {type(exc).__name__}") from exc
        return b"".join(chunks)


def _parse_jwks(data: bytes) -> PublicKeys:
    """The Ed25519 signing keys of a JWKS document; keys of other types are skipped."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise JwksUnavailableError("the JWKS is not valid JSON") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksUnavailableError('the JWKS has no "keys" list')
    keys = [key for key in map(_ed25519_key, entries) if key is not None]
    if not keys:
        raise JwksUnavailableError("the JWKS has no Ed25519 signing key")
    return tuple(keys)


def _ed25519_key(entry: Any) -> Ed25519PublicKey | None:
    if not isinstance(entry, dict) or entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
        return None
    if entry.get("use", "sig") != "sig":
        return None
    x = entry.get("x")
    if not isinstance(x, str) or not _BASE64URL.fullmatch(x):
        return None
    try:
        raw = base64.urlsafe_b64decode(x.rstrip("=") + "=" * (-len(x.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _ED25519_KEY_BYTES:
        return None
    return Ed25519PublicKey.from_public_bytes(raw)


def _message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()


def _any_verifies(keys: PublicKeys, signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


class FalScheme:
    """Verify fal callbacks; ``delivery_id`` is fal's request id (the same on every retry).

    ``keys`` defaults to fal's published JWKS. Build the scheme once per process: its key cache
    lives in it. ``user_id``, when given, must equal the callback's user id (your fal account),
    so a callback fal signed for another account is refused.
    """

    name = "fal"

    __slots__ = ("keys", "tolerance_s", "user_id")

    def __init__(
        self,
        keys: JwksKeySet | None = None,
        *,
        user_id: str | None = None,
        tolerance_s: float = 300.0,
    ) -> None:
        if keys is not None and not isinstance(keys, JwksKeySet):
            raise InvalidInputError("keys must be a JwksKeySet")
        if user_id is not None and (not isinstance(user_id, str) or not user_id):
            raise InvalidInputError("user_id must be a non-empty string or None")
        self.keys = JwksKeySet(FAL_JWKS_URL) if keys is None else keys
        self.user_id = user_id
        self.tolerance_s = check_positive(tolerance_s, "tolerance_s")

    def __repr__(self) -> str:
        return f"FalScheme({self.keys!r}, user_id={self.user_id!r}, tolerance_s={self.tolerance_s})"

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: float | None = None
    ) -> Verified:
        """Check the headers against ``body``; see ``SignatureScheme.verify``.

        Raises ``JwksUnavailableError`` (a ``WebhookSignatureError``) when fal's keys cannot be
        loaded. Stale, malformed or foreign-user callbacks are refused before any key is fetched.
        """
        payload = body_bytes(body)
        values = [
            header(headers, name)
            for name in (REQUEST_ID_HEADER, USER_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
        ]
        request_id, user_id, raw_ts, raw_signature = values
        if not (request_id and user_id and raw_ts and raw_signature):
            raise WebhookSignatureError("missing one of the X-Fal-Webhook-* headers")
        for value, what in ((request_id, REQUEST_ID_HEADER), (user_id, USER_ID_HEADER)):
            if len(printable(value, what)) > _MAX_ID_CHARS:
                raise WebhookSignatureError(f"the {what} header is malformed")
        timestamp = parse_timestamp(raw_ts, TIMESTAMP_HEADER)
        check_window(timestamp, self.tolerance_s, now)
        if self.user_id is not None and user_id != self.user_id:  # not a secret: plain compare
            raise WebhookSignatureError("the callback was sent for another fal user")
        if not _SIGNATURE_HEX.fullmatch(raw_signature):
            raise WebhookSignatureError(f"{SIGNATURE_HEADER} must be 128 hex digits")
        signature = bytes.fromhex(raw_signature)
        message = _message(request_id, user_id, raw_ts, payload)
        keys = self.keys.keys()
        if _any_verifies(keys, signature, message):
            return Verified(delivery_id=request_id, timestamp=timestamp)
        newer = self.keys.refreshed(keys)
        if newer is not None and _any_verifies(newer, signature, message):
            return Verified(delivery_id=request_id, timestamp=timestamp)
        raise WebhookSignatureError("signature does not match any fal public key")


def fal_signed_headers(
    private_key: Ed25519PrivateKey,
    body: bytes,
    *,
    request_id: str,
    user_id: str,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The headers fal attaches, for tests and simulated providers holding their own key."""
    ts = str(
        int(time.time()) if timestamp is None else check_int(timestamp, "timestamp", minimum=0)
    )
    signature = private_key.sign(_message(request_id, user_id, ts, body_to_sign(body)))
    return {
        REQUEST_ID_HEADER: request_id,
        USER_ID_HEADER: user_id,
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: signature.hex(),
    }


def ed25519_jwk(public_key: Ed25519PublicKey, kid: str | None = None) -> dict[str, str]:
    """A JWKS entry (RFC 8037 ``OKP``/``Ed25519``) for ``public_key``, as fal publishes them."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        "use": "sig",
    }
    if kid is not None:
        jwk["kid"] = kid
    return jwk
