"""The example's operations on an embedded stack: memory broker and store, a worker thread, and
the webhook receiver and the simulated video provider serving real HTTP on loopback.

Each test builds its own stack (its own app, queue, store and artifact cache) through
``make_stack``, with the provider's behaviour fixed per test, and waits by polling the store with
a deadline.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from celery import Celery
from celery_support import events_of, step_events, wait_for

from celery_app.application import create_app
from celery_app.embedded import bind_loopback, serving, url_of, worker_thread
from celery_app.pipelines import PRODUCT_PHOTO, start_product_photo
from celery_app.provider import ProviderBehaviour, provider_app
from celery_app.settings import Settings
from mpstate import PipelineRun, PipelineStateStore
from mpstate.celery import MpState
from mpstate.webhooks import parse_secrets, webhook_app

T = TypeVar("T")

#: Longest any single wait may take, in seconds (generous: a noisy 2-core machine).
DEADLINE = 30.0

PROMPT = "a red bicycle on a white background"


@dataclass
class Stack:
    """One test's embedded deployment."""

    app: Celery
    mp: MpState
    store: PipelineStateStore
    settings: Settings
    provider_url: str
    #: Return values of the ``mpstate.resolve_webhook`` tasks that finished (SUCCESS only).

    def start(self, prompt: str = PROMPT) -> PipelineRun:
        return start_product_photo(self.mp, prompt, tenant_id=self.settings.tenant_id)

    def wait_terminal(self, run_id: str) -> PipelineRun:
        return wait_for(
            lambda: (run := self.store.require(run_id)).is_terminal and run,
            DEADLINE,
            f"run {run_id} to finish",
        )

    def provider_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.provider_url}/stats", timeout=5).json()
        return stats


StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack() -> Iterator[StackFactory]:
    """Build an embedded stack whose provider behaves as asked; torn down after the test."""
    with ExitStack() as stack:

        def factory(**behaviour: Any) -> Stack:
            receiver_sock, provider_sock = bind_loopback(), bind_loopback()
            settings = Settings.from_env(
                {},
                broker_url="memory://localhost/",
                store_url="memory://",
                # kombu's memory transport is one per process: a queue of its own per test.
                queue=f"pipeline-{uuid.uuid4().hex[:10]}",
                provider_url=url_of(provider_sock),
                receiver_url=url_of(receiver_sock),
                webhook_secrets=f"video={uuid.uuid4().hex}",  # there is no default secret
            )
            app = create_app(settings)
            mp = MpState.of(app)
            options = {"delay_s": 0.3, "duplicate_rate": 0.0, "failure_rate": 0.0, "seed": 7}
            options.update(behaviour)
            provider = ProviderBehaviour(secret=settings.secret_for("video"), **options)
            built = Stack(app, mp, mp.store, settings, url_of(provider_sock))
            # Unwound in reverse: the worker stops first, then the servers, then the bindings.
            stack.callback(app.close)
            stack.callback(mp.close)
            stack.enter_context(serving(provider_app(provider), provider_sock))
            secrets = parse_secrets(settings.webhook_secrets)
            stack.enter_context(serving(webhook_app(app, secrets), receiver_sock))
            stack.enter_context(worker_thread(app, concurrency=4))
            return built

        yield factory


def test_a_repeated_prompt_is_served_from_the_generation_cache(make_stack: StackFactory) -> None:
    s = make_stack()
    first = s.wait_terminal(s.start().run_id)
    assert first.status == "completed", first.error
    second = s.wait_terminal(s.start().run_id)
    assert second.status == "completed", second.error

    assert first.step("generate").status == "completed"
    assert second.step("generate").status == "cached"
    cached = step_events(second, "generate", "step-cached")
    assert len(cached) == 1
    assert cached[0].artifact_ids == first.step("generate").artifact_ids
    assert step_events(second, "generate", "step-completed") == []
    assert first.cost_usd - second.cost_usd == pytest.approx(0.04)


def test_upscale_reports_increasing_progress_up_to_100(make_stack: StackFactory) -> None:
    s = make_stack()
    run = s.wait_terminal(s.start().run_id)

    assert run.status == "completed", run.error
    pcts = [event.pct for event in step_events(run, "upscale", "step-progress")]
    assert len(pcts) >= 2
    assert pcts == sorted(set(pcts)), pcts
    assert pcts[-1] == 100


def test_the_quality_gate_fails_the_run_when_its_threshold_cannot_be_met(
    make_stack: StackFactory,
) -> None:
    s = make_stack()
    steps = copy.deepcopy(PRODUCT_PHOTO)
    steps[0]["inputs"] = {"prompt": PROMPT}
    quality = next(step for step in steps if step["stepId"] == "quality")
    quality["inputs"] = {"min_quality": 1.01}  # scores are 0.5 .. 1.0

    started = s.mp.start_run("product-photo", steps, tenant_id=s.settings.tenant_id)
    run = s.wait_terminal(started.run_id)

    assert run.status == "failed"
    gated = step_events(run, "quality", "step-gated")
    assert len(gated) == 1
    assert gated[0].gate_type == "quality"
    assert run.step("quality").status == "gated"
    failed = events_of(run, "run-failed")
    assert [event.code for event in failed] == ["gate-rejected"]
    assert step_events(run, "video", "step-started") == []
    assert run.step("video").status == "pending"
    assert s.provider_stats()["jobs"] == 0


def test_duplicate_callbacks_are_absorbed(make_stack: StackFactory) -> None:
    s = make_stack(duplicate_rate=1.0, failure_rate=0.0)
    run_id = s.start().run_id
    run = s.wait_terminal(run_id)
    assert run.status == "completed", run.error

    # Both copies were delivered and accepted; the receiver applied them itself: one resumed the
    # run, the other found nothing awaiting it.
    stats = wait_for(
        lambda: (st := s.provider_stats())["pending"] == 0 and st["callbacks_sent"] >= 2 and st,
        DEADLINE,
        "the provider to deliver both callbacks",
    )
    assert stats["jobs"] == 1
    assert stats["duplicates_sent"] >= 1
    assert (stats["callbacks_sent"], stats["delivery_errors"]) == (2, 0)

    run = s.store.require(run_id)
    (completed,) = step_events(run, "video", "step-completed")
    assert completed.meta is not None and completed.meta.get("via") == "receiver"
    assert len(events_of(run, "run-resumed")) == 1
    assert len(events_of(run, "run-completed")) == 1
    assert [event.seq for event in run.events] == list(range(1, len(run.events) + 1))


def test_a_failing_provider_makes_the_video_step_retry_until_the_run_fails(
    make_stack: StackFactory,
) -> None:
    s = make_stack(failure_rate=1.0, duplicate_rate=0.0, delay_s=0.1)
    run = s.wait_terminal(s.start().run_id)

    assert run.status == "failed"
    attempts = [event.attempt for event in step_events(run, "video", "step-started")]
    assert len(attempts) == 4, attempts  # maxRetries 3: the first attempt and three retries
    assert attempts == sorted(set(attempts)), attempts
    failures = step_events(run, "video", "step-failed")
    assert len(failures) == len(attempts)
    assert all(event.code == "RENDER_FARM_BUSY" for event in failures)
    assert [event.retryable for event in failures[:-1]] == [True] * (len(failures) - 1)
    assert failures[-1].retryable is False  # the retries are exhausted
    assert [event.code for event in events_of(run, "run-failed")] == ["RENDER_FARM_BUSY"]
    assert run.step("video").status == "failed"
    assert s.provider_stats()["jobs"] == len(attempts)
