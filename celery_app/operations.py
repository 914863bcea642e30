"""The demo's operations, each a step task (``PipelineTask``): what a media pipeline runs.

- ``image.generate``: renders from a prompt; a prompt seen before is a cache hit (step-cached).
- ``audio.voiceover``: speaks a script, in parallel with the image branch.
- ``image.upscale``: reports progress while it works (step-progress, Flower shows PROGRESS).
- ``image.quality_gate``: scores the image and logs step-gated; a low score fails the run.
- ``video.generate``: joins both branches: submits the image and the voice-over to the video
  provider and waits for its webhook. Its cost estimate ($0.50) counts against a run's budget
  before it starts.

Work is simulated with short sleeps; costs are what a real provider would bill.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import httpx
from celery import Celery

from celery_app.cache import ArtifactCache
from celery_app.provider import submit_job
from mpstate.celery import PipelineTask, StepResult

__all__ = ["Services", "register_operations"]

#: What a video job is expected to cost: the run's budget reserves it before the step starts.
VIDEO_ESTIMATE_USD = 0.5

#: Seconds each simulated operation takes.
WORK_S = {"generate": 0.4, "upscale_tick": 0.15, "voiceover_tick": 0.2}


@dataclass(frozen=True)
class Services:
    """What the operations talk to, fixed when the app is built."""

    cache: ArtifactCache
    provider_url: str
    receiver_url: str


def quality_score(artifact_id: str) -> float:
    """A deterministic stand-in for an image-quality model: 0.0 to 1.0 from the artifact id."""
    digest = hashlib.sha256(artifact_id.encode()).digest()
    return 0.5 + digest[0] / 510  # 0.5 .. 1.0: most images pass a 0.6 threshold


def register_operations(app: Celery, services: Services) -> None:
    """Define the demo's step tasks on ``app``."""

    @app.task(base=PipelineTask, bind=True, shared=False, name="image.generate", max_retries=3)  # type: ignore[untyped-decorator]
    def generate(self: PipelineTask, prompt: str, size: str = "1024x1024") -> Any:
        cache_key = "gen-" + hashlib.sha256(f"{prompt}|{size}".encode()).hexdigest()[:16]
        cached = services.cache.get(cache_key)
        if cached is not None:
            return self.cached(cache_key, cached)
        self.progress(0, message="rendering")
        time.sleep(WORK_S["generate"])
        artifact_id = f"img-{cache_key[4:16]}"
        services.cache.put(cache_key, [artifact_id])
        return StepResult(artifact_ids=[artifact_id], cost_usd=0.04, outputs={"size": size})

    @app.task(base=PipelineTask, bind=True, shared=False, name="audio.voiceover", max_retries=3)  # type: ignore[untyped-decorator]
    def voiceover(self: PipelineTask, script: str, voice: str = "narrator") -> Any:
        for pct in (25, 50, 75, 100):
            time.sleep(WORK_S["voiceover_tick"])
            self.progress(pct, message=f"speaking ({voice})")
        digest = hashlib.sha256(f"{voice}|{script}".encode()).hexdigest()[:12]
        return StepResult(
            artifact_ids=[f"voice-{digest}"], cost_usd=0.01, outputs={"words": len(script.split())}
        )

    @app.task(base=PipelineTask, bind=True, shared=False, name="image.upscale", max_retries=3)  # type: ignore[untyped-decorator]
    def upscale(self: PipelineTask, factor: int = 2) -> Any:
        source = self.artifacts["generate"][0]
        for pct in (20, 40, 60, 80, 100):
            time.sleep(WORK_S["upscale_tick"])
            self.progress(pct, message=f"upscaling {factor}x", cost_usd_accrued=0.002 * pct / 10)
        return StepResult(artifact_ids=[f"{source}-x{factor}"], cost_usd=0.02)

    @app.task(base=PipelineTask, bind=True, shared=False, name="image.quality_gate", max_retries=0)  # type: ignore[untyped-decorator]
    def quality_gate(self: PipelineTask, min_quality: float = 0.6) -> Any:
        image = self.artifacts["upscale"][0]
        score = quality_score(image)
        self.gate("quality", verdict=f"score {score:.2f}", passed=score >= min_quality)
        return StepResult(artifact_ids=[image], outputs={"quality": round(score, 3)})

    @app.task(  # type: ignore[untyped-decorator]
        base=PipelineTask,
        bind=True,
        shared=False,
        name="video.generate",
        max_retries=3,
        estimated_cost_usd=VIDEO_ESTIMATE_USD,
    )
    def generate_video(self: PipelineTask, seconds: int = 4) -> Any:
        image = self.artifacts["quality"][0]
        voice = self.artifacts["voiceover"][0]
        callback = f"{services.receiver_url.rstrip('/')}/webhooks/video"
        try:
            job_id = submit_job(
                services.provider_url,
                callback,
                {"image": image, "audio": voice, "seconds": seconds},
            )
        except httpx.HTTPError as exc:
            raise self.retry(exc=exc, countdown=1) from exc
        return self.await_external("video", job_id)
