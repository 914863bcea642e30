"""create / create_or_get: version 1, run-created as event 1, idempotency keys, input checks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from mpstate import (
    IdempotencyKeyInUseError,
    InvalidInputError,
    InvalidTransitionError,
    PipelineRun,
    PipelineRunStatus,
    PipelineStateStore,
    RunAlreadyExistsError,
    RunCreated,
    RunInProgressError,
    StepError,
    StepState,
    StepStatus,
)
from mpstate.fields import MAX_ID_LENGTH, now_ms, utc_now

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def rich_run(run_id: str = "rich") -> PipelineRun:
    """A run with every field set to something other than its default."""
    return PipelineRun(
        run_id=run_id,
        pipeline_id="video-dub",
        status=PipelineRunStatus.RUNNING,
        tenant_id="acme",
        pipeline_def_hash="sha256:abc",
        idempotency_key="req-42",
        external_job_id="replicate:job:with:colons",
        external_job_ids={"elevenlabs": "el-1", "fal": "fal-9"},
        current_step_index=1,
        steps=[
            StepState(
                step_id="transcribe",
                operation="whisper",
                inputs={"lang": "en", "nested": {"a": [1, 2.5, None, True]}},
                status=StepStatus.COMPLETED,
                attempts=2,
                max_retries=3,
                artifact_ids=["art-1", "art-2"],
                cost_usd=0.125,
                started_at=T0,
                completed_at=T0 + timedelta(seconds=5),
                cache_key="ck",
            ),
            StepState(
                step_id="dub",
                operation="tts",
                status=StepStatus.FAILED,
                error="boom",
                last_error=StepError(code="E42", message="quota", retryable=True, at=T0),
            ),
        ],
        error="something went wrong",
        budget={"maxUsd": 5, "spent": 0.5, "notes": None},
        resume_token="resume-me",
        resumable=True,
        started_at=T0 + timedelta(seconds=1),
        cost_usd=1.75,
        created_at=T0,
        completed_at=T0 + timedelta(minutes=3),
    )


def test_create_stores_version_1_and_logs_run_created_as_seq_1(store: PipelineStateStore) -> None:
    before = utc_now()
    created = store.create({"runId": "r1", "pipelineId": "p", "pipelineDefHash": "h1"})

    assert created.version == 1
    assert created.updated_at >= before
    assert created.events == []
    stored = store.get("r1")
    assert stored is not None
    assert stored.version == 1
    assert stored.status is PipelineRunStatus.PENDING
    assert len(stored.events) == 1
    event = stored.events[0]
    assert isinstance(event, RunCreated)
    assert event.seq == 1
    assert event.run_id == "r1"
    assert event.pipeline_def_hash == "h1"


def test_create_ignores_a_version_and_updated_at_given_by_the_caller(
    store: PipelineStateStore,
) -> None:
    before = utc_now()
    created = store.create(
        {"runId": "r1", "pipelineId": "p", "version": 7, "updatedAt": "2001-01-01T00:00:00Z"}
    )
    assert created.version == 1
    assert created.updated_at >= before
    stored = store.require("r1")
    assert stored.version == 1
    assert stored.updated_at == created.updated_at


def test_create_keeps_the_callers_created_at(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "createdAt": "2024-05-01T12:00:00.123Z"})
    assert store.require("r1").created_at == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def test_create_does_not_modify_the_callers_run_object(store: PipelineStateStore) -> None:
    run = PipelineRun(run_id="r1", pipeline_id="p")
    store.create(run)
    assert run.version == 0
    assert run.events == []


def test_a_run_document_round_trips_through_the_store_field_by_field(
    store: PipelineStateStore,
) -> None:
    original = rich_run()
    created = store.create(original)
    stored = store.require("rich", include_events=False)

    expected = original.to_json_dict()
    for owned_by_store in ("version", "updatedAt"):
        expected.pop(owned_by_store)
    got = stored.to_json_dict()
    assert got.pop("version") == 1
    assert got.pop("updatedAt") == created.to_json_dict()["updatedAt"]
    assert got == expected
    assert stored == created
    assert PipelineRun.model_validate(stored.to_json_dict()) == stored


def test_a_stored_run_validates_back_from_its_json_document_with_events(
    store: PipelineStateStore,
) -> None:
    store.create(rich_run())
    stored = store.require("rich")
    assert PipelineRun.model_validate(stored.to_json_dict()) == stored
    assert PipelineRun.model_validate_json(stored.model_dump_json()) == stored


@pytest.mark.parametrize(
    "document",
    [
        {
            "runId": "r1",
            "pipelineId": "p",
            "tenantId": "acme",
            "idempotencyKey": "k",
            "externalJobIds": {"fal": "j1"},
            "currentStepIndex": 2,
            "pipelineDefHash": "h",
            "costUsd": 0.5,
            "resumeToken": "tok",
            "startedAt": "2024-05-01T12:00:00.000Z",
        },
        {
            "run_id": "r1",
            "pipeline_id": "p",
            "tenant_id": "acme",
            "idempotency_key": "k",
            "external_job_ids": {"fal": "j1"},
            "current_step_index": 2,
            "pipeline_def_hash": "h",
            "cost_usd": 0.5,
            "resume_token": "tok",
            "started_at": "2024-05-01T12:00:00.000Z",
        },
    ],
    ids=["camelCase", "snake_case"],
)
def test_create_accepts_camel_case_and_snake_case_documents(
    store: PipelineStateStore, document: dict[str, Any]
) -> None:
    store.create(document)
    stored = store.require("r1")
    assert stored.pipeline_id == "p"
    assert stored.tenant_id == "acme"
    assert stored.idempotency_key == "k"
    assert stored.external_job_ids == {"fal": "j1"}
    assert stored.current_step_index == 2
    assert stored.pipeline_def_hash == "h"
    assert stored.cost_usd == 0.5
    assert stored.resume_token == "tok"
    assert stored.started_at == T0


def test_creating_an_existing_run_id_raises_and_leaves_the_stored_run_alone(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "first"})
    with pytest.raises(RunAlreadyExistsError) as caught:
        store.create({"runId": "r1", "pipelineId": "second"})
    assert isinstance(caught.value, RunInProgressError)
    assert caught.value.run_id == "r1"
    stored = store.require("r1")
    assert stored.pipeline_id == "first"
    assert stored.version == 1
    assert len(stored.events) == 1


def test_create_or_get_creates_a_new_run(store: PipelineStateStore) -> None:
    run, created = store.create_or_get({"runId": "r1", "pipelineId": "p"})
    assert created is True
    assert run.run_id == "r1"
    assert run.version == 1
    assert store.require("r1").version == 1


def test_create_or_get_returns_the_existing_run_unchanged(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "first"})
    store.update("r1", {"status": "running"})

    run, created = store.create_or_get({"runId": "r1", "pipelineId": "second"})

    assert created is False
    assert run.pipeline_id == "first"
    assert run.status is PipelineRunStatus.RUNNING
    assert run.version == 2
    assert store.require("r1").pipeline_id == "first"
    assert len(store.list_events("r1")) == 1


def test_a_held_idempotency_key_raises_naming_the_existing_run(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "first", "pipelineId": "p", "idempotencyKey": "k"})
    with pytest.raises(IdempotencyKeyInUseError) as caught:
        store.create({"runId": "second", "pipelineId": "p", "idempotencyKey": "k"})
    error = caught.value
    assert isinstance(error, RunInProgressError)
    assert error.existing_run_id == "first"
    assert error.idempotency_key == "k"
    assert error.run_id == "second"
    assert store.get("second") is None
    assert [r.run_id for r in store.list_runs(idempotency_key="k")] == ["first"]


def test_create_or_get_with_a_held_idempotency_key_returns_the_holder(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "first", "pipelineId": "p", "idempotencyKey": "k"})
    run, created = store.create_or_get(
        {"runId": "second", "pipelineId": "p", "idempotencyKey": "k"}
    )
    assert created is False
    assert run.run_id == "first"
    assert store.get("second") is None


def test_idempotency_keys_are_per_tenant(store: PipelineStateStore) -> None:
    store.create({"runId": "a", "pipelineId": "p", "tenantId": "t1", "idempotencyKey": "k"})
    store.create({"runId": "b", "pipelineId": "p", "tenantId": "t2", "idempotencyKey": "k"})
    store.create({"runId": "c", "pipelineId": "p", "idempotencyKey": "k"})
    with pytest.raises(IdempotencyKeyInUseError) as in_t1:
        store.create({"runId": "d", "pipelineId": "p", "tenantId": "t1", "idempotencyKey": "k"})
    assert in_t1.value.existing_run_id == "a"
    with pytest.raises(IdempotencyKeyInUseError) as untenanted:
        store.create({"runId": "e", "pipelineId": "p", "idempotencyKey": "k"})
    assert untenanted.value.existing_run_id == "c"
    assert [r.run_id for r in store.list_runs(idempotency_key="k")] == ["a", "b", "c"]


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_a_finished_run_still_holds_its_idempotency_key(
    store: PipelineStateStore, status: str
) -> None:
    store.create({"runId": "first", "pipelineId": "p", "tenantId": "t", "idempotencyKey": "k"})
    store.update("first", {"status": status})
    with pytest.raises(IdempotencyKeyInUseError) as caught:
        store.create({"runId": "second", "pipelineId": "p", "tenantId": "t", "idempotencyKey": "k"})
    assert caught.value.existing_run_id == "first"
    run, created = store.create_or_get(
        {"runId": "second", "pipelineId": "p", "tenantId": "t", "idempotencyKey": "k"}
    )
    assert (run.run_id, run.status.value, created) == ("first", status, False)


def test_a_new_run_may_not_carry_events(store: PipelineStateStore) -> None:
    event = {"kind": "run-started", "runId": "r1"}
    with pytest.raises(InvalidInputError):
        store.create({"runId": "r1", "pipelineId": "p", "events": [event]})
    assert store.get("r1") is None


def test_an_empty_event_list_on_a_new_run_is_accepted(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "events": []})
    assert [e.kind for e in store.require("r1").events] == ["run-created"]


def test_a_run_created_with_events_logs_them_after_run_created_in_the_same_write(
    store: PipelineStateStore,
) -> None:
    running = {"runId": "r1", "pipelineId": "p", "status": "running", "tenantId": "t"}
    earlier = now_ms() - 5_000  # an event made before the call (as start_run makes its own)
    created = store.create(running, events=[{"kind": "run-started", "runId": "r1", "at": earlier}])

    assert created.version == 1
    stored = store.require("r1")
    assert [(e.seq, e.kind) for e in stored.events] == [(1, "run-created"), (2, "run-started")]
    assert stored.events[0].at <= stored.events[1].at  # times follow seqs
    assert stored.status == PipelineRunStatus.RUNNING
    # Indexed under the status it was created in, and only there.
    assert [r.run_id for r in store.list_runs(status="running")] == ["r1"]
    assert [r.run_id for r in store.list_runs(tenant_id="t", status="running")] == ["r1"]
    assert store.list_runs(status="pending") == []
    assert store.append_event("r1", {"kind": "step-progress", "runId": "r1", "stepId": "s",
                                     "pct": 5}) == 3  # fmt: skip


def test_a_run_created_with_a_terminal_event_takes_no_more_events(
    store: PipelineStateStore,
) -> None:
    done = {"runId": "r1", "pipelineId": "p", "status": "completed"}
    store.create(done, events=[{"kind": "run-completed", "runId": "r1", "totalCostUsd": 0}])
    with pytest.raises(InvalidTransitionError, match="ended its event log"):
        store.append_event("r1", {"kind": "run-started", "runId": "r1"})
    assert [e.kind for e in store.require("r1").events] == ["run-created", "run-completed"]


def test_create_or_get_of_an_existing_run_logs_none_of_its_events(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    started = {"runId": "r1", "pipelineId": "p", "status": "running"}
    existing, created = store.create_or_get(
        started, events=[{"kind": "run-started", "runId": "r1"}]
    )
    assert (created, existing.status) == (False, PipelineRunStatus.PENDING)
    assert [e.kind for e in store.require("r1").events] == ["run-created"]


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([{"kind": "run-started", "runId": "other"}], id="another-runs-event"),
        pytest.param([{"kind": "run-created", "runId": "r1"}], id="a-second-run-created"),
        pytest.param([{"kind": "no-such-kind", "runId": "r1"}], id="an-unknown-kind"),
        pytest.param({"kind": "run-started", "runId": "r1"}, id="not-a-list"),
    ],
)
def test_create_refuses_events_it_cannot_log_and_creates_nothing(
    store: PipelineStateStore, events: Any
) -> None:
    with pytest.raises(InvalidInputError):
        store.create({"runId": "r1", "pipelineId": "p"}, events=events)
    assert store.get("r1") is None


@pytest.mark.parametrize(
    "document",
    [
        {"runId": "r1"},
        {"pipelineId": "p"},
        {"runId": "", "pipelineId": "p"},
        {"runId": "r1", "pipelineId": "p", "noSuchField": 1},
        {"runId": "r1", "pipelineId": "p", "status": "sleeping"},
        {"runId": "r1", "pipelineId": "p", "costUsd": -1},
        {"runId": "r1", "pipelineId": "p", "externalJobId": "no-provider"},
        {"runId": "r1", "pipelineId": "p", "steps": [{"stepId": "s", "operation": "o"}] * 2},
        {"runId": "r1" * MAX_ID_LENGTH, "pipelineId": "p"},
        {"runId": "\ud800", "pipelineId": "p"},
        {"runId": 5, "pipelineId": "p"},
    ],
    ids=[
        "no-pipeline",
        "no-run-id",
        "empty-run-id",
        "unknown-field",
        "unknown-status",
        "negative-cost",
        "legacy-job-id-without-provider",
        "duplicate-step-ids",
        "run-id-too-long",
        "lone-surrogate",
        "non-string-id",
    ],
)
def test_create_refuses_an_invalid_run(store: PipelineStateStore, document: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        store.create(document)
    assert store.list_runs() == []


def test_an_invalid_run_is_reported_with_pydantics_error_chained(
    store: PipelineStateStore,
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        store.create({"runId": "r1", "pipelineId": "p", "costUsd": "lots"})
    assert isinstance(caught.value.__cause__, PydanticValidationError)
    assert "costUsd" in str(caught.value) or "cost_usd" in str(caught.value)


@pytest.mark.parametrize("not_a_run", [None, "r1", ["r1", "p"], 42])
def test_create_refuses_something_that_is_not_a_run(
    store: PipelineStateStore, not_a_run: Any
) -> None:
    with pytest.raises(InvalidInputError):
        store.create(not_a_run)


def test_the_longest_allowed_run_id_is_accepted(store: PipelineStateStore) -> None:
    run_id = "r" * MAX_ID_LENGTH
    store.create({"runId": run_id, "pipelineId": "p"})
    assert store.require(run_id).run_id == run_id


def _race(workers: int, attempt: Callable[[int], object]) -> list[object]:
    """Run ``attempt(i)`` in ``workers`` threads released together; return results or errors."""
    barrier = threading.Barrier(workers)
    results: list[object] = [None] * workers

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_of_concurrent_creates_of_one_run_id_exactly_one_succeeds(
    store: PipelineStateStore,
) -> None:
    results = _race(8, lambda i: store.create({"runId": "r1", "pipelineId": f"p{i}"}))
    winners = [r for r in results if isinstance(r, PipelineRun)]
    assert len(winners) == 1
    assert all(isinstance(r, RunAlreadyExistsError) for r in results if r not in winners)
    assert store.require("r1").pipeline_id == winners[0].pipeline_id
    assert len(store.list_events("r1")) == 1


def test_of_concurrent_creates_with_one_idempotency_key_exactly_one_succeeds(
    store: PipelineStateStore,
) -> None:
    results = _race(
        8, lambda i: store.create({"runId": f"r{i}", "pipelineId": "p", "idempotencyKey": "k"})
    )
    winners = [r for r in results if isinstance(r, PipelineRun)]
    assert len(winners) == 1
    losers = [r for r in results if isinstance(r, IdempotencyKeyInUseError)]
    assert len(losers) == 7
    assert {e.existing_run_id for e in losers} == {winners[0].run_id}
    assert [r.run_id for r in store.list_runs()] == [winners[0].run_id]


@pytest.mark.parametrize(
    "value",
    [(1, 2), datetime(2024, 5, 1, tzinfo=UTC), b"raw", float("nan")],
    ids=["tuple", "datetime", "bytes", "nan"],
)
def test_a_non_json_value_in_a_free_form_field_is_refused_or_stored_as_its_document_form(
    store: PipelineStateStore, value: Any
) -> None:
    # budget and step inputs are free-form; every backend must give back the same thing: what
    # the run's JSON document (to_json_dict) says, unless the value is refused up front.
    document = {
        "runId": "r1",
        "pipelineId": "p",
        "budget": {"v": value},
        "steps": [{"stepId": "s", "operation": "o", "inputs": {"v": value}}],
    }
    try:
        store.create(document)
    except InvalidInputError:
        assert store.get("r1") is None
        return
    as_document = PipelineRun.model_validate(document).to_json_dict()
    stored = store.require("r1")
    assert stored.budget == as_document["budget"]
    assert stored.steps[0].inputs == as_document["steps"][0]["inputs"]
