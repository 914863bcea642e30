"""Signed provider callbacks for tests: what a provider would POST to the webhook receiver.

::

    request = sign_webhook("video", {"jobId": job_id, "status": "succeeded"}, secret)
    response = deliver(webhook_app(celery_app, {"video": secret}), request)   # in process
    # or over HTTP: httpx.post(base_url + request.path, content=request.body, headers=...)

The headers come from the same signing code the receiver verifies with (``mpstate.webhooks``):
mpstate's own scheme for any provider name, and the preset scheme of ``replicate`` and ``openai``
(Standard Webhooks) or ``elevenlabs``, or the ``scheme`` named. fal signs with its private
Ed25519 key: use ``mpstate.webhooks.schemes.fal.fal_signed_headers`` with a key of your own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mpstate._checks import check_id
from mpstate.errors import InvalidInputError
from mpstate.webhooks.providers import CAPABILITY, PRESET_SCHEMES
from mpstate.webhooks.schemes import HexHmacScheme, StandardWebhooksScheme, scheme_for

if TYPE_CHECKING:
    import httpx

__all__ = ["WebhookRequest", "deliver", "sign_webhook"]


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A signed callback: POST ``body`` to ``path`` with ``headers``."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def sign_webhook(
    provider: str,
    payload: Mapping[str, Any] | bytes,
    secret: str,
    *,
    scheme: str | None = None,
    timestamp: int | None = None,
    delivery_id: str | None = None,
) -> WebhookRequest:
    """The request ``provider`` sends for ``payload`` (a JSON object, or the exact body bytes).

    ``scheme`` defaults to the provider's preset, else ``mpstate``; ``timestamp`` (unix seconds)
    defaults to now: pass an old one to test the replay window. ``delivery_id`` is Standard
    Webhooks' ``webhook-id`` (a new one by default; send one twice to test deduplication).
    """
    check_id(provider, "provider")
    name = scheme or PRESET_SCHEMES.get(provider, "mpstate")
    if name == CAPABILITY:
        raise InvalidInputError(
            f"{provider} signs nothing: post to the step's capability URL (callback_url) instead"
        )
    if name == "fal":
        raise InvalidInputError(
            "fal signs with its private Ed25519 key: use fal_signed_headers with your own key"
        )
    body = payload if isinstance(payload, bytes) else json.dumps(dict(payload)).encode()
    signer = scheme_for(name, secret)
    if isinstance(signer, StandardWebhooksScheme):
        msg_id = delivery_id or f"msg_{uuid.uuid4().hex}"
        headers = signer.sign(msg_id, body, timestamp=timestamp)
    elif isinstance(signer, HexHmacScheme):
        headers = signer.sign(body, timestamp=timestamp)
    else:  # pragma: no cover - every signing scheme of scheme_for is handled above
        raise InvalidInputError(f"cannot sign for the {name} scheme")
    headers["Content-Type"] = "application/json"
    return WebhookRequest(path=f"/webhooks/{provider}", body=body, headers=headers)


def deliver(asgi_app: Any, request: WebhookRequest) -> httpx.Response:
    """POST ``request`` to an ASGI app (``webhook_app``) in this process; return the response.

    Runs its own event loop, so call it from a plain (not async) test; needs httpx (the ``web``
    extra). The receiver applies the callback before answering, as it does over HTTP.
    """
    import httpx  # noqa: PLC0415 - the web extra

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mpstate.test") as client:
            return await client.post(request.path, content=request.body, headers=request.headers)

    return asyncio.run(post())
