"""A receiver given an asyncio store waits for an early callback's job id on the event loop.

Without one, the receiver polls ``MpState.resolve_outcome`` in a worker thread for up to
``early_wait_s``; with ``store=`` (an ``mpstate.aio`` store on the same data) it polls
``find_by_external_job_id`` on the event loop and resolves in a thread only once the job is
recorded, so unknown or early callbacks hold no thread while they wait.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery_support import Harness
from test_receiver_inline import post, started_render_step, suspend
from webhook_support import SECRETS, SUCCEEDED, Serve

from mpstate.aio import AsyncRedisPipelineStateStore
from mpstate.errors import InvalidInputError
from mpstate.models import StepStatus
from mpstate.webhooks import webhook_app


@pytest.fixture
def resolves(h: Harness, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job ids ``MpState.resolve_outcome`` was called with (each call runs in a thread)."""
    calls: list[str] = []
    original = h.mp.resolve_outcome  # what the receiver calls with the adapter's reading

    def counting(provider: str, job_id: str, *args: Any, **kwargs: Any) -> str:
        calls.append(job_id)
        return original(provider, job_id, *args, **kwargs)

    monkeypatch.setattr(h.mp, "resolve_outcome", counting)
    return calls


@pytest.fixture
def async_store(redis_url: str, prefix: str) -> Iterator[AsyncRedisPipelineStateStore]:
    yield AsyncRedisPipelineStateStore.from_url(redis_url, prefix=prefix)


def test_an_early_callback_is_resolved_once_after_its_job_id_is_recorded(
    h: Harness,
    serve: Serve,
    http: httpx.Client,
    prefix: str,
    resolves: list[str],
    async_store: AsyncRedisPipelineStateStore,
) -> None:
    run = started_render_step(h, f"{prefix}-run")
    url = serve(webhook_app(h.app, SECRETS, early_wait_s=5.0, store=async_store))
    recorded = threading.Timer(0.5, suspend, args=(h, run))
    recorded.start()

    response = post(http, url, SUCCEEDED)
    recorded.join()

    assert response.json() == {"status": "accepted", "outcome": "resumed"}
    assert h.store.require(run.run_id).step("render").status is StepStatus.COMPLETED
    # Without the asyncio store the thread polls resolve every 0.1 s for the 0.5 s wait.
    assert resolves == [SUCCEEDED["jobId"]]


def test_a_callback_for_a_job_never_recorded_goes_to_the_task_without_a_resolve(
    h: Harness,
    serve: Serve,
    http: httpx.Client,
    resolves: list[str],
    async_store: AsyncRedisPipelineStateStore,
) -> None:
    url = serve(webhook_app(h.app, SECRETS, early_wait_s=0.3, store=async_store))

    response = post(http, url, {**SUCCEEDED, "jobId": "job-nobody-recorded"})

    assert response.status_code == 202
    assert response.json()["taskId"]
    assert resolves == []


def test_a_store_that_is_not_an_asyncio_store_is_refused(h: Harness) -> None:
    with pytest.raises(InvalidInputError, match=r"mpstate\.aio"):
        webhook_app(h.app, SECRETS, store=h.store)  # type: ignore[arg-type]
