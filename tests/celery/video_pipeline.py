"""A two-step pipeline whose first step waits for a provider's webhook: render -> publish.

``video.render`` records job ``job_id`` with the provider (``job_id-1``, ``job_id-2``, ... when
the step runs again after a retryable provider failure) and suspends the run; ``video.publish``
completes it. Shared by the webhook tests in tests/celery and the receiver tests in
tests/webhooks.
"""

from __future__ import annotations

from typing import Any

from celery_support import DEADLINE, Harness

from mpstate.celery import PipelineTask
from mpstate.models import PipelineRun

#: The log of a run resumed once by its provider's success callback.
RESUMED_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "render"),
    ("step-waiting", "render"),
    ("run-suspended", None),
    ("run-resumed", None),
    ("step-completed", "render"),
    ("step-started", "publish"),
    ("step-completed", "publish"),
    ("run-completed", None),
]


def define_video_tasks(
    h: Harness, seen: list[dict[str, Any]] | None = None, provider: str = "vidgen"
) -> None:
    """Register the two steps on ``h.app``; each execution is appended to ``seen``."""
    seen = [] if seen is None else seen

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="video.render")
    def render(self: Any, job_id: str, hold: bool = False) -> Any:
        if hold:  # do not record the job before the test says so
            assert h.latch("render").wait(DEADLINE)
        # A step re-run after a retryable provider failure submits a new job.
        attempt = sum(1 for s in seen if s.get("step") == "render")
        seen.append({"step": "render", "attempt": self.attempt})
        return self.await_external(provider, job_id if attempt == 0 else f"{job_id}-{attempt}")

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="video.publish")
    def publish(self: Any) -> dict[str, Any]:
        seen.append({"step": "publish", "artifacts": self.artifacts})
        return {"artifactIds": ["post-1"], "costUsd": 0.01}


def start_video_run(
    h: Harness, job_id: str, hold: bool = False, max_retries: int | None = None
) -> PipelineRun:
    return h.mp.start_run(
        "video",
        [
            {
                "stepId": "render",
                "operation": "video.render",
                "inputs": {"job_id": job_id, "hold": hold},
                "maxRetries": max_retries,
            },
            {"stepId": "publish", "operation": "video.publish"},
        ],
    )
