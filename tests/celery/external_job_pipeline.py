"""A two-step pipeline whose first step waits for a provider's job: ``ext.submit`` -> ``ext.use``.

``ext.submit`` awaits job ``<job_id>-<attempt>`` of its provider (attempt 0, 1, ... across
re-runs), with the ``timeout_s`` it is given; ``ext.use`` records what it was handed. Shared by
the deadline and polling tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.contrib.testing.worker import start_worker
from celery_support import Harness, let_workers_start, wait_for

from mpstate.celery import PipelineTask
from mpstate.models import ExternalJob, PipelineRun


def define_external_tasks(h: Harness, used: list[dict[str, Any]]) -> None:
    @h.app.task(base=PipelineTask, bind=True, shared=False, name="ext.submit")
    def submit(self: Any, provider: str, job_id: str, timeout_s: float | None = None) -> Any:
        return self.await_external(provider, f"{job_id}-{self.attempt}", timeout_s=timeout_s)

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="ext.use")
    def use(self: Any) -> dict[str, Any]:
        used.append({"artifacts": self.artifacts, "outputs": self.outputs})
        return {"artifactIds": ["used-1"]}


def start_external_run(
    h: Harness,
    provider: str,
    job_id: str,
    *,
    timeout_s: float | None = None,
    max_retries: int | None = None,
) -> PipelineRun:
    inputs: dict[str, Any] = {"provider": provider, "job_id": job_id}
    if timeout_s is not None:
        inputs["timeout_s"] = timeout_s
    return h.mp.start_run(
        "external",
        [
            {
                "stepId": "submit",
                "operation": "ext.submit",
                "inputs": inputs,
                "maxRetries": max_retries,
            },
            {"stepId": "use", "operation": "ext.use"},
        ],
    )


def awaited(run: PipelineRun) -> ExternalJob | None:
    return run.step("submit").awaited_job


def wait_awaiting(h: Harness, run_id: str, job_id: str) -> PipelineRun:
    """The run once its submit step waits for exactly ``job_id``."""

    def found() -> PipelineRun | None:
        run = h.run(run_id)
        job = awaited(run)
        return run if job is not None and job.job_id == job_id else None

    return wait_for(found, what=f"run {run_id} to await job {job_id}")


@contextmanager
def worker_until_exit(h: Harness, concurrency: int = 1) -> Iterator[None]:
    """A real worker on the harness's queue that stops when the block ends (unlike
    ``h.start_worker``, which runs until the test ends)."""
    try:
        with start_worker(
            h.app,
            pool="threads",
            concurrency=concurrency,
            perform_ping_check=False,
            shutdown_timeout=20,
            hostname=f"{h.app.main}-early@localhost",
            queues=[h.queue],
        ):
            yield
    finally:
        let_workers_start()
