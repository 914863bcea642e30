"""Helpers shared by the CLI tests: building runs through real commits, and running the
installed console script."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from click.testing import Result

from mpstate import PipelineRun, RedisPipelineStateStore, RunCompleted, RunStarted
from mpstate.celery.identity import RUN_ID

#: The queue a bare app on ``--broker-url`` publishes to (Celery's default).
DEFAULT_QUEUE = "celery"

#: Environment the CLI reads; cleared so an operator's own settings never reach a test.
CLI_ENV = (
    "MPSTATE_REDIS_URL",
    "MPSTATE_PREFIX",
    "MPSTATE_FLOWER_URL",
    "MPSTATE_BROKER_URL",
    "MPSTATE_CELERY_APP",
)
#: Environment that would change rich's layout or colours.
LAYOUT_ENV = ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")

#: ``run_cli(*args, json=False, env=None)`` (the fixture).
RunCli = Callable[..., Result]


def script_env() -> dict[str, str]:
    """The environment for a console-script subprocess, without the operator's CLI settings."""
    return {k: v for k, v in os.environ.items() if k not in (*CLI_ENV, *LAYOUT_ENV)}


def run_script(
    script: Path, redis_url: str, prefix: str, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), "--redis-url", redis_url, "--prefix", prefix, *args],
        capture_output=True,
        check=False,
        text=True,
        env=script_env(),
        timeout=timeout,
    )


def make_run(
    store: RedisPipelineStateStore,
    run_id: str,
    *,
    tenant_id: str | None = "acme",
    status: str = "pending",
    steps: Sequence[Mapping[str, Any]] = (),
    created_at: datetime | None = None,
    **fields: Any,
) -> PipelineRun:
    """A run brought to ``status`` through real commits and events (pending, running,
    completed or cancelled)."""
    document: dict[str, Any] = {
        "runId": run_id,
        "pipelineId": "product-photo",
        "tenantId": tenant_id,
        "steps": list(steps),
        **fields,
    }
    if created_at is not None:
        document["createdAt"] = created_at
    run = store.create(document)
    if status in ("running", "completed"):
        run = store.commit(run_id, {"status": "running"}, [RunStarted(run_id=run_id)]).run
    if status == "completed":
        run = store.commit(
            run_id,
            {"status": "completed", "completedAt": run.updated_at},
            [RunCompleted(run_id=run_id, total_cost_usd=run.cost_usd)],
        ).run
    if status == "cancelled":
        run = store.cancel(run_id, "test cancelled it")
    return store.require(run_id, include_events=False)


def messages(client: redis.Redis, queue: str, run_id: str) -> list[dict[str, Any]]:
    """The kombu messages waiting in ``queue`` for ``run_id``, oldest first."""
    found = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # LPUSHed: the oldest is last
        message = json.loads(raw)
        if message["headers"].get(RUN_ID) == run_id:
            args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            message["args"], message["kwargs"] = args, kwargs
            found.append(message)
    return found
