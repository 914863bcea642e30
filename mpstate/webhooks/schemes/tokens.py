"""Capability URLs for providers that sign nothing (Luma): an unguessable token per attempt.

Luma POSTs the generation object to the ``callback_url`` given at creation, retrying 3 times
(https://docs.lumalabs.ai/changelog/callbacks-and-credits-balance). That changelog documents no
signature or secret, and third-party descriptions of the API note there is none, so the only
proof a callback comes from a URL we handed out is a secret in the URL itself. The token is an
HMAC of (run id, step id, attempt) under a receiver secret:

    token = base64url(HMAC-SHA256(secret, "mpstate-callback-v1" + len-prefixed fields)[:24])

32 characters, 192 bits. It is stateless: the URL can be built before the provider call and
checked before the step has recorded its job, by any receiver process holding the secret.
Several secrets are accepted when checking, so the secret can be rotated while old URLs are
still out. Suggested URL shape (``callback_path``)::

    /webhooks/{provider}/{run_id}/{step_id}/{attempt}/{token}

The token proves only that mpstate minted the URL for that attempt. The receiver still checks
that the attempt is the step's current one and the run is live, and confirms the outcome by
fetching the generation from the provider (the body itself is unauthenticated). Keep the URLs
out of logs: anyone holding one can post to it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import quote

from mpstate._checks import check_id, check_int
from mpstate.errors import InvalidInputError
from mpstate.fields import MAX_SAFE_INTEGER
from mpstate.webhooks.schemes._base import check_secrets

__all__ = ["MIN_SECRET_CHARS", "callback_path", "callback_token", "check_callback_token"]

#: A shorter key could be recovered offline from one leaked URL by trying every candidate.
MIN_SECRET_CHARS = 16

_DOMAIN = b"mpstate-callback-v1"
_TOKEN_BYTES = 24  # base64 of a multiple of 3 bytes needs no padding
_TOKEN_CHARS = 32
_MAX_ATTEMPT_DIGITS = 16


def _encode(run_id: str, step_id: str, attempt: int) -> bytes:
    """Length-prefixed fields: ("a/b", "c") and ("a", "b/c") never encode alike."""
    fields = (run_id.encode(), step_id.encode(), str(attempt).encode())
    return _DOMAIN + b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def _token(secret: str, message: bytes) -> str:
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()[:_TOKEN_BYTES]
    return base64.urlsafe_b64encode(digest).decode()


def _check_secret_length(secrets: tuple[str, ...]) -> tuple[str, ...]:
    if any(len(s) < MIN_SECRET_CHARS for s in secrets):
        raise InvalidInputError(f"a callback secret needs at least {MIN_SECRET_CHARS} characters")
    return secrets


def callback_token(secret: str, run_id: str, step_id: str, attempt: int) -> str:
    """The URL token for one attempt of one step; raises ``InvalidInputError`` on bad arguments."""
    if not isinstance(secret, str):
        raise InvalidInputError("the callback secret must be a string")
    (key,) = _check_secret_length(check_secrets(secret, "callback_token"))
    message = _encode(
        check_id(run_id, "run_id"),
        check_id(step_id, "step_id"),
        check_int(attempt, "attempt", minimum=0),
    )
    return _token(key, message)


def check_callback_token(
    secrets: str | Sequence[str],
    run_id: str,
    step_id: str,
    attempt: int | str,
    token: str,
) -> bool:
    """Whether ``token`` was minted by ``callback_token`` with one of ``secrets``.

    ``attempt`` may be the URL's path segment as is (canonical decimal digits). Anything a
    request can carry (ids, attempt, token) only ever yields ``False``; a missing or short
    secret is a configuration error (``InvalidInputError``). Every secret is compared in
    constant time.
    """
    keys = _check_secret_length(check_secrets(secrets, "check_callback_token"))
    number = _attempt_number(attempt)
    if (
        number is None
        or not isinstance(token, str)
        or len(token) != _TOKEN_CHARS
        or not token.isascii()
    ):
        return False
    try:
        message = _encode(check_id(run_id, "run_id"), check_id(step_id, "step_id"), number)
    except InvalidInputError:
        return False
    offered = token.encode()
    matches = [hmac.compare_digest(_token(key, message).encode(), offered) for key in keys]
    return any(matches)


def callback_path(
    secret: str,
    provider: str,
    run_id: str,
    step_id: str,
    attempt: int,
    *,
    prefix: str = "/webhooks",
) -> str:
    """``{prefix}/{provider}/{run_id}/{step_id}/{attempt}/{token}``, each id percent-encoded.

    An id containing ``/`` is refused: ASGI servers decode ``%2F`` before routing, so such a path
    could not be matched back to its segments.
    """
    token = callback_token(secret, run_id, step_id, attempt)
    segments = [check_id(provider, "provider"), run_id, step_id]
    if any("/" in segment for segment in segments):
        raise InvalidInputError("provider, run and step ids in a callback URL cannot contain '/'")
    quoted = [quote(segment, safe="") for segment in segments]
    return "/".join([prefix.rstrip("/"), *quoted, str(attempt), token])


def _attempt_number(attempt: object) -> int | None:
    if isinstance(attempt, bool):
        return None
    if isinstance(attempt, int):
        return attempt if 0 <= attempt <= MAX_SAFE_INTEGER else None
    if (
        isinstance(attempt, str)
        and attempt.isascii()
        and attempt.isdigit()
        and len(attempt) <= _MAX_ATTEMPT_DIGITS
        and (attempt == "0" or not attempt.startswith("0"))
    ):
        return int(attempt)
    return None
