"""Callbacks that can no longer, or can never, reach a step: answered at once and kept visible.

- A success for the job of an earlier attempt (the step was re-run after a retryable failure and
  awaits a new job) is answered ``ignored`` at once: the job is known, so it is neither retried
  for the early-callback window nor handed to ``mpstate.resolve_webhook``.
- A callback on the wrong provider name (the job is recorded under ``veo``, it arrives for
  ``video``) is answered ``unmatched`` / ``other-provider`` and kept: ``list_unmatched``,
  ``count_unmatched`` and ``mpstate webhooks unmatched`` (text and JSON) show it.
- A job id no run ever records is accepted and handed to the task, which keeps retrying it for
  ``mpstate_webhook_unknown_window_s`` and then records it as ``unknown-job``.
- A callback that overtakes the step recording its job still resumes the run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery_support import DEADLINE, Harness, HarnessFactory, assert_never, kinds, wait_for
from click.testing import CliRunner, Result
from provider_payloads import REPLICATE_ABORTED
from provider_support import (
    FAL_KEY,
    RESUMED_LOG,
    SUCCESS,
    Endpoint,
    JwksServer,
    Receiver,
    Seen,
    callback_conf,
    define_media_tasks,
    jwks_server,
    provider_receiver,
    sign_for,
    start_media_run,
    wait_awaiting,
    with_job_id,
)

from mpstate.celery import RESOLVE_WEBHOOK
from mpstate.cli import cli
from mpstate.models import PipelineRunStatus, StepStatus

#: How long the receiver retries a callback whose job is not recorded yet, before the task
#: (``webhook_app``'s default), and the shorter window of the tests that need not wait for it.
EARLY_WAIT_S = 2.0
SHORT_EARLY_WAIT_S = 0.2


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with jwks_server(FAL_KEY) as server:
        yield server


@pytest.fixture
def h(make_harness: HarnessFactory, endpoint: Endpoint) -> Harness:
    """Unknown jobs are retried every 0.1 s for 0.5 s, then recorded as unmatched."""
    return make_harness(
        mpstate_webhook_unknown_window_s=0.5,
        mpstate_webhook_retry_interval_s=0.1,
        **callback_conf(endpoint),
    )


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
    """A receiver that tries a callback whose job is not recorded for 0.2 s before the task."""
    yield Receiver(provider_receiver(h, endpoint, jwks, early_wait_s=SHORT_EARLY_WAIT_S), http)
    endpoint.stack.close()


@pytest.fixture
def patient_receiver(
    h: Harness, endpoint: Endpoint, jwks: JwksServer, http: httpx.Client
) -> Iterator[Receiver]:
    """A receiver with the default early-callback window (2 s)."""
    yield Receiver(provider_receiver(h, endpoint, jwks, early_wait_s=EARLY_WAIT_S), http)
    endpoint.stack.close()


def mpstate_cli(redis_url: str, prefix: str, *args: str, as_json: bool = False) -> Result:
    """``mpstate`` in process on this test's store, as tests/cli's ``run_cli`` runs it."""
    options = ["--redis-url", redis_url, "--prefix", prefix, *(["--json"] if as_json else [])]
    env = {"COLUMNS": "200", "MPSTATE_REDIS_URL": None, "MPSTATE_PREFIX": None}
    return CliRunner().invoke(cli, [*options, *args], env=env, catch_exceptions=False)


# -- a success for a superseded job ----------------------------------------------------------------


def test_a_success_for_the_job_of_an_earlier_attempt_is_ignored_at_once_and_never_retried(
    h: Harness, seen: Seen, patient_receiver: Receiver
) -> None:
    receiver = patient_receiver
    run = start_media_run(h, "replicate", "job")
    wait_awaiting(h, run.run_id, "replicate", "job-0")
    # job-0 aborted (Replicate: no capacity in time, retryable): the step runs again.
    aborted = receiver.post_signed(
        "replicate", with_job_id("replicate", REPLICATE_ABORTED, "job-0"), "job-0"
    )
    assert aborted.json() == {"status": "accepted", "outcome": "failed"}
    waiting = wait_awaiting(h, run.run_id, "replicate", "job-1")

    started = time.monotonic()
    while_retried = receiver.post_signed(
        "replicate", with_job_id("replicate", SUCCESS["replicate"], "job-0"), "job-0"
    )
    answered_in = time.monotonic() - started

    assert while_retried.json() == {"status": "accepted", "outcome": "ignored"}
    assert answered_in < EARLY_WAIT_S  # known, so not retried for the early-callback window
    after = h.run(run.run_id)
    assert (after.version, len(after.events)) == (waiting.version, len(waiting.events))
    assert after.step("generate").status is StepStatus.WAITING

    current = receiver.post_signed(
        "replicate", with_job_id("replicate", SUCCESS["replicate"], "job-1"), "job-1"
    )
    assert current.json() == {"status": "accepted", "outcome": "resumed"}
    done = h.wait_terminal(run.run_id)
    assert done.status is PipelineRunStatus.COMPLETED

    started = time.monotonic()
    after_the_end = receiver.post_signed(
        "replicate", with_job_id("replicate", SUCCESS["replicate"], "job-0"), "job-0"
    )
    answered_in = time.monotonic() - started

    assert after_the_end.status_code == 202
    assert after_the_end.json() == {"status": "accepted", "outcome": "ignored"}
    assert answered_in < EARLY_WAIT_S
    # Nothing was handed to mpstate.resolve_webhook, now or later.
    assert_never(lambda: h.finished_tasks(RESOLVE_WEBHOOK), 1.0, "a resolve_webhook task ran")
    assert h.client.llen(h.queue) == 0
    final = h.run(run.run_id)
    assert (final.version, len(final.events)) == (done.version, len(done.events))
    assert final.step("generate").artifact_ids == SUCCESS["replicate"]["output"]
    assert h.store.count_unmatched() == {}
    assert [g["job"] for g in seen.generated] == ["job-0", "job-1"]


# -- a callback on another provider's name ---------------------------------------------------------


def test_a_callback_for_a_job_recorded_under_another_provider_is_answered_and_kept_as_unmatched(
    h: Harness, seen: Seen, receiver: Receiver, redis_url: str, prefix: str
) -> None:
    run = start_media_run(h, "veo", "veo-job")
    before = wait_awaiting(h, run.run_id, "veo", "veo-job-0")

    response = receiver.post_signed(
        "video", {"jobId": "veo-job-0", "status": "succeeded", "artifactIds": ["v-1"]}, "veo-job-0"
    )

    assert response.status_code == 202
    answer = response.json()
    assert (answer["status"], answer["reason"]) == ("unmatched", "other-provider")
    assert "'veo'" in answer["detail"] and "veo-job-0" in answer["detail"]
    after = h.run(run.run_id)
    assert (after.version, len(after.events)) == (before.version, len(before.events))
    (kept,) = h.store.list_unmatched()
    assert (kept.provider, kept.job_id, kept.reason) == ("video", "veo-job-0", "other-provider")
    assert kept.detail == answer["detail"]
    assert h.store.count_unmatched() == {("video", "other-provider"): 1}
    assert h.store.list_unmatched(provider="veo") == []

    text = mpstate_cli(redis_url, prefix, "webhooks", "unmatched")
    as_json = mpstate_cli(redis_url, prefix, "webhooks", "unmatched", as_json=True)

    assert text.exit_code == 0, text.output
    assert "veo-job-0" in text.output and "other-provider" in text.output
    assert "video: 1 other-provider in all" in text.output
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    (listed,) = document["callbacks"]
    assert listed["provider"] == "video"
    assert listed["jobId"] == "veo-job-0"
    assert listed["reason"] == "other-provider"
    assert "'veo'" in listed["detail"]
    assert document["counts"] == [{"provider": "video", "reason": "other-provider", "count": 1}]


def test_the_unmatched_command_says_so_when_every_callback_matched(
    h: Harness, redis_url: str, prefix: str
) -> None:
    text = mpstate_cli(redis_url, prefix, "webhooks", "unmatched")
    as_json = mpstate_cli(redis_url, prefix, "webhooks", "unmatched", as_json=True)

    assert text.exit_code == 0
    assert "no unmatched callbacks" in text.output
    assert json.loads(as_json.output) == {"callbacks": [], "counts": []}


# -- a job no run records --------------------------------------------------------------------------


def test_a_callback_for_a_job_no_run_records_is_accepted_then_kept_as_unknown_job_after_the_window(
    h: Harness, seen: Seen, receiver: Receiver, redis_url: str, prefix: str
) -> None:
    payload = with_job_id("replicate", SUCCESS["replicate"], "never-recorded")

    response = receiver.post_signed("replicate", payload, "never-recorded")

    assert response.status_code == 202
    answer = response.json()
    assert (answer["status"], answer["pending"]) == ("accepted", "unknown-job")
    final = h.wait_finished(answer["taskId"], states=["SUCCESS"])
    assert final.retval == "dropped"
    # Retried every 0.1 s for the 0.5 s window, then given up on.
    states = [f.state for f in h.finished_tasks(task_id=answer["taskId"])]
    assert states[-1] == "SUCCESS" and set(states[:-1]) == {"RETRY"} and len(states) >= 5
    (kept,) = h.store.list_unmatched(provider="replicate")
    assert (kept.job_id, kept.reason) == ("never-recorded", "unknown-job")
    assert h.store.count_unmatched() == {("replicate", "unknown-job"): 1}
    document = json.loads(
        mpstate_cli(redis_url, prefix, "webhooks", "unmatched", as_json=True).output
    )
    assert [(c["provider"], c["jobId"], c["reason"]) for c in document["callbacks"]] == [
        ("replicate", "never-recorded", "unknown-job")
    ]


# -- a callback that overtakes its job -------------------------------------------------------------


def test_a_callback_that_arrives_before_the_step_records_its_job_still_resumes_the_run(
    h: Harness, seen: Seen, endpoint: Endpoint, jwks: JwksServer, http: httpx.Client
) -> None:
    receiver = Receiver(provider_receiver(h, endpoint, jwks, early_wait_s=DEADLINE / 2), http)
    unknown = threading.Event()
    resolve = h.mp.resolve_outcome

    def watched(provider: str, job_id: str, *args: Any, **kwargs: Any) -> str:
        answer = resolve(provider, job_id, *args, **kwargs)
        if answer == "unknown":
            unknown.set()
        return answer

    h.mp.resolve_outcome = watched  # type: ignore[method-assign]
    run = start_media_run(h, "replicate", "job", hold=True)
    h.wait_event(run.run_id, "step-started", "generate")
    answers: list[httpx.Response] = []
    early = threading.Thread(
        target=lambda: answers.append(
            receiver.post_signed(
                "replicate", with_job_id("replicate", SUCCESS["replicate"], "job-0"), "job-0"
            )
        )
    )
    early.start()
    try:
        # The receiver has tried the callback once and found no run for job-0 ...
        assert unknown.wait(DEADLINE)
        assert h.run(run.run_id).step("generate").external_jobs == []
    finally:
        h.latch("generate").set()  # ... and only then does the step record it.
        early.join(DEADLINE)

    (response,) = answers
    assert response.json() == {"status": "accepted", "outcome": "resumed"}
    done = h.wait_terminal(run.run_id)
    assert done.status is PipelineRunStatus.COMPLETED
    assert kinds(done) == RESUMED_LOG
    assert wait_for(lambda: len(seen.published) == 1)
    assert not h.finished_tasks(RESOLVE_WEBHOOK)


def test_an_unknown_jobs_callback_is_kept_with_the_providers_delivery_id(
    h: Harness, seen: Seen, receiver: Receiver
) -> None:
    payload = with_job_id("replicate", SUCCESS["replicate"], "never-recorded")
    body = json.dumps(payload).encode()
    headers = sign_for("replicate", body, "never-recorded")

    response = receiver.post("replicate", body, headers)
    h.wait_finished(response.json()["taskId"], states=["SUCCESS"])

    (kept,) = h.store.list_unmatched(provider="replicate")
    assert kept.delivery_id == headers["webhook-id"]
