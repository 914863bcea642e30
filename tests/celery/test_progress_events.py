"""Progress reaches Celery's event stream as ``task-progress`` (what Flower shows as PROGRESS)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from celery_support import Harness, events_of, wait_for

from mpstate.celery import PipelineTask

pytestmark = pytest.mark.parametrize("store_backend", ["redis", "cluster"], indirect=True)


def test_progress_is_logged_and_sent_as_a_celery_task_progress_event(h: Harness) -> None:
    received: list[dict[str, Any]] = []
    receivers: list[Any] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "task-progress":
            received.append(event)
            receivers[0].should_stop = True

    def capture() -> None:
        with h.app.connection_for_read() as connection:
            receivers.append(h.app.events.Receiver(connection, handlers={"*": on_event}))
            receivers[0].capture(limit=None, timeout=20, wakeup=False)

    listener = threading.Thread(target=capture, daemon=True)
    listener.start()
    # Events travel by Redis pub/sub (a pattern subscription): publish nothing before the
    # receiver has subscribed, or the event is gone.
    broker = redis.Redis.from_url(h.broker_url)
    wait_for(lambda: broker.execute_command("PUBSUB", "NUMPAT") > 0, what="the subscription")

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="progress.step")
    def step(self: Any) -> dict[str, Any]:
        self.progress(40, eta_ms=1200, message="rendering", cost_usd_accrued=0.01)
        return {"artifactIds": ["p-1"]}

    h.start_worker()
    run = h.mp.start_run("progress", [{"stepId": "s", "operation": "progress.step"}])
    run = h.wait_terminal(run.run_id)
    listener.join(20)

    [logged] = events_of(run, "step-progress")
    assert (logged.pct, logged.eta_ms, logged.message) == (40, 1200, "rendering")
    assert logged.meta is not None and logged.meta["taskId"] == run.steps[0].task_id
    [sent] = received
    assert sent["uuid"] == run.steps[0].task_id
    assert (sent["pct"], sent["run_id"], sent["step_id"]) == (40, run.run_id, "s")
