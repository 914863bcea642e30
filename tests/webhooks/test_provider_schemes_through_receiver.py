"""Every signature scheme, through the receiver, against runs really waiting on a worker.

For each signed provider (Standard Webhooks for Replicate and OpenAI, fal's Ed25519 against a JWKS
on loopback, ElevenLabs' ``t=,v0=``, mpstate's own scheme for a provider of another name): a
forged, tampered, stale or future-dated callback gets 401 and changes nothing; either secret (or
key) of a rotation is accepted; a replayed delivery (same ``webhook-id`` or fal request id) is
answered ``duplicate`` and changes nothing, also when five copies arrive at once. For Luma's
capability URLs: a wrong token gets 401, the URL of an earlier attempt or of a finished run 403
``superseded``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery import Celery
from celery_support import DEADLINE, Harness, HarnessFactory, kinds, step_events, wait_for
from provider_payloads import LUMA_COMPLETED, REPLICATE_PROCESSING
from provider_support import (
    ELEVENLABS_OLD_SECRET,
    FAL_KEY,
    FAL_NEXT_KEY,
    FAL_STRANGER_KEY,
    LUMA_OLD_SECRET,
    OPENAI_OLD_SECRET,
    REPLICATE_OLD_SECRET,
    REPLICATE_SECRET,
    RESUMED_LOG,
    SECRETS,
    STRANGER_SW_SECRET,
    SUCCESS,
    VIDEO_OLD_SECRET,
    Endpoint,
    JwksServer,
    Receiver,
    Seen,
    callback_conf,
    define_media_tasks,
    encode,
    jwks_server,
    new_delivery_id,
    provider_receiver,
    sign_for,
    start_media_run,
    wait_awaiting,
    with_job_id,
)

from celery_app.embedded import bind_loopback, serving
from mpstate import RedisPipelineStateStore
from mpstate.celery import MpState, ProviderError, WebhookOutcome
from mpstate.models import PipelineRun, PipelineRunStatus, StepStatus
from mpstate.webhooks import webhook_app
from mpstate.webhooks.schemes import callback_path

#: Each signed provider, and what a forger who lacks its secret or key signs with.
FORGERS: dict[str, dict[str, Any]] = {
    "replicate": {"secret": STRANGER_SW_SECRET},
    "openai": {"secret": STRANGER_SW_SECRET},
    "fal": {"key": FAL_STRANGER_KEY},
    "elevenlabs": {"secret": "wsec_someone-else-0123456789abcdef"},
    "video": {"secret": "someone-else-entirely"},
}

#: The earlier secret (or key) of each provider's rotation; the receiver holds both.
ROTATED: dict[str, dict[str, Any]] = {
    "replicate": {"secret": REPLICATE_OLD_SECRET},
    "openai": {"secret": OPENAI_OLD_SECRET},
    "fal": {"key": FAL_NEXT_KEY},
    "elevenlabs": {"secret": ELEVENLABS_OLD_SECRET},
    "video": {"secret": VIDEO_OLD_SECRET},
}

#: Providers whose scheme names a delivery id (deduplicated by the receiver).
WITH_DELIVERY_IDS = ("replicate", "openai", "fal")

#: Far outside every preset's replay window (ElevenLabs' is the widest: 30 minutes).
FAR_S = 2 * 3600


@pytest.fixture
def h(make_harness: HarnessFactory, endpoint: Endpoint) -> Harness:
    return make_harness(**callback_conf(endpoint))


@pytest.fixture
def seen(h: Harness) -> Seen:
    seen = Seen()
    define_media_tasks(h, seen)
    h.start_worker(pool="threads", concurrency=2)
    return seen


@pytest.fixture
def receiver(
    h: Harness, endpoint: Endpoint, jwks: JwksServer, http: httpx.Client
) -> Iterator[Receiver]:
    yield Receiver(provider_receiver(h, endpoint, jwks, early_wait_s=0.2), http)
    endpoint.stack.close()


def success(provider: str, job_id: str) -> dict[str, Any]:
    if provider == "video":
        return {"jobId": job_id, "status": "succeeded", "artifactIds": ["v-1"]}
    return with_job_id(provider, SUCCESS[provider], job_id)


def unchanged(h: Harness, before: PipelineRun) -> bool:
    after = h.run(before.run_id)
    return (after.version, len(after.events)) == (before.version, len(before.events))


# -- signatures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(FORGERS))
def test_a_forged_tampered_stale_or_future_callback_gets_401_and_changes_nothing(
    h: Harness, seen: Seen, receiver: Receiver, provider: str
) -> None:
    run = start_media_run(h, provider, "job")
    before = wait_awaiting(h, run.run_id, provider, "job-0")
    body = encode(success(provider, "job-0"))
    delivery = new_delivery_id()
    now = int(time.time())
    tampered_body = body.replace(b"job-0", b"job-9")
    attempts = {
        "forged": (
            body,
            sign_for(provider, body, "job-0", delivery_id=delivery, **FORGERS[provider]),
        ),
        "tampered": (tampered_body, sign_for(provider, body, "job-0", delivery_id=delivery)),
        "stale": (
            body,
            sign_for(provider, body, "job-0", delivery_id=delivery, timestamp=now - FAR_S),
        ),
        "future": (
            body,
            sign_for(provider, body, "job-0", delivery_id=delivery, timestamp=now + FAR_S),
        ),
        "unsigned": (body, {}),
    }

    answers = {
        name: receiver.post(provider, sent, headers) for name, (sent, headers) in attempts.items()
    }

    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(attempts, 401)
    assert all(r.json()["error"] for r in answers.values())
    assert unchanged(h, before)
    assert h.run(run.run_id).step("generate").status is StepStatus.WAITING
    # None of them claimed the delivery id: the genuine delivery with that id is applied.
    genuine = receiver.post_signed(
        provider, success(provider, "job-0"), "job-0", delivery_id=delivery
    )
    assert genuine.json() == {"status": "accepted", "outcome": "resumed"}


@pytest.mark.parametrize("provider", list(ROTATED))
def test_during_a_rotation_callbacks_signed_with_the_old_or_the_new_secret_are_both_accepted(
    h: Harness, seen: Seen, receiver: Receiver, provider: str
) -> None:
    old_run = start_media_run(h, provider, "old")
    new_run = start_media_run(h, provider, "new")
    wait_awaiting(h, old_run.run_id, provider, "old-0")
    wait_awaiting(h, new_run.run_id, provider, "new-0")

    with_old = receiver.post_signed(
        provider, success(provider, "old-0"), "old-0", **ROTATED[provider]
    )
    with_new = receiver.post_signed(provider, success(provider, "new-0"), "new-0")

    assert with_old.json() == {"status": "accepted", "outcome": "resumed"}
    assert with_new.json() == {"status": "accepted", "outcome": "resumed"}
    for run in (old_run, new_run):
        assert h.wait_terminal(run.run_id).status is PipelineRunStatus.COMPLETED


def test_the_old_secrets_signature_really_differs_from_the_new_ones() -> None:
    """The rotation test above proves something only if the secrets sign differently."""
    body = encode(success("replicate", "job-0"))
    old = sign_for(
        "replicate", body, "job-0", delivery_id="msg_1", timestamp=1, secret=REPLICATE_OLD_SECRET
    )
    new = sign_for(
        "replicate", body, "job-0", delivery_id="msg_1", timestamp=1, secret=REPLICATE_SECRET
    )
    assert old["webhook-signature"] != new["webhook-signature"]


# -- replays and duplicates ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", WITH_DELIVERY_IDS)
def test_a_replayed_delivery_is_answered_duplicate_and_changes_nothing(
    h: Harness, seen: Seen, receiver: Receiver, provider: str
) -> None:
    run = start_media_run(h, provider, "job")
    wait_awaiting(h, run.run_id, provider, "job-0")
    body = encode(success(provider, "job-0"))
    headers = sign_for(provider, body, "job-0")
    delivery_id = headers.get("webhook-id") or headers["X-Fal-Webhook-Request-Id"]
    first = receiver.post(provider, body, headers)
    done = h.wait_terminal(run.run_id)

    replay = receiver.post(provider, body, headers)

    assert first.json() == {"status": "accepted", "outcome": "resumed"}
    # Not merely "ignored" by the run: the receiver knew the delivery and went no further.
    assert replay.status_code == 202
    assert replay.json() == {"status": "duplicate", "deliveryId": delivery_id}
    assert unchanged(h, done)
    assert kinds(h.run(run.run_id)) == RESUMED_LOG


def test_a_replayed_progress_delivery_logs_its_progress_once(
    h: Harness, seen: Seen, receiver: Receiver
) -> None:
    run = start_media_run(h, "replicate", "job")
    wait_awaiting(h, run.run_id, "replicate", "job-0")
    body = encode(with_job_id("replicate", REPLICATE_PROCESSING, "job-0"))
    headers = sign_for("replicate", body, "job-0")

    first = receiver.post("replicate", body, headers)
    replay = receiver.post("replicate", body, headers)
    next_update = receiver.post("replicate", body, sign_for("replicate", body, "job-0"))

    assert first.json() == {"status": "accepted", "outcome": "progress"}
    assert replay.json() == {"status": "duplicate", "deliveryId": headers["webhook-id"]}
    # A new delivery (another webhook-id) with the same body is a new update: logged.
    assert next_update.json() == {"status": "accepted", "outcome": "progress"}
    assert len(step_events(h.run(run.run_id), "generate", "step-progress")) == 2


@pytest.mark.parametrize("provider", ["elevenlabs", "video"])
def test_a_replayed_callback_of_a_scheme_without_delivery_ids_is_ignored_by_the_run(
    h: Harness, seen: Seen, receiver: Receiver, provider: str
) -> None:
    run = start_media_run(h, provider, "job")
    wait_awaiting(h, run.run_id, provider, "job-0")
    body = encode(success(provider, "job-0"))
    headers = sign_for(provider, body, "job-0")
    first = receiver.post(provider, body, headers)
    done = h.wait_terminal(run.run_id)

    replay = receiver.post(provider, body, headers)

    assert first.json() == {"status": "accepted", "outcome": "resumed"}
    assert replay.json() == {"status": "accepted", "outcome": "ignored"}
    assert unchanged(h, done)


@pytest.mark.parametrize("provider", WITH_DELIVERY_IDS)
def test_five_concurrent_copies_of_one_delivery_resume_the_step_once_and_four_are_duplicates(
    h: Harness, seen: Seen, receiver: Receiver, provider: str
) -> None:
    run = start_media_run(h, provider, "job")
    wait_awaiting(h, run.run_id, provider, "job-0")
    body = encode(success(provider, "job-0"))
    headers = sign_for(provider, body, "job-0")
    barrier = threading.Barrier(5)
    answers: list[dict[str, Any]] = []

    def deliver() -> None:
        with httpx.Client(timeout=DEADLINE) as client:
            barrier.wait(timeout=DEADLINE)
            response = client.post(
                f"{receiver.url}/webhooks/{provider}", content=body, headers=headers
            )
        answers.append({"code": response.status_code, **response.json()})

    threads = [threading.Thread(target=deliver) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)

    assert sorted(a.get("outcome") or a["status"] for a in answers) == ["duplicate"] * 4 + [
        "resumed"
    ]
    assert {a["code"] for a in answers} == {202}
    run = h.wait_terminal(run.run_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert len(step_events(run, "generate", "step-completed")) == 1
    assert kinds(run) == RESUMED_LOG
    assert len(seen.published) == 1


# -- a claim released when the delivery could not be handled ---------------------------------------


def test_a_delivery_answered_503_is_handled_again_on_the_providers_retry(
    redis_url: str, prefix: str, http: httpx.Client
) -> None:
    # A broker that refuses connections (a port bound, not listening): an unknown job's callback
    # cannot be handed on to the task, so the receiver answers 503 after claiming the delivery.
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    broker = f"redis://127.0.0.1:{refusing.getsockname()[1]}/0"
    app = Celery("mpstate-test-503", broker=broker, set_as_current=False)
    store = RedisPipelineStateStore.from_url(redis_url, prefix=prefix)
    mp = MpState(app, store)
    try:
        with serving(webhook_app(app, SECRETS, early_wait_s=0.0), bind_loopback()) as url:
            body = encode(success("replicate", "nobody-recorded-this"))
            headers = sign_for("replicate", body, "nobody-recorded-this")
            first = http.post(f"{url}/webhooks/replicate", content=body, headers=headers)
            retry = http.post(f"{url}/webhooks/replicate", content=body, headers=headers)
    finally:
        mp.close()
        store.close()
        app.close()
        refusing.close()

    assert first.status_code == 503, first.text
    assert first.headers["Retry-After"]
    # Not "duplicate": the failed attempt gave its claim on the delivery id back.
    assert retry.status_code == 503, retry.text


# -- Luma: capability URLs -------------------------------------------------------------------------


def test_a_luma_callback_with_a_wrong_token_gets_401_and_changes_nothing(
    h: Harness, seen: Seen, receiver: Receiver
) -> None:
    run = start_media_run(h, "luma", "job", capability=True)
    before = wait_awaiting(h, run.run_id, "luma", "job-0")
    url = seen.callback_urls[0]
    token = url.rsplit("/", 1)[1]
    wrong = url[: -len(token)] + ("A" if token[0] != "A" else "B") + token[1:]
    payload = with_job_id("luma", LUMA_COMPLETED, "job-0")

    answers = [
        receiver.post_url(wrong, payload),
        receiver.post_url(url[: -len(token)] + "short", payload),
        receiver.post_url(url.replace("/generate/0/", "/generate/1/"), payload),
        receiver.post("luma", encode(payload)),  # the signed-provider route: Luma has none
    ]

    assert [a.status_code for a in answers] == [401, 401, 401, 401]
    assert unchanged(h, before)


def test_a_luma_url_minted_with_the_previous_secret_is_still_accepted(
    h: Harness, seen: Seen, receiver: Receiver
) -> None:
    run = start_media_run(h, "luma", "job", capability=True)
    wait_awaiting(h, run.run_id, "luma", "job-0")
    path = callback_path(LUMA_OLD_SECRET, "luma", run.run_id, "generate", 0)

    response = receiver.post_url(receiver.url + path, with_job_id("luma", LUMA_COMPLETED, "job-0"))

    assert path != seen.callback_urls[0].removeprefix(receiver.url)
    assert response.json() == {"status": "accepted", "outcome": "resumed"}


def test_the_url_of_an_earlier_attempt_or_of_a_finished_run_gets_403_superseded(
    h: Harness, seen: Seen, receiver: Receiver
) -> None:
    run = start_media_run(h, "luma", "job", capability=True)
    wait_awaiting(h, run.run_id, "luma", "job-0")
    # A retryable failure of job-0 (as a poll could report it): the step runs again.
    failure = WebhookOutcome(
        status="failed", error=ProviderError(code="LUMA_BUSY", message="busy", retryable=True)
    )
    assert h.mp.resolve_outcome("luma", "job-0", failure) == "failed"
    retried = wait_awaiting(h, run.run_id, "luma", "job-1")
    first_url, second_url = seen.callback_urls[0], seen.callback_urls[1]

    late = receiver.post_url(first_url, with_job_id("luma", LUMA_COMPLETED, "job-0"))
    crossed = receiver.post_url(first_url, with_job_id("luma", LUMA_COMPLETED, "job-1"))

    assert "/generate/1/" in second_url
    for answer in (late, crossed):
        assert answer.status_code == 403, answer.text
        assert answer.json()["reason"] == "superseded"
    assert unchanged(h, retried)
    current = receiver.post_url(second_url, with_job_id("luma", LUMA_COMPLETED, "job-1"))
    assert current.json() == {"status": "accepted", "outcome": "resumed"}
    done = h.wait_terminal(run.run_id)
    assert done.status is PipelineRunStatus.COMPLETED

    after_the_end = receiver.post_url(second_url, with_job_id("luma", LUMA_COMPLETED, "job-1"))

    assert after_the_end.status_code == 403
    assert after_the_end.json()["reason"] == "superseded"
    assert "no longer live" in after_the_end.json()["error"]
    assert unchanged(h, done)


def test_a_luma_url_of_one_run_cannot_resolve_the_job_of_another_run(
    h: Harness, seen: Seen, receiver: Receiver
) -> None:
    mine = start_media_run(h, "luma", "mine", capability=True)
    wait_awaiting(h, mine.run_id, "luma", "mine-0")
    my_url = seen.run_urls[mine.run_id, 0]
    theirs = start_media_run(h, "luma", "theirs", capability=True)
    before = wait_awaiting(h, theirs.run_id, "luma", "theirs-0")

    response = receiver.post_url(my_url, with_job_id("luma", LUMA_COMPLETED, "theirs-0"))

    assert unchanged(h, before), f"the other run was changed; the receiver said {response.text}"
    assert response.status_code == 403
    assert response.json()["reason"] == "superseded"
    # The URL still answers for its own job.
    own = receiver.post_url(my_url, with_job_id("luma", LUMA_COMPLETED, "mine-0"))
    assert own.json() == {"status": "accepted", "outcome": "resumed"}


def test_a_luma_url_of_a_step_not_waiting_yet_cannot_resolve_the_job_of_another_run(
    h: Harness, seen: Seen, receiver: Receiver
) -> None:
    theirs = start_media_run(h, "luma", "theirs", capability=True)
    before = wait_awaiting(h, theirs.run_id, "luma", "theirs-0")
    # This run's step has built its URL and not recorded its job yet (it holds).
    mine = start_media_run(h, "luma", "mine", capability=True, hold=True)
    my_url = wait_for(lambda: seen.run_urls.get((mine.run_id, 0)), what="the holding step's URL")
    assert h.run(mine.run_id).step("generate").external_jobs == []
    try:
        response = receiver.post_url(my_url, with_job_id("luma", LUMA_COMPLETED, "theirs-0"))
    finally:
        h.latch("generate").set()

    assert unchanged(h, before), f"the other run was changed; the receiver said {response.text}"


# -- fal's keys are fetched without holding up other callbacks -------------------------------------


def test_a_slow_jwks_fetch_does_not_hold_up_other_requests(
    h: Harness, endpoint: Endpoint, http: httpx.Client
) -> None:
    with jwks_server(FAL_KEY, stall_s=1.5) as slow_jwks:
        url = endpoint.serve(
            webhook_app(
                h.app,
                SECRETS,
                schemes={"fal": "fal"},
                scheme_options={"fal": {"jwks_url": slow_jwks.url}},
                early_wait_s=0.0,
            )
        )
        body = encode(success("fal", "job-0"))
        fal = threading.Thread(
            target=lambda: http.post(
                f"{url}/webhooks/fal", content=body, headers=sign_for("fal", body, "job-0")
            )
        )
        fal.start()
        try:
            wait_for(lambda: slow_jwks.requests == 1, what="the JWKS fetch to start")
            with httpx.Client(timeout=DEADLINE) as other:
                started = time.monotonic()
                health = other.get(f"{url}/healthz")
                took = time.monotonic() - started
        finally:
            fal.join(DEADLINE)
        endpoint.stack.close()

    assert health.status_code == 200
    assert took < 0.5, f"/healthz took {took:.2f} s while fal's keys were being fetched"


def test_fal_given_only_its_jwks_url_is_configured(
    h: Harness, endpoint: Endpoint, jwks: JwksServer, http: httpx.Client
) -> None:
    app = webhook_app(
        h.app, {"replicate": REPLICATE_SECRET}, scheme_options={"fal": {"jwks_url": jwks.url}}
    )
    url = endpoint.serve(app)
    body = encode(success("fal", "job-0"))

    response = http.post(
        f"{url}/webhooks/fal", content=body, headers=sign_for("fal", body, "job-0")
    )

    # Verified against the JWKS (then handed on: no run records job-0 here).
    assert response.status_code == 202, response.text
    assert jwks.requests == 1
    forged = http.post(
        f"{url}/webhooks/fal",
        content=body,
        headers=sign_for("fal", body, "job-0", key=FAL_STRANGER_KEY),
    )
    assert forged.status_code == 401
