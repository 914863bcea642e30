"""The HTTP webhook receiver, over real HTTP: uvicorn on loopback, httpx, a real Redis broker.

Accepted callbacks are followed to the end: with the harness's worker started, the run resumes
(or its step fails or retries) in the store. Refused ones are checked at the broker: the harness
worker is not started, so whatever the receiver published is still in its queue (``queued``),
and a refusal must leave that queue empty. Providers ``video`` (two secrets, mid-rotation) and
``image`` are configured; anything else is an unknown provider. Generated requests (random bytes,
headers and signatures) never get a 500, and a broker that refuses connections gets a 503.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from celery import Celery
from celery_support import (
    DEADLINE,
    Harness,
    assert_seqs_contiguous,
    events_of,
    kinds,
    step_events,
    wait_for,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Mount
from video_pipeline import RESUMED_LOG, define_video_tasks, start_video_run
from webhook_support import (
    IMAGE_SECRET,
    SECRETS,
    SUCCEEDED,
    VIDEO_OLD_SECRET,
    VIDEO_SECRET,
    Queued,
    Serve,
    encode,
    queued,
    signed,
)

from mpstate import InvalidInputError
from mpstate.celery import RESOLVE_WEBHOOK, WebhookOutcome
from mpstate.fields import MAX_ID_LENGTH
from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus
from mpstate.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, webhook_app

#: The replay window of the receivers under test, in seconds (the default is 300).
TOLERANCE_S = 30

#: The largest body the receivers under test accept, in bytes.
LIMIT = 16 * 1024

BODY = encode(SUCCEEDED)


@dataclass
class Receiver:
    """A receiver for the harness's app, served on loopback."""

    h: Harness
    url: str
    http: httpx.Client

    def post(
        self, body: bytes, headers: dict[str, Any] | None = None, provider: str = "video"
    ) -> httpx.Response:
        return self.http.post(f"{self.url}/webhooks/{provider}", content=body, headers=headers)

    def post_signed(self, body: bytes, secret: str = VIDEO_SECRET) -> httpx.Response:
        return self.post(body, signed(body, secret))


@pytest.fixture
def receiver(h: Harness, serve: Serve, http: httpx.Client) -> Receiver:
    """A receiver publishing to the harness's queue; no worker consumes it."""
    app = webhook_app(
        h.app, SECRETS, tolerance_s=TOLERANCE_S, max_body_bytes=LIMIT, resolve_inline=False
    )
    return Receiver(h, serve(app), http)


def outcome_of(h: Harness, response: httpx.Response) -> str:
    """What the callback did to its run: applied by the receiver itself (``outcome``) or by the
    ``mpstate.resolve_webhook`` task it published (``taskId``)."""
    assert response.status_code == 202, response.text
    body = response.json()
    if "outcome" in body:
        return str(body["outcome"])
    return str(h.wait_finished(accepted_task_id(response)).retval)


def accepted_task_id(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert isinstance(body["taskId"], str) and body["taskId"]
    return str(body["taskId"])


def assert_refused(response: httpx.Response, status: int, receiver: Receiver) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert queued(receiver.h) == []


# -- a pipeline that waits for provider "video" ----------------------------------------------------


def start_suspended_video_run(
    h: Harness, max_retries: int | None = None, pool: str = "solo", concurrency: int = 1
) -> PipelineRun:
    """Start a worker and a video run (tests/celery/video_pipeline.py) for provider "video", and
    wait until it awaits job "job-1" (the re-run after a retryable failure awaits "job-1-1")."""
    define_video_tasks(h, provider="video")
    h.start_worker(pool=pool, concurrency=concurrency)
    run = start_video_run(h, "job-1", max_retries=max_retries)
    suspended = h.wait_status(run.run_id, "suspended")
    assert suspended.external_job_ids == {"video": "job-1"}
    return suspended


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secrets", "options"),
    [
        ({}, {}),
        ({"video": ""}, {}),
        ({"video": []}, {}),
        ({"video": [VIDEO_SECRET, ""]}, {}),
        ({"": VIDEO_SECRET}, {}),
        (SECRETS, {"max_body_bytes": 0}),
        (SECRETS, {"max_body_bytes": -1}),
        (SECRETS, {"max_body_bytes": 1.5}),
        (SECRETS, {"max_body_bytes": True}),
        (SECRETS, {"tolerance_s": 0}),
        (SECRETS, {"tolerance_s": -5}),
        (SECRETS, {"tolerance_s": "300"}),
        (SECRETS, {"job_id_field": ""}),
    ],
    ids=[
        "no secrets",
        "empty secret",
        "empty secret list",
        "one empty secret in the list",
        "empty provider",
        "max body 0",
        "max body negative",
        "max body float",
        "max body bool",
        "tolerance 0",
        "tolerance negative",
        "tolerance text",
        "empty job id field",
    ],
)
def test_webhook_app_refuses_a_bad_configuration(
    secrets: dict[str, Any], options: dict[str, Any]
) -> None:
    app = Celery(f"mpstate-test-{uuid.uuid4().hex[:10]}", set_as_current=False)

    with pytest.raises(InvalidInputError):
        webhook_app(app, secrets, **options)


def test_webhook_app_refuses_a_nan_replay_window() -> None:
    app = Celery(f"mpstate-test-{uuid.uuid4().hex[:10]}", set_as_current=False)

    with pytest.raises(InvalidInputError):
        webhook_app(app, SECRETS, tolerance_s=math.nan)


# -- 202: accepted, published, resolved ------------------------------------------------------------


def test_a_signed_callback_is_published_as_resolve_webhook_with_provider_job_and_payload(
    receiver: Receiver,
) -> None:
    task_id = accepted_task_id(receiver.post_signed(encode(SUCCEEDED)))

    assert queued(receiver.h) == [Queued(RESOLVE_WEBHOOK, task_id, ("video", "job-1", SUCCEEDED))]


def test_during_a_rotation_callbacks_signed_with_either_secret_are_accepted(
    receiver: Receiver,
) -> None:
    image = {**SUCCEEDED, "jobId": "img-1"}

    current = accepted_task_id(receiver.post_signed(BODY, VIDEO_SECRET))
    previous = accepted_task_id(receiver.post_signed(BODY, VIDEO_OLD_SECRET))
    other = accepted_task_id(
        receiver.post(encode(image), signed(encode(image), IMAGE_SECRET), provider="image")
    )

    published = queued(receiver.h)
    assert {q.task_id: q.args for q in published} == {
        current: ("video", "job-1", SUCCEEDED),
        previous: ("video", "job-1", SUCCEEDED),
        other: ("image", "img-1", image),
    }
    assert {q.task for q in published} == {RESOLVE_WEBHOOK}


def test_a_signed_success_callback_resumes_the_run_to_completion(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    run = start_suspended_video_run(h)
    url = serve(webhook_app(h.app, SECRETS))

    response = http.post(f"{url}/webhooks/video", content=BODY, headers=signed(BODY))

    assert outcome_of(h, response) == "resumed"
    run = h.wait_terminal(run.run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == RESUMED_LOG
    assert_seqs_contiguous(run)
    (completed,) = step_events(run, "render", "step-completed")
    assert (completed.artifact_ids, completed.cost_usd) == (["v1"], 0.5)
    assert completed.meta is not None
    assert (completed.meta.get("provider"), completed.meta.get("jobId")) == ("video", "job-1")
    assert run.step("render").artifact_ids == ["v1"]
    assert run.cost_usd == pytest.approx(0.51)


def test_a_signed_failure_callback_fails_the_step_and_the_run(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    run = start_suspended_video_run(h)
    url = serve(webhook_app(h.app, SECRETS))

    failure = {"jobId": "job-1", "status": "failed", "error": {"code": "NSFW", "retryable": False}}
    body = encode(failure)
    response = http.post(f"{url}/webhooks/video", content=body, headers=signed(body))

    assert outcome_of(h, response) == "failed"
    run = h.wait_terminal(run.run_id)
    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "render"),
        ("step-waiting", "render"),
        ("run-suspended", None),
        ("step-failed", "render"),
        ("run-failed", None),
    ]
    (failed,) = events_of(run, "step-failed")
    assert (failed.code, failed.retryable) == ("NSFW", False)
    assert run.step("render").status is StepStatus.FAILED
    assert run.step("publish").status is StepStatus.PENDING


def test_a_retryable_failure_callback_reruns_the_step_which_a_later_callback_completes(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    run = start_suspended_video_run(h, max_retries=1)
    url = serve(webhook_app(h.app, SECRETS))

    def deliver(payload: dict[str, Any]) -> str:
        body = encode(payload)
        response = http.post(f"{url}/webhooks/video", content=body, headers=signed(body))
        return outcome_of(h, response)

    busy = {"jobId": "job-1", "status": "failed", "error": {"code": "BUSY", "retryable": True}}
    assert deliver(busy) == "failed"
    # The step runs again and submits a new job; the run waits for that one.
    wait_for(
        lambda: (
            (r := h.run(run.run_id)).status == "suspended"
            and r.external_job_ids.get("video") == "job-1-1"
        ),
        what="the re-run step to await job-1-1",
    )
    assert deliver({**SUCCEEDED, "jobId": "job-1-1"}) == "resumed"

    run = h.wait_terminal(run.run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert [e.retryable for e in events_of(run, "step-failed")] == [True]
    assert [e.attempt for e in events_of(run, "step-started") if e.step_id == "render"] == [0, 1]
    assert len(events_of(run, "run-resumed")) == 1
    assert run.step("render").attempts == 2


def test_the_same_callback_delivered_five_times_at_once_resumes_the_run_exactly_once(
    h: Harness, serve: Serve
) -> None:
    run = start_suspended_video_run(h, pool="threads", concurrency=4)
    url = serve(webhook_app(h.app, SECRETS))
    headers = signed(BODY)
    barrier = threading.Barrier(5)
    responses: list[httpx.Response] = []

    def deliver() -> None:
        with httpx.Client(timeout=10.0) as client:
            barrier.wait(timeout=DEADLINE)
            responses.append(client.post(f"{url}/webhooks/video", content=BODY, headers=headers))

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)

    outcomes = sorted(outcome_of(h, response) for response in responses)
    assert outcomes == ["ignored"] * 4 + ["resumed"]
    run = h.wait_terminal(run.run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == RESUMED_LOG
    assert len(step_events(run, "render", "step-completed")) == 1
    assert len(events_of(run, "run-resumed")) == 1
    assert len(h.finished_tasks("video.publish")) == 1


# -- 401: not signed by the provider ---------------------------------------------------------------


def _now() -> str:
    return str(int(time.time()))


UNAUTHENTICATED: dict[str, Callable[[], dict[str, str]]] = {
    "no headers": dict,
    "only a timestamp": lambda: {TIMESTAMP_HEADER: _now()},
    "only a signature": lambda: {SIGNATURE_HEADER: signed(BODY)[SIGNATURE_HEADER]},
    "a wrong signature": lambda: {TIMESTAMP_HEADER: _now(), SIGNATURE_HEADER: "v1=" + "0" * 64},
    "another provider's secret": lambda: signed(BODY, IMAGE_SECRET),
    "a retired secret": lambda: signed(BODY, "whsec-video-retired"),
    "a stale timestamp": lambda: signed(BODY, timestamp=int(time.time()) - 2 * TOLERANCE_S),
    "a future timestamp": lambda: signed(BODY, timestamp=int(time.time()) + 2 * TOLERANCE_S),
    "a signature over another body": lambda: signed(encode({**SUCCEEDED, "costUsd": 0})),
    "a timestamp that is not a number": lambda: {
        TIMESTAMP_HEADER: "yesterday",
        SIGNATURE_HEADER: signed(BODY)[SIGNATURE_HEADER],
    },
}


@pytest.mark.parametrize("case", list(UNAUTHENTICATED))
def test_a_callback_not_signed_by_the_provider_is_refused_with_401_and_not_published(
    receiver: Receiver, case: str
) -> None:
    response = receiver.post(BODY, UNAUTHENTICATED[case]())

    assert_refused(response, 401, receiver)
    assert VIDEO_SECRET not in response.text
    assert VIDEO_OLD_SECRET not in response.text


def test_a_stale_timestamp_within_the_default_window_is_refused_by_a_shorter_one(
    receiver: Receiver,
) -> None:
    # 60 s old: accepted by the default 300 s window, refused by this receiver's 30 s.
    headers = signed(BODY, timestamp=int(time.time()) - 60)

    response = receiver.post(BODY, headers)

    assert_refused(response, 401, receiver)
    assert "replay window" in response.json()["error"]


@pytest.mark.parametrize(
    "body", [b"\xff\xfe not json", b"[1, 2]", b"", encode({"jobId": ""})], ids=repr
)
def test_the_signature_is_checked_before_the_body_so_unsigned_garbage_gets_401(
    receiver: Receiver, body: bytes
) -> None:
    assert_refused(receiver.post(body), 401, receiver)
    assert_refused(receiver.post(body, signed(body, IMAGE_SECRET)), 401, receiver)


# -- 400: signed, but not a callback ---------------------------------------------------------------

DEEP = b'{"jobId": "job-1", "status": "succeeded", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"

MALFORMED: dict[str, bytes] = {
    "not JSON": b"job-1 succeeded",
    "empty": b"",
    "a JSON array": encode([SUCCEEDED]),
    "a JSON string": encode("job-1"),
    "JSON null": b"null",
    "NaN": b'{"jobId":"j","status":"succeeded","costUsd":NaN}',
    "Infinity": b'{"jobId":"j","status":"succeeded","costUsd":-Infinity}',
    "a number too large for a float": b'{"jobId":"j","status":"succeeded","costUsd":1e400}',
    "an integer too long to parse": b'{"jobId":"j","status":"succeeded","n":' + b"9" * 5000 + b"}",
    "invalid UTF-8": b'{"jobId":"j\xff","status":"succeeded"}',
    "a lone surrogate": b'{"jobId":"j","status":"succeeded","note":"\\ud800"}',
    "nested too deep": DEEP,
    "no jobId": encode({k: v for k, v in SUCCEEDED.items() if k != "jobId"}),
    "an empty jobId": encode({**SUCCEEDED, "jobId": ""}),
    "a numeric jobId": encode({**SUCCEEDED, "jobId": 42}),
    "a null jobId": encode({**SUCCEEDED, "jobId": None}),
    "a list jobId": encode({**SUCCEEDED, "jobId": ["job-1"]}),
    "a jobId too long": encode({**SUCCEEDED, "jobId": "j" * (MAX_ID_LENGTH + 1)}),
    "an unknown status": encode({**SUCCEEDED, "status": "weird"}),
    "no status": encode({"jobId": "job-1", "artifactIds": ["v1"]}),
    "a negative cost": encode({**SUCCEEDED, "costUsd": -1}),
    "artifact ids that are not a list": encode({**SUCCEEDED, "artifactIds": 7}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_signed_body_that_is_not_a_usable_callback_is_refused_with_400_and_not_published(
    receiver: Receiver, case: str
) -> None:
    body = MALFORMED[case]
    assert len(body) <= LIMIT

    assert_refused(receiver.post_signed(body), 400, receiver)


def test_a_registered_adapter_decides_which_payloads_are_accepted(receiver: Receiver) -> None:
    def video_adapter(payload: Any) -> WebhookOutcome:
        if payload.get("state") != "done":
            raise InvalidInputError("video payload without a final state")
        return WebhookOutcome(status="succeeded", artifact_ids=[payload["video"]])

    receiver.h.mp.register_adapter("video", video_adapter)

    # The default shape is now refused with the adapter's reason ...
    refused = receiver.post_signed(encode(SUCCEEDED))
    assert_refused(refused, 400, receiver)
    assert "without a final state" in refused.json()["error"]
    # ... and the provider's own shape, which the default adapter would refuse, is accepted.
    own = {"jobId": "job-1", "state": "done", "video": "v9"}
    task_id = accepted_task_id(receiver.post_signed(encode(own)))
    assert queued(receiver.h) == [Queued(RESOLVE_WEBHOOK, task_id, ("video", "job-1", own))]
    # Another provider still uses the default adapter.
    image = {**SUCCEEDED, "status": "weird"}
    response = receiver.post(encode(image), signed(encode(image), IMAGE_SECRET), "image")
    assert response.status_code == 400


# -- 413: too large --------------------------------------------------------------------------------


def padded(payload: dict[str, Any], size: int) -> bytes:
    """``payload`` as JSON followed by whitespace, ``size`` bytes in all."""
    body = encode(payload)
    return body + b" " * (size - len(body))


def test_a_body_of_exactly_max_body_bytes_is_accepted(receiver: Receiver) -> None:
    body = padded(SUCCEEDED, LIMIT)
    assert len(body) == LIMIT

    task_id = accepted_task_id(receiver.post_signed(body))
    assert [q.task_id for q in queued(receiver.h)] == [task_id]


def test_a_body_one_byte_over_max_body_bytes_is_refused_with_413(receiver: Receiver) -> None:
    response = receiver.post_signed(padded(SUCCEEDED, LIMIT + 1))

    assert_refused(response, 413, receiver)


def chunks(body: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def post_chunked(receiver: Receiver, body: bytes) -> httpx.Response:
    request = receiver.http.build_request(
        "POST", f"{receiver.url}/webhooks/video", content=chunks(body), headers=signed(body)
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    return receiver.http.send(request)


def test_a_chunked_body_over_max_body_bytes_is_refused_with_413(receiver: Receiver) -> None:
    assert_refused(post_chunked(receiver, padded(SUCCEEDED, 2 * LIMIT)), 413, receiver)


def test_a_chunked_body_under_max_body_bytes_is_read_whole_and_accepted(receiver: Receiver) -> None:
    task_id = accepted_task_id(post_chunked(receiver, padded(SUCCEEDED, LIMIT - 10)))

    assert queued(receiver.h) == [Queued(RESOLVE_WEBHOOK, task_id, ("video", "job-1", SUCCEEDED))]


# -- routes ----------------------------------------------------------------------------------------


def test_a_provider_without_a_secret_gets_404(receiver: Receiver) -> None:
    response = receiver.post(BODY, signed(BODY, VIDEO_SECRET), provider="audio")

    assert_refused(response, 404, receiver)
    assert "audio" in response.json()["error"]


def test_get_on_the_webhook_route_gets_405(receiver: Receiver) -> None:
    response = receiver.http.get(f"{receiver.url}/webhooks/video")

    assert response.status_code == 405
    assert queued(receiver.h) == []


def test_healthz_answers_200_and_lists_the_providers(receiver: Receiver) -> None:
    response = receiver.http.get(f"{receiver.url}/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "providers": ["image", "video"]}


def test_the_receiver_mounted_in_an_application_serves_under_its_prefix(
    h: Harness, serve: Serve, http: httpx.Client
) -> None:
    receiver = webhook_app(h.app, SECRETS, resolve_inline=False)
    application = Starlette(routes=[Mount("/hooks", app=receiver)])
    url = serve(application)

    response = http.post(f"{url}/hooks/webhooks/video", content=BODY, headers=signed(BODY))
    health = http.get(f"{url}/hooks/healthz")
    outside = http.post(f"{url}/webhooks/video", content=BODY, headers=signed(BODY))

    task_id = accepted_task_id(response)
    assert queued(h) == [Queued(RESOLVE_WEBHOOK, task_id, ("video", "job-1", SUCCEEDED))]
    assert health.status_code == 200
    assert health.json()["providers"] == ["image", "video"]
    assert outside.status_code == 404


# -- never a 500 -----------------------------------------------------------------------------------

#: Bytes a header value may hold (visible ASCII and obs-text; no controls, no spaces at the ends).
HEADER_BYTES = [b for b in range(0x21, 0x100) if b != 0x7F]
header_values = st.lists(st.sampled_from(HEADER_BYTES), max_size=80).map(bytes)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
callbacks = st.fixed_dictionaries(
    {"jobId": st.one_of(st.just("job-1"), st.text(max_size=12), st.integers(), st.none())},
    optional={
        "status": st.sampled_from(["succeeded", "failed", "weird", ""]),
        "artifactIds": json_values,
        "costUsd": json_values,
        "error": json_values,
    },
)
# Mostly callback-shaped JSON correctly signed, so most examples get past the signature check.
bodies = st.one_of(
    callbacks.map(encode),
    callbacks.map(encode),
    callbacks.map(encode),
    st.binary(max_size=600),
    json_values.map(encode),
    st.builds(padded, st.just(SUCCEEDED), st.integers(LIMIT - 2, LIMIT + 2)),
)
#: How an example is signed; "random" sends the two drawn header values as they are.
signings = st.tuples(
    st.sampled_from(["valid", "valid", "valid", "rotated", "other secret", "stale", "none"])
    | st.just("random"),
    header_values,
    header_values,
)
extra_headers = st.dictionaries(
    st.sampled_from(["X-Fuzz", "Content-Type", "Content-Encoding", "X-Forwarded-For"]),
    header_values,
    max_size=3,
)

Signing = tuple[str, bytes, bytes]


def fuzz_headers(body: bytes, signing: Signing) -> dict[str, Any]:
    how, timestamp, signature = signing
    return {
        "valid": lambda: signed(body),
        "rotated": lambda: signed(body, VIDEO_OLD_SECRET),
        "other secret": lambda: signed(body, IMAGE_SECRET),
        "stale": lambda: signed(body, timestamp=int(time.time()) - 10 * TOLERANCE_S),
        "none": dict,
        "random": lambda: {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature},
    }[how]()


def test_no_request_makes_the_receiver_answer_500(receiver: Receiver) -> None:
    seen: set[int] = set()

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies, signing=signings, extra=extra_headers)
    @example(body=encode(SUCCEEDED), signing=("valid", b"", b""), extra={})
    @example(body=b"\x00\xff", signing=("valid", b"", b""), extra={})
    @example(body=encode(SUCCEEDED), signing=("random", b"\xe9t\xe9", b"v1=\xff"), extra={})
    @example(body=padded(SUCCEEDED, LIMIT + 1), signing=("valid", b"", b""), extra={})
    def check(body: bytes, signing: Signing, extra: dict[str, bytes]) -> None:
        headers = {**extra, **fuzz_headers(body, signing)}
        response = receiver.post(body, headers)
        assert response.status_code in {202, 400, 401, 413}, response.text
        seen.add(response.status_code)

    check()
    assert seen >= {202, 400, 401, 413}
    assert all(q.task == RESOLVE_WEBHOOK for q in queued(receiver.h))


# -- 503: the broker cannot take the message -------------------------------------------------------


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, not listening) while the block runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextmanager
def celery_app_on(broker_url: str) -> Iterator[Celery]:
    app = Celery(f"mpstate-test-{uuid.uuid4().hex[:10]}", broker=broker_url, set_as_current=False)
    try:
        yield app
    finally:
        app.close()


def test_a_callback_the_broker_cannot_take_gets_503_with_retry_after(
    serve: Serve, http: httpx.Client
) -> None:
    with refusing_port() as port, celery_app_on(f"redis://127.0.0.1:{port}/0") as app:
        url = serve(webhook_app(app, SECRETS))
        started = time.monotonic()
        response = http.post(
            f"{url}/webhooks/video", content=BODY, headers=signed(BODY), timeout=15.0
        )
        elapsed = time.monotonic() - started

    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert "retry" in response.json()["error"]
    assert elapsed < 15.0


def test_without_an_mpstate_the_receiver_checks_payloads_with_the_default_adapter(
    serve: Serve, http: httpx.Client
) -> None:
    # A payload the default adapter refuses is a 400 before anything is published; a valid one
    # reaches the (absent) broker.
    with refusing_port() as port, celery_app_on(f"redis://127.0.0.1:{port}/0") as app:
        url = serve(webhook_app(app, SECRETS))
        weird = encode({**SUCCEEDED, "status": "weird"})
        refused = http.post(f"{url}/webhooks/video", content=weird, headers=signed(weird))
        valid = http.post(f"{url}/webhooks/video", content=BODY, headers=signed(BODY))

    assert refused.status_code == 400
    assert "default shape" in refused.json()["error"]
    assert valid.status_code == 503


def test_a_broker_that_accepts_connections_but_never_answers_gets_503_in_bounded_time(
    serve: Serve, http: httpx.Client
) -> None:
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)  # the kernel completes handshakes; nothing ever reads or answers
    try:
        broker_url = f"redis://127.0.0.1:{blackhole.getsockname()[1]}/0"
        with celery_app_on(broker_url) as app:
            url = serve(webhook_app(app, SECRETS, publish_timeout_s=2.0))
            response = http.post(
                f"{url}/webhooks/video", content=BODY, headers=signed(BODY), timeout=6.0
            )
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
    finally:
        blackhole.close()  # resets the pending connections, so the hung publish ends
