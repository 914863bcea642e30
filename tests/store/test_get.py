"""get / require: the run with or without its log, None or RunNotFoundError when missing."""

from __future__ import annotations

from typing import Any

import pytest

from mpstate import (
    InvalidInputError,
    PipelineStateStore,
    RunNotFoundError,
    RunStarted,
    StepStarted,
)
from mpstate.fields import MAX_ID_LENGTH


def test_get_of_a_missing_run_returns_none(store: PipelineStateStore) -> None:
    assert store.get("missing") is None
    assert store.get("missing", include_events=False) is None


def test_require_of_a_missing_run_raises_run_not_found(store: PipelineStateStore) -> None:
    with pytest.raises(RunNotFoundError) as caught:
        store.require("missing")
    assert caught.value.run_id == "missing"
    assert isinstance(caught.value, LookupError)
    with pytest.raises(RunNotFoundError):
        store.require("missing", include_events=False)


def test_get_returns_the_run_with_its_whole_log_in_seq_order(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "pipelineDefHash": "h"})
    store.append_event("r1", RunStarted(run_id="r1"))
    store.append_event("r1", StepStarted(run_id="r1", step_id="s1", attempt=1))

    run = store.get("r1")

    assert run is not None
    assert [(e.seq, e.kind) for e in run.events] == [
        (1, "run-created"),
        (2, "run-started"),
        (3, "step-started"),
    ]


def test_get_without_events_returns_the_same_record_without_its_log(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    store.append_event("r1", RunStarted(run_id="r1"))

    with_events = store.get("r1")
    without = store.get("r1", include_events=False)

    assert with_events is not None
    assert without is not None
    assert without.events == []
    assert without == with_events.model_copy(update={"events": []})


def test_require_returns_what_get_returns(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    assert store.require("r1") == store.get("r1")
    assert store.require("r1", include_events=False) == store.get("r1", include_events=False)


def test_a_run_returned_by_get_is_a_copy_the_caller_may_change(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"fal": "j"}})
    run = store.require("r1")
    run.pipeline_id = "changed"
    run.external_job_ids["fal"] = "changed"
    run.events.clear()

    again = store.require("r1")
    assert again.pipeline_id == "p"
    assert again.external_job_ids == {"fal": "j"}
    assert len(again.events) == 1


def test_a_run_returned_by_create_is_a_copy_the_caller_may_change(
    store: PipelineStateStore,
) -> None:
    created = store.create({"runId": "r1", "pipelineId": "p", "budget": {"max": 1}})
    created.pipeline_id = "changed"
    assert created.budget is not None
    created.budget["max"] = 99
    stored = store.require("r1")
    assert stored.pipeline_id == "p"
    assert stored.budget == {"max": 1}


@pytest.mark.parametrize("bad_id", ["", None, 5, "x" * (MAX_ID_LENGTH + 1), "\udc80"])
def test_get_and_require_refuse_an_invalid_run_id(store: PipelineStateStore, bad_id: Any) -> None:
    with pytest.raises(InvalidInputError):
        store.get(bad_id)
    with pytest.raises(InvalidInputError):
        store.require(bad_id)
