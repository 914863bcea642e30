"""Helpers for the real-provider receiver tests: secrets, signing as each provider signs, a JWKS
served on loopback, and a two-step pipeline whose first step waits for a provider's job.

Each provider signs exactly as it documents (``mpstate.webhooks.schemes`` cites the sources):

- ``replicate`` / ``openai``: Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature: v1,<base64>``) with a ``whsec_`` secret;
- ``fal``: Ed25519 over (request id, user id, timestamp, sha256 of the body), with keys made
  here and published as a JWKS on a loopback HTTP server;
- ``elevenlabs``: ``ElevenLabs-Signature: t=<unix>,v0=<hex>``;
- ``luma``: nothing; it calls back on the capability URL the step built (``callback_url``);
- ``video`` / ``veo``: mpstate's own scheme (``X-Mpstate-Timestamp``, ``X-Mpstate-Signature``).

The pipeline (``define_media_tasks``): ``media.generate`` awaits the job ``<job_id>-<attempt>``
of its provider (building the Luma callback URL first, when asked), ``media.publish`` records
what it was handed.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from celery_support import DEADLINE, Harness, wait_for
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from provider_payloads import (
    ELEVENLABS_STT,
    FAL_OK_IMAGES,
    LUMA_COMPLETED,
    OPENAI_VIDEO_COMPLETED,
    REPLICATE_SUCCEEDED_IMAGES,
)

from celery_app.embedded import bind_loopback, serving, url_of
from mpstate.celery import PipelineTask
from mpstate.models import PipelineRun
from mpstate.webhooks import signed_headers, webhook_app
from mpstate.webhooks.schemes import StandardWebhooksScheme, elevenlabs_scheme
from mpstate.webhooks.schemes.fal import ed25519_jwk, fal_signed_headers

REPLICATE_SECRET = "whsec_" + base64.b64encode(b"replicate-current-key-0123456789").decode()
REPLICATE_OLD_SECRET = "whsec_" + base64.b64encode(b"replicate-previous-key-987654321").decode()
OPENAI_SECRET = "whsec_" + base64.b64encode(b"openai-endpoint-signing-key-0001").decode()
OPENAI_OLD_SECRET = "whsec_" + base64.b64encode(b"openai-endpoint-signing-key-0000").decode()
#: A secret of no configured provider: what a forger would sign with.
STRANGER_SW_SECRET = "whsec_" + base64.b64encode(b"someone-else-entirely-0123456789").decode()
ELEVENLABS_SECRET = "wsec_elevenlabs-current-0123456789abcdef"
ELEVENLABS_OLD_SECRET = "wsec_elevenlabs-previous-fedcba9876543210"
LUMA_SECRET = "luma-callback-key-current-0123456789"
LUMA_OLD_SECRET = "luma-callback-key-previous-987654321"
VIDEO_SECRET = "video-mpstate-secret-0123456789"
VIDEO_OLD_SECRET = "video-mpstate-secret-previous"

FAL_KEY = Ed25519PrivateKey.generate()
FAL_NEXT_KEY = Ed25519PrivateKey.generate()
FAL_STRANGER_KEY = Ed25519PrivateKey.generate()
FAL_USER_ID = "fal-user-42"

#: What the receivers under test are given: every preset provider (fal is added by scheme, its
#: keys being public), most in the middle of a secret rotation, and two providers on mpstate's own
#: scheme.
SECRETS: dict[str, str | list[str]] = {
    "replicate": [REPLICATE_SECRET, REPLICATE_OLD_SECRET],
    "openai": [OPENAI_SECRET, OPENAI_OLD_SECRET],
    "elevenlabs": [ELEVENLABS_SECRET, ELEVENLABS_OLD_SECRET],
    "luma": [LUMA_SECRET, LUMA_OLD_SECRET],
    "video": [VIDEO_SECRET, VIDEO_OLD_SECRET],
    "veo": VIDEO_SECRET,
}

_DELIVERIES = itertools.count(1)


def new_delivery_id() -> str:
    """A ``webhook-id`` no other delivery of this test session has."""
    return f"msg_{time.time_ns():x}{next(_DELIVERIES)}"


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()


#: The documented success payload of each provider.
SUCCESS: dict[str, dict[str, Any]] = {
    "replicate": REPLICATE_SUCCEEDED_IMAGES,
    "openai": OPENAI_VIDEO_COMPLETED,
    "fal": FAL_OK_IMAGES,
    "elevenlabs": ELEVENLABS_STT,
    "luma": LUMA_COMPLETED,
}

#: The log of a run whose generate step was resumed by its provider's callback.
RESUMED_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "generate"),
    ("step-waiting", "generate"),
    ("run-suspended", None),
    ("run-resumed", None),
    ("step-completed", "generate"),
    ("step-started", "publish"),
    ("step-completed", "publish"),
    ("run-completed", None),
]


# -- a JWKS on loopback ------------------------------------------------------------------------


class JwksServer:
    """fal's JWKS endpoint, stood in for on 127.0.0.1; counts its requests."""

    def __init__(self, *keys: Ed25519PrivateKey, stall_s: float = 0.0) -> None:
        self.document = {"keys": [ed25519_jwk(k.public_key(), f"k{i}") for i, k in enumerate(keys)]}
        self.requests = 0
        self.stall_s = stall_s
        owner = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    owner.requests += 1
                time.sleep(owner.stall_s)
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}/.well-known/jwks.json"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def jwks_server(*keys: Ed25519PrivateKey, stall_s: float = 0.0) -> Iterator[JwksServer]:
    server = JwksServer(*keys, stall_s=stall_s)
    try:
        yield server
    finally:
        server.close()


# -- signing as each provider does -------------------------------------------------------------


def standard_webhooks_headers(
    body: bytes,
    secret: str = REPLICATE_SECRET,
    *,
    delivery_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    return StandardWebhooksScheme(secret).sign(
        delivery_id or new_delivery_id(), body, timestamp=timestamp
    )


def elevenlabs_headers(
    body: bytes, secret: str = ELEVENLABS_SECRET, *, timestamp: int | None = None
) -> dict[str, str]:
    return elevenlabs_scheme(secret).sign(body, timestamp=timestamp)


def fal_headers(
    body: bytes,
    key: Ed25519PrivateKey = FAL_KEY,
    *,
    request_id: str,
    timestamp: int | None = None,
) -> dict[str, str]:
    return fal_signed_headers(
        key, body, request_id=request_id, user_id=FAL_USER_ID, timestamp=timestamp
    )


def sign_for(
    provider: str,
    body: bytes,
    job_id: str,
    *,
    delivery_id: str | None = None,
    timestamp: int | None = None,
    secret: str | None = None,
    key: Ed25519PrivateKey | None = None,
) -> dict[str, str]:
    """The headers ``provider`` sends with ``body`` (a callback about ``job_id``), signed with
    its current secret (or ``secret``; fal: ``key``). ``delivery_id`` is Standard Webhooks'
    ``webhook-id`` or fal's request id (by default the job's, as fal sends it)."""
    if provider in ("replicate", "openai"):
        current = REPLICATE_SECRET if provider == "replicate" else OPENAI_SECRET
        return standard_webhooks_headers(
            body, secret or current, delivery_id=delivery_id, timestamp=timestamp
        )
    if provider == "fal":
        return fal_headers(
            body, key or FAL_KEY, request_id=delivery_id or job_id, timestamp=timestamp
        )
    if provider == "elevenlabs":
        return elevenlabs_headers(body, secret or ELEVENLABS_SECRET, timestamp=timestamp)
    if provider in ("video", "veo"):
        return signed_headers(secret or VIDEO_SECRET, body, timestamp=timestamp)
    raise ValueError(f"{provider} signs nothing")


def with_job_id(provider: str, payload: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A documented payload of ``provider`` about job ``job_id`` instead of its own."""
    payload = copy.deepcopy(payload)
    if provider in ("replicate", "luma"):
        payload["id"] = job_id
    elif provider == "openai":
        payload["data"]["id"] = job_id
    elif provider == "fal":
        payload["request_id"] = job_id
    elif provider == "elevenlabs":
        payload["data"]["request_id"] = job_id
    else:
        payload["jobId"] = job_id
    return payload


# -- the pipeline ----------------------------------------------------------------------------------


@dataclass
class Seen:
    """What the tasks saw: callback URLs by attempt (of the latest run to build one) and by run
    and attempt, the jobs submitted, the publish step's inputs."""

    callback_urls: dict[int, str] = field(default_factory=dict)
    run_urls: dict[tuple[str, int], str] = field(default_factory=dict)
    generated: list[dict[str, Any]] = field(default_factory=list)
    published: list[dict[str, Any]] = field(default_factory=list)


def define_media_tasks(h: Harness, seen: Seen) -> None:
    """``media.generate`` awaits job ``<job_id>-<attempt>`` of ``provider``; with ``capability``
    it builds the provider's callback URL first (kept in ``seen.callback_urls``)."""

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="media.generate")
    def generate(
        self: Any,
        provider: str,
        job_id: str,
        capability: bool = False,
        timeout_s: float | None = None,
        hold: bool = False,
    ) -> Any:
        if capability:  # the URL goes with the job's submission, before the job is recorded
            url = seen.callback_urls[self.attempt] = self.callback_url(provider)
            seen.run_urls[self.run_id, self.attempt] = url
        if hold:  # do not record the job before the test says so
            assert h.latch("generate").wait(DEADLINE)
        job = f"{job_id}-{self.attempt}"
        seen.generated.append({"attempt": self.attempt, "job": job})
        return self.await_external(provider, job, timeout_s=timeout_s)

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="media.publish")
    def publish(self: Any) -> dict[str, Any]:
        seen.published.append({"artifacts": self.artifacts, "outputs": self.outputs})
        return {"artifactIds": ["post-1"]}


def start_media_run(
    h: Harness,
    provider: str,
    job_id: str,
    *,
    capability: bool = False,
    timeout_s: float | None = None,
    max_retries: int | None = None,
    hold: bool = False,
) -> PipelineRun:
    inputs: dict[str, Any] = {"provider": provider, "job_id": job_id, "capability": capability}
    if timeout_s is not None:
        inputs["timeout_s"] = timeout_s
    if hold:
        inputs["hold"] = True
    return h.mp.start_run(
        "media",
        [
            {
                "stepId": "generate",
                "operation": "media.generate",
                "inputs": inputs,
                "maxRetries": max_retries,
            },
            {"stepId": "publish", "operation": "media.publish"},
        ],
    )


def wait_awaiting(h: Harness, run_id: str, provider: str, job_id: str) -> PipelineRun:
    """The run once its generate step waits for exactly ``job_id``."""

    def awaiting() -> PipelineRun | None:
        run = h.run(run_id)
        job = run.step("generate").awaited_job
        return run if job is not None and (job.provider, job.job_id) == (provider, job_id) else None

    return wait_for(awaiting, what=f"run {run_id} to await {provider} job {job_id}")


# -- a receiver on loopback ------------------------------------------------------------------------


@dataclass
class Receiver:
    """``webhook_app`` for the harness's app, served on loopback (its URL known beforehand)."""

    url: str
    http: httpx.Client

    def post(
        self, provider: str, body: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.http.post(f"{self.url}/webhooks/{provider}", content=body, headers=headers)

    def post_signed(
        self, provider: str, payload: dict[str, Any], job_id: str, **options: Any
    ) -> httpx.Response:
        body = encode(payload)
        return self.post(provider, body, sign_for(provider, body, job_id, **options))

    def post_url(self, url: str, payload: dict[str, Any]) -> httpx.Response:
        return self.http.post(url, content=encode(payload))


class Endpoint:
    """A loopback socket bound before anything is served on it, so the callback base URL can
    go into the harness's settings before the receiver exists."""

    def __init__(self) -> None:
        self.sock = bind_loopback()
        self.url = url_of(self.sock)
        self.stack = ExitStack()

    def serve(self, asgi_app: Any) -> str:
        self.stack.enter_context(serving(asgi_app, self.sock))
        return self.url

    def close(self) -> None:
        self.stack.close()
        self.sock.close()


def provider_receiver(h: Harness, endpoint: Endpoint, jwks: JwksServer, **options: Any) -> str:
    """Serve a receiver of every provider of ``SECRETS`` and fal (its keys at ``jwks``)."""
    options.setdefault("schemes", {"fal": "fal"})
    options.setdefault("scheme_options", {"fal": {"jwks_url": jwks.url}})
    return endpoint.serve(webhook_app(h.app, SECRETS, **options))


def callback_conf(endpoint: Endpoint) -> dict[str, Any]:
    """The harness settings a step needs to build Luma callback URLs on ``endpoint``."""
    return {"mpstate_callback_base_url": endpoint.url, "mpstate_callback_secret": LUMA_SECRET}
