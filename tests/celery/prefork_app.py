"""The Celery app a prefork worker subprocess runs for test_prefork.py.

Configured from the environment so each test gets its own broker queue and store prefix:

- ``MPSTATE_PREFORK_BROKER``: broker URL (the suite's Redis)
- ``MPSTATE_PREFORK_STORE``: store Redis URL
- ``MPSTATE_PREFORK_PREFIX``: store key prefix (also prefixes the crash markers and the
  broker's unacked-message records)
- ``MPSTATE_PREFORK_QUEUE``: the queue to use
- ``MPSTATE_PREFORK_REJECT``: "1" for ``task_reject_on_worker_lost=True``

Start it with ``celery -A prefork_app worker -P prefork -c 2 -Q <queue>`` from this directory.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import redis
from celery import Celery

from mpstate import RedisPipelineStateStore
from mpstate.celery import MpState, PipelineTask

BROKER = os.environ["MPSTATE_PREFORK_BROKER"]
STORE = os.environ["MPSTATE_PREFORK_STORE"]
PREFIX = os.environ["MPSTATE_PREFORK_PREFIX"]
QUEUE = os.environ["MPSTATE_PREFORK_QUEUE"]
REJECT = os.environ.get("MPSTATE_PREFORK_REJECT") == "1"

app = Celery(f"mpstate-prefork-{PREFIX}", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=REJECT,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": 3,
        "polling_interval": 0.2,
        # kombu's unacked-message records are one hash per Redis database by default, and this
        # worker redelivers any message in it unacked for 3 s: keep its own, so it never
        # redelivers another test's held message (xdist workers on a shared server).
        "unacked_key": f"{PREFIX}:unacked",
        "unacked_index_key": f"{PREFIX}:unacked_index",
        "unacked_mutex_key": f"{PREFIX}:unacked_mutex",
    },
)
mp = MpState(app, RedisPipelineStateStore.from_url(STORE, prefix=PREFIX))
markers = redis.Redis.from_url(STORE)


def crash_marker(task_id: str) -> str:
    """Set (NX) by the first delivery of a task before it kills its process."""
    return f"{PREFIX}:crashed:{task_id}"


@app.task(base=PipelineTask, bind=True, name="prefork.prepare")
def prepare(self: Any) -> dict[str, Any]:
    return {"artifactIds": ["prep-1"], "costUsd": 0.01}


@app.task(base=PipelineTask, bind=True, name="prefork.crash_once")
def crash_once(self: Any) -> dict[str, Any]:
    # Only the first delivery dies: a redelivered message (same task id) finds the marker.
    if markers.set(crash_marker(self.request.id), os.getpid(), nx=True):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"artifactIds": ["survived-1"], "costUsd": 0.02}


@app.task(base=PipelineTask, bind=True, name="prefork.finish")
def finish(self: Any) -> dict[str, Any]:
    return {"artifactIds": [f"{a}-done" for a in self.artifacts["crash"]], "costUsd": 0.03}
