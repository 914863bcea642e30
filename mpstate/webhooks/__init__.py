"""Provider callbacks over HTTP: signing (no dependencies) and the receiver (``mpstate[web]``).

``webhook_app`` loads on first use, so signing works without Starlette.
"""

from __future__ import annotations

from typing import Any

from mpstate.webhooks.signing import (
    DEFAULT_TOLERANCE_S,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    parse_secrets,
    sign,
    signed_headers,
    verify,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_TOLERANCE_S",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "parse_secrets",
    "sign",
    "signed_headers",
    "verify",
    "webhook_app",
]

_RECEIVER_NAMES = {"webhook_app", "DEFAULT_MAX_BODY_BYTES"}


def __getattr__(name: str) -> Any:
    if name in _RECEIVER_NAMES:
        try:
            from mpstate.webhooks import receiver  # noqa: PLC0415 - optional extra
        except ImportError as exc:
            raise ImportError(
                f"{name} needs the web extra: pip install 'mpstate[web]' ({exc})"
            ) from exc
        return getattr(receiver, name)
    raise AttributeError(f"module 'mpstate.webhooks' has no attribute {name!r}")
