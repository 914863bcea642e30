"""update / commit: versions, compare-and-set, immutable fields, the transition table, atomicity."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from mpstate import (
    ALLOWED_RUN_TRANSITIONS,
    InvalidInputError,
    InvalidTransitionError,
    PipelineRun,
    PipelineRunStatus,
    PipelineStateStore,
    RunCompleted,
    RunInProgressError,
    RunNotFoundError,
    RunStarted,
    StaleFenceError,
    StepProgress,
    StepStarted,
    VersionConflictError,
)
from mpstate.fields import utc_now
from mpstate.patches import RunPatch
from mpstate.store import MAX_EVENTS_PER_COMMIT

STATUSES = list(PipelineRunStatus)


def make_run(store: PipelineStateStore, run_id: str = "r1", **fields: Any) -> PipelineRun:
    return store.create({"runId": run_id, "pipelineId": "p", **fields})


def assert_untouched(store: PipelineStateStore, before: PipelineRun) -> None:
    """The run, its version and its log are exactly as they were."""
    after = store.require(before.run_id)
    assert after == before


# -- update -------------------------------------------------------------------------------------


def test_update_adds_one_to_the_version_and_sets_updated_at(store: PipelineStateStore) -> None:
    created = make_run(store)
    before = utc_now()

    first = store.update("r1", {"currentStepIndex": 1})
    second = store.update("r1", {"currentStepIndex": 2})

    assert first.version == 2
    assert second.version == 3
    assert first.updated_at >= before
    assert second.updated_at >= first.updated_at >= created.updated_at
    stored = store.require("r1", include_events=False)
    assert stored == second
    assert stored.current_step_index == 2
    assert stored.created_at == created.created_at


def test_update_returns_the_record_without_its_log(store: PipelineStateStore) -> None:
    make_run(store)
    updated = store.update("r1", {"status": "running"})
    assert updated.events == []
    assert updated.status is PipelineRunStatus.RUNNING


def test_update_does_not_append_events(store: PipelineStateStore) -> None:
    make_run(store)
    store.update("r1", {"status": "running"})
    assert [e.kind for e in store.list_events("r1")] == ["run-created"]


@pytest.mark.parametrize(
    "patch",
    [
        {"currentStepIndex": 3, "resumeToken": "t", "costUsd": 1.5, "externalJobIds": {"a": "b"}},
        {
            "current_step_index": 3,
            "resume_token": "t",
            "cost_usd": 1.5,
            "external_job_ids": {"a": "b"},
        },
        RunPatch.model_validate(
            {
                "current_step_index": 3,
                "resume_token": "t",
                "cost_usd": 1.5,
                "external_job_ids": {"a": "b"},
            }
        ),
    ],
    ids=["camelCase", "snake_case", "RunPatch"],
)
def test_update_accepts_either_spelling_of_field_names(
    store: PipelineStateStore, patch: Any
) -> None:
    make_run(store)
    store.update("r1", patch)
    stored = store.require("r1")
    assert stored.current_step_index == 3
    assert stored.resume_token == "t"
    assert stored.cost_usd == 1.5
    assert stored.external_job_ids == {"a": "b"}


def test_update_leaves_fields_outside_the_patch_alone(store: PipelineStateStore) -> None:
    make_run(store, tenantId="t", resumeToken="keep", budget={"max": 3})
    store.update("r1", {"error": "oops"})
    stored = store.require("r1")
    assert stored.error == "oops"
    assert stored.resume_token == "keep"
    assert stored.budget == {"max": 3}
    assert stored.tenant_id == "t"


def test_update_can_set_a_nullable_field_back_to_null(store: PipelineStateStore) -> None:
    make_run(store, error="oops", externalJobId="fal:j1")
    store.update("r1", {"error": None, "externalJobId": None})
    stored = store.require("r1")
    assert stored.error is None
    assert stored.external_job_id is None


def test_update_replaces_steps_and_nested_values(store: PipelineStateStore) -> None:
    make_run(store, steps=[{"stepId": "a", "operation": "o"}])
    store.update(
        "r1",
        {
            "steps": [
                {"stepId": "a", "operation": "o", "status": "completed", "costUsd": 0.25},
                {"stepId": "b", "operation": "o2", "inputs": {"x": [1, {"y": None}]}},
            ],
            "budget": {"max": 2.5, "unicode": "ünï🙂"},
        },
    )
    stored = store.require("r1")
    assert [s.step_id for s in stored.steps] == ["a", "b"]
    assert stored.step("a").status == "completed"
    assert stored.step("a").cost_usd == 0.25
    assert stored.step("b").inputs == {"x": [1, {"y": None}]}
    assert stored.budget == {"max": 2.5, "unicode": "ünï🙂"}


def test_update_of_a_missing_run_raises_run_not_found(store: PipelineStateStore) -> None:
    with pytest.raises(RunNotFoundError):
        store.update("missing", {"status": "running"})
    assert store.get("missing") is None


def test_update_with_the_expected_version_succeeds(store: PipelineStateStore) -> None:
    make_run(store)
    assert store.update("r1", {"status": "running"}, expected_version=1).version == 2
    assert store.update("r1", {"error": "x"}, expected_version=2).version == 3


def test_update_with_another_version_raises_version_conflict_and_writes_nothing(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    store.update("r1", {"status": "running"})
    before = store.require("r1")

    with pytest.raises(VersionConflictError) as caught:
        store.update("r1", {"status": "suspended", "error": "x"}, expected_version=1)

    error = caught.value
    assert isinstance(error, RunInProgressError)
    assert error.expected == 1
    assert error.actual == 2
    assert error.run_id == "r1"
    assert_untouched(store, before)


@pytest.mark.parametrize(
    "field",
    [
        "version",
        "events",
        "runId",
        "run_id",
        "createdAt",
        "created_at",
        "updatedAt",
        "updated_at",
        "tenantId",
        "tenant_id",
        "idempotencyKey",
        "idempotency_key",
    ],
)
def test_update_refuses_an_immutable_field_and_writes_nothing(
    store: PipelineStateStore, field: str
) -> None:
    make_run(store, tenantId="t", idempotencyKey="k")
    before = store.require("r1")
    values: dict[str, Any] = {
        "version": 9,
        "events": [],
        "runId": "r2",
        "run_id": "r2",
        "createdAt": "2020-01-01T00:00:00Z",
        "created_at": "2020-01-01T00:00:00Z",
        "updatedAt": "2020-01-01T00:00:00Z",
        "updated_at": "2020-01-01T00:00:00Z",
        "tenantId": "other",
        "tenant_id": "other",
        "idempotencyKey": "k2",
        "idempotency_key": "k2",
    }
    with pytest.raises(InvalidInputError):
        store.update("r1", {"error": "x", field: values[field]})
    assert_untouched(store, before)
    assert store.get("r2") is None


@pytest.mark.parametrize(
    "patch",
    [
        {},
        {"noSuchField": 1},
        {"status": "sleeping"},
        {"status": None},
        {"pipelineId": None},
        {"pipelineId": ""},
        {"costUsd": -0.5},
        {"currentStepIndex": -1},
        {"steps": [{"stepId": "s", "operation": "o"}, {"stepId": "s", "operation": "o"}]},
        {"externalJobId": "missing-provider"},
        {"startedAt": "not a date"},
    ],
    ids=[
        "empty",
        "unknown-field",
        "unknown-status",
        "null-status",
        "null-pipeline-id",
        "empty-pipeline-id",
        "negative-cost",
        "negative-step-index",
        "duplicate-step-ids",
        "legacy-job-id-without-provider",
        "bad-timestamp",
    ],
)
def test_update_refuses_an_invalid_patch_and_writes_nothing(
    store: PipelineStateStore, patch: dict[str, Any]
) -> None:
    make_run(store)
    before = store.require("r1")
    with pytest.raises(InvalidInputError):
        store.update("r1", patch)
    assert_untouched(store, before)


def test_an_invalid_patch_is_reported_with_pydantics_error_chained(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    with pytest.raises(InvalidInputError) as caught:
        store.update("r1", {"currentStepIndex": "first"})
    assert isinstance(caught.value.__cause__, PydanticValidationError)
    assert store.require("r1").version == 1


@pytest.mark.parametrize("patch", [None, "status=running", [("status", "running")], 3])
def test_update_refuses_a_patch_that_is_not_a_mapping(
    store: PipelineStateStore, patch: Any
) -> None:
    make_run(store)
    with pytest.raises(InvalidInputError):
        store.update("r1", patch)
    assert store.require("r1").version == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.0, "1"])
def test_update_refuses_an_invalid_expected_version_or_fence(
    store: PipelineStateStore, bad: Any
) -> None:
    make_run(store)
    with pytest.raises(InvalidInputError):
        store.update("r1", {"error": "x"}, expected_version=bad)
    with pytest.raises(InvalidInputError):
        store.update("r1", {"error": "x"}, fence=bad)
    assert store.require("r1").version == 1


# -- the status transition table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target"),
    list(itertools.product(STATUSES, STATUSES)),
    ids=[f"{a.value}-to-{b.value}" for a, b in itertools.product(STATUSES, STATUSES)],
)
def test_status_changes_follow_the_transition_table(
    store: PipelineStateStore, current: PipelineRunStatus, target: PipelineRunStatus
) -> None:
    make_run(store)
    if current is not PipelineRunStatus.PENDING:
        store.update("r1", {"status": current.value})
    before = store.require("r1")

    if target in ALLOWED_RUN_TRANSITIONS[current]:
        updated = store.update("r1", {"status": target.value})
        assert updated.status is target
        assert updated.version == before.version + 1
        assert store.require("r1").status is target
    else:
        with pytest.raises(InvalidTransitionError) as caught:
            store.update("r1", {"status": target.value, "error": "late"})
        assert caught.value.run_id == "r1"
        assert caught.value.status == current.value
        assert_untouched(store, before)


def test_the_transition_table_keeps_terminal_statuses_and_pending_only_from_pending() -> None:
    # The table the parametrized test above enforces, stated as the contract describes it.
    terminal = {
        PipelineRunStatus.COMPLETED,
        PipelineRunStatus.FAILED,
        PipelineRunStatus.CANCELLED,
    }
    for status in STATUSES:
        targets = ALLOWED_RUN_TRANSITIONS[status]
        if status in terminal:
            assert targets == {status}
        else:
            assert targets - {PipelineRunStatus.PENDING} == set(STATUSES) - {
                PipelineRunStatus.PENDING
            }
        assert (PipelineRunStatus.PENDING in targets) == (status is PipelineRunStatus.PENDING)


# -- commit -------------------------------------------------------------------------------------


def test_commit_applies_the_patch_and_appends_events_with_contiguous_seqs(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    result = store.commit(
        "r1",
        {"status": "running", "currentStepIndex": 1},
        [
            RunStarted(run_id="r1"),
            StepStarted(run_id="r1", step_id="s1", attempt=1),
            {"kind": "step-progress", "runId": "r1", "stepId": "s1", "pct": 10},
        ],
    )

    assert result.seqs == (2, 3, 4)
    assert result.changed is True
    assert result.run.version == 2
    assert result.run.status is PipelineRunStatus.RUNNING
    stored = store.require("r1")
    assert stored.version == 2
    assert stored.current_step_index == 1
    assert [(e.seq, e.kind) for e in stored.events] == [
        (1, "run-created"),
        (2, "run-started"),
        (3, "step-started"),
        (4, "step-progress"),
    ]

    again = store.commit("r1", events=[StepProgress(run_id="r1", step_id="s1", pct=50)])
    assert again.seqs == (5,)
    assert again.run.version == 3


def test_commit_with_only_a_patch_returns_no_seqs(store: PipelineStateStore) -> None:
    make_run(store)
    result = store.commit("r1", {"error": "x"})
    assert result.seqs == ()
    assert result.run.version == 2
    assert len(store.list_events("r1")) == 1


def test_commit_needs_a_patch_or_events(store: PipelineStateStore) -> None:
    make_run(store)
    with pytest.raises(InvalidInputError):
        store.commit("r1")
    with pytest.raises(InvalidInputError):
        store.commit("r1", None, [])
    assert store.require("r1").version == 1


def test_commit_accepts_at_most_max_events_per_commit(store: PipelineStateStore) -> None:
    make_run(store)
    too_many = [StepProgress(run_id="r1", step_id="s", pct=1)] * (MAX_EVENTS_PER_COMMIT + 1)
    with pytest.raises(InvalidInputError):
        store.commit("r1", events=too_many)
    assert len(store.list_events("r1")) == 1

    result = store.commit("r1", events=too_many[:MAX_EVENTS_PER_COMMIT])
    assert result.seqs == tuple(range(2, MAX_EVENTS_PER_COMMIT + 2))
    assert [e.seq for e in store.list_events("r1")] == list(range(1, MAX_EVENTS_PER_COMMIT + 2))


@pytest.mark.parametrize(
    "events",
    [
        {"kind": "run-started", "runId": "r1"},
        "run-started",
        [{"kind": "run-started", "runId": "r1"}, {"kind": "no-such-kind", "runId": "r1"}],
        [{"kind": "run-started", "runId": "r1"}, {"kind": "run-started", "runId": "r2"}],
        [{"kind": "run-started", "runId": "r1"}, 42],
    ],
    ids=["a-mapping", "a-string", "one-unknown-kind", "one-for-another-run", "one-not-an-event"],
)
def test_a_commit_with_an_invalid_event_writes_neither_patch_nor_events(
    store: PipelineStateStore, events: Any
) -> None:
    make_run(store)
    before = store.require("r1")
    with pytest.raises(InvalidInputError):
        store.commit("r1", {"status": "running"}, events)
    assert_untouched(store, before)


def test_a_commit_refused_for_its_version_writes_neither_patch_nor_events(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    store.update("r1", {"error": "x"})
    before = store.require("r1")
    with pytest.raises(VersionConflictError):
        store.commit("r1", {"status": "running"}, [RunStarted(run_id="r1")], expected_version=1)
    assert_untouched(store, before)


def test_a_commit_refused_for_its_transition_writes_neither_patch_nor_events(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    store.update("r1", {"status": "failed"})
    before = store.require("r1")
    with pytest.raises(InvalidTransitionError):
        store.commit("r1", {"status": "running"}, [RunStarted(run_id="r1")])
    assert_untouched(store, before)


def test_a_commit_after_a_terminal_event_writes_neither_patch_nor_events(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    store.commit("r1", {"status": "completed"}, [RunCompleted(run_id="r1", total_cost_usd=1)])
    before = store.require("r1")
    with pytest.raises(InvalidTransitionError) as caught:
        store.commit("r1", {"error": "late"}, [StepProgress(run_id="r1", step_id="s", pct=5)])
    assert caught.value.status == "completed"
    assert_untouched(store, before)


def test_a_patch_without_events_is_still_accepted_after_a_terminal_event(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    store.commit("r1", {"status": "completed"}, [RunCompleted(run_id="r1", total_cost_usd=1)])
    assert store.commit("r1", {"error": "note"}).run.error == "note"


def test_one_commit_cannot_append_events_after_its_own_terminal_event(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    before = store.require("r1")
    with pytest.raises((InvalidInputError, InvalidTransitionError)):
        store.commit(
            "r1",
            {"status": "completed"},
            [
                RunCompleted(run_id="r1", total_cost_usd=1),
                StepProgress(run_id="r1", step_id="s", pct=100),
            ],
        )
    assert_untouched(store, before)


def test_commit_of_a_missing_run_raises_run_not_found(store: PipelineStateStore) -> None:
    with pytest.raises(RunNotFoundError):
        store.commit("missing", {"error": "x"}, [RunStarted(run_id="missing")])
    assert store.get("missing") is None


# -- guard order (mpstate.changes) ------------------------------------------------------------


def test_a_stale_fence_is_reported_before_a_version_conflict(store: PipelineStateStore) -> None:
    make_run(store)
    with store.lock("r1") as held:
        fence = held.fence
    with store.lock("r1"):
        pass
    with pytest.raises(StaleFenceError) as caught:
        store.update("r1", {"error": "x"}, expected_version=99, fence=fence)
    assert caught.value.fence == fence
    assert caught.value.current == fence + 1


def test_a_version_conflict_is_reported_before_an_invalid_transition(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    store.update("r1", {"status": "completed"})
    with pytest.raises(VersionConflictError):
        store.update("r1", {"status": "pending"}, expected_version=1)


def test_an_invalid_transition_is_reported_before_an_ended_log(store: PipelineStateStore) -> None:
    make_run(store)
    store.commit("r1", {"status": "completed"}, [RunCompleted(run_id="r1", total_cost_usd=0)])
    with pytest.raises(InvalidTransitionError) as caught:
        store.commit("r1", {"status": "running"}, [RunStarted(run_id="r1")])
    assert "cannot become" in str(caught.value)


def test_a_fence_without_any_lock_grant_is_stale(store: PipelineStateStore) -> None:
    make_run(store)
    with pytest.raises(StaleFenceError) as caught:
        store.update("r1", {"error": "x"}, fence=1)
    assert caught.value.current == 0
    assert store.require("r1").version == 1


# -- concurrency ----------------------------------------------------------------------------


def test_of_concurrent_compare_and_set_updates_exactly_one_wins(store: PipelineStateStore) -> None:
    make_run(store)
    workers = 6
    barrier = threading.Barrier(workers)
    outcomes: list[object] = [None] * workers

    def work(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = store.update("r1", {"currentStepIndex": i + 1}, expected_version=1)
        except VersionConflictError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [o for o in outcomes if isinstance(o, PipelineRun)]
    conflicts = [o for o in outcomes if isinstance(o, VersionConflictError)]
    assert len(winners) == 1
    assert len(conflicts) == workers - 1
    assert all(c.actual == 2 for c in conflicts)
    assert store.require("r1").current_step_index == winners[0].current_step_index


def test_concurrent_commits_get_distinct_contiguous_seqs(store: PipelineStateStore) -> None:
    make_run(store)
    workers, per_commit = 4, 5
    barrier = threading.Barrier(workers)
    seqs: list[tuple[int, ...]] = [()] * workers

    def work(i: int) -> None:
        barrier.wait()
        events = [StepProgress(run_id="r1", step_id=f"w{i}", pct=n) for n in range(per_commit)]
        seqs[i] = store.commit("r1", events=events).seqs

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for own in seqs:
        assert list(own) == list(range(own[0], own[0] + per_commit))
    assert sorted(s for own in seqs for s in own) == list(range(2, 2 + workers * per_commit))
    stored = store.require("r1")
    assert stored.version == 1 + workers
    for i, own in enumerate(seqs):
        mine = [e for e in stored.events if e.seq in own]
        assert all(isinstance(e, StepProgress) and e.step_id == f"w{i}" for e in mine)
        assert len(mine) == per_commit


def test_a_commit_retried_with_its_operation_id_is_applied_once_and_reports_its_seqs(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    events = [{"kind": "run-started", "runId": "r1"}]
    first = store.commit("r1", {"error": "x"}, events, expected_version=1, operation_id="op-1")
    # The same commit again, as after an outage that hid whether it was applied: its
    # expected_version is stale now, yet it is recognised and not applied a second time.
    again = store.commit("r1", {"error": "x"}, events, expected_version=1, operation_id="op-1")
    assert first.seqs == again.seqs == (2,)
    assert again.run.version == first.run.version == 2
    assert [e.kind for e in store.list_events("r1")] == ["run-created", "run-started"]
    # Another operation id is another commit, checked against the version as usual.
    with pytest.raises(VersionConflictError):
        store.commit("r1", {"error": "y"}, expected_version=1, operation_id="op-2")
