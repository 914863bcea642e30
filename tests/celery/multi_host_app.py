"""The Celery app of test_multi_host.py: step tasks routed to three queues, one worker per queue.

The same ``build_app`` serves the test process (which starts and cancels runs, and delivers
provider callbacks) and each ``celery worker`` subprocess, so every process routes by the same
``task_routes``:

- ``<prefix>.gpu``, consumed by ``gen@hostA``: ``mh.generate``, ``mh.publish``;
- ``<prefix>.cpu``, consumed by ``up@hostB``: ``mh.upscale``, ``mh.hold``, ``mh.submit_video``;
- ``<prefix>.webhooks``, consumed by ``hook@hostC``: ``mpstate.resolve_webhook``.

The default queue (``<prefix>.unrouted``) has no consumer: a step published without its route
stays there, visibly, instead of running on the wrong worker.

What the processes did is recorded outside mpstate's store, in Redis lists under the prefix:

- ``<prefix>:trace:<run id>``: JSON entries written by each step body itself when it starts
  (and by ``mh.hold`` when it is released): ``self.request.hostname``, its own pid and its
  parent's pid (the worker's main process, which the test started and knows);
- ``<prefix>:celery``: Celery's own view, from its signals: ``task_received`` and
  ``task_revoked`` in the worker's main process, ``task_postrun`` in the pool child.

A worker runs it with ``celery -A multi_host_app worker ...`` from this directory and the
environment ``MPSTATE_MH_BROKER``, ``MPSTATE_MH_STORE`` and ``MPSTATE_MH_PREFIX``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery, signals

from mpstate import RedisPipelineStateStore
from mpstate.celery import RESOLVE_WEBHOOK, MpState, PipelineTask
from mpstate.celery.identity import identity_of

#: How long a held step waits for its release before giving up, in seconds.
HOLD_TIMEOUT_S = 20
PROVIDER = "vidgen"


def queue_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}"


def trace_key(prefix: str, run_id: str) -> str:
    return f"{prefix}:trace:{run_id}"


def release_key(prefix: str, run_id: str) -> str:
    return f"{prefix}:release:{run_id}"


def celery_log_key(prefix: str) -> str:
    return f"{prefix}:celery"


def routes(prefix: str) -> dict[str, dict[str, str]]:
    gpu, cpu = queue_name(prefix, "gpu"), queue_name(prefix, "cpu")
    return {
        "mh.generate": {"queue": gpu},
        "mh.publish": {"queue": gpu},
        "mh.upscale": {"queue": cpu},
        "mh.hold": {"queue": cpu},
        "mh.submit_video": {"queue": cpu},
        RESOLVE_WEBHOOK: {"queue": queue_name(prefix, "webhooks")},
    }


def build_app(broker: str, store: str, prefix: str, *, record: bool = False) -> MpState:
    """The app with its tasks and its MpState; ``record``: log Celery's signals (workers)."""
    app = Celery(f"mpstate-multihost-{prefix}", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue_name(prefix, "unrouted"),
        task_routes=routes(prefix),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"polling_interval": 0.2},
        mpstate_webhook_retry_interval_s=0.2,
    )
    mp = MpState(app, RedisPipelineStateStore.from_url(store, prefix=prefix))
    notes = redis.Redis.from_url(store)

    def trace(task: Any, what: str) -> str:
        """Record, from inside the body, which worker process runs this step."""
        host = str(task.request.hostname)
        entry = {"step": task.step_id, "what": what, "host": host, "pid": os.getpid()}
        notes.rpush(trace_key(prefix, task.run_id), json.dumps({**entry, "ppid": os.getppid()}))
        return host

    @app.task(base=PipelineTask, bind=True, shared=False, name="mh.generate")
    def generate(self: Any, prompt: str) -> dict[str, Any]:
        host = trace(self, "started")
        return {"artifactIds": [f"img({prompt})@{host}"], "costUsd": 0.04}

    @app.task(base=PipelineTask, bind=True, shared=False, name="mh.upscale")
    def upscale(self: Any) -> dict[str, Any]:
        host = trace(self, "started")
        (source,) = self.artifacts["generate"]
        return {"artifactIds": [f"4k({source})@{host}"], "costUsd": 0.02}

    @app.task(base=PipelineTask, bind=True, shared=False, name="mh.hold")
    def hold(self: Any) -> dict[str, Any]:
        """Runs until the test pushes to the run's release key (or is terminated)."""
        host = trace(self, "started")
        released = notes.blpop([release_key(prefix, self.run_id)], timeout=HOLD_TIMEOUT_S)
        trace(self, "released" if released else "timed-out")
        return {"artifactIds": [f"held@{host}"], "costUsd": 0.02}

    @app.task(base=PipelineTask, bind=True, shared=False, name="mh.submit_video")
    def submit_video(self: Any, job_id: str) -> Any:
        trace(self, "started")
        return self.await_external(PROVIDER, job_id)

    @app.task(base=PipelineTask, bind=True, shared=False, name="mh.publish")
    def publish(self: Any) -> dict[str, Any]:
        host = trace(self, "started")
        earlier = [artifact for ids in self.artifacts.values() for artifact in ids]
        return {"artifactIds": [f"post({'+'.join(earlier)})@{host}"], "costUsd": 0.01}

    if record:
        _record_celery_signals(app, notes, celery_log_key(prefix))
    return mp


def _record_celery_signals(app: Celery, notes: redis.Redis, key: str) -> None:
    """Append what Celery itself reports about this worker's tasks to the list ``key``."""
    node: dict[str, str] = {}

    def note(**entry: Any) -> None:
        notes.rpush(key, json.dumps(entry))

    def run_id_of(request: Any) -> str | None:
        identity = identity_of(request)
        return identity.run_id if identity is not None else None

    @signals.celeryd_after_setup.connect(weak=False)
    def after_setup(sender: str, **_: Any) -> None:
        node["name"] = sender  # the -n nodename, in the main process (children inherit it)

    @signals.task_received.connect(weak=False)
    def received(request: Any = None, **_: Any) -> None:
        note(
            signal="task_received",
            host=node.get("name"),
            pid=os.getpid(),
            name=request.name,
            id=request.id,
            run=run_id_of(request),
        )

    @signals.task_postrun.connect(weak=False)
    def postrun(sender: Any = None, task_id: str = "", state: str = "", **_: Any) -> None:
        if sender is None or sender.app is not app:
            return
        note(
            signal="task_postrun",
            host=sender.request.hostname,
            pid=os.getpid(),
            name=sender.name,
            id=task_id,
            run=run_id_of(sender.request),
            state=state,
        )

    @signals.task_revoked.connect(weak=False)
    def revoked(
        sender: Any = None, request: Any = None, terminated: bool = False, **_: Any
    ) -> None:
        note(
            signal="task_revoked",
            host=node.get("name"),
            pid=os.getpid(),
            name=getattr(sender, "name", None),
            id=getattr(request, "id", None),
            run=run_id_of(request),
            terminated=bool(terminated),
        )


if os.environ.get("MPSTATE_MH_PREFIX"):  # a worker subprocess: `celery -A multi_host_app`
    mp = build_app(
        os.environ["MPSTATE_MH_BROKER"],
        os.environ["MPSTATE_MH_STORE"],
        os.environ["MPSTATE_MH_PREFIX"],
        record=True,
    )
    app = mp.app
