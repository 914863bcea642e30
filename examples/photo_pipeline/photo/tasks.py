"""The step tasks. Importing this module registers them on ``photo.app.app``; it starts nothing.

A step's inputs arrive as keyword arguments; what it returns (artifacts, cost, outputs) is
committed to the run by mpstate, which then publishes the next step.
"""

from __future__ import annotations

from typing import Any

from mpstate.celery import PipelineTask, StepResult
from photo import provider
from photo.app import app

__all__ = ["app", "generate", "upscale", "video"]


@app.task(base=PipelineTask, bind=True, name="photo.generate", max_retries=3)
def generate(self: PipelineTask, prompt: str) -> dict[str, Any]:
    self.progress(50, message="rendering")
    slug = "-".join(prompt.lower().split())
    return {"artifactIds": [f"img-{slug}"], "costUsd": 0.04, "outputs": {"prompt": prompt}}


@app.task(base=PipelineTask, bind=True, name="photo.upscale")
def upscale(self: PipelineTask) -> dict[str, Any]:
    source = self.artifacts["generate"][0]
    return {"artifactIds": [f"{source}-4k"], "costUsd": 0.02}


@app.task(base=PipelineTask, bind=True, name="photo.video")
def video(self: PipelineTask) -> StepResult:
    job_id = provider.submit(self.artifacts["upscale"][0])
    # Records the job on the step and suspends the run until the provider calls back.
    return self.await_external("video", job_id)
