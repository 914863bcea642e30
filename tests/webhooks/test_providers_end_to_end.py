"""Each real provider's callback, shaped and signed as it documents, resumes the run waiting for it.

Real HTTP (uvicorn on loopback), a real worker and Redis: a two-step run (``media.generate``
awaits the provider's job, ``media.publish`` records what it was handed) is suspended on
Replicate, OpenAI, fal, ElevenLabs or Luma; the provider's documented success payload
(tests/webhooks/provider_payloads.py) with the job id substituted is signed exactly as that
provider signs (Standard Webhooks, fal's Ed25519 against a JWKS served on loopback, ElevenLabs'
``t=,v0=``, or Luma's unsigned capability URL that the step built). The receiver answers only once
the step is completed with what the provider's preset adapter reads, and the next step sees it.
The same goes through the real ``mpstate webhooks serve`` command run as a subprocess. Callbacks
that report a job still running are logged as step-progress and leave the step waiting.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery_support import DEADLINE, Harness, HarnessFactory, kinds, step_events, wait_for
from provider_payloads import (
    ELEVENLABS_STT,
    FAL_OK_IMAGES,
    LUMA_COMPLETED,
    LUMA_DREAMING,
    REPLICATE_PROCESSING,
    REPLICATE_SUCCEEDED_IMAGES,
)
from provider_support import (
    FAL_KEY,
    FAL_NEXT_KEY,
    LUMA_SECRET,
    REPLICATE_SECRET,
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
    start_media_run,
    wait_awaiting,
    with_job_id,
)

from mpstate.models import PipelineRunStatus, StepStatus


def expected_result(provider: str, job_id: str) -> tuple[list[str], dict[str, Any]]:
    """The artifact ids and outputs each preset adapter reads from its success payload, written
    out from the documented payloads (not by calling the adapter)."""
    if provider == "replicate":
        output = REPLICATE_SUCCEEDED_IMAGES["output"]
        return output, {"output": output, "metrics": REPLICATE_SUCCEEDED_IMAGES["metrics"]}
    if provider == "openai":
        return [job_id], {"id": job_id}
    if provider == "fal":
        return ["https://url.to/image.png"], FAL_OK_IMAGES["payload"]
    if provider == "elevenlabs":
        return [], {**ELEVENLABS_STT["data"], "request_id": job_id}
    assets = LUMA_COMPLETED["assets"]
    return [assets["video"], assets["image"]], assets


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    endpoint = Endpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with jwks_server(FAL_KEY, FAL_NEXT_KEY) as server:
        yield server


@pytest.fixture
def h(make_harness: HarnessFactory, endpoint: Endpoint) -> Harness:
    """A harness whose steps build Luma callback URLs on ``endpoint``."""
    return make_harness(**callback_conf(endpoint))


@pytest.fixture
def seen(h: Harness) -> Seen:
    seen = Seen()
    define_media_tasks(h, seen)
    h.start_worker()
    return seen


@pytest.fixture
def receiver(
    h: Harness, endpoint: Endpoint, jwks: JwksServer, http: httpx.Client
) -> Iterator[Receiver]:
    yield Receiver(provider_receiver(h, endpoint, jwks), http)
    endpoint.stack.close()  # stop serving before the harness goes


def post_callback(
    receiver: Receiver, seen: Seen, provider: str, payload: dict[str, Any], job_id: str
) -> httpx.Response:
    """Deliver ``payload`` as ``provider`` does: signed on its route, or on Luma's URL."""
    if provider == "luma":
        return receiver.post_url(seen.callback_urls[0], payload)
    return receiver.post_signed(provider, payload, job_id)


@pytest.mark.parametrize("provider", list(SUCCESS))
def test_a_documented_success_callback_signed_as_the_provider_signs_it_resumes_the_run(
    h: Harness, seen: Seen, receiver: Receiver, provider: str
) -> None:
    run = start_media_run(h, provider, "job", capability=provider == "luma")
    job_id = "job-0"
    wait_awaiting(h, run.run_id, provider, job_id)

    response = post_callback(
        receiver, seen, provider, with_job_id(provider, SUCCESS[provider], job_id), job_id
    )

    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "outcome": "resumed"}
    # Applied before the answer: the step is completed the moment the provider hears 202.
    assert h.run(run.run_id).step("generate").status is StepStatus.COMPLETED
    run = h.wait_terminal(run.run_id)
    artifacts, outputs = expected_result(provider, job_id)
    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == RESUMED_LOG
    step = run.step("generate")
    assert (step.artifact_ids, step.outputs) == (artifacts, outputs)
    (completed,) = step_events(run, "generate", "step-completed")
    assert completed.artifact_ids == artifacts
    assert completed.meta is not None
    assert (completed.meta["provider"], completed.meta["jobId"]) == (provider, job_id)
    assert completed.meta["via"] == "receiver"
    assert seen.published == [
        {"artifacts": {"generate": artifacts}, "outputs": {"generate": outputs}}
    ]


def test_the_luma_step_builds_its_callback_url_on_the_receivers_base_url(
    h: Harness, seen: Seen, receiver: Receiver, endpoint: Endpoint
) -> None:
    run = start_media_run(h, "luma", "job", capability=True)
    wait_awaiting(h, run.run_id, "luma", "job-0")

    url = seen.callback_urls[0]

    prefix = f"{endpoint.url}/webhooks/luma/{run.run_id}/generate/0/"
    assert url.startswith(prefix)
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", url.removeprefix(prefix))
    # The same path with the token of another step is refused: the token binds the step.
    other = url.replace("/generate/0/", "/publish/0/")
    refused = receiver.post_url(other, with_job_id("luma", LUMA_COMPLETED, "job-0"))
    assert refused.status_code == 401
    assert h.run(run.run_id).step("generate").status is StepStatus.WAITING


@pytest.mark.parametrize(
    ("provider", "payload", "pct", "message"),
    [
        ("replicate", REPLICATE_PROCESSING, 46.0, REPLICATE_PROCESSING["logs"].split("\r")[-1]),
        ("luma", LUMA_DREAMING, 0.0, "dreaming"),
    ],
    ids=["replicate-processing", "luma-dreaming"],
)
def test_a_callback_for_a_job_still_running_is_logged_as_progress_and_the_step_keeps_waiting(
    h: Harness,
    seen: Seen,
    receiver: Receiver,
    provider: str,
    payload: dict[str, Any],
    pct: float,
    message: str,
) -> None:
    run = start_media_run(h, provider, "job", capability=provider == "luma")
    before = wait_awaiting(h, run.run_id, provider, "job-0")

    response = post_callback(
        receiver, seen, provider, with_job_id(provider, payload, "job-0"), "job-0"
    )

    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "outcome": "progress"}
    during = h.run(run.run_id)
    (progress,) = step_events(during, "generate", "step-progress")
    assert (progress.pct, progress.message) == (pct, message.strip())
    assert progress.meta is not None and progress.meta["jobId"] == "job-0"
    assert during.status is PipelineRunStatus.SUSPENDED
    assert during.step("generate").status is StepStatus.WAITING
    assert during.version == before.version  # progress is an event, not a state change
    # The wait goes on: the terminal callback still resumes it.
    done = post_callback(
        receiver, seen, provider, with_job_id(provider, SUCCESS[provider], "job-0"), "job-0"
    )
    assert done.json() == {"status": "accepted", "outcome": "resumed"}
    assert h.wait_terminal(run.run_id).status is PipelineRunStatus.COMPLETED


# -- through the real command: mpstate webhooks serve ----------------------------------------------

SERVED_LINE = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def serve_command(
    h: Harness, redis_url: str, log: Path, *args: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``mpstate webhooks serve`` on a free port; the process and its base URL."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "MPSTATE_TEST_BROKER_URL": h.broker_url,
        "MPSTATE_TEST_STORE_URL": redis_url,
        "MPSTATE_TEST_PREFIX": h.prefix,
        "MPSTATE_TEST_QUEUE": h.queue,
    }
    for name in ("MPSTATE_WEBHOOK_SECRETS", "MPSTATE_CELERY_APP", "MPSTATE_BROKER_URL"):
        env.pop(name, None)
    script = Path(sys.executable).parent / "mpstate"
    command = [str(script), "webhooks", "serve", "--port", "0", "--log-level", "info", *args]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)

    def started() -> str | None:
        if process.poll() is not None:
            raise AssertionError(f"the receiver exited: {log.read_text()}")
        found = SERVED_LINE.search(log.read_text(errors="replace"))
        return found.group(1) if found else None

    try:
        return process, wait_for(started, what="mpstate webhooks serve to listen")
    except BaseException:
        process.kill()
        process.wait()
        raise


@pytest.fixture
def command_receiver(
    h: Harness, redis_url: str, jwks: JwksServer, tmp_path: Path, http: httpx.Client
) -> Iterator[Receiver]:
    process, url = serve_command(
        h,
        redis_url,
        tmp_path / "receiver.log",
        "--app",
        "provider_receiver_app:app",
        "--secrets",
        f"replicate={REPLICATE_SECRET},luma={LUMA_SECRET}",
        "--jwks",  # alone: fal needs no secret, its keys are public
        f"fal={jwks.url}",
    )
    try:
        yield Receiver(url, http)
    finally:
        process.terminate()
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("provider", ["fal", "replicate"])
def test_the_serve_command_verifies_and_applies_a_provider_callback_before_it_answers(
    h: Harness, seen: Seen, command_receiver: Receiver, jwks: JwksServer, provider: str
) -> None:
    run = start_media_run(h, provider, "job")
    wait_awaiting(h, run.run_id, provider, "job-0")
    payload = with_job_id(provider, SUCCESS[provider], "job-0")

    forged = command_receiver.post(provider, b'{"status": "OK"}', {"webhook-id": "x"})
    response = command_receiver.post_signed(provider, payload, "job-0")

    assert forged.status_code == 401
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "outcome": "resumed"}
    assert h.run(run.run_id).step("generate").status is StepStatus.COMPLETED
    run = h.wait_terminal(run.run_id)
    artifacts, outputs = expected_result(provider, "job-0")
    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == RESUMED_LOG
    assert (run.step("generate").artifact_ids, run.step("generate").outputs) == (
        artifacts,
        outputs,
    )
    # fal's keys came from the JWKS URL given with --jwks (the forged one was refused unsigned).
    assert jwks.requests == (1 if provider == "fal" else 0)


def test_the_serve_command_lists_its_providers_on_healthz(
    command_receiver: Receiver, http: httpx.Client
) -> None:
    health = http.get(f"{command_receiver.url}/healthz")

    assert health.status_code == 200
    assert health.json() == {"status": "ok", "providers": ["fal", "luma", "replicate"]}
