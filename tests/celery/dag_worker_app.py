"""The Celery app a prefork worker subprocess runs for test_dag.py: the diamond a -> (b, c) -> d,
whose pool child is SIGKILLed between committing the completion that makes d ready and
publishing d.

The kill sits in the lifecycle's ``enqueue``, which ``StepLifecycle.apply`` calls only after the
commit succeeded: the first time the child is about to publish step d it sets a marker and kills
itself, so the store holds d pending and ready (with the task id the commit recorded) and no
message for d exists anywhere. Step c waits for b's completion first, so it is c's completion
that makes d ready. Each body counts its executions in ``<prefix>:dag:body:<step>``, and each
delivery of a step's task (its body run or not) in ``<prefix>:dag:delivery:<step>``.

Configured from the environment (each test has its own broker queue and store prefix):

- ``MPSTATE_DAG_BROKER``: broker URL (the suite's single Redis; the markers live there too)
- ``MPSTATE_DAG_STORE``: store URL (``redis://`` or ``redis+cluster://``)
- ``MPSTATE_DAG_PREFIX``: store key prefix (also prefixes the markers)
- ``MPSTATE_DAG_QUEUE``: the queue to consume

Start it with ``celery -A dag_worker_app worker -P prefork -c 2 -Q <queue>`` from this directory.
The broker keeps kombu's default visibility timeout: the killed child's message comes back at once
through ``task_reject_on_worker_lost``, and a short timeout would restore other tests' messages
from the shared ``unacked`` hash.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis
from celery import Celery, signals

from mpstate import RedisPipelineStateStore
from mpstate.celery import MpState, PipelineTask
from mpstate.models import DONE_STEP_STATUSES, PipelineRun, StepState

BROKER = os.environ["MPSTATE_DAG_BROKER"]
STORE = os.environ["MPSTATE_DAG_STORE"]
PREFIX = os.environ["MPSTATE_DAG_PREFIX"]
QUEUE = os.environ["MPSTATE_DAG_QUEUE"]

app = Celery(f"mpstate-dag-{PREFIX}", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"polling_interval": 0.2},
)
mp = MpState(app, RedisPipelineStateStore.from_url(STORE, prefix=PREFIX))
markers = redis.Redis.from_url(BROKER)


def marker(name: str) -> str:
    return f"{PREFIX}:dag:{name}"


_publish = mp.lifecycle.enqueue


def publish_or_die(run: PipelineRun, step: StepState, task_id: str | None) -> None:
    """The lifecycle's enqueue: the first publish of d kills this process instead (once)."""
    if step.step_id == "d" and markers.set(marker("killed"), task_id or "", nx=True, ex=300):
        os.kill(os.getpid(), signal.SIGKILL)
    _publish(run, step, task_id)


mp.lifecycle.enqueue = publish_or_die


def count(name: str) -> None:
    markers.incr(marker(name))
    markers.expire(marker(name), 300)


@signals.task_prerun.connect
def count_delivery(sender: Any = None, **_: Any) -> None:
    """Count each delivery of a step's task (``delivery:<step>``), body run or not."""
    name = getattr(sender, "name", "")
    if name.startswith("dagk."):
        count(f"delivery:{name.removeprefix('dagk.')}")


@app.task(base=PipelineTask, bind=True, name="dagk.a")
def a(self: Any) -> dict[str, Any]:
    count("body:a")
    return {"artifactIds": ["a-1"], "costUsd": 0.01}


@app.task(base=PipelineTask, bind=True, name="dagk.b")
def b(self: Any) -> dict[str, Any]:
    count("body:b")
    return {"artifactIds": ["b-1"], "costUsd": 0.02}


@app.task(base=PipelineTask, bind=True, name="dagk.c")
def c(self: Any) -> dict[str, Any]:
    count("body:c")
    deadline = time.monotonic() + 20
    while mp.store.require(self.run_id, include_events=False).step("b").status not in (
        DONE_STEP_STATUSES
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("b did not complete")
        time.sleep(0.02)
    return {"artifactIds": ["c-1"], "costUsd": 0.03}


@app.task(base=PipelineTask, bind=True, name="dagk.d")
def d(self: Any) -> dict[str, Any]:
    count("body:d")
    return {"artifactIds": ["d-" + "+".join(sorted(self.artifacts))], "costUsd": 0.04}
