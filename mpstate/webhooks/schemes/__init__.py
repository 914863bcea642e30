"""How real providers sign their callbacks: one ``SignatureScheme`` interface, several schemes.

::

    scheme = scheme_for("standard-webhooks", ["whsec_..."])   # Replicate, OpenAI, Svix senders
    verified = scheme.verify(request.headers, body)           # WebhookSignatureError if not
    verified.delivery_id                                      # dedupe key across retries

- ``standard-webhooks``: Replicate, OpenAI, any Svix-powered sender (``StandardWebhooksScheme``);
- ``stripe``: ``Stripe-Signature: t=...,v1=<hex>`` (``stripe_scheme``, a ``HexHmacScheme``);
- ``elevenlabs``: ``ElevenLabs-Signature: t=...,v0=<hex>`` (``elevenlabs_scheme``);
- ``mpstate``: mpstate's own ``X-Mpstate-Timestamp`` + ``X-Mpstate-Signature`` (``mpstate_scheme``);
- ``fal``: fal.ai's Ed25519 signatures checked against its published JWKS (``FalScheme``).

Providers that sign nothing (Luma) get a capability URL instead: ``callback_token`` and
``check_callback_token``. Schemes are stateless apart from fal's key cache, so replays inside a
scheme's tolerance verify again: dedupe on ``Verified.delivery_id`` (or the payload's job id and
status) in the receiver. ``FalScheme`` and its helpers need ``cryptography`` and ``httpx`` (the
``web`` extra) and load on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

from mpstate._checks import check_positive
from mpstate.errors import InvalidInputError
from mpstate.webhooks.schemes._base import SignatureScheme, Verified
from mpstate.webhooks.schemes.hexhmac import (
    HexHmacScheme,
    elevenlabs_scheme,
    mpstate_scheme,
    stripe_scheme,
)
from mpstate.webhooks.schemes.standard import StandardWebhooksScheme
from mpstate.webhooks.schemes.tokens import callback_path, callback_token, check_callback_token

__all__ = [
    "SCHEME_NAMES",
    "FalScheme",
    "HexHmacScheme",
    "JwksKeySet",
    "JwksUnavailableError",
    "SignatureScheme",
    "StandardWebhooksScheme",
    "Verified",
    "callback_path",
    "callback_token",
    "check_callback_token",
    "elevenlabs_scheme",
    "mpstate_scheme",
    "scheme_for",
    "stripe_scheme",
]

SCHEME_NAMES = ("standard-webhooks", "stripe", "elevenlabs", "mpstate", "fal")

_FAL_NAMES = {"FalScheme", "JwksKeySet", "JwksUnavailableError"}
_FAL_OPTIONS = {"jwks_url", "jwks_file", "user_id", "max_age_s", "min_refresh_interval_s"}
_FAL_OPTIONS |= {"timeout_s", "tolerance_s"}


def _fal_module(what: str) -> ModuleType:
    try:
        from mpstate.webhooks.schemes import fal  # noqa: PLC0415 - optional extra
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the web extra: pip install 'mpstate[web]' ({exc})"
        ) from exc
    return fal


def __getattr__(name: str) -> Any:
    if name in _FAL_NAMES:
        return getattr(_fal_module(name), name)
    raise AttributeError(f"module 'mpstate.webhooks.schemes' has no attribute {name!r}")


def scheme_for(name: str, secrets: str | Sequence[str] = (), **options: Any) -> SignatureScheme:
    """The scheme configured as ``name`` for one provider; ``InvalidInputError`` if it cannot be.

    ``secrets``: the provider's signing secret(s), several while rotating (unused by ``fal``,
    which verifies with fal's public keys). Every scheme takes ``tolerance_s``; ``fal`` also
    takes ``jwks_url`` (default fal's) or ``jwks_file``, ``user_id``, ``max_age_s``,
    ``min_refresh_interval_s`` and ``timeout_s``. Build each scheme once: fal's keys are cached
    in its scheme object.
    """
    if name not in SCHEME_NAMES:
        raise InvalidInputError(
            f"unknown signature scheme {name!r}; known: {', '.join(SCHEME_NAMES)}"
        )
    allowed = _FAL_OPTIONS if name == "fal" else {"tolerance_s"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InvalidInputError(f"the {name} scheme takes no option {', '.join(unknown)}")
    if name == "fal":
        return _fal_scheme(**options)
    if "tolerance_s" in options:
        tolerance = {"tolerance_s": check_positive(options["tolerance_s"], "tolerance_s")}
    else:
        tolerance = {}
    if name == "standard-webhooks":
        return StandardWebhooksScheme(secrets, **tolerance)
    factory = {"stripe": stripe_scheme, "elevenlabs": elevenlabs_scheme, "mpstate": mpstate_scheme}
    return factory[name](secrets, **tolerance)


def _fal_scheme(
    *,
    jwks_url: str | None = None,
    jwks_file: str | None = None,
    user_id: str | None = None,
    tolerance_s: float = 300.0,
    **cache: Any,
) -> SignatureScheme:
    """``max_age_s``, ``min_refresh_interval_s`` and ``timeout_s`` go to ``JwksKeySet``."""
    fal = _fal_module("the fal scheme")
    if jwks_url is not None and jwks_file is not None:
        raise InvalidInputError("give the fal scheme a jwks_url or a jwks_file, not both")
    if jwks_file is not None:
        keys = fal.JwksKeySet(file=jwks_file, **cache)
    else:
        keys = fal.JwksKeySet(fal.FAL_JWKS_URL if jwks_url is None else jwks_url, **cache)
    scheme: SignatureScheme = fal.FalScheme(keys, user_id=user_id, tolerance_s=tolerance_s)
    return scheme
