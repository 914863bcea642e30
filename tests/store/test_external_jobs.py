"""find_by_external_job_id: jobs recorded at create or by update, legacy ids, removed jobs."""

from __future__ import annotations

from typing import Any

import pytest

from mpstate import InvalidInputError, PipelineStateStore


def found(store: PipelineStateStore, provider: str, job_id: str) -> str | None:
    run = store.find_by_external_job_id(provider, job_id)
    return None if run is None else run.run_id


def test_a_job_recorded_at_create_is_found(store: PipelineStateStore) -> None:
    store.create(
        {"runId": "r1", "pipelineId": "p", "externalJobIds": {"fal": "f-1", "replicate": "rp-1"}}
    )
    store.create({"runId": "r2", "pipelineId": "p", "externalJobIds": {"fal": "f-2"}})

    run = store.find_by_external_job_id("fal", "f-1")
    assert run is not None
    assert run.run_id == "r1"
    assert run.events == []
    assert found(store, "replicate", "rp-1") == "r1"
    assert found(store, "fal", "f-2") == "r2"


def test_a_job_recorded_by_update_is_found_with_the_current_record(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    assert found(store, "fal", "f-1") is None

    store.update("r1", {"externalJobIds": {"fal": "f-1"}})
    store.update("r1", {"status": "suspended"})

    run = store.find_by_external_job_id("fal", "f-1")
    assert run is not None
    assert run == store.get("r1", include_events=False)
    assert run.version == 3


def test_a_job_recorded_by_commit_is_found(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p"})
    store.commit(
        "r1",
        {"status": "suspended", "external_job_ids": {"fal": "f-1"}},
        [{"kind": "run-suspended", "runId": "r1", "reason": "webhook", "resumeToken": "t"}],
    )
    assert found(store, "fal", "f-1") == "r1"


@pytest.mark.parametrize(
    ("legacy", "provider", "job_id"),
    [
        ("replicate:abc", "replicate", "abc"),
        ("replicate:abc:def", "replicate", "abc:def"),
        ("fal:{job} 1", "fal", "{job} 1"),
    ],
)
def test_a_legacy_provider_colon_job_id_is_found(
    store: PipelineStateStore, legacy: str, provider: str, job_id: str
) -> None:
    store.create({"runId": "at-create", "pipelineId": "p", "externalJobId": legacy})
    assert found(store, provider, job_id) == "at-create"
    assert found(store, provider, legacy) is None

    store.create({"runId": "by-update", "pipelineId": "p"})
    store.update("by-update", {"external_job_id": f"other:{job_id}"})
    assert found(store, "other", job_id) == "by-update"


def test_a_job_removed_from_the_run_is_no_longer_found(store: PipelineStateStore) -> None:
    store.create(
        {
            "runId": "r1",
            "pipelineId": "p",
            "externalJobIds": {"fal": "f-1", "replicate": "rp-1"},
            "externalJobId": "legacy:l-1",
        }
    )
    store.update("r1", {"externalJobIds": {"fal": "f-2"}, "externalJobId": None})

    assert found(store, "fal", "f-1") is None
    assert found(store, "replicate", "rp-1") is None
    assert found(store, "legacy", "l-1") is None
    assert found(store, "fal", "f-2") == "r1"


def test_a_legacy_job_replaced_by_another_is_no_longer_found(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobId": "fal:old"})
    store.update("r1", {"externalJobId": "fal:new"})
    assert found(store, "fal", "old") is None
    assert found(store, "fal", "new") == "r1"


def test_the_same_job_id_under_two_providers_names_two_runs(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"fal": "same"}})
    store.create({"runId": "r2", "pipelineId": "p", "externalJobIds": {"replicate": "same"}})
    assert found(store, "fal", "same") == "r1"
    assert found(store, "replicate", "same") == "r2"


def test_provider_and_job_id_do_not_run_together(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"a:b": "c"}})
    store.create({"runId": "r2", "pipelineId": "p", "externalJobIds": {"a": "b:c"}})
    assert found(store, "a:b", "c") == "r1"
    assert found(store, "a", "b:c") == "r2"


def test_an_unknown_job_is_not_found(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"fal": "f-1"}})
    assert found(store, "fal", "nope") is None
    assert found(store, "nope", "f-1") is None
    assert found(store, "FAL", "f-1") is None


@pytest.mark.parametrize(("provider", "job_id"), [("", "j"), ("p", ""), (None, "j"), ("p", 3)])
def test_find_by_external_job_id_refuses_invalid_ids(
    store: PipelineStateStore, provider: Any, job_id: Any
) -> None:
    with pytest.raises(InvalidInputError):
        store.find_by_external_job_id(provider, job_id)
