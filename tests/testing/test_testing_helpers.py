"""``mpstate.testing``'s helpers: waiting for a run, checking its log, signing callbacks."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest

import mpstate.testing
from mpstate import InMemoryPipelineStateStore, InvalidInputError, RunStarted, StepStarted
from mpstate.testing import (
    WebhookRequest,
    assert_event_kinds,
    deliver,
    sign_webhook,
    wait_for_status,
)
from mpstate.webhooks import verify
from mpstate.webhooks.schemes import scheme_for


@pytest.fixture
def store() -> InMemoryPipelineStateStore:
    store = InMemoryPipelineStateStore()
    store.create({"runId": "r1", "pipelineId": "p"})
    return store


def test_the_package_names_its_public_api() -> None:
    assert mpstate.testing.__all__ == sorted(mpstate.testing.__all__)
    for name in mpstate.testing.__all__:
        assert getattr(mpstate.testing, name) is not None


def test_wait_for_status_returns_the_run_once_it_reaches_the_status(
    store: InMemoryPipelineStateStore,
) -> None:
    timer = threading.Timer(0.1, store.update, args=("r1", {"status": "running"}))
    timer.start()
    run = wait_for_status(store, "r1", ["running", "suspended"], timeout=5)
    timer.join()
    assert run.status == "running"
    assert run.events  # read with its log


def test_wait_for_status_fails_at_once_when_the_run_ends_otherwise(
    store: InMemoryPipelineStateStore,
) -> None:
    store.cancel("r1", "changed my mind")
    with pytest.raises(AssertionError) as caught:
        wait_for_status(store, "r1", "completed", timeout=30)
    message = str(caught.value)
    assert "run r1 ended cancelled, never completed" in message
    assert "error 'changed my mind'" in message
    assert "2 run-cancelled" in message


def test_wait_for_status_fails_after_the_timeout_showing_the_log(
    store: InMemoryPipelineStateStore,
) -> None:
    with pytest.raises(AssertionError, match=r"still pending after 0.1 s, not completed"):
        wait_for_status(store, "r1", timeout=0.1)


def test_wait_for_status_refuses_an_unknown_status(store: InMemoryPipelineStateStore) -> None:
    with pytest.raises(InvalidInputError, match="unknown run status"):
        wait_for_status(store, "r1", "done")


def test_assert_event_kinds_passes_on_the_same_kinds_and_shows_a_diff_otherwise(
    store: InMemoryPipelineStateStore,
) -> None:
    store.commit(
        "r1",
        {"status": "running"},
        [RunStarted(run_id="r1"), StepStarted(run_id="r1", step_id="s1", attempt=0)],
    )
    run = store.require("r1")
    assert_event_kinds(run, ["run-created", "run-started", "step-started"])
    assert_event_kinds(run.events, ["step-started"], step_id="s1")
    with pytest.raises(AssertionError) as caught:
        assert_event_kinds(run, ["run-created", "step-started", "step-completed"])
    message = str(caught.value)
    assert "+ run-started" in message
    assert "- step-completed" in message
    assert "3 step-started [s1]" in message


def test_assert_event_kinds_refuses_a_single_string(store: InMemoryPipelineStateStore) -> None:
    with pytest.raises(InvalidInputError):
        assert_event_kinds(store.require("r1"), "run-created")


def test_a_callback_signed_with_mpstates_scheme_verifies() -> None:
    request = sign_webhook("video", {"jobId": "j1", "status": "succeeded"}, "s3cret")
    assert request.path == "/webhooks/video"
    assert json.loads(request.body) == {"jobId": "j1", "status": "succeeded"}
    assert verify("s3cret", request.headers, request.body) > 0
    with pytest.raises(Exception, match="does not match"):
        verify("other", request.headers, request.body)


def test_a_preset_providers_callback_is_signed_with_its_scheme() -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    request = sign_webhook("replicate", {"id": "p1"}, secret, delivery_id="msg_1")
    verified = scheme_for("standard-webhooks", secret).verify(request.headers, request.body)
    assert verified.delivery_id == "msg_1"
    stripe = sign_webhook("shop", b'{"id": 1}', "sk", scheme="stripe", timestamp=1_700_000_000)
    assert stripe.headers["Stripe-Signature"].startswith("t=1700000000,v1=")


def test_an_old_timestamp_makes_a_callback_outside_the_replay_window() -> None:
    request = sign_webhook("video", {"jobId": "j1"}, "s3cret", timestamp=1_000_000)
    with pytest.raises(Exception, match="replay window"):
        verify("s3cret", request.headers, request.body)


@pytest.mark.parametrize("provider", ["luma", "fal"])
def test_providers_that_do_not_sign_with_a_shared_secret_are_refused(provider: str) -> None:
    with pytest.raises(InvalidInputError):
        sign_webhook(provider, {"jobId": "j1"}, "s3cret")


def test_deliver_posts_the_request_to_an_asgi_app() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        seen.update(path=scope["path"], body=message["body"], headers=dict(scope["headers"]))
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    request = WebhookRequest("/webhooks/video", b"{}", {"X-Test": "1"})
    response = deliver(app, request)
    assert (response.status_code, response.text) == (202, "ok")
    assert (seen["path"], seen["body"], seen["headers"][b"x-test"]) == (request.path, b"{}", b"1")
