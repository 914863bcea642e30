"""The HTTP webhook receiver: verify a provider's callback, apply or enqueue it, answer 202.

::

    app = webhook_app(celery_app, {"video": "s3cret"})   # an ASGI app (Starlette)
    # standalone: mpstate webhooks serve --secret video=s3cret --broker-url redis://...
    # mounted:    Mount("/hooks", app=app) in your own Starlette / FastAPI application

``POST /webhooks/{provider}`` answers:

- 202 ``{"status": "accepted", "outcome": ...}`` once the callback is applied to its run (or
  found to be a duplicate), or 202 ``{"status": "accepted", "taskId": ...}`` once
  ``mpstate.resolve_webhook`` is published to resolve it later;
- 401 when the signature is missing or wrong or the timestamp is outside the replay window
  (checked before the body is parsed: unauthenticated bytes are never decoded);
- 400 when the body is not a JSON object, has no usable job id, or the provider's payload adapter
  refuses it; 404 for a provider with no secret; 413 for a body over ``max_body_bytes``;
- 503 with ``Retry-After`` when the store or the broker is unavailable, or does not answer
  within ``publish_timeout_s`` (the provider retries).

Where an ``MpState`` is bound to the app (``--app`` of ``mpstate webhooks serve``), the receiver
applies the callback to its run itself and answers only once that is committed: a 2xx means the
run's state holds the result, whatever happens to a broker message or a worker afterwards (the
chaos suite lost callbacks that were only a broker message: a worker SIGKILLed as Redis handed it
the message). A callback for a job id not recorded yet (it can overtake the step that submitted
the job) is tried again for ``early_wait_s``, then handed to ``mpstate.resolve_webhook``, which
keeps retrying it. Without an ``MpState`` (or with ``resolve_inline=False``) every callback is
published to the task. Duplicates
and replays inside the window are absorbed either way. ``GET /healthz`` answers 200 while the
process serves.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
from celery import Celery
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mpstate.aio.store import AsyncPipelineStateStore
from mpstate.celery.binding import RESOLVE_WEBHOOK, MpState
from mpstate.celery.webhook import PayloadAdapter, default_adapter
from mpstate.errors import (
    InvalidInputError,
    MpStateError,
    StateStoreUnavailableError,
    WebhookSignatureError,
)
from mpstate.fields import ensure_storable
from mpstate.store import check_id, check_positive
from mpstate.webhooks.signing import DEFAULT_TOLERANCE_S, verify

__all__ = ["DEFAULT_MAX_BODY_BYTES", "webhook_app"]

log = logging.getLogger("mpstate.webhooks")

#: Largest callback body accepted (provider payloads are small; artifacts travel by reference).
DEFAULT_MAX_BODY_BYTES = 256 * 1024

#: Asks the provider to wait before retrying a callback the broker could not take.
_RETRY_AFTER = {"Retry-After": "5"}

#: How often a callback for a job id not recorded yet is tried again, within ``early_wait_s``.
_EARLY_POLL_S = 0.1

#: Publishing is retried briefly, then the provider is asked to retry (503).
_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}

Secrets = Mapping[str, str | Sequence[str]]


class _RefusedError(Exception):
    """An answer other than 202, with its status and a message for the provider."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def webhook_app(
    celery_app: Celery,
    secrets: Secrets,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    job_id_field: str = "jobId",
    publish_timeout_s: float = 10.0,
    early_wait_s: float = 2.0,
    resolve_inline: bool = True,
    store: AsyncPipelineStateStore | None = None,
) -> Starlette:
    """An ASGI app receiving provider callbacks and publishing them to ``celery_app``'s broker.

    ``secrets`` maps each provider to its signing secret (or several, during a rotation).
    Payloads are checked with the adapter registered on the app's ``MpState`` for the provider
    when one is bound, else with ``default_adapter``; the job id is ``payload[job_id_field]``.
    ``store`` is an asyncio store on the bound ``MpState``'s data: an early callback then waits
    for its job id on the event loop (``find_by_external_job_id``) instead of holding a worker
    thread for up to ``early_wait_s``; only a recorded job is resolved in a thread, and one never
    recorded goes straight to the task.
    """
    table = _check_secrets(secrets)
    check_positive(tolerance_s, "tolerance_s")
    check_positive(publish_timeout_s, "publish_timeout_s")
    check_positive(early_wait_s, "early_wait_s", zero_ok=True)
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise InvalidInputError(f"max_body_bytes must be an integer, not {max_body_bytes!r}")
    check_positive(max_body_bytes, "max_body_bytes")
    check_id(job_id_field, "job_id_field")
    if store is not None and not isinstance(store, AsyncPipelineStateStore):
        raise InvalidInputError(f"store must be an mpstate.aio store, not {store!r}")

    def bound() -> MpState | None:
        if not resolve_inline:
            return None
        try:
            return MpState.of(celery_app)
        except MpStateError:  # no MpState in this process: the receiver only publishes
            return None

    def adapter_for(provider: str) -> PayloadAdapter:
        try:
            return MpState.of(celery_app).adapter_for(provider)
        except MpStateError:
            return default_adapter

    async def receive(request: Request) -> JSONResponse:
        provider = request.path_params["provider"]
        try:
            provider_secrets = table.get(provider)
            if provider_secrets is None:
                raise _RefusedError(
                    404, f"no webhook secret is configured for provider {provider!r}"
                )
            body = await _read_body(request, max_body_bytes)
            try:
                verify(provider_secrets, request.headers, body, tolerance_s=tolerance_s)
            except WebhookSignatureError as exc:
                raise _RefusedError(401, str(exc)) from exc
            payload = _parse_payload(body)
            job_id = _job_id(payload, job_id_field)
            _check_adapter(adapter_for(provider), payload)
            mp = bound()
            if mp is not None:
                outcome = "unknown"
                if store is None:
                    outcome = await _resolve_within(
                        publish_timeout_s, mp, provider, job_id, payload, early_wait_s
                    )
                elif await _wait_until_recorded(store, provider, job_id, early_wait_s):
                    outcome = await _resolve_within(
                        publish_timeout_s, mp, provider, job_id, payload, 0.0
                    )
                if outcome != "unknown":
                    return JSONResponse({"status": "accepted", "outcome": outcome}, 202)
            task_id = await _publish_within(
                publish_timeout_s, celery_app, provider, job_id, payload
            )
        except _RefusedError as refused:
            if refused.status >= 500:
                log.warning("webhook from %s not accepted: %s", provider, refused)
            return JSONResponse(
                {"error": str(refused)}, status_code=refused.status, headers=refused.headers
            )
        return JSONResponse({"status": "accepted", "taskId": task_id}, status_code=202)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "providers": sorted(table)})

    return Starlette(
        routes=[
            Route("/webhooks/{provider}", receive, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


def _check_secrets(secrets: Secrets) -> dict[str, list[str]]:
    if not isinstance(secrets, Mapping) or not secrets:
        raise InvalidInputError("configure at least one provider secret (provider -> secret)")
    table = {}
    for provider, value in secrets.items():
        check_id(provider, "provider")
        values = [value] if isinstance(value, str) else list(value)
        if not values or not all(isinstance(v, str) and v for v in values):
            raise InvalidInputError(f"provider {provider!r} needs a non-empty secret")
        table[provider] = values
    return table


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _RefusedError(413, f"body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _RefusedError(413, f"body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise _RefusedError(400, "the client disconnected before the body was read") from exc
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
        ensure_storable(payload, "payload")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _RefusedError(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise _RefusedError(400, "body must be a JSON object")
    return payload


def _job_id(payload: Mapping[str, Any], field: str) -> str:
    try:
        return check_id(payload.get(field), f"payload field {field!r}")
    except InvalidInputError as exc:
        raise _RefusedError(400, str(exc)) from exc


def _check_adapter(adapter: Callable[[Mapping[str, Any]], Any], payload: Mapping[str, Any]) -> None:
    try:
        adapter(payload)
    except (ValueError, TypeError, LookupError) as exc:  # InvalidInputError is a ValueError
        raise _RefusedError(400, f"payload refused: {exc}") from exc


async def _wait_until_recorded(
    store: AsyncPipelineStateStore, provider: str, job_id: str, wait_s: float
) -> bool:
    """Poll the asyncio store until the job id is recorded (True) or ``wait_s`` passes (False)."""
    deadline = time.monotonic() + wait_s
    try:
        while await store.find_by_external_job_id(provider, job_id) is None:
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(_EARLY_POLL_S)
        return True
    except StateStoreUnavailableError as exc:
        raise _RefusedError(503, "the store is unavailable; retry later", _RETRY_AFTER) from exc


async def _resolve_within(  # noqa: PLR0917 - private, called once
    timeout_s: float,
    mp: MpState,
    provider: str,
    job_id: str,
    payload: dict[str, Any],
    early_wait_s: float,
) -> str:
    """Apply the callback in a worker thread (``MpState.resolve``): its outcome, or 503."""
    try:
        with anyio.fail_after(timeout_s):
            return await anyio.to_thread.run_sync(
                _resolve, mp, provider, job_id, payload, early_wait_s, abandon_on_cancel=True
            )
    except TimeoutError as exc:
        log.warning("resolving the callback for %s/%s timed out", provider, job_id)
        raise _RefusedError(
            503, "the store did not answer in time; retry later", _RETRY_AFTER
        ) from exc
    except StateStoreUnavailableError as exc:
        raise _RefusedError(503, "the store is unavailable; retry later", _RETRY_AFTER) from exc


def _resolve(
    mp: MpState, provider: str, job_id: str, payload: dict[str, Any], early_wait_s: float
) -> str:
    """``mp.resolve``, tried again every ``_EARLY_POLL_S`` while the job id is not recorded."""
    deadline = time.monotonic() + early_wait_s
    while True:
        outcome = mp.resolve(provider, job_id, payload, meta={"via": "receiver"})
        if outcome != "unknown" or time.monotonic() >= deadline:
            return outcome
        time.sleep(_EARLY_POLL_S)


async def _publish_within(
    timeout_s: float, celery_app: Celery, provider: str, job_id: str, payload: dict[str, Any]
) -> str:
    """Publish in a worker thread, answering 503 if the broker takes longer than ``timeout_s``.

    A broker that accepts connections but never answers would otherwise hold the request (and a
    thread) for as long as the transport's own timeouts allow, which may be forever.
    """
    try:
        with anyio.fail_after(timeout_s):
            return await anyio.to_thread.run_sync(
                _publish, celery_app, provider, job_id, payload, abandon_on_cancel=True
            )
    except TimeoutError as exc:
        log.warning("publishing %s for %s/%s timed out", RESOLVE_WEBHOOK, provider, job_id)
        raise _RefusedError(
            503, "the broker did not answer in time; retry later", _RETRY_AFTER
        ) from exc


def _publish(celery_app: Celery, provider: str, job_id: str, payload: dict[str, Any]) -> str:
    try:
        result = celery_app.send_task(
            RESOLVE_WEBHOOK,
            args=(provider, job_id, payload),
            retry=True,
            retry_policy=_PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # kombu and the transports raise many types for "broker down"
        log.warning("could not publish %s for %s/%s: %r", RESOLVE_WEBHOOK, provider, job_id, exc)
        raise _RefusedError(503, "the broker is unavailable; retry later", _RETRY_AFTER) from exc
    return str(result.id)
