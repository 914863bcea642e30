"""for_tenant: a view that sees, changes and creates only its own tenant's runs."""

from __future__ import annotations

import pytest

from mpstate import (
    IdempotencyKeyInUseError,
    InvalidInputError,
    LockTimeoutError,
    PipelineRun,
    PipelineStateStore,
    RunAlreadyExistsError,
    RunFilter,
    RunNotFoundError,
    RunStarted,
)


@pytest.fixture
def tenants(store: PipelineStateStore) -> PipelineStateStore:
    """The store with runs of tenant a ("a1", "a2"), tenant b ("b1") and no tenant ("n1")."""
    store.create({"runId": "a1", "pipelineId": "p", "tenantId": "a", "externalJobIds": {"f": "ja"}})
    store.create({"runId": "a2", "pipelineId": "p", "tenantId": "a", "idempotencyKey": "k"})
    store.create({"runId": "b1", "pipelineId": "p", "tenantId": "b", "externalJobIds": {"f": "jb"}})
    store.create({"runId": "n1", "pipelineId": "p", "externalJobIds": {"f": "jn"}})
    return store


def ids(runs: list[PipelineRun]) -> list[str]:
    return [run.run_id for run in runs]


def test_a_view_reports_its_tenant(store: PipelineStateStore) -> None:
    assert store.tenant_id is None
    assert store.for_tenant("a").tenant_id == "a"
    assert store.tenant_id is None


def test_a_view_reads_its_own_runs(tenants: PipelineStateStore) -> None:
    view = tenants.for_tenant("a")
    run = view.get("a1")
    assert run is not None
    assert run == tenants.get("a1")
    assert view.require("a2", include_events=False).idempotency_key == "k"
    assert [e.seq for e in view.list_events("a1")] == [1]


@pytest.mark.parametrize("other", ["b1", "n1"])
def test_a_view_cannot_read_another_tenants_run(tenants: PipelineStateStore, other: str) -> None:
    view = tenants.for_tenant("a")
    assert view.get(other) is None
    assert view.get(other, include_events=False) is None
    with pytest.raises(RunNotFoundError):
        view.require(other)
    with pytest.raises(RunNotFoundError):
        view.list_events(other)


@pytest.mark.parametrize("other", ["b1", "n1"])
def test_a_view_cannot_change_another_tenants_run(tenants: PipelineStateStore, other: str) -> None:
    view = tenants.for_tenant("a")
    before = tenants.require(other)

    with pytest.raises(RunNotFoundError):
        view.update(other, {"status": "running"})
    with pytest.raises(RunNotFoundError):
        view.commit(other, {"error": "x"}, [RunStarted(run_id=other)])
    with pytest.raises(RunNotFoundError):
        view.cancel(other, "not yours")
    with pytest.raises(RunNotFoundError):
        view.append_event(other, RunStarted(run_id=other))
    with pytest.raises(RunNotFoundError), view.lock(other, timeout_ms=0):
        pass
    with pytest.raises(RunNotFoundError):
        view.with_lock(other, lambda run: run)

    assert tenants.require(other) == before
    with tenants.lock(other, timeout_ms=0):
        pass


def test_a_view_changes_its_own_runs(tenants: PipelineStateStore) -> None:
    view = tenants.for_tenant("a")
    assert view.update("a1", {"status": "running"}).version == 2
    assert view.append_event("a1", RunStarted(run_id="a1")) == 2
    assert view.commit("a1", {"currentStepIndex": 1}).run.version == 3
    with view.lock("a1", timeout_ms=0) as held:
        view.update("a1", {"error": "mine"}, fence=held.fence)
    assert view.with_lock("a1", lambda run: run.error) == "mine"
    assert view.cancel("a1", "done").status == "cancelled"
    assert tenants.require("a1").status == "cancelled"


def test_a_view_lists_only_its_tenants_runs(tenants: PipelineStateStore) -> None:
    view = tenants.for_tenant("a")
    assert ids(view.list_runs()) == ["a1", "a2"]
    assert ids(view.list_runs(tenant_id="a")) == ["a1", "a2"]
    assert ids(view.list_runs(RunFilter(tenant_id="a", limit=1, offset=1))) == ["a2"]
    assert ids(view.list_runs(status="pending")) == ["a1", "a2"]
    assert ids(view.list_runs(idempotency_key="k")) == ["a2"]
    assert ids(tenants.for_tenant("b").list_runs()) == ["b1"]
    assert tenants.for_tenant("nobody").list_runs() == []
    assert ids(tenants.list_runs()) == ["a1", "a2", "b1", "n1"]


@pytest.mark.parametrize("other", ["b", "nobody"])
def test_a_view_refuses_a_filter_naming_another_tenant(
    tenants: PipelineStateStore, other: str
) -> None:
    view = tenants.for_tenant("a")
    with pytest.raises(InvalidInputError):
        view.list_runs(tenant_id=other)
    with pytest.raises(InvalidInputError):
        view.list_runs({"tenantId": other})
    with pytest.raises(InvalidInputError):
        view.list_runs(RunFilter(tenant_id=other))


def test_a_view_fills_in_its_tenant_on_create(store: PipelineStateStore) -> None:
    view = store.for_tenant("a")
    created = view.create({"runId": "r1", "pipelineId": "p"})
    assert created.tenant_id == "a"
    assert store.require("r1").tenant_id == "a"
    assert ids(store.list_runs(tenant_id="a")) == ["r1"]
    run, was_created = view.create_or_get({"runId": "r2", "pipelineId": "p"})
    assert was_created
    assert run.tenant_id == "a"
    assert view.create({"runId": "r3", "pipelineId": "p", "tenantId": "a"}).tenant_id == "a"


def test_a_view_refuses_to_create_a_run_for_another_tenant(store: PipelineStateStore) -> None:
    view = store.for_tenant("a")
    with pytest.raises(InvalidInputError):
        view.create({"runId": "r1", "pipelineId": "p", "tenantId": "b"})
    with pytest.raises(InvalidInputError):
        view.create_or_get({"runId": "r1", "pipelineId": "p", "tenantId": "b"})
    assert store.get("r1") is None


def test_a_view_cannot_create_or_get_a_run_id_held_by_another_tenant(
    tenants: PipelineStateStore,
) -> None:
    view = tenants.for_tenant("a")
    with pytest.raises(RunAlreadyExistsError):
        view.create({"runId": "b1", "pipelineId": "p"})
    with pytest.raises(RunAlreadyExistsError):
        view.create_or_get({"runId": "b1", "pipelineId": "p"})
    assert tenants.require("b1").tenant_id == "b"


def test_a_view_gets_its_own_existing_run_from_create_or_get(tenants: PipelineStateStore) -> None:
    view = tenants.for_tenant("a")
    run, created = view.create_or_get({"runId": "a1", "pipelineId": "other"})
    assert not created
    assert run.pipeline_id == "p"


def test_idempotency_keys_in_a_view_belong_to_its_tenant(tenants: PipelineStateStore) -> None:
    view_a = tenants.for_tenant("a")
    view_b = tenants.for_tenant("b")
    with pytest.raises(IdempotencyKeyInUseError) as caught:
        view_a.create({"runId": "a3", "pipelineId": "p", "idempotencyKey": "k"})
    assert caught.value.existing_run_id == "a2"
    run, created = view_a.create_or_get({"runId": "a3", "pipelineId": "p", "idempotencyKey": "k"})
    assert (run.run_id, created) == ("a2", False)
    assert view_b.create({"runId": "b2", "pipelineId": "p", "idempotencyKey": "k"}).tenant_id == "b"
    assert ids(tenants.list_runs(idempotency_key="k")) == ["a2", "b2"]
    assert ids(view_a.list_runs(idempotency_key="k")) == ["a2"]
    assert ids(view_b.list_runs(idempotency_key="k")) == ["b2"]


def test_find_by_external_job_id_hides_other_tenants_runs(tenants: PipelineStateStore) -> None:
    view = tenants.for_tenant("a")
    found = view.find_by_external_job_id("f", "ja")
    assert found is not None
    assert found.run_id == "a1"
    assert view.find_by_external_job_id("f", "jb") is None
    assert view.find_by_external_job_id("f", "jn") is None
    other = tenants.find_by_external_job_id("f", "jb")
    assert other is not None
    assert other.run_id == "b1"


def test_a_view_of_a_view_must_name_the_same_tenant(store: PipelineStateStore) -> None:
    view = store.for_tenant("a")
    assert view.for_tenant("a").tenant_id == "a"
    with pytest.raises(InvalidInputError):
        view.for_tenant("b")


@pytest.mark.parametrize("bad", ["", None, 7])
def test_for_tenant_refuses_an_invalid_tenant_id(store: PipelineStateStore, bad: object) -> None:
    with pytest.raises(InvalidInputError):
        store.for_tenant(bad)  # type: ignore[arg-type]


def test_a_view_shares_state_with_its_store(store: PipelineStateStore) -> None:
    view = store.for_tenant("a")
    view.create({"runId": "r1", "pipelineId": "p"})
    store.update("r1", {"status": "running"})
    run = view.get("r1")
    assert run is not None
    assert run.status == "running"
    with store.lock("r1"), pytest.raises(LockTimeoutError), view.lock("r1", timeout_ms=0):
        pass


def test_a_status_change_through_a_view_moves_the_run_in_tenant_listings(
    tenants: PipelineStateStore,
) -> None:
    view = tenants.for_tenant("a")
    view.update("a1", {"status": "running"})
    assert ids(view.list_runs(status="running")) == ["a1"]
    assert ids(view.list_runs(status="pending")) == ["a2"]
    assert ids(tenants.list_runs(status="running", tenant_id="a")) == ["a1"]
    assert ids(tenants.list_runs(status="running")) == ["a1"]
    assert ids(tenants.list_runs(status="pending")) == ["a2", "b1", "n1"]
