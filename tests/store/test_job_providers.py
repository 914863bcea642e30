"""find_job_providers: which providers recorded a job id, so a receiver can tell a callback under
the wrong provider name from one for a job nobody recorded."""

from __future__ import annotations

from typing import Any

import pytest

from mpstate import InvalidInputError, PipelineStateStore, RunStarted
from mpstate.fields import MAX_ID_LENGTH


def test_a_job_recorded_under_one_provider_names_that_provider(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"veo": "J"}})

    # A webhook for J arrives as provider "video": not found there, but recorded under "veo".
    assert store.find_by_external_job_id("video", "J") is None
    assert store.find_job_providers("J") == ["veo"]
    found = store.find_by_external_job_id("veo", "J")
    assert found is not None
    assert found.run_id == "r1"


def test_the_same_job_id_under_two_providers_on_two_runs_names_both(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"veo": "same"}})
    store.create({"runId": "r2", "pipelineId": "p", "externalJobIds": {"fal": "same"}})
    assert store.find_job_providers("same") == ["fal", "veo"]


def test_the_same_job_id_under_two_providers_of_one_run_names_both(
    store: PipelineStateStore,
) -> None:
    store.create(
        {"runId": "r1", "pipelineId": "p", "externalJobIds": {"b": "J", "a": "J", "c": "K"}}
    )
    assert store.find_job_providers("J") == ["a", "b"]
    assert store.find_job_providers("K") == ["c"]


def test_jobs_recorded_by_update_commit_and_the_legacy_field_are_named(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobId": "legacy:J"})
    store.update("r1", {"externalJobIds": {"fal": "J"}})
    store.commit(
        "r1", {"externalJobIds": {"fal": "J", "replicate": "J"}}, [RunStarted(run_id="r1")]
    )
    assert store.find_job_providers("J") == ["fal", "legacy", "replicate"]


def test_an_unknown_job_id_names_no_provider(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"fal": "f-1"}})
    assert store.find_job_providers("nope") == []
    assert store.find_job_providers("fal") == []  # a provider name is not a job id
    assert store.find_job_providers("F-1") == []


def test_provider_and_job_id_do_not_run_together(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"a:b": "c"}})
    store.create({"runId": "r2", "pipelineId": "p", "externalJobIds": {"a": "b:c"}})
    store.create({"runId": "r3", "pipelineId": "p", "externalJobIds": {"{x}": "ü 🙂{}"}})
    assert store.find_job_providers("c") == ["a:b"]
    assert store.find_job_providers("b:c") == ["a"]
    assert store.find_job_providers("ü 🙂{}") == ["{x}"]


def test_jobs_of_every_tenant_are_named_on_the_unscoped_store(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "tenantId": "t1", "externalJobIds": {"a": "J"}})
    store.for_tenant("t2").create({"runId": "r2", "pipelineId": "p", "externalJobIds": {"b": "J"}})
    assert store.find_job_providers("J") == ["a", "b"]


def test_a_tenant_view_refuses_it(store: PipelineStateStore) -> None:
    # It would tell a tenant that another tenant's run recorded the job.
    store.create({"runId": "r1", "pipelineId": "p", "tenantId": "t1", "externalJobIds": {"a": "J"}})
    for tenant in ["t1", "t2"]:
        with pytest.raises(InvalidInputError, match="tenant"):
            store.for_tenant(tenant).find_job_providers("J")


@pytest.mark.parametrize("job_id", ["", None, 3, b"J", "x" * (MAX_ID_LENGTH + 1), "\ud800"])
def test_an_invalid_job_id_is_refused(store: PipelineStateStore, job_id: Any) -> None:
    with pytest.raises(InvalidInputError):
        store.find_job_providers(job_id)


def test_the_longest_job_id_works(store: PipelineStateStore) -> None:
    job_id = "{:}" * (MAX_ID_LENGTH // 3)
    store.create({"runId": "r1", "pipelineId": "p", "externalJobIds": {"fal": job_id}})
    assert store.find_job_providers(job_id) == ["fal"]
