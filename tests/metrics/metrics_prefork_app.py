"""The Celery app a prefork worker subprocess runs for test_prefork_metrics.py, instrumented.

Started with ``PROMETHEUS_MULTIPROC_DIR`` in its environment, so each pool child writes its counts
to its own file there. Configured like tests/celery/prefork_app.py (``MPSTATE_PREFORK_*``); each
child executes at most two tasks, so children are replaced while the test runs (their counts must
survive them).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from mpstate import RedisPipelineStateStore
from mpstate.celery import MpState, PipelineTask
from mpstate.metrics import instrument

PREFIX = os.environ["MPSTATE_PREFORK_PREFIX"]

app = Celery(f"mpstate-metrics-{PREFIX}", broker=os.environ["MPSTATE_PREFORK_BROKER"])
app.conf.update(
    task_default_queue=os.environ["MPSTATE_PREFORK_QUEUE"],
    task_acks_late=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    worker_max_tasks_per_child=2,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"polling_interval": 0.2},
)
mp = MpState(
    app, RedisPipelineStateStore.from_url(os.environ["MPSTATE_PREFORK_STORE"], prefix=PREFIX)
)
instrument(mp)


@app.task(base=PipelineTask, bind=True, name="pm.prepare")
def prepare(self: Any) -> dict[str, Any]:
    time.sleep(0.2)  # long enough for both children to be busy
    return {"artifactIds": [], "costUsd": 0.01, "outputs": {"pid": os.getpid()}}


@app.task(base=PipelineTask, bind=True, name="pm.finish")
def finish(self: Any) -> dict[str, Any]:
    return {"artifactIds": [], "costUsd": 0.02, "outputs": {"pid": os.getpid()}}
