"""PipelineTask on a real worker and a real broker: a whole pipeline, failures, gates, retries.

Every run's log is checked kind by kind and seq by seq, as the store holds it after the worker
is done with it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery import signals
from celery_support import (
    DEADLINE,
    Harness,
    HarnessFactory,
    assert_never,
    assert_seqs_contiguous,
    events_of,
    kinds,
    step_events,
    wait_for,
)

from mpstate.celery import RUN_ID, STEP_ID, PipelineTask, StepIdentity
from mpstate.models import PipelineRunStatus, StepStatus

pytestmark = pytest.mark.parametrize("store_backend", ["redis", "cluster"], indirect=True)


class TransientError(Exception):
    """A failure worth retrying."""


Seen = dict[str, list[dict[str, Any]]]


def define_media_tasks(app: Any, seen: Seen) -> None:
    """The step tasks of the media pipeline; each records what its body saw into ``seen``."""

    def record(step: str, task: Any, kwargs: dict[str, Any]) -> None:
        seen.setdefault(step, []).append(
            {"attempt": task.attempt, "kwargs": dict(kwargs), "artifacts": task.artifacts}
        )

    @app.task(base=PipelineTask, bind=True, shared=False, name="media.generate")
    def generate(self: Any, **kwargs: Any) -> dict[str, Any]:
        record("generate", self, kwargs)
        self.progress(50, message="half way")
        return {"artifactIds": ["img-1", "img-2"], "costUsd": 0.04}

    @app.task(base=PipelineTask, bind=True, shared=False, name="media.upscale")
    def upscale(self: Any, **kwargs: Any) -> dict[str, Any]:
        record("upscale", self, kwargs)
        if self.attempt == 0:
            raise self.retry(exc=TransientError("gpu busy"), countdown=0.2)
        return {"artifactIds": [f"{a}-up" for a in self.artifacts["generate"]], "costUsd": 0.02}

    @app.task(base=PipelineTask, bind=True, shared=False, name="media.describe")
    def describe(self: Any, **kwargs: Any) -> Any:
        record("describe", self, kwargs)
        return self.cached("describe:img-1", ["caption-1"])

    @app.task(base=PipelineTask, bind=True, shared=False, name="media.review")
    def review(self: Any, approve: bool, **kwargs: Any) -> dict[str, Any]:
        record("review", self, kwargs)
        self.gate("quality", "sharp" if approve else "blurry", passed=approve)
        seen.setdefault("review-after-gate", []).append({})
        return {"artifactIds": ["review-1"], "costUsd": 0.005}

    @app.task(base=PipelineTask, bind=True, shared=False, name="media.render")
    def render(self: Any, job_id: str, **kwargs: Any) -> Any:
        record("render", self, kwargs)
        return self.await_external("vidgen", job_id)

    @app.task(shared=False, name="media.publish")
    def publish(**kwargs: Any) -> dict[str, Any]:
        seen.setdefault("publish", []).append({"kwargs": dict(kwargs)})
        return {"artifactIds": ["post-1"], "costUsd": 0.01}

    @app.task(base=PipelineTask, bind=True, shared=False, name="media.broken")
    def broken(self: Any, **kwargs: Any) -> dict[str, Any]:
        record("broken", self, kwargs)
        raise ValueError("the prompt is not allowed")


def media_steps(job_id: str, approve: bool = True) -> list[dict[str, Any]]:
    return [
        {"stepId": "generate", "operation": "media.generate", "inputs": {"prompt": "a red bike"}},
        {"stepId": "upscale", "operation": "media.upscale", "inputs": {"factor": 2}},
        {"stepId": "describe", "operation": "media.describe"},
        {"stepId": "review", "operation": "media.review", "inputs": {"approve": approve}},
        {"stepId": "render", "operation": "media.render", "inputs": {"job_id": job_id}},
        {"stepId": "publish", "operation": "media.publish", "inputs": {"channel": "web"}},
    ]


MEDIA_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "generate"),
    ("step-progress", "generate"),
    ("step-completed", "generate"),
    ("step-started", "upscale"),
    ("step-failed", "upscale"),
    ("step-started", "upscale"),
    ("step-completed", "upscale"),
    ("step-started", "describe"),
    ("step-cached", "describe"),
    ("step-started", "review"),
    ("step-gated", "review"),
    ("step-completed", "review"),
    ("step-started", "render"),
    ("step-waiting", "render"),
    ("run-suspended", None),
    ("run-resumed", None),
    ("step-completed", "render"),
    ("step-started", "publish"),
    ("step-completed", "publish"),
    ("run-completed", None),
]

BACKENDS = [
    pytest.param("redis", "solo", id="redis-solo"),
    pytest.param("redis", "threads", id="redis-threads"),
    pytest.param("rabbitmq", "solo", id="rabbitmq-solo"),
]


@pytest.mark.parametrize(("broker", "pool"), BACKENDS)
def test_a_pipeline_runs_every_step_once_and_logs_each_transition_in_order(
    make_harness: HarnessFactory, broker: str, pool: str
) -> None:
    h = make_harness(broker=broker)
    seen: Seen = {}
    define_media_tasks(h.app, seen)
    h.start_worker(pool=pool, concurrency=4 if pool == "threads" else 1)
    job_id = f"job-{uuid.uuid4().hex[:8]}"

    run = h.mp.start_run("media", media_steps(job_id), tenant_id="acme", inputs={"locale": "en"})
    h.wait_status(run.run_id, "suspended")
    webhook = h.mp.resolve_webhook.delay(
        "vidgen", job_id, {"status": "succeeded", "artifactIds": ["vid-1"], "costUsd": 0.5}
    )
    run = h.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert kinds(run) == MEDIA_LOG
    assert_seqs_contiguous(run)
    assert [e.attempt for e in events_of(run, "step-started")] == [0, 0, 1, 0, 0, 0, 0]
    (failed,) = events_of(run, "step-failed")
    assert failed.retryable is True
    assert failed.code == "TransientError"
    (progress,) = events_of(run, "step-progress")
    assert (progress.pct, progress.message) == (50, "half way")
    (cached,) = events_of(run, "step-cached")
    assert (cached.cache_key, cached.artifact_ids) == ("describe:img-1", ["caption-1"])
    (gated,) = events_of(run, "step-gated")
    assert (gated.gate_type, gated.verdict) == ("quality", "sharp")

    # Every step event names the Celery task that produced it: the step's own task (whose id the
    # step records), or for the webhook-completed step, the step's or the webhook's task.
    for step in run.steps:
        assert step.task_id, step.step_id
        for event in step_events(run, step.step_id):
            assert event.meta is not None, (event.kind, step.step_id)
            if event.kind == "step-completed" and step.step_id == "render":
                assert event.meta.get("taskId") in {step.task_id, webhook.id}
            else:
                assert event.meta.get("taskId") == step.task_id, (event.kind, step.step_id)
    assert len({step.task_id for step in run.steps}) == len(run.steps)
    assert events_of(run, "run-suspended")[0].meta["taskId"] == run.step("render").task_id

    costs = {"generate": 0.04, "upscale": 0.02, "describe": 0.0, "review": 0.005}
    costs |= {"render": 0.5, "publish": 0.01}
    assert {s.step_id: s.cost_usd for s in run.steps} == pytest.approx(costs)
    (completed,) = events_of(run, "run-completed")
    assert completed.total_cost_usd == pytest.approx(sum(costs.values()))
    assert run.cost_usd == pytest.approx(sum(costs.values()))
    assert {e.step_id: e.cost_usd for e in events_of(run, "step-completed")} == pytest.approx(
        {k: v for k, v in costs.items() if k != "describe"}
    )

    assert [(s.step_id, s.status, s.attempts) for s in run.steps] == [
        ("generate", StepStatus.COMPLETED, 1),
        ("upscale", StepStatus.COMPLETED, 2),
        ("describe", StepStatus.CACHED, 1),
        ("review", StepStatus.COMPLETED, 1),
        ("render", StepStatus.COMPLETED, 1),
        ("publish", StepStatus.COMPLETED, 1),
    ]
    assert {s.step_id: s.artifact_ids for s in run.steps} == {
        "generate": ["img-1", "img-2"],
        "upscale": ["img-1-up", "img-2-up"],
        "describe": ["caption-1"],
        "review": ["review-1"],
        "render": ["vid-1"],
        "publish": ["post-1"],
    }

    # Inputs (with the run's defaults) arrive as kwargs, without the identity kwargs.
    assert seen["generate"] == [
        {"attempt": 0, "kwargs": {"prompt": "a red bike", "locale": "en"}, "artifacts": {}}
    ]
    assert [(u["attempt"], u["kwargs"]) for u in seen["upscale"]] == [
        (0, {"factor": 2, "locale": "en"}),
        (1, {"factor": 2, "locale": "en"}),
    ]
    assert seen["upscale"][1]["artifacts"] == {"generate": ["img-1", "img-2"]}
    assert seen["review"][0]["kwargs"] == {"locale": "en"}
    assert seen["render"][0]["artifacts"] == {
        "generate": ["img-1", "img-2"],
        "upscale": ["img-1-up", "img-2-up"],
        "describe": ["caption-1"],
        "review": ["review-1"],
    }
    assert seen["publish"] == [{"kwargs": {"channel": "web", "locale": "en"}}]
    for records in seen.values():
        for record in records:
            assert RUN_ID not in record.get("kwargs", {})
            assert STEP_ID not in record.get("kwargs", {})


def test_a_step_that_raises_fails_the_run_and_no_later_step_starts(h: Harness) -> None:
    seen: Seen = {}
    define_media_tasks(h.app, seen)
    h.start_worker()
    run = h.mp.start_run(
        "media",
        [
            {"stepId": "generate", "operation": "media.generate"},
            {"stepId": "broken", "operation": "media.broken"},
            {"stepId": "publish", "operation": "media.publish"},
        ],
    )
    run = h.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "generate"),
        ("step-progress", "generate"),
        ("step-completed", "generate"),
        ("step-started", "broken"),
        ("step-failed", "broken"),
        ("run-failed", None),
    ]
    assert_seqs_contiguous(run)
    (failed,) = events_of(run, "step-failed")
    assert (failed.code, failed.retryable) == ("ValueError", False)
    assert failed.meta["taskId"] == run.step("broken").task_id
    (run_failed,) = events_of(run, "run-failed")
    assert run_failed.code == "ValueError"
    assert "the prompt is not allowed" in run_failed.terminal_reason
    broken = run.step("broken")
    assert (broken.status, broken.attempts) == (StepStatus.FAILED, 1)
    assert broken.last_error is not None and broken.last_error.retryable is False
    assert run.step("publish").status is StepStatus.PENDING
    assert "publish" not in seen


def test_a_rejecting_gate_fails_the_run_as_gate_rejected_and_skips_the_rest_of_the_body(
    h: Harness,
) -> None:
    seen: Seen = {}
    define_media_tasks(h.app, seen)
    h.start_worker()
    run = h.mp.start_run(
        "media",
        [
            {"stepId": "review", "operation": "media.review", "inputs": {"approve": False}},
            {"stepId": "publish", "operation": "media.publish"},
        ],
    )
    run = h.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "review"),
        ("step-gated", "review"),
        ("run-failed", None),
    ]
    assert_seqs_contiguous(run)
    (gated,) = events_of(run, "step-gated")
    assert (gated.gate_type, gated.verdict) == ("quality", "blurry")
    assert gated.meta["taskId"] == run.step("review").task_id
    assert events_of(run, "run-failed")[0].code == "gate-rejected"
    assert run.step("review").status is StepStatus.GATED
    assert run.step("publish").status is StepStatus.PENDING
    assert "review-after-gate" not in seen
    (finished,) = h.finished_tasks("media.review")
    assert finished.state == "IGNORED"
    assert "publish" not in seen


def define_retrying_tasks(app: Any, calls: list[tuple[str, int]]) -> None:
    @app.task(base=PipelineTask, bind=True, shared=False, name="flaky.manual")
    def manual(self: Any, **kwargs: Any) -> None:
        calls.append(("manual", self.attempt))
        raise self.retry(exc=TransientError("still busy"), countdown=0.05)

    @app.task(
        base=PipelineTask,
        shared=False,
        bind=True,
        name="flaky.auto",
        autoretry_for=(TransientError,),
        retry_kwargs={"countdown": 0.05},
    )
    def auto(self: Any, **kwargs: Any) -> None:
        calls.append(("auto", self.attempt))
        raise TransientError("still busy")


RETRIED_TWICE_LOG = [
    ("run-created", None),
    ("run-started", None),
    ("step-started", "s"),
    ("step-failed", "s"),
    ("step-started", "s"),
    ("step-failed", "s"),
    ("run-failed", None),
]


def test_a_step_whose_body_takes_only_its_inputs_can_retry(h: Harness) -> None:
    calls: list[tuple[str, int]] = []

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="fetch.page")
    def fetch(self: Any, url: str) -> dict[str, Any]:
        calls.append((url, self.attempt))
        if self.attempt == 0:
            raise self.retry(exc=TransientError("503"), countdown=0.05)
        return {"artifactIds": ["page-1"]}

    h.start_worker()
    run = h.mp.start_run(
        "fetch", [{"stepId": "fetch", "operation": "fetch.page", "inputs": {"url": "u"}}]
    )
    run = h.wait_terminal(run.run_id, timeout=10)

    assert run.status is PipelineRunStatus.COMPLETED, run.error
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "fetch"),
        ("step-failed", "fetch"),
        ("step-started", "fetch"),
        ("step-completed", "fetch"),
        ("run-completed", None),
    ]
    assert calls == [("u", 0), ("u", 1)]


@pytest.mark.parametrize("operation", ["flaky.manual", "flaky.auto"])
def test_the_steps_max_retries_limits_celery_retries(h: Harness, operation: str) -> None:
    calls: list[tuple[str, int]] = []
    define_retrying_tasks(h.app, calls)  # both tasks keep Celery's default max_retries of 3
    h.start_worker()
    run = h.mp.start_run("flaky", [{"stepId": "s", "operation": operation, "maxRetries": 1}])
    run = h.wait_terminal(run.run_id, timeout=10)

    assert run.status is PipelineRunStatus.FAILED
    assert kinds(run) == RETRIED_TWICE_LOG
    assert_seqs_contiguous(run)
    assert [e.attempt for e in events_of(run, "step-started")] == [0, 1]
    assert [(e.code, e.retryable) for e in events_of(run, "step-failed")] == [
        ("TransientError", True),
        ("TransientError", False),
    ]
    assert events_of(run, "run-failed")[0].code == "TransientError"
    step = run.step("s")
    assert (step.status, step.attempts) == (StepStatus.FAILED, 2)
    task_ids = {e.meta["taskId"] for e in step_events(run, "s")}
    assert task_ids == {step.task_id}  # a retry is the same Celery task
    # No third attempt is ever delivered.
    assert_never(lambda: len(calls) > 2, 0.5, "a third attempt")
    assert [attempt for _, attempt in calls] == [0, 1]


@pytest.mark.parametrize("operation", ["flaky.manual", "flaky.auto"])
def test_each_run_gets_its_own_steps_max_retries_on_a_shared_task(
    h: Harness, operation: str
) -> None:
    calls: list[tuple[str, int]] = []
    define_retrying_tasks(h.app, calls)
    h.start_worker()
    first = h.mp.start_run("flaky", [{"stepId": "s", "operation": operation, "maxRetries": 1}])
    first = h.wait_terminal(first.run_id, timeout=10)
    second = h.mp.start_run("flaky", [{"stepId": "s", "operation": operation, "maxRetries": 2}])
    second = h.wait_terminal(second.run_id, timeout=10)

    assert [e.attempt for e in events_of(first, "step-started")] == [0, 1]
    assert [e.attempt for e in events_of(second, "step-started")] == [0, 1, 2]
    assert [e.retryable for e in events_of(second, "step-failed")] == [True, True, False]
    assert second.step("s").attempts == 3


def test_a_duplicate_delivery_of_a_finished_step_runs_no_body_and_enqueues_nothing(
    h: Harness,
) -> None:
    ran: list[str] = []

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="dup.first")
    def first(self: Any) -> dict[str, Any]:
        ran.append("first")
        return {"artifactIds": ["a-1"]}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="dup.held")
    def held(self: Any) -> dict[str, Any]:
        ran.append("held")
        assert h.latch("held").wait(DEADLINE)
        return {"artifactIds": ["b-1"]}

    @h.app.task(base=PipelineTask, bind=True, shared=False, name="dup.last")
    def last(self: Any) -> dict[str, Any]:
        ran.append("last")
        return {"artifactIds": ["c-1"]}

    h.start_worker(pool="threads", concurrency=2)
    run = h.mp.start_run(
        "dup",
        [
            {"stepId": "first", "operation": "dup.first"},
            {"stepId": "held", "operation": "dup.held"},
            {"stepId": "last", "operation": "dup.last"},
        ],
    )
    h.wait_event(run.run_id, "step-started", "held")

    # The first step's message again, as a broker redelivery or a double publish would bring it.
    identity = StepIdentity(run.run_id, "first", is_step=True)
    duplicate = h.app.send_task("dup.first", kwargs=identity.kwargs(), headers=identity.headers())
    assert h.wait_finished(duplicate.id).state == "IGNORED"
    h.latch("held").set()
    run = h.wait_terminal(run.run_id)

    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "first"),
        ("step-completed", "first"),
        ("step-started", "held"),
        ("step-completed", "held"),
        ("step-started", "last"),
        ("step-completed", "last"),
        ("run-completed", None),
    ]
    assert ran == ["first", "held", "last"]


@pytest.mark.parametrize(
    "kind",
    [
        "pipeline-task",
        pytest.param(
            "plain-task",
            marks=pytest.mark.xfail(
                strict=True,
                reason="a plain task's retry(exc=...) outside an except block leaves the exception "
                "invisible when the retry is published, so its step-failed can only be logged by "
                "task_retry, after the retry may have run (documented; PipelineTask has no race)",
            ),
        ),
    ],
)
def test_the_failure_behind_a_retry_is_logged_even_when_the_retry_finishes_first(
    h: Harness, kind: str
) -> None:
    """Celery publishes the retry inside ``self.retry()``, before on_retry and task_retry run: on
    a pool with free slots the next attempt can start, and finish, before the failed attempt's
    hooks run."""
    retry_done = h.latch("retry-done")

    def hold_the_failed_attempt(headers: Any = None, **_: Any) -> None:
        # Runs in the failing attempt, right after its retry was published: let the retry run
        # to the end before this attempt goes on to its retry hooks.
        if headers and headers.get("task") == "race.step" and headers.get("retries") == 1:
            retry_done.wait(5)

    def body(task: Any) -> dict[str, Any]:
        if task.request.retries == 0:
            raise task.retry(exc=TransientError("busy"), countdown=0)
        return {"artifactIds": ["ok-1"]}

    if kind == "pipeline-task":

        @h.app.task(base=PipelineTask, bind=True, shared=False, name="race.step")
        def step(self: Any, **kwargs: Any) -> dict[str, Any]:
            return body(self)

    else:

        @h.app.task(bind=True, shared=False, name="race.step", max_retries=3)
        def plain_step(self: Any, **kwargs: Any) -> dict[str, Any]:
            return body(self)

    def on_postrun(sender: Any = None, state: str | None = None, **_: Any) -> None:
        if getattr(sender, "name", None) == "race.step" and state == "SUCCESS":
            retry_done.set()

    signals.after_task_publish.connect(hold_the_failed_attempt, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    try:
        h.start_worker(pool="threads", concurrency=2)
        run = h.mp.start_run("race", [{"stepId": "s", "operation": "race.step"}])
        run = h.wait_terminal(run.run_id, timeout=10)
        wait_for(lambda: len(h.finished_tasks("race.step")) == 2, what="both attempts to end")
        run = h.run(run.run_id)
    finally:
        signals.after_task_publish.disconnect(hold_the_failed_attempt)
        signals.task_postrun.disconnect(on_postrun)

    assert run.status is PipelineRunStatus.COMPLETED
    assert kinds(run) == [
        ("run-created", None),
        ("run-started", None),
        ("step-started", "s"),
        ("step-failed", "s"),
        ("step-started", "s"),
        ("step-completed", "s"),
        ("run-completed", None),
    ]
    assert [e.attempt for e in events_of(run, "step-started")] == [0, 1]
    assert [e.retryable for e in events_of(run, "step-failed")] == [True]
