"""append_event / list_events: seqs, validation, the terminal event, and every event kind."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from mpstate import (
    InvalidInputError,
    InvalidTransitionError,
    PipelineEvent,
    PipelineStateStore,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunNotFoundError,
    RunResumed,
    RunStarted,
    RunSuspended,
    StaleFenceError,
    StepCached,
    StepCompleted,
    StepFailed,
    StepGated,
    StepProgress,
    StepStarted,
    StepWaiting,
)
from mpstate.events import TERMINAL_EVENT_KINDS

META = {"taskId": "celery-1", "worker": "w@host", "redelivered": True, "n": 3, "x": 0.5, "z": None}
AT = 1_714_564_800_123

#: One event of each kind, every optional field set (and meta), for run "r1".
EVERY_KIND: list[PipelineEvent] = [
    RunCreated(run_id="r1", at=AT, meta=META, pipeline_def_hash="sha:1"),
    RunStarted(run_id="r1", at=AT, meta=META),
    StepStarted(run_id="r1", at=AT, meta=META, step_id="s1", attempt=2),
    StepProgress(
        run_id="r1",
        at=AT,
        meta=META,
        step_id="s1",
        pct=42.5,
        eta_ms=1500,
        message="half way 🙂",
        cost_usd_accrued=0.125,
    ),
    StepCached(
        run_id="r1", at=AT, meta=META, step_id="s1", cache_key="ck", artifact_ids=["a", "b"]
    ),
    StepCompleted(run_id="r1", at=AT, meta=META, step_id="s1", artifact_ids=["a"], cost_usd=0.75),
    StepFailed(run_id="r1", at=AT, meta=META, step_id="s1", code="E_TIMEOUT", retryable=True),
    StepGated(run_id="r1", at=AT, meta=META, step_id="s1", gate_type="quality", verdict="reject"),
    StepWaiting(run_id="r1", at=AT, meta=META, step_id="s1", provider="veo", job_id="op/1"),
    RunSuspended(run_id="r1", at=AT, meta=META, reason="webhook", resume_token="tok"),
    RunResumed(run_id="r1", at=AT, meta=META, from_step_id="s1"),
    RunCompleted(run_id="r1", at=AT, meta=META, total_cost_usd=1.5),
    RunFailed(run_id="r1", at=AT, meta=META, code="E", terminal_reason="gave up"),
    RunCancelled(run_id="r1", at=AT, meta=META, reason="user"),
]
KINDS = [event.kind for event in EVERY_KIND]


def make_run(store: PipelineStateStore, run_id: str = "r1") -> None:
    store.create({"runId": run_id, "pipelineId": "p"})


def test_there_is_one_sample_per_event_kind() -> None:
    union = typing.get_args(typing.get_args(PipelineEvent)[0])
    assert len(KINDS) == len(set(KINDS)) == len(union) == 14


def test_append_event_returns_contiguous_one_based_seqs(store: PipelineStateStore) -> None:
    make_run(store)
    seqs = [
        store.append_event("r1", RunStarted(run_id="r1")),
        store.append_event("r1", StepStarted(run_id="r1", step_id="s", attempt=0)),
        store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=1)),
    ]
    assert seqs == [2, 3, 4]
    assert [e.seq for e in store.list_events("r1")] == [1, 2, 3, 4]


def test_append_event_leaves_the_version_alone(store: PipelineStateStore) -> None:
    make_run(store)
    before = store.require("r1", include_events=False)
    store.append_event("r1", RunStarted(run_id="r1"))
    assert store.require("r1", include_events=False) == before


def test_the_store_assigns_seqs_whatever_seq_the_event_carries(store: PipelineStateStore) -> None:
    make_run(store)
    assert store.append_event("r1", {"kind": "run-started", "runId": "r1", "seq": 99}) == 2
    assert [e.seq for e in store.list_events("r1")] == [1, 2]


def test_append_event_refuses_an_event_for_another_run(store: PipelineStateStore) -> None:
    make_run(store)
    make_run(store, "r2")
    with pytest.raises(InvalidInputError):
        store.append_event("r1", RunStarted(run_id="r2"))
    assert len(store.list_events("r1")) == 1
    assert len(store.list_events("r2")) == 1


@pytest.mark.parametrize(
    "event",
    [
        {"kind": "step-progress", "runId": "r1", "stepId": "s", "pct": 5, "etaMs": 10},
        {"kind": "step-progress", "run_id": "r1", "step_id": "s", "pct": 5, "eta_ms": 10},
    ],
    ids=["camelCase", "snake_case"],
)
def test_append_event_accepts_a_mapping_in_either_spelling(
    store: PipelineStateStore, event: dict[str, Any]
) -> None:
    make_run(store)
    assert store.append_event("r1", event) == 2
    stored = store.list_events("r1")[-1]
    assert isinstance(stored, StepProgress)
    assert stored.step_id == "s"
    assert stored.eta_ms == 10


@pytest.mark.parametrize(
    "event",
    [
        {"kind": "run-exploded", "runId": "r1"},
        {"runId": "r1"},
        {"kind": "step-started", "runId": "r1"},
        {"kind": "run-started", "runId": "r1", "unexpected": 1},
        {"kind": "step-progress", "runId": "r1", "stepId": "s", "pct": 101},
        {"kind": "run-suspended", "runId": "r1", "reason": "bored", "resumeToken": "t"},
        {"kind": "run-started", "runId": "r1", "meta": {"nested": {"no": 1}}},
        "run-started",
        None,
    ],
    ids=[
        "unknown-kind",
        "no-kind",
        "missing-field",
        "unknown-field",
        "pct-over-100",
        "unknown-suspend-reason",
        "nested-meta",
        "a-string",
        "none",
    ],
)
def test_append_event_refuses_an_invalid_event(store: PipelineStateStore, event: Any) -> None:
    make_run(store)
    with pytest.raises(InvalidInputError):
        store.append_event("r1", event)
    assert len(store.list_events("r1")) == 1


def test_append_event_to_a_missing_run_raises_run_not_found(store: PipelineStateStore) -> None:
    with pytest.raises(RunNotFoundError):
        store.append_event("missing", RunStarted(run_id="missing"))
    assert store.get("missing") is None


def test_list_events_of_a_missing_run_raises_run_not_found(store: PipelineStateStore) -> None:
    with pytest.raises(RunNotFoundError):
        store.list_events("missing")


def test_list_events_since_seq_is_exclusive_and_limit_caps_the_page(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    for pct in range(9):
        store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=pct))

    assert [e.seq for e in store.list_events("r1")] == list(range(1, 11))
    assert [e.seq for e in store.list_events("r1", since_seq=3)] == list(range(4, 11))
    assert [e.seq for e in store.list_events("r1", since_seq=3, limit=2)] == [4, 5]
    assert [e.seq for e in store.list_events("r1", limit=1)] == [1]
    assert [e.seq for e in store.list_events("r1", since_seq=9, limit=5)] == [10]
    assert store.list_events("r1", since_seq=10) == []
    assert store.list_events("r1", since_seq=1000) == []
    assert [e.seq for e in store.list_events("r1", 0, 10)] == list(range(1, 11))


def test_paging_through_events_with_since_seq_yields_each_event_once(
    store: PipelineStateStore,
) -> None:
    make_run(store)
    for pct in range(11):
        store.append_event("r1", StepProgress(run_id="r1", step_id="s", pct=pct))
    seen: list[int] = []
    while page := store.list_events("r1", since_seq=seen[-1] if seen else 0, limit=3):
        seen.extend(e.seq for e in page if e.seq is not None)
    assert seen == list(range(1, 13))
    assert store.list_events("r1") == store.require("r1").events


@pytest.mark.parametrize(("since_seq", "limit"), [(-1, None), (0, 0), (0, -5), (True, None)])
def test_list_events_refuses_invalid_paging(
    store: PipelineStateStore, since_seq: Any, limit: Any
) -> None:
    make_run(store)
    with pytest.raises(InvalidInputError):
        store.list_events("r1", since_seq=since_seq, limit=limit)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_EVENT_KINDS))
def test_nothing_can_be_appended_after_a_terminal_event(
    store: PipelineStateStore, terminal: str
) -> None:
    make_run(store)
    sample = next(e for e in EVERY_KIND if e.kind == terminal)
    assert store.append_event("r1", sample) == 2
    before = store.require("r1")

    for event in EVERY_KIND:
        with pytest.raises(InvalidTransitionError) as caught:
            store.append_event("r1", event)
        assert caught.value.run_id == "r1"
    with pytest.raises(InvalidTransitionError):
        store.commit("r1", events=[RunStarted(run_id="r1")])
    assert store.require("r1") == before


@pytest.mark.parametrize("kind", KINDS)
def test_every_event_kind_round_trips_field_by_field(store: PipelineStateStore, kind: str) -> None:
    make_run(store)
    event = next(e for e in EVERY_KIND if e.kind == kind)

    seq = store.append_event("r1", event)

    assert seq == 2
    from_log = store.list_events("r1", since_seq=1)
    from_get = store.require("r1").events[1:]
    assert from_log == from_get
    assert len(from_log) == 1
    stored = from_log[0]
    assert type(stored) is type(event)
    assert stored.seq == 2
    assert stored.model_dump() == {**event.model_dump(), "seq": 2}
    assert stored.meta == META
    assert stored.to_json_dict() == {**event.to_json_dict(), "seq": 2}


@pytest.mark.parametrize("kind", KINDS)
def test_every_event_kind_round_trips_without_its_optional_fields(
    store: PipelineStateStore, kind: str
) -> None:
    make_run(store)
    full = next(e for e in EVERY_KIND if e.kind == kind)
    required = {
        name
        for name, info in type(full).model_fields.items()
        if info.is_required() or name == "kind"
    }
    bare = type(full).model_validate(full.model_dump(include=required))

    store.append_event("r1", bare)

    stored = store.list_events("r1", since_seq=1)[0]
    assert stored.model_dump() == {**bare.model_dump(), "seq": 2}
    assert stored.meta is None
    assert stored.at == bare.at


def test_the_event_log_keeps_events_in_append_order(store: PipelineStateStore) -> None:
    make_run(store)
    non_terminal = [e for e in EVERY_KIND if e.kind not in TERMINAL_EVENT_KINDS]
    for event in non_terminal:
        store.append_event("r1", event)
    store.append_event("r1", RunFailed(run_id="r1", code="E", terminal_reason="r"))

    kinds = [e.kind for e in store.list_events("r1")]
    assert kinds == ["run-created", *[e.kind for e in non_terminal], "run-failed"]


def test_append_event_under_a_stale_fence_is_refused(store: PipelineStateStore) -> None:
    make_run(store)
    with store.lock("r1") as old:
        pass
    with store.lock("r1") as current:
        with pytest.raises(StaleFenceError):
            store.append_event("r1", RunStarted(run_id="r1"), fence=old.fence)
        assert store.append_event("r1", RunStarted(run_id="r1"), fence=current.fence) == 2
    assert len(store.list_events("r1")) == 2
