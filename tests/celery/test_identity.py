"""Which run and step a task message belongs to: step tasks, and the tasks a step publishes."""

from __future__ import annotations

from typing import Any

import pytest
from celery import chain, group, signals
from celery_support import DEADLINE, Harness, assert_never, kinds, wait_for

from mpstate.celery import ROLE, RUN_ID, STEP_ID, PipelineTask
from mpstate.models import PipelineRunStatus

pytestmark = pytest.mark.parametrize("store_backend", ["redis", "cluster"], indirect=True)


def identity_seen(request: Any) -> dict[str, Any]:
    headers = request.headers or {}
    return {
        "headers": {key: headers.get(key) for key in (RUN_ID, STEP_ID, ROLE)},
        "attributes": {key: getattr(request, key, None) for key in (RUN_ID, STEP_ID, ROLE)},
    }


def test_tasks_a_step_publishes_in_a_chain_or_group_carry_its_ids_as_children(h: Harness) -> None:
    children: list[dict[str, Any]] = []

    @h.app.task(shared=False, bind=True, name="fan.child")
    def child(self: Any, label: str) -> str:
        children.append({"label": label, **identity_seen(self.request)})
        return label

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="fan.out")
    def fan_out(self: Any) -> dict[str, Any]:
        chain(child.si("chain-1"), child.si("chain-2"), child.si("chain-3")).apply_async()
        group(child.si("group-1"), child.si("group-2")).apply_async()
        # Stay running while the children run: a child mistaken for the step would log
        # step-started / step-completed for this step now.
        assert h.latch("children-done").wait(DEADLINE)
        return {"artifactIds": ["fan-1"]}

    h.start_worker(pool="threads", concurrency=4)
    run = h.mp.start_run("fan", [{"stepId": "fan", "operation": "fan.out"}])
    wait_for(lambda: len(h.finished_tasks("fan.child")) == 5, what="five children to finish")
    during = h.run(run.run_id)
    h.latch("children-done").set()
    run = h.wait_terminal(run.run_id)

    assert sorted(c["label"] for c in children) == [
        "chain-1",
        "chain-2",
        "chain-3",
        "group-1",
        "group-2",
    ]
    expected = {RUN_ID: run.run_id, STEP_ID: "fan", ROLE: "child"}
    for seen in children:
        assert seen["headers"] == expected, seen["label"]
        assert seen["attributes"] == expected, seen["label"]
    assert {f.state for f in h.finished_tasks("fan.child")} == {"SUCCESS"}
    assert kinds(during) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "fan"),
    ]
    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "fan"),
        ("step-completed", "fan"),
        ("run-completed", None),
    ]
    assert run.step("fan").artifact_ids == ["fan-1"]


def test_every_message_of_a_step_retries_included_carries_its_identity_but_the_body_gets_none(
    h: Harness,
) -> None:
    seen: list[dict[str, Any]] = []
    published: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def on_publish(body: Any = None, headers: Any = None, **_: Any) -> None:
        if headers and headers.get("task") == "id.step":
            published.append((dict(body[1]), {k: headers.get(k) for k in (RUN_ID, STEP_ID, ROLE)}))

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="id.step")
    def step(self: Any, **kwargs: Any) -> None:
        seen.append({"body_kwargs": dict(kwargs), "identity": (self.run_id, self.step_id)})
        if self.attempt == 0:
            raise self.retry(countdown=0.05)

    signals.before_task_publish.connect(on_publish, weak=False)
    try:
        h.start_worker()
        run = h.mp.start_run("id", [{"stepId": "only", "operation": "id.step", "inputs": {"n": 1}}])
        run = h.wait_terminal(run.run_id)
    finally:
        signals.before_task_publish.disconnect(on_publish)

    assert run.status is PipelineRunStatus.COMPLETED
    assert seen == [{"body_kwargs": {"n": 1}, "identity": (run.run_id, "only")}] * 2
    # Flower shows kwargs, not headers: each message, the retry's too, keeps the ids as kwargs.
    ids = {RUN_ID: run.run_id, STEP_ID: "only"}
    assert published == [({"n": 1, **ids}, {**ids, ROLE: "step"})] * 2


def test_a_task_published_outside_any_step_carries_no_identity_and_logs_nothing(
    h: Harness,
) -> None:
    seen: list[dict[str, Any]] = []

    @h.app.task(shared=False, bind=True, name="id.loose")
    def loose(self: Any) -> dict[str, Any]:
        seen.append(identity_seen(self.request))
        return {"artifactIds": ["x"]}

    h.start_worker()
    run = h.mp.start_run("id", [{"stepId": "only", "operation": "id.loose"}])
    h.wait_terminal(run.run_id)
    before = h.run(run.run_id)
    task = loose.delay()
    h.wait_finished(task.id)

    assert seen[-1]["headers"] == {RUN_ID: None, STEP_ID: None, ROLE: None}
    assert_never(lambda: h.run(run.run_id).events != before.events, 0.3, "a new event")
