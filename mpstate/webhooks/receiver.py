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

import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from celery import Celery
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mpstate._checks import check_id, check_positive
from mpstate.aio.store import AsyncPipelineStateStore
from mpstate.celery.adapters import ADAPTERS
from mpstate.celery.binding import RESOLVE_WEBHOOK, MpState
from mpstate.celery.webhook import PayloadAdapter, WebhookOutcome, default_adapter
from mpstate.deliveries import UnmatchedReason
from mpstate.errors import (
    InvalidInputError,
    MpStateError,
    StateStoreUnavailableError,
    WebhookSignatureError,
)
from mpstate.events import EventMeta
from mpstate.fields import ensure_storable
from mpstate.metrics.asgi import MetricsApp
from mpstate.webhooks.metrics import ReceiverMetrics
from mpstate.webhooks.providers import ProviderConfig, Secrets, provider_configs
from mpstate.webhooks.schemes import SignatureScheme, Verified, check_callback_token

__all__ = ["DEFAULT_DEDUPE_TTL_S", "DEFAULT_MAX_BODY_BYTES", "webhook_app"]

T = TypeVar("T")

log = logging.getLogger("mpstate.webhooks")

#: Largest callback body accepted (provider payloads are small; artifacts travel by reference).
DEFAULT_MAX_BODY_BYTES = 256 * 1024

#: Asks the provider to wait before retrying a callback the broker could not take.
_RETRY_AFTER = {"Retry-After": "5"}

#: How often a callback for a job id not recorded yet is tried again, within ``early_wait_s``.
_EARLY_POLL_S = 0.1

#: Publishing is retried briefly, then the provider is asked to retry (503).
_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}

#: How long a delivery id is remembered: past every preset scheme's replay window (a replayed
#: delivery older than that fails its signature check anyway; ElevenLabs' window is 30 min).
DEFAULT_DEDUPE_TTL_S = 3600.0


_STORE_DOWN = "store-unavailable"
_BROKER_DOWN = "broker-unavailable"

#: The ``reason`` label of a refusal, by status, unless the refusal names its own cause.
_CAUSES = {400: "payload", 401: "signature", 404: "unknown-provider", 413: "too-large"}


class _RefusedError(Exception):
    """An answer other than 202, with its status and a message for the provider."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        reason: str | None = None,
        cause: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        #: Extra fields of the answer (``reason``: why it can never match).
        self.document = {"reason": reason} if reason else {}
        #: Why, as a short slug for the answers metric's ``reason`` label.
        self.cause = cause or reason or _CAUSES.get(status, "refused")


def webhook_app(
    celery_app: Celery,
    secrets: Secrets,
    *,
    schemes: Mapping[str, str | SignatureScheme] | None = None,
    scheme_options: Mapping[str, Mapping[str, Any]] | None = None,
    tolerance_s: float | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    job_id_field: str = "jobId",
    publish_timeout_s: float = 10.0,
    early_wait_s: float = 2.0,
    dedupe_ttl_s: float = DEFAULT_DEDUPE_TTL_S,
    resolve_inline: bool = True,
    store: AsyncPipelineStateStore | None = None,
    metrics: bool = False,
) -> Starlette:
    """An ASGI app receiving provider callbacks and applying them (or publishing them to
    ``celery_app``'s broker).

    ``secrets`` maps each provider to its secret (or several, during a rotation). Each provider's
    callbacks are verified by its scheme: the preset of its name (``replicate``, ``openai``,
    ``fal``, ``elevenlabs``, ``luma``), mpstate's own scheme otherwise, or what ``schemes`` names
    (``mpstate.webhooks.providers``); ``scheme_options`` passes options to one (fal's
    ``jwks_url``). ``tolerance_s`` overrides every scheme's replay window. Payloads are read by
    the adapter of the app's ``MpState`` for the provider (registered, else the provider's
    preset), else ``default_adapter``; the job id is the adapter's, else
    ``payload[job_id_field]``. A delivery id a scheme reports (``webhook-id``, fal's request id)
    seen again within ``dedupe_ttl_s`` is answered as a duplicate. ``store`` is an asyncio store
    on the bound ``MpState``'s data: an early callback then waits for its job id on the event
    loop (``find_by_external_job_id``) instead of holding a worker thread for up to
    ``early_wait_s``.
    """
    configs = provider_configs(
        secrets, schemes, tolerance_s=tolerance_s, scheme_options=scheme_options
    )
    check_positive(publish_timeout_s, "publish_timeout_s")
    check_positive(early_wait_s, "early_wait_s", zero_ok=True)
    check_positive(dedupe_ttl_s, "dedupe_ttl_s")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise InvalidInputError(f"max_body_bytes must be an integer, not {max_body_bytes!r}")
    check_positive(max_body_bytes, "max_body_bytes")
    check_id(job_id_field, "job_id_field")
    if store is not None and not isinstance(store, AsyncPipelineStateStore):
        raise InvalidInputError(f"store must be an mpstate.aio store, not {store!r}")
    receiver = _Receiver(
        celery_app,
        configs,
        max_body_bytes=max_body_bytes,
        job_id_field=job_id_field,
        publish_timeout_s=publish_timeout_s,
        early_wait_s=early_wait_s,
        dedupe_ttl_s=dedupe_ttl_s,
        resolve_inline=resolve_inline,
        store=store,
    )

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "providers": sorted(configs)})

    routes: list[Route] = []
    if metrics:
        routes.append(Route("/metrics", receiver.enable_metrics(), methods=["GET"]))
    return Starlette(
        routes=[
            *routes,
            Route("/webhooks/{provider}", receiver.receive, methods=["POST"]),
            Route(
                "/webhooks/{provider}/{run_id}/{step_id}/{attempt}/{token}",
                receiver.receive,
                methods=["POST"],
            ),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


@dataclass(frozen=True, slots=True)
class _Callback:
    """A verified, parsed callback: what it says about which job."""

    provider: str
    job_id: str
    #: The body as the provider sent it (what ``mpstate.resolve_webhook`` reads again).
    payload: dict[str, Any]
    outcome: WebhookOutcome
    delivery_id: str | None
    #: For a capability-URL callback: the (run id, step id, attempt) its token is bound to.
    target: tuple[str, str, int] | None = None


class _Receiver:
    """The receiver's settings and its one request handler."""

    def __init__(
        self,
        celery_app: Celery,
        configs: Mapping[str, ProviderConfig],
        *,
        max_body_bytes: int,
        job_id_field: str,
        publish_timeout_s: float,
        early_wait_s: float,
        dedupe_ttl_s: float,
        resolve_inline: bool,
        store: AsyncPipelineStateStore | None,
    ) -> None:
        self.celery_app = celery_app
        self.configs = configs
        self.max_body_bytes = max_body_bytes
        self.job_id_field = job_id_field
        self.publish_timeout_s = publish_timeout_s
        self.early_wait_s = early_wait_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self.resolve_inline = resolve_inline
        self.store = store
        self.metrics: ReceiverMetrics | None = None

    def enable_metrics(self) -> MetricsApp:
        """Count answers from now on; the ``GET /metrics`` app that exposes them (with the
        store's gauges and this process's run metrics, when an ``MpState`` is bound)."""
        mp = self.bound()
        store = self.store if self.store is not None else (mp.store if mp is not None else None)
        self.metrics = ReceiverMetrics(self.configs, store)
        return self.metrics.app

    def bound(self) -> MpState | None:
        """The app's ``MpState`` when callbacks are applied here (None: publish only)."""
        if not self.resolve_inline:
            return None
        try:
            return MpState.of(self.celery_app)
        except MpStateError:  # no MpState in this process: the receiver only publishes
            return None

    def adapter_for(self, provider: str) -> PayloadAdapter:
        try:
            return MpState.of(self.celery_app).adapter_for(provider)
        except MpStateError:
            return ADAPTERS.get(provider, default_adapter)

    async def receive(self, request: Request) -> JSONResponse:
        provider = request.path_params["provider"]
        try:
            callback = await self._verified(request, provider)
            answer = await self._apply(callback)
        except _RefusedError as refused:
            if refused.status >= 500:
                log.warning("webhook from %s not accepted: %s", provider, refused)
            self._count(provider, f"refused-{refused.status}", refused.cause)
            document = {"error": str(refused), **refused.document}
            return JSONResponse(document, status_code=refused.status, headers=refused.headers)
        self._count(
            provider,
            str(answer.get("outcome") or answer.get("pending") or answer["status"]),
            str(answer.get("reason") or ""),
        )
        return JSONResponse(answer, status_code=202)

    def _count(self, provider: str, answer: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.answered(provider, answer, reason)

    async def _verified(self, request: Request, provider: str) -> _Callback:
        """Authenticate and read the callback: 404, 413, 401, 400 (``_RefusedError``)."""
        config = self.configs.get(provider)
        if config is None:
            log.warning("callback for unconfigured provider %r refused", provider)
            raise _RefusedError(
                404,
                f"no webhook secret is configured for provider {provider!r}",
                reason=UnmatchedReason.UNKNOWN_PROVIDER,
            )
        params = request.path_params
        capability_route = "token" in params
        if capability_route != config.capability:
            if config.capability:
                raise _RefusedError(
                    401,
                    f"provider {provider!r} calls back on its callback URL",
                    cause="wrong-route",
                )
            raise _RefusedError(
                404, f"provider {provider!r} has no callback URLs", cause="wrong-route"
            )
        body = await _read_body(request, self.max_body_bytes)
        delivery_id: str | None = None
        target: tuple[str, str, int] | None = None
        if config.scheme is None:
            target = _capability_target(config, params)
        else:
            # In a thread: a scheme may fetch keys (fal's JWKS), which must not hold the loop.
            verified = await anyio.to_thread.run_sync(_verify, config.scheme, request, body)
            delivery_id = verified.delivery_id
        payload = _parse_payload(body)
        outcome = _read_outcome(self.adapter_for(provider), payload)
        if outcome.job_id is not None:
            job_id = _checked_job_id(outcome.job_id, "the adapter's job id")
        else:
            job_id = _checked_job_id(
                payload.get(self.job_id_field), f"payload field {self.job_id_field!r}"
            )
        return _Callback(provider, job_id, payload, outcome, delivery_id, target)

    async def _apply(self, callback: _Callback) -> dict[str, Any]:
        """Apply the callback here (with an ``MpState``), else publish it; the answer."""
        mp = self.bound()
        if mp is None:
            return await self._published(callback)
        if callback.delivery_id is not None and not await self._claim(mp, callback):
            return {"status": "duplicate", "deliveryId": callback.delivery_id}
        try:
            return await self._resolved(mp, callback)
        except _RefusedError:
            if callback.delivery_id is not None:
                # Not applied: the provider's retry of this delivery must be processed.
                await self._in_thread(
                    mp.store.release_delivery, callback.provider, callback.delivery_id
                )
            raise

    async def _resolved(self, mp: MpState, callback: _Callback) -> dict[str, Any]:
        outcome = "unknown"
        if self.store is None:
            outcome = await self._resolve_within(mp, callback, self.early_wait_s)
        elif await _wait_until_recorded(
            self.store, callback.provider, callback.job_id, self.early_wait_s
        ):
            outcome = await self._resolve_within(mp, callback, 0.0)
        if outcome != "unknown":
            return {"status": "accepted", "outcome": outcome}
        others = await self._in_thread(_other_providers, mp, callback)
        if others or callback.target is not None:
            # A capability URL's binding to its step is checked here, not by a worker: its
            # callback for a job still unrecorded after the early wait is kept, not published.
            detail = "" if others else "no run recorded the job within the early wait"
            unmatched = await self._in_thread(
                mp.record_unmatched,
                callback.provider,
                callback.job_id,
                detail,
                delivery_id=callback.delivery_id,
            )
            return {"status": "unmatched", "reason": unmatched.reason, "detail": unmatched.detail}
        answer = await self._published(callback)
        return {**answer, "pending": UnmatchedReason.UNKNOWN_JOB.value}

    async def _claim(self, mp: MpState, callback: _Callback) -> bool:
        assert callback.delivery_id is not None
        claimed: bool = await self._in_thread(
            mp.store.claim_delivery, callback.provider, callback.delivery_id, self.dedupe_ttl_s
        )
        return claimed

    async def _in_thread(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call in a worker thread, bounded by ``publish_timeout_s``: its result, 503."""
        try:
            with anyio.fail_after(self.publish_timeout_s):
                return await anyio.to_thread.run_sync(
                    functools.partial(call, *args, **kwargs), abandon_on_cancel=True
                )
        except TimeoutError as exc:
            raise _RefusedError(
                503,
                "the store did not answer in time; retry later",
                headers=_RETRY_AFTER,
                cause=_STORE_DOWN,
            ) from exc
        except StateStoreUnavailableError as exc:
            raise _RefusedError(
                503,
                "the store is unavailable; retry later",
                headers=_RETRY_AFTER,
                cause=_STORE_DOWN,
            ) from exc

    async def _resolve_within(self, mp: MpState, callback: _Callback, early_wait_s: float) -> str:
        """Apply the callback in a worker thread (``MpState.resolve_outcome``), trying again
        every ``_EARLY_POLL_S`` for ``early_wait_s`` while its job id is not recorded."""
        return await self._in_thread(_resolve, mp, callback, early_wait_s)

    async def _published(self, callback: _Callback) -> dict[str, Any]:
        task_id = await _publish_within(
            self.publish_timeout_s,
            self.celery_app,
            callback.provider,
            callback.job_id,
            callback.payload,
            callback.delivery_id,
        )
        return {"status": "accepted", "taskId": task_id}


def _verify(scheme: SignatureScheme, request: Request, body: bytes) -> Verified:
    try:
        return scheme.verify(request.headers, body)
    except WebhookSignatureError as exc:
        if type(exc).__name__ == "JwksUnavailableError":
            # The keys could not be fetched: not the sender's fault, let it retry.
            raise _RefusedError(
                503, str(exc), headers=_RETRY_AFTER, cause="keys-unavailable"
            ) from exc
        raise _RefusedError(401, str(exc)) from exc


def _capability_target(config: ProviderConfig, params: Mapping[str, str]) -> tuple[str, str, int]:
    run_id, step_id, attempt = params["run_id"], params["step_id"], params["attempt"]
    if not check_callback_token(config.secrets, run_id, step_id, attempt, params["token"]):
        raise _RefusedError(401, "the callback URL's token is not valid")
    return run_id, step_id, int(attempt)


def _stale_target(mp: MpState, callback: _Callback) -> str:
    """Why a capability URL does not authorize this callback ('' while it does): its run ended,
    its step moved to a later attempt, or the job belongs to another step or run (a URL is bound
    to one attempt of one step; its token cannot answer for another run's job)."""
    assert callback.target is not None
    run_id, step_id, attempt = callback.target
    run = mp.store.get(run_id, include_events=False)
    if run is None or run.is_terminal:
        return f"run {run_id!r} is no longer live"
    try:
        step = run.step(step_id)
    except KeyError:
        return f"run {run_id!r} has no step {step_id!r}"
    if step.attempts - 1 != attempt:
        return f"this URL is for attempt {attempt} of step {step_id!r}, which is at a later one"
    owner = mp.store.find_by_external_job_id(callback.provider, callback.job_id)
    if owner is None:
        if step.awaited_job is not None:
            return f"step {step_id!r} of this URL waits for another job"
        return ""  # not recorded yet: an early callback, checked again before it is applied
    owning_step = owner.step_of_job(callback.provider, callback.job_id)
    if owner.run_id != run_id or owning_step is None or owning_step.step_id != step_id:
        return f"job {callback.job_id!r} is not the job of this URL's step"
    return ""


def _other_providers(mp: MpState, callback: _Callback) -> list[str]:
    recorded = mp.store.find_job_providers(callback.job_id)
    return [name for name in recorded if name != callback.provider]


def _read_outcome(adapter: PayloadAdapter, payload: Mapping[str, Any]) -> WebhookOutcome:
    try:
        return adapter(payload)
    except (ValueError, TypeError, LookupError) as exc:  # InvalidInputError is a ValueError
        raise _RefusedError(400, f"payload refused: {exc}") from exc


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
        raise _RefusedError(
            400, "the client disconnected before the body was read", cause="disconnected"
        ) from exc
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


def _checked_job_id(value: object, what: str) -> str:
    try:
        return check_id(value, what)
    except InvalidInputError as exc:
        raise _RefusedError(400, str(exc), cause="job-id") from exc


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
        raise _RefusedError(
            503, "the store is unavailable; retry later", headers=_RETRY_AFTER, cause=_STORE_DOWN
        ) from exc


def _resolve(mp: MpState, callback: _Callback, early_wait_s: float) -> str:
    """``mp.resolve_outcome``, tried again every ``_EARLY_POLL_S`` while the job id is not
    recorded; a capability URL's binding is checked before every try (403 when it fails)."""
    deadline = time.monotonic() + early_wait_s
    meta: EventMeta = {"via": "receiver"}
    if callback.delivery_id is not None:
        meta["deliveryId"] = callback.delivery_id
    while True:
        if callback.target is not None and (stale := _stale_target(mp, callback)):
            raise _RefusedError(403, stale, reason="superseded")
        outcome = mp.resolve_outcome(
            callback.provider, callback.job_id, callback.outcome, meta=meta
        )
        if outcome != "unknown" or time.monotonic() >= deadline:
            return outcome
        time.sleep(_EARLY_POLL_S)


async def _publish_within(  # noqa: PLR0917 - private, called once
    timeout_s: float,
    celery_app: Celery,
    provider: str,
    job_id: str,
    payload: dict[str, Any],
    delivery_id: str | None,
) -> str:
    """Publish in a worker thread, answering 503 if the broker takes longer than ``timeout_s``.

    A broker that accepts connections but never answers would otherwise hold the request (and a
    thread) for as long as the transport's own timeouts allow, which may be forever.
    """
    try:
        with anyio.fail_after(timeout_s):
            return await anyio.to_thread.run_sync(
                _publish,
                celery_app,
                provider,
                job_id,
                payload,
                delivery_id,
                abandon_on_cancel=True,
            )
    except TimeoutError as exc:
        log.warning("publishing %s for %s/%s timed out", RESOLVE_WEBHOOK, provider, job_id)
        raise _RefusedError(
            503,
            "the broker did not answer in time; retry later",
            headers=_RETRY_AFTER,
            cause=_BROKER_DOWN,
        ) from exc


def _publish(
    celery_app: Celery,
    provider: str,
    job_id: str,
    payload: dict[str, Any],
    delivery_id: str | None,
) -> str:
    try:
        result = celery_app.send_task(
            RESOLVE_WEBHOOK,
            args=(provider, job_id, payload),
            kwargs={"delivery_id": delivery_id} if delivery_id is not None else {},
            retry=True,
            retry_policy=_PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # kombu and the transports raise many types for "broker down"
        log.warning("could not publish %s for %s/%s: %r", RESOLVE_WEBHOOK, provider, job_id, exc)
        raise _RefusedError(
            503, "the broker is unavailable; retry later", headers=_RETRY_AFTER, cause=_BROKER_DOWN
        ) from exc
    return str(result.id)
