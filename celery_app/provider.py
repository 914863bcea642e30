"""A simulated video provider: accepts jobs, then calls the receiver back, signed, after a delay.

It behaves like the real ones the receiver must survive: the callback comes later over real
HTTP, signed with the provider's secret (``mpstate.webhooks.signing``), sometimes twice at once,
sometimes reporting a (retryable) failure, and it retries its own delivery when the receiver is
down. For the chaos suite it can also be erratic: callbacks that overtake each other (jitter),
come at once (before the job id is recorded), or come again seconds later (after the run moved
on). Run it standalone with ``python -m celery_app.provider`` (docker-compose does).

``POST /jobs`` ``{"callbackUrl": ..., "input": {...}}`` -> 202 ``{"jobId": ...}``;
``GET /jobs/{jobId}`` -> the job's state in mpstate's default payload shape (``running`` until its
delay has passed), for a poller; ``GET /stats`` counts jobs, callbacks, duplicates and failures;
``GET /healthz``. With ``callback_rate`` below 1 some jobs never call back (as Runway, Stability
and Veo never do, or as a provider whose retries gave up): only a poller finds their result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import click
import httpx
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from celery_app.settings import Settings
from mpstate.celery.webhook import WebhookOutcome, default_adapter
from mpstate.webhooks import signed_headers

__all__ = ["ProviderBehaviour", "poll_job", "provider_app", "submit_job"]

log = logging.getLogger("celery_app.provider")


class ProviderBehaviour(BaseModel):
    """How the simulated provider misbehaves (rates are probabilities per job)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: str = Field(min_length=1)
    delay_s: float = Field(default=1.0, ge=0)
    duplicate_rate: float = Field(default=0.3, ge=0, le=1)
    failure_rate: float = Field(default=0.2, ge=0, le=1)
    cost_usd: float = Field(default=0.5, ge=0)
    seed: int | None = None
    #: Each job's delay is ``delay_s`` plus up to this much, so callbacks overtake each other.
    delay_jitter_s: float = Field(default=0.0, ge=0)
    #: Jobs whose callback is sent at once: it can arrive before the job id is recorded.
    early_rate: float = Field(default=0.0, ge=0, le=1)
    #: Jobs whose callback is delivered once more ``late_by_s`` later, after the run moved on.
    late_duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    late_by_s: float = Field(default=3.0, ge=0)
    #: Jobs that call back at all; the others are only found by polling ``GET /jobs/{id}``.
    callback_rate: float = Field(default=1.0, ge=0, le=1)


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    callback_url: HttpUrl = Field(alias="callbackUrl")
    input: dict[str, Any] = Field(default_factory=dict)


@dataclass
class ProviderStats:
    jobs: int = 0
    callbacks_sent: int = 0
    duplicates_sent: int = 0
    late_duplicates_sent: int = 0
    early_sent: int = 0
    failures_sent: int = 0
    delivery_errors: int = 0
    #: Jobs that never called back, and polls answered.
    silent_jobs: int = 0
    polls: int = 0
    job_ids: list[str] = field(default_factory=list)


class _ReceiverUnavailableError(Exception):
    """The receiver answered 5xx or 429: deliver again later."""


def provider_app(behaviour: ProviderBehaviour) -> Starlette:
    """The provider as an ASGI app."""
    rng = random.Random(behaviour.seed)
    stats = ProviderStats()
    pending: set[asyncio.Task[None]] = set()
    #: Each job's final payload and when it becomes the answer to a poll (loop time).
    results: dict[str, tuple[dict[str, Any], float]] = {}

    async def submit(request: Request) -> JSONResponse:
        try:
            job = _Job.model_validate(json.loads(await request.body()))
        except (ValueError, ValidationError) as exc:
            return JSONResponse({"error": f"bad job: {exc}"}, status_code=400)
        job_id = f"vid-{uuid.uuid4().hex[:12]}"
        stats.jobs += 1
        stats.job_ids.append(job_id)
        failed = rng.random() < behaviour.failure_rate
        copies = 2 if rng.random() < behaviour.duplicate_rate else 1
        # The erratic draws only when asked for, so a seed replays the same jobs as before.
        early = behaviour.early_rate > 0 and rng.random() < behaviour.early_rate
        jitter = rng.uniform(0, behaviour.delay_jitter_s) if behaviour.delay_jitter_s else 0.0
        delay = 0.0 if early else behaviour.delay_s + jitter
        late = behaviour.late_duplicate_rate > 0 and rng.random() < behaviour.late_duplicate_rate
        payload = _outcome(job_id, failed, behaviour.cost_usd)
        results[job_id] = (payload, asyncio.get_running_loop().time() + delay)
        url = str(job.callback_url)
        # Drawn only when asked for, so a seed replays the same jobs as before.
        silent = behaviour.callback_rate < 1 and rng.random() >= behaviour.callback_rate
        stats.silent_jobs += silent
        deliveries = (
            [] if silent else [_call_back(url, payload, copies, delay, behaviour.secret, stats)]
        )
        if late and not silent:
            late_delay = delay + behaviour.late_by_s
            deliveries.append(_call_back(url, payload, 1, late_delay, behaviour.secret, stats))
        stats.early_sent += early and not silent
        stats.late_duplicates_sent += late and not silent
        stats.duplicates_sent += 0 if silent else copies - 1
        stats.failures_sent += failed
        for delivery in deliveries:
            task = asyncio.create_task(delivery)
            pending.add(task)
            task.add_done_callback(pending.discard)
        return JSONResponse({"jobId": job_id}, status_code=202)

    async def job_state(request: Request) -> JSONResponse:
        job_id = request.path_params["job_id"]
        if job_id not in results:
            return JSONResponse({"error": f"no job {job_id}"}, status_code=404)
        stats.polls += 1
        payload, ready_at = results[job_id]
        if asyncio.get_running_loop().time() < ready_at:
            return JSONResponse({"jobId": job_id, "status": "running", "message": "rendering"})
        return JSONResponse(payload)

    async def show_stats(_: Request) -> JSONResponse:
        return JSONResponse({**asdict(stats), "pending": len(pending)})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/jobs", submit, methods=["POST"]),
            Route("/jobs/{job_id}", job_state, methods=["GET"]),
            Route("/stats", show_stats, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


def _outcome(job_id: str, failed: bool, cost_usd: float) -> dict[str, Any]:
    if failed:
        return {
            "jobId": job_id,
            "status": "failed",
            "error": {
                "code": "RENDER_FARM_BUSY",
                "message": "no render capacity, submit again",
                "retryable": True,
            },
        }
    return {"jobId": job_id, "status": "succeeded", "artifactIds": [job_id], "costUsd": cost_usd}


async def _call_back(
    url: str,
    payload: dict[str, Any],
    copies: int,
    delay_s: float,
    secret: str,
    stats: ProviderStats,
) -> None:
    await asyncio.sleep(delay_s)
    body = json.dumps(payload).encode()
    async with httpx.AsyncClient(timeout=10.0) as client:
        # Duplicates arrive concurrently, as a provider retrying on a slow answer sends them.
        results = await asyncio.gather(
            *(_deliver(client, url, body, secret) for _ in range(copies)),
            return_exceptions=True,
        )
    for result in results:
        if isinstance(result, BaseException):
            stats.delivery_errors += 1
            log.warning("callback for %s to %s not delivered: %r", payload["jobId"], url, result)
        else:
            stats.callbacks_sent += 1


async def _deliver(client: httpx.AsyncClient, url: str, body: bytes, secret: str) -> None:
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((httpx.TransportError, _ReceiverUnavailableError)),
        stop=stop_after_attempt(8),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    ):
        with attempt:
            headers = {"Content-Type": "application/json", **signed_headers(secret, body)}
            response = await client.post(url, content=body, headers=headers)
            if response.status_code >= 500 or response.status_code == 429:
                raise _ReceiverUnavailableError(f"receiver answered {response.status_code}")
            response.raise_for_status()


def poll_job(provider_url: str, job_id: str) -> WebhookOutcome:
    """Ask the provider for a job's state (a ``Poller`` for ``MpState.register_poller``)."""
    response = httpx.get(f"{provider_url.rstrip('/')}/jobs/{job_id}", timeout=10.0)
    response.raise_for_status()
    return default_adapter(response.json())


def submit_job(provider_url: str, callback_url: str, job_input: dict[str, Any]) -> str:
    """Submit a job to the provider; returns the job id a step hands to ``await_external``."""
    response = httpx.post(
        f"{provider_url.rstrip('/')}/jobs",
        json={"callbackUrl": callback_url, "input": job_input},
        timeout=10.0,
    )
    response.raise_for_status()
    return str(response.json()["jobId"])


@click.command()
@click.option("--host", envvar="PROVIDER_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="PROVIDER_PORT", default=8001, show_default=True, type=int)
@click.option("--delay", envvar="PROVIDER_DELAY_S", default=2.0, show_default=True, type=float)
@click.option("--duplicate-rate", envvar="PROVIDER_DUPLICATE_RATE", default=0.3, show_default=True)
@click.option("--failure-rate", envvar="PROVIDER_FAILURE_RATE", default=0.2, show_default=True)
@click.option("--seed", envvar="PROVIDER_SEED", type=int, default=None)
@click.option("--delay-jitter", envvar="PROVIDER_DELAY_JITTER_S", default=0.0, show_default=True)
@click.option("--early-rate", envvar="PROVIDER_EARLY_RATE", default=0.0, show_default=True)
@click.option(
    "--late-duplicate-rate", envvar="PROVIDER_LATE_DUPLICATE_RATE", default=0.0, show_default=True
)
@click.option("--late-by", envvar="PROVIDER_LATE_BY_S", default=3.0, show_default=True)
@click.option(
    "--callback-rate",
    envvar="PROVIDER_CALLBACK_RATE",
    default=1.0,
    show_default=True,
    help="Share of jobs that call back; the others are found by polling GET /jobs/{id}.",
)
def main(
    host: str,
    port: int,
    delay: float,
    duplicate_rate: float,
    failure_rate: float,
    seed: int | None,
    delay_jitter: float,
    early_rate: float,
    late_duplicate_rate: float,
    late_by: float,
    callback_rate: float,
) -> None:
    """Serve the simulated video provider; its secret is MPSTATE_WEBHOOK_SECRETS' "video"."""
    try:
        secret = Settings.from_env().secret_for("video")
    except LookupError as exc:  # no default secret: say what to set, exit 2
        raise click.UsageError(f"{exc} (e.g. MPSTATE_WEBHOOK_SECRETS=video=...)") from exc
    behaviour = ProviderBehaviour(
        secret=secret,
        delay_s=delay,
        duplicate_rate=duplicate_rate,
        failure_rate=failure_rate,
        seed=seed,
        delay_jitter_s=delay_jitter,
        early_rate=early_rate,
        late_duplicate_rate=late_duplicate_rate,
        late_by_s=late_by,
        callback_rate=callback_rate,
    )
    uvicorn.run(provider_app(behaviour), host=host, port=port, log_level="info")


if __name__ == "__main__":
    main()
