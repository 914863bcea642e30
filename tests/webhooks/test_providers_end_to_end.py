"""Each real provider's callback, shaped and signed as it documents, resumes the run waiting for it.

Real HTTP (uvicorn on loopback), a real worker and Redis: a two-step run (``media.generate``
awaits the provider's job, ``media.publish`` records what it was handed) is suspended on
Replicate, OpenAI, fal, ElevenLabs or Luma; the provider's documented success payload
(tests/webhooks/provider_payloads.py) with the job id substituted is signed exactly as that
provider signs (Standard Webhooks, fal's Ed25519 against a JWKS served on loopback, ElevenLabs'
``t=,v0=``, or Luma's unsigned capability URL that the step built). The receiver answers only once
the step is completed with what the provider's preset adapter reads, and the next step sees it.
The same goes for all five through one ``mpstate webhooks serve`` subprocess per module (its
Celery app on the same store and queue, Luma's URLs built on its port). Callbacks that report a
job still running are logged as step-progress and leave the step waiting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery_support import (
    DEADLINE,
    Harness,
    HarnessFactory,
    harness,
    kinds,
    step_events,
    wait_for,
)
from provider_payloads import (
    ELEVENLABS_STT,
    FAL_OK_IMAGES,
    LUMA_COMPLETED,
    LUMA_DREAMING,
    REPLICATE_PROCESSING,
    REPLICATE_SUCCEEDED_IMAGES,
)
from provider_support import (
    ELEVENLABS_SECRET,
    FAL_KEY,
    FAL_NEXT_KEY,
    LUMA_SECRET,
    OPENAI_SECRET,
    REPLICATE_SECRET,
    RESUMED_LOG,
    SUCCESS,
    Endpoint,
    JwksServer,
    Receiver,
    Seen,
    callback_conf,
    define_media_tasks,
    encode,
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

#: ``--secrets`` of the served receiver: each provider's current secret (fal needs none).
SERVED_SECRETS = ",".join(
    f"{provider}={secret}"
    for provider, secret in {
        "replicate": REPLICATE_SECRET,
        "openai": OPENAI_SECRET,
        "elevenlabs": ELEVENLABS_SECRET,
        "luma": LUMA_SECRET,
    }.items()
)


def serve_command(
    redis_url: str, prefix: str, queue: str, log: Path, *args: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``mpstate webhooks serve`` on a free port, its app (``provider_receiver_app``) on
    the suite's Redis as broker and store, under ``prefix``, publishing to ``queue``; the process
    and its base URL."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "MPSTATE_TEST_BROKER_URL": redis_url,
        "MPSTATE_TEST_STORE_URL": redis_url,
        "MPSTATE_TEST_PREFIX": prefix,
        "MPSTATE_TEST_QUEUE": queue,
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
        stop(process)
        raise


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the receiver (again: a no-op)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


@dataclass
class Served:
    """The module's ``mpstate webhooks serve`` subprocess (``url``) serving all five providers,
    fal's keys on ``jwks``, and the harness its app shares a store and a queue with: the steps'
    tasks are defined there (``seen``) and build Luma callback URLs on ``url``."""

    url: str
    jwks: JwksServer
    h: Harness
    seen: Seen


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One receiver subprocess for the whole module: started once, it is the slow part."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    queue = f"{prefix}-q"  # the harness's queue for this prefix
    log = tmp_path_factory.mktemp("serve") / "receiver.log"
    with ExitStack() as stack:
        jwks = stack.enter_context(jwks_server(FAL_KEY, FAL_NEXT_KEY))
        process, url = serve_command(
            redis_url,
            prefix,
            queue,
            log,
            "--app",
            "provider_receiver_app:app",
            "--secrets",
            SERVED_SECRETS,
            "--jwks",  # alone: fal needs no secret, its keys are public
            f"fal={jwks.url}",
        )
        stack.callback(stop, process)
        h = stack.enter_context(
            harness(
                redis_url,
                redis_url,
                prefix,
                broker_transport_options={"polling_interval": 0.2},
                mpstate_callback_base_url=url,
                mpstate_callback_secret=LUMA_SECRET,
            )
        )
        assert h.queue == queue
        stack.callback(stop, process)  # before the harness deletes what the runs wrote
        seen = Seen()
        define_media_tasks(h, seen)
        yield Served(url, jwks, h, seen)


@pytest.fixture
def command_h(served: Served) -> Iterator[Harness]:
    """The module's harness with a worker for this test only, and nothing seen yet."""
    for record in vars(served.seen).values():
        record.clear()
    with ExitStack() as stack:
        h = dataclasses.replace(served.h, stack=stack)
        h.start_worker()
        yield h


@pytest.fixture
def command_receiver(served: Served, http: httpx.Client) -> Receiver:
    return Receiver(served.url, http)


def forged(
    receiver: Receiver, seen: Seen, provider: str, payload: dict[str, Any]
) -> httpx.Response:
    """``payload`` delivered unsigned, or for Luma on its callback URL with another token."""
    if provider == "luma":
        url = seen.callback_urls[0]
        token = url.rsplit("/", 1)[1]
        return receiver.post_url(url.replace(token, "A" * len(token)), payload)
    return receiver.post(provider, encode(payload), {"webhook-id": "x"})


@pytest.mark.parametrize("provider", list(SUCCESS))
def test_the_serve_command_verifies_and_applies_each_providers_callback_before_it_answers(
    served: Served, command_h: Harness, command_receiver: Receiver, provider: str
) -> None:
    h, seen, jwks = command_h, served.seen, served.jwks
    run = start_media_run(h, provider, "job", capability=provider == "luma")
    wait_awaiting(h, run.run_id, provider, "job-0")
    payload = with_job_id(provider, SUCCESS[provider], "job-0")
    jwks_fetched = jwks.requests

    refused = forged(command_receiver, seen, provider, payload)
    response = post_callback(command_receiver, seen, provider, payload, "job-0")

    assert refused.status_code == 401, refused.text
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "outcome": "resumed"}
    assert h.run(run.run_id).step("generate").status is StepStatus.COMPLETED
    run = h.wait_terminal(run.run_id)
    artifacts, outputs = expected_result(provider, "job-0")
    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == RESUMED_LOG
    step = run.step("generate")
    assert (step.artifact_ids, step.outputs) == (artifacts, outputs)
    (completed,) = step_events(run, "generate", "step-completed")
    assert completed.meta is not None
    assert (completed.meta["provider"], completed.meta["jobId"]) == (provider, "job-0")
    assert completed.meta["via"] == "receiver"
    assert seen.published == [
        {"artifacts": {"generate": artifacts}, "outputs": {"generate": outputs}}
    ]
    # fal's keys came from the JWKS URL given with --jwks (the forged one was refused unsigned);
    # only fal's callback fetches them, once (this module's only fal delivery).
    assert jwks.requests - jwks_fetched == (1 if provider == "fal" else 0)
    if provider == "luma":  # the step built its capability URL on the subprocess's port
        assert seen.callback_urls[0].startswith(
            f"{served.url}/webhooks/luma/{run.run_id}/generate/0/"
        )


def test_the_serve_command_lists_its_providers_on_healthz(
    command_receiver: Receiver, http: httpx.Client
) -> None:
    health = http.get(f"{command_receiver.url}/healthz")

    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "providers": ["elevenlabs", "fal", "luma", "openai", "replicate"],
    }
