"""Whatever arrives, the receiver of real providers never answers 500.

One receiver serves every scheme (Standard Webhooks for Replicate and OpenAI, fal's Ed25519 with
its JWKS on loopback, ElevenLabs, mpstate's own for ``video``, Luma's capability URLs), with an
``MpState`` bound so callbacks are applied inline, and runs really waiting for a job of each
provider. Hypothesis sends arbitrary bodies (bytes, JSON, the documented payloads mutated, about
live jobs or unknown ones) with arbitrary headers: every scheme's header names with junk values,
correctly signed requests with one header spoiled, and Luma URLs whose segments or tokens are
drawn at random (or minted, for runs that do not exist). Every answer is one the receiver
documents; none is a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from celery_support import Harness, HarnessFactory
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from provider_payloads import ALL
from provider_support import (
    FAL_KEY,
    LUMA_SECRET,
    Endpoint,
    JwksServer,
    callback_conf,
    encode,
    jwks_server,
    provider_receiver,
    sign_for,
    with_job_id,
)

from mpstate.celery.transitions import start_run, start_step, suspend_step
from mpstate.models import PipelineRun
from mpstate.webhooks.schemes import callback_path

SIGNED = ("replicate", "openai", "fal", "elevenlabs", "video")
PROVIDERS = (*SIGNED, "luma", "nobody")

#: Each scheme's header names (and svix's aliases of Standard Webhooks').
SCHEME_HEADERS = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "X-Fal-Webhook-Request-Id",
    "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp",
    "X-Fal-Webhook-Signature",
    "ElevenLabs-Signature",
    "X-Mpstate-Timestamp",
    "X-Mpstate-Signature",
    "Content-Type",
    "Content-Encoding",
)

#: The answers the receiver documents.
DOCUMENTED = {202, 400, 401, 403, 404, 413}
#: Starlette's router: a path matching no route (404, not JSON), or one that does once its
#: trailing slash is dropped (307 there; a drawn segment "0/" becomes one once decoded).
ROUTING = {307, 404}

#: Bytes a header value may hold on the wire (visible ASCII and obs-text).
HEADER_BYTES = [b for b in range(0x21, 0x100) if b != 0x7F]
header_values = st.one_of(
    st.lists(st.sampled_from(HEADER_BYTES), max_size=60).map(bytes),
    st.integers(-(10**13), 10**13).map(lambda n: str(n).encode()),
    st.sampled_from([b"v1,", b"v1,AAAA", b"t=1,v0=00", b"v1=zz", b"t=,v0=", b"0" * 128]),
)
junk_headers = st.dictionaries(st.sampled_from(SCHEME_HEADERS), header_values, max_size=5)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
#: Which job a drawn payload is about: a live one, an unknown one, or a malformed id.
job_ids = st.one_of(
    st.sampled_from([f"live-{p}-0" for p in PROVIDERS]),
    st.just("unknown-job-0"),
    st.text(min_size=1, max_size=20),
)


def mutated(fixture: str, job_id: str, key: str, value: Any) -> bytes:
    provider = fixture.split("_", 1)[0].lower()
    payload = with_job_id(provider, ALL[fixture], job_id) if provider != "openai" else ALL[fixture]
    if provider == "openai" and isinstance(payload.get("data"), dict):
        payload = {**payload, "data": {**payload["data"], "id": job_id}}
    if key:
        payload = {**payload, key: value}
    return json.dumps(payload).encode()


bodies = st.one_of(
    st.builds(
        mutated,
        st.sampled_from(sorted(ALL)),
        job_ids,
        st.sampled_from(["", "", "status", "state", "type", "data", "id", "payload", "output"]),
        json_values,
    ),
    st.builds(
        lambda job_id, status: encode({"jobId": job_id, "status": status}),
        job_ids,
        st.sampled_from(["succeeded", "failed", "running", "x"]),
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    endpoint = Endpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with jwks_server(FAL_KEY) as server:
        yield server


@pytest.fixture
def h(make_harness: HarnessFactory, endpoint: Endpoint) -> Harness:
    return make_harness(**callback_conf(endpoint))


def live_run(h: Harness, provider: str) -> PipelineRun:
    """A run whose first step waits for ``live-<provider>-0`` (as a worker left it)."""
    run = h.store.create(
        {
            "runId": f"{h.prefix}-{provider}",
            "pipelineId": "fuzz",
            "steps": [
                {"stepId": "generate", "operation": "media.generate"},
                {"stepId": "publish", "operation": "media.publish"},
            ],
        }
    )
    for decide in (
        start_run,
        lambda r: start_step(r, "generate", attempt=0, task_id="t-0", meta={}),
        lambda r: suspend_step(
            r, "generate", provider=provider, job_id=f"live-{provider}-0", meta={}
        ),
    ):
        transition = decide(run)
        assert transition is not None
        run = h.store.commit(
            run.run_id, transition.patch or None, transition.events, expected_version=run.version
        ).run
    return run


def test_no_request_to_any_providers_route_makes_the_receiver_answer_500(
    h: Harness, endpoint: Endpoint, jwks: JwksServer, http: httpx.Client
) -> None:
    runs = {provider: live_run(h, provider) for provider in PROVIDERS}
    url = provider_receiver(h, endpoint, jwks, early_wait_s=0.0)
    luma_run = runs["luma"].run_id
    live_luma_path = callback_path(LUMA_SECRET, "luma", luma_run, "generate", 0)
    seen: set[int] = set()

    def luma_path(how: str, segments: list[str]) -> str:
        if how == "live":
            return live_luma_path
        if how == "minted":  # a genuine token, for a run that does not exist
            return callback_path(LUMA_SECRET, "luma", "no-such-run", "generate", 0)
        return "/webhooks/luma/" + "/".join(quote(s, safe="") for s in segments)

    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        provider=st.sampled_from(PROVIDERS),
        body=bodies,
        signing=st.sampled_from(["valid", "valid", "spoiled", "junk"]),
        junk=junk_headers,
        luma=st.sampled_from(["live", "minted", "random"]),
        segments=st.lists(st.text(min_size=1, max_size=12), min_size=4, max_size=4),
    )
    @example(
        provider="fal",
        body=mutated("FAL_OK_IMAGES", "live-fal-0", "", None),
        signing="valid",
        junk={},
        luma="live",
        segments=["a", "b", "0", "t"],
    )
    @example(
        provider="luma",
        body=mutated("LUMA_DREAMING", "live-luma-0", "", None),
        signing="valid",
        junk={},
        luma="live",
        segments=["a", "b", "0", "t"],
    )
    @example(
        provider="luma",
        body=mutated("LUMA_COMPLETED", "unknown-job-0", "", None),
        signing="valid",
        junk={},
        luma="minted",
        segments=["a", "b", "0", "t"],
    )
    @example(  # a provider nobody configured: 404, whatever the draw
        provider="nobody",
        body=b"{}",
        signing="valid",
        junk={},
        luma="live",
        segments=["a", "b", "0", "t"],
    )
    def check(
        provider: str,
        body: bytes,
        signing: str,
        junk: dict[str, bytes],
        luma: str,
        segments: list[str],
    ) -> None:
        headers: dict[str, Any] = {}
        if provider in SIGNED and signing in ("valid", "spoiled"):
            headers = dict(sign_for(provider, body, "live-fal-0"))
            if signing == "spoiled":
                headers.update(junk)
        elif signing != "valid":
            headers = dict(junk)
        path = luma_path(luma, segments) if provider == "luma" else f"/webhooks/{provider}"
        response = http.post(url + path, content=body, headers=headers)
        assert response.status_code in DOCUMENTED | ROUTING, (response.status_code, response.text)
        if response.status_code in DOCUMENTED - {404}:
            assert isinstance(response.json(), dict)
        seen.add(response.status_code)

    check()
    # The generated requests reached every kind of answer, the applied ones included.
    assert seen >= {202, 400, 401, 403, 404}
