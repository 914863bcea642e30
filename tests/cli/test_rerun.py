"""``mpstate runs rerun``: a failed or cancelled run is re-run as a new run that carries over the
steps that succeeded and publishes the first one to run again; the original stays as it was,
linked to the new run. Live and completed runs are refused (exit 1), unknown runs and other
tenants' runs are not found (exit 3), an unknown ``--from`` step is refused input (exit 2).

Failed runs are made through the transitions a worker commits (a and b completed, c failed for
good); the command publishes through a bare app on ``--broker-url``, the suite's Redis database 2
(Celery's default queue there is read back to check the message), or through ``--app``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from celery import Celery

from mpstate import MpStateError, PipelineRun, RedisPipelineStateStore, audit_run
from mpstate.celery import MpState
from mpstate.celery.identity import ATTEMPT_BASE, RUN_ID, STEP_ID
from mpstate.celery.transitions import (
    Transition,
    complete_step,
    fail_step,
    start_run,
    start_step,
)
from mpstate.testing._servers import free_port

from .support import DEFAULT_QUEUE, RunCli, make_run, messages

#: The queue a bare app (``--broker-url`` alone) publishes to: Celery's default.
#: Set by the ``--app`` test; the CLI loads it as ``<this module>:APP``.
APP: Celery | None = None
APP_PATH = f"{__name__}:APP"

STEPS = [
    {"stepId": "a", "operation": "rr.a", "inputs": {"prompt": "a bike"}},
    {"stepId": "b", "operation": "rr.b", "inputs": {"size": 2}},
    {"stepId": "c", "operation": "rr.c", "inputs": {"seconds": 5}},
]


# -- runs as a worker leaves them ----------------------------------------------------------------


def commit(store: RedisPipelineStateStore, run: PipelineRun, t: Transition | None) -> PipelineRun:
    assert t is not None
    return store.commit(run.run_id, t.patch or None, t.events, expected_version=run.version).run


def started(store: RedisPipelineStateStore, run_id: str, tenant_id: str = "acme") -> PipelineRun:
    run = store.create(
        {"runId": run_id, "pipelineId": "product-photo", "tenantId": tenant_id, "steps": STEPS}
    )
    return commit(store, run, start_run(run))


def succeeded(store: RedisPipelineStateStore, run: PipelineRun, step_id: str) -> PipelineRun:
    meta = {"taskId": f"t-{step_id}"}
    run = commit(store, run, start_step(run, step_id, attempt=0, task_id=f"t-{step_id}", meta=meta))
    done = complete_step(
        run, step_id, artifact_ids=[f"art-{step_id}"], cost_usd=0.25, cache_key=None, meta=meta
    )
    return commit(store, run, done)


def failed_run(store: RedisPipelineStateStore, run_id: str, tenant_id: str = "acme") -> PipelineRun:
    """a and b completed (an artifact and $0.25 each), c failed and will not be retried."""
    run = started(store, run_id, tenant_id)
    run = succeeded(store, run, "a")
    run = succeeded(store, run, "b")
    meta = {"taskId": "t-c"}
    run = commit(store, run, start_step(run, "c", attempt=0, task_id="t-c", meta=meta))
    run = commit(
        store,
        run,
        fail_step(run, "c", code="provider-error", message="boom", retryable=False, meta=meta),
    )
    assert run.status == "failed"
    return store.require(run_id)


# -- the broker ------------------------------------------------------------------------------------


@pytest.fixture
def rerun_cli(run_cli: RunCli, broker: tuple[str, redis.Redis]) -> RunCli:
    """``mpstate --broker-url <broker> runs rerun ...``."""

    def run(*args: str, json: bool = False) -> Any:
        return run_cli("--broker-url", broker[0], "runs", "rerun", *args, json=json)

    return run


def assert_published(client: redis.Redis, run: PipelineRun, step_id: str) -> None:
    """Exactly one message waits for ``run``: its step ``step_id``'s first attempt."""
    (message,) = messages(client, DEFAULT_QUEUE, run.run_id)
    step = run.step(step_id)
    headers = message["headers"]
    assert (headers["task"], headers["id"]) == (step.operation, step.task_id)
    assert (headers[RUN_ID], headers[STEP_ID], headers[ATTEMPT_BASE]) == (run.run_id, step_id, 0)
    assert message["kwargs"] == step.inputs


# -- re-running a failed run -----------------------------------------------------------------------


def test_rerun_prints_the_new_run_and_the_steps_it_carried_over(
    rerun_cli: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    original = f"{prefix}-r"
    failed_run(store, original)

    result = rerun_cli(original)

    assert result.exit_code == 0, result.output
    new_id = f"{original}-rerun1"
    assert result.stdout == (
        f"run '{new_id}' re-runs '{original}': status running\ncarried over: a, b\n"
    )
    assert result.stderr == ""
    new = store.require(new_id)
    assert new.status == "running"
    assert [(s.step_id, s.status) for s in new.steps] == [
        ("a", "cached"),
        ("b", "cached"),
        ("c", "pending"),
    ]
    assert_published(broker[1], new, "c")
    assert messages(broker[1], DEFAULT_QUEUE, original) == []
    assert audit_run(new) == []


def test_rerun_json_prints_the_new_runs_document_with_the_carried_steps_cached(
    rerun_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    original = f"{prefix}-r"
    failed_run(store, original)

    result = rerun_cli(original, "--reason", "provider is back", json=True)

    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    document = json.loads(result.stdout)
    new = store.require(f"{original}-rerun1", include_events=False)
    assert document == new.model_dump(mode="json", by_alias=True, exclude={"events"})
    assert (document["runId"], document["rerunOf"], document["reruns"]) == (
        f"{original}-rerun1",
        original,
        [],
    )
    assert (document["pipelineId"], document["tenantId"], document["status"]) == (
        "product-photo",
        "acme",
        "running",
    )
    a, b, c = document["steps"]
    assert (a["status"], a["cacheKey"], a["artifactIds"]) == (
        "cached",
        f"rerun:{original}:a",
        ["art-a"],
    )
    assert (b["status"], b["cacheKey"], b["artifactIds"]) == (
        "cached",
        f"rerun:{original}:b",
        ["art-b"],
    )
    assert (c["status"], c["cacheKey"], c["artifactIds"], c["attempts"]) == ("pending", None, [], 0)
    assert document["costUsd"] == 0  # carried steps cost nothing again
    log = store.list_events(new.run_id)
    assert [(e.kind, getattr(e, "step_id", None)) for e in log] == [
        ("run-created", None),
        ("run-started", None),
        ("step-cached", "a"),
        ("step-cached", "b"),
    ]
    assert log[1].meta == {"rerunOf": original, "reason": "provider is back"}
    assert [e.cache_key for e in log[2:]] == [f"rerun:{original}:a", f"rerun:{original}:b"]


def test_rerun_from_a_step_runs_that_step_and_every_step_after_it_again(
    rerun_cli: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    original = f"{prefix}-r"
    failed_run(store, original)

    result = rerun_cli(original, "--from", "b")

    assert result.exit_code == 0, result.output
    new_id = f"{original}-rerun1"
    assert result.stdout == (
        f"run '{new_id}' re-runs '{original}': status running\ncarried over: a\n"
    )
    new = store.require(new_id)
    assert [(s.step_id, s.status, s.cache_key) for s in new.steps] == [
        ("a", "cached", f"rerun:{original}:a"),
        ("b", "pending", None),
        ("c", "pending", None),
    ]
    assert_published(broker[1], new, "b")


def test_rerun_from_the_first_step_carries_nothing_over(
    rerun_cli: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    original = f"{prefix}-r"
    failed_run(store, original)

    result = rerun_cli(original, "--from", "a")

    assert result.exit_code == 0, result.output
    new_id = f"{original}-rerun1"
    assert (
        result.stdout == f"run '{new_id}' re-runs '{original}': status running\ncarried over: -\n"
    )
    new = store.require(new_id)
    assert [s.status for s in new.steps] == ["pending", "pending", "pending"]
    assert_published(broker[1], new, "a")


def test_the_original_run_stays_failed_with_its_log_untouched_and_is_linked_to_the_rerun(
    rerun_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    original = f"{prefix}-r"
    before = failed_run(store, original)

    result = rerun_cli(original)

    assert result.exit_code == 0, result.output
    after = store.require(original)
    assert after.reruns == [f"{original}-rerun1"]
    assert (after.status, after.steps, after.events) == (before.status, before.steps, before.events)


def test_a_cancelled_run_is_rerun_from_its_first_unfinished_step(
    rerun_cli: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    original = f"{prefix}-r"
    steps = [
        {**STEPS[0], "status": "completed", "artifactIds": ["art-a"]},
        {**STEPS[1], "status": "running", "taskId": "t-b"},
        STEPS[2],
    ]
    make_run(store, original, status="cancelled", steps=steps, currentStepIndex=1)

    result = rerun_cli(original)

    assert result.exit_code == 0, result.output
    new_id = f"{original}-rerun1"
    assert (
        result.stdout == f"run '{new_id}' re-runs '{original}': status running\ncarried over: a\n"
    )
    assert_published(broker[1], store.require(new_id), "b")


# -- twice -----------------------------------------------------------------------------------------


def test_rerunning_twice_while_the_rerun_is_live_prints_the_same_rerun_and_publishes_once(
    rerun_cli: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    original = f"{prefix}-r"
    failed_run(store, original)
    first = rerun_cli(original)
    new = store.require(f"{original}-rerun1")

    again = rerun_cli(original)
    again_json = rerun_cli(original, json=True)

    assert (again.exit_code, again_json.exit_code) == (0, 0)
    assert again.stdout == first.stdout
    assert json.loads(again_json.stdout)["runId"] == new.run_id
    assert store.require(new.run_id) == new  # nothing was committed to it
    assert store.require(original).reruns == [new.run_id]
    assert_published(broker[1], new, "c")  # still the one message


def test_once_the_rerun_failed_too_rerunning_the_original_starts_a_second_rerun(
    rerun_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    original = f"{prefix}-r"
    failed_run(store, original)
    assert rerun_cli(original).exit_code == 0
    first = store.require(f"{original}-rerun1")
    meta = {"taskId": "t-c2"}
    first = commit(store, first, start_step(first, "c", attempt=0, task_id="t-c2", meta=meta))
    first = commit(
        store,
        first,
        fail_step(first, "c", code="provider-error", message="again", retryable=False, meta=meta),
    )
    assert first.status == "failed"

    result = rerun_cli(original)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"run '{original}-rerun2' re-runs '{original}': status running"
    )
    assert store.require(original).reruns == [f"{original}-rerun1", f"{original}-rerun2"]


# -- refused ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "running", "pending"])
def test_rerunning_a_completed_or_live_run_exits_1_with_one_line_and_changes_nothing(
    rerun_cli: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
    status: str,
) -> None:
    original = f"{prefix}-r"
    make_run(store, original, status=status, steps=STEPS)
    before = store.require(original)

    result = rerun_cli(original)

    assert result.exit_code == 1
    assert result.stderr == (
        f"error: run '{original}' is {status}: only a failed or cancelled run can be re-run\n"
    )
    assert result.stdout == ""
    assert store.require(original) == before
    assert store.get(f"{original}-rerun1") is None
    assert messages(broker[1], DEFAULT_QUEUE, f"{original}-rerun1") == []


def test_rerunning_an_unknown_run_exits_3_naming_it(
    rerun_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    result = rerun_cli("nope")

    assert result.exit_code == 3
    assert result.stderr == "error: run 'nope' not found\n"
    assert result.stdout == ""
    assert store.get("nope-rerun1") is None


def test_an_unknown_from_step_exits_2_and_changes_nothing(
    rerun_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    original = f"{prefix}-r"
    before = failed_run(store, original)

    result = rerun_cli(original, "--from", "zzz")

    assert result.exit_code == 2
    assert result.stderr == f"error: run '{original}' has no step 'zzz'\n"
    assert result.stdout == ""
    assert store.require(original) == before
    assert store.get(f"{original}-rerun1") is None


def test_rerunning_another_tenants_run_exits_3_and_changes_nothing(
    rerun_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    original = f"{prefix}-r"
    before = failed_run(store, original, tenant_id="acme")

    result = rerun_cli(original, "--tenant", "globex")

    assert result.exit_code == 3
    assert result.stderr == f"error: run '{original}' not found\n"
    assert result.stdout == ""
    assert store.require(original) == before
    assert store.get(f"{original}-rerun1") is None


def test_rerunning_with_the_runs_own_tenant_reruns_it(
    rerun_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    original = f"{prefix}-r"
    failed_run(store, original, tenant_id="acme")

    result = rerun_cli(original, "--tenant", "acme", json=True)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["runId"], document["tenantId"]) == (f"{original}-rerun1", "acme")


def test_rerun_without_app_or_broker_url_exits_2_and_changes_nothing(
    run_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    original = f"{prefix}-r"
    before = failed_run(store, original)

    result = run_cli("runs", "rerun", original)

    assert result.exit_code == 2
    assert result.stderr == "error: give --app or --broker-url (MPSTATE_BROKER_URL)\n"
    assert store.require(original) == before


def test_an_unreachable_broker_is_reported_in_one_line_naming_the_rerun(
    run_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    original = f"{prefix}-r"
    failed_run(store, original)
    broker_url = f"redis://127.0.0.1:{free_port()}/0"

    result = run_cli("--broker-url", broker_url, "runs", "rerun", original)

    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert f"{original}-rerun1" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# -- through the operator's app --------------------------------------------------------------------


def test_with_app_the_ready_step_is_published_on_the_apps_queue(
    run_cli: RunCli,
    store: RedisPipelineStateStore,
    redis_client: redis.Redis,
    prefix: str,
    app: Celery,
) -> None:
    original = f"{prefix}-r"
    failed_run(store, original)

    result = run_cli("runs", "rerun", original, "--app", APP_PATH)

    assert result.exit_code == 0, result.output
    new = store.require(f"{original}-rerun1")
    (message,) = messages(redis_client, f"{prefix}-q", new.run_id)
    assert (message["headers"]["task"], message["headers"]["id"]) == ("rr.c", new.step("c").task_id)
    # The MpState the CLI bound for the command is gone again.
    with pytest.raises(MpStateError, match="no MpState"):
        MpState.of(app)
