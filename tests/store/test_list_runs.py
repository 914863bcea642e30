"""list_runs: order, every combination of filter fields, paging, and the ways to pass a filter."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mpstate import (
    InMemoryPipelineStateStore,
    InvalidInputError,
    PipelineRunStatus,
    PipelineStateStore,
    RunFilter,
    VersionConflictError,
)
from mpstate.filters import MAX_PAGE_SIZE

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STATUSES = list(PipelineRunStatus)
TENANTS = (None, "t1", "t2")
#: Many tenants, so one idempotency key can be held by many runs (once per tenant).
MANY_TENANTS = (None, *(f"t{n}" for n in range(1, 10)))


@dataclass(frozen=True)
class Made:
    """What the test knows about a run it created (the brute-force side of each comparison)."""

    run_id: str
    created_at: datetime
    tenant_id: str | None
    idempotency_key: str | None
    status: PipelineRunStatus


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def make_dataset(
    store: PipelineStateStore, count: int = 24, tenants: tuple[str | None, ...] = TENANTS
) -> list[Made]:
    """Runs with mixed tenants, keys and statuses, created out of order, with created_at ties.

    Tenants, keys and statuses are drawn from a seeded generator so that they vary independently
    (an idempotency key is held at most once per tenant, so a taken one is left out).
    """
    rng = random.Random(20240501)
    made: list[Made] = []
    used_keys: set[tuple[str | None, str]] = set()
    for i in range(count):
        run_id = f"run-{(i * 7) % count:02d}"
        tenant = rng.choice(tenants)
        key = rng.choice(("k1", "k1", "k2", None))
        if key is not None and (tenant, key) in used_keys:
            key = None
        if key is not None:
            used_keys.add((tenant, key))
        status = rng.choice(STATUSES)
        document: dict[str, Any] = {
            "runId": run_id,
            "pipelineId": "p",
            "createdAt": at(i // 2).isoformat(),
            "tenantId": tenant,
            "idempotencyKey": key,
        }
        store.create(document)
        if status is not PipelineRunStatus.PENDING:
            store.update(run_id, {"status": status.value})
        made.append(Made(run_id, at(i // 2), tenant, key, status))
    return made


def expected(made: list[Made], **criteria: Any) -> list[str]:
    """The run ids a filter must return, computed by brute force from what was created."""
    status = criteria.get("status")
    statuses = None if status is None else {PipelineRunStatus(s) for s in _as_list(status)}
    selected = [
        m
        for m in made
        if (statuses is None or m.status in statuses)
        and ("tenant_id" not in criteria or m.tenant_id == criteria["tenant_id"])
        and ("idempotency_key" not in criteria or m.idempotency_key == criteria["idempotency_key"])
        and ("since" not in criteria or m.created_at >= criteria["since"])
        and ("until" not in criteria or m.created_at <= criteria["until"])
    ]
    selected.sort(key=lambda m: (m.created_at, m.run_id))
    offset = criteria.get("offset", 0)
    limit = criteria.get("limit")
    page = selected[offset:] if limit is None else selected[offset : offset + limit]
    return [m.run_id for m in page]


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value)


def ids(runs: list[Any]) -> list[str]:
    return [run.run_id for run in runs]


# -- every combination of filter fields -----------------------------------------------------------

SELECTION_CHOICES: dict[str, list[Any]] = {
    "status": ["running", ["pending", "completed"], PipelineRunStatus.CANCELLED, list(STATUSES)],
    "tenant_id": ["t1", "t2"],
    "idempotency_key": ["k1"],
    "since": [at(2)],
    "until": [at(6)],
}
PAGING_CHOICES: dict[str, list[int]] = {"limit": [1, 3, 50], "offset": [0, 2, 40]}
SELECTION_SUBSETS = [
    subset
    for size in range(len(SELECTION_CHOICES) + 1)
    for subset in itertools.combinations(SELECTION_CHOICES, size)
]


def filters_for(fields: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Every filter setting exactly ``fields`` (plus every paging subset), from the choices."""
    for paging_size in range(len(PAGING_CHOICES) + 1):
        for paging in itertools.combinations(PAGING_CHOICES, paging_size):
            names = [*fields, *paging]
            choices = [SELECTION_CHOICES.get(n) or PAGING_CHOICES[n] for n in names]
            for values in itertools.product(*choices):
                yield dict(zip(names, values, strict=True))


@pytest.mark.parametrize(
    "fields", SELECTION_SUBSETS, ids=["+".join(s) or "no-filter" for s in SELECTION_SUBSETS]
)
def test_every_combination_of_filter_fields_matches_a_brute_force_selection(
    store: PipelineStateStore, fields: tuple[str, ...]
) -> None:
    made = make_dataset(store)
    checked = 0
    for criteria in filters_for(fields):
        assert ids(store.list_runs(**criteria)) == expected(made, **criteria), criteria
        checked += 1
    assert checked >= 16


def test_the_dataset_exercises_every_filter_value() -> None:
    # Guard against a dataset where a filter could pass by selecting nothing.
    made = make_dataset(InMemoryPipelineStateStore())
    assert {m.status for m in made} == set(STATUSES)
    assert {m.tenant_id for m in made} == {None, "t1", "t2"}
    assert len({m.created_at for m in made}) < len(made)
    for name, choices in SELECTION_CHOICES.items():
        for value in choices:
            selected = expected(made, **{name: value})
            assert selected, (name, value)
            if value != list(STATUSES):
                assert len(selected) < len(made), (name, value)
    assert len(expected(made, tenant_id="t2", since=at(2), until=at(6))) >= 2
    assert len(expected(made, tenant_id="t1", status=["pending", "completed"])) >= 2


# -- order ------------------------------------------------------------------------------------


def test_list_runs_with_no_filter_returns_every_run_by_created_at_then_run_id(
    store: PipelineStateStore,
) -> None:
    made = make_dataset(store)
    listed = store.list_runs()
    assert ids(listed) == [m.run_id for m in sorted(made, key=lambda m: (m.created_at, m.run_id))]
    assert ids(listed) == expected(made)


def test_runs_with_the_same_created_at_are_ordered_by_run_id(store: PipelineStateStore) -> None:
    for run_id in ["b", "a", "c", "B", "ä", "a0"]:
        store.create({"runId": run_id, "pipelineId": "p", "createdAt": T0.isoformat()})
    store.create({"runId": "0-earliest", "pipelineId": "p", "createdAt": at(-1).isoformat()})
    assert ids(store.list_runs()) == ["0-earliest", "B", "a", "a0", "b", "c", "ä"]


@pytest.mark.parametrize("offset", [10**6, 2**40, 10**21])
def test_an_offset_past_every_run_lists_nothing(store: PipelineStateStore, offset: int) -> None:
    # Ranks past 2^63 are refused by Redis' ZRANGE: such an offset must list nothing, not fail.
    for run_id in ["a", "b"]:
        store.create({"runId": run_id, "pipelineId": "p", "createdAt": T0.isoformat()})
    assert store.list_runs(offset=offset, limit=1) == []
    assert store.list_runs(offset=offset) == []
    assert store.list_runs(offset=offset, limit=1, status="pending") == []


def test_listed_runs_come_without_events_and_match_get(store: PipelineStateStore) -> None:
    make_dataset(store, count=6)
    for run in store.list_runs():
        assert run.events == []
        assert run == store.get(run.run_id, include_events=False)


def test_list_runs_on_an_empty_store_returns_nothing(store: PipelineStateStore) -> None:
    assert store.list_runs() == []
    assert store.list_runs(status="running", tenant_id="t", limit=5, offset=3) == []


# -- since / until ----------------------------------------------------------------------------


def test_since_and_until_are_inclusive_at_millisecond_precision(store: PipelineStateStore) -> None:
    for ms, run_id in [(999, "before"), (1000, "on-since"), (2000, "on-until"), (2001, "after")]:
        created = T0 + timedelta(milliseconds=ms)
        store.create({"runId": run_id, "pipelineId": "p", "createdAt": created.isoformat()})
    since = T0 + timedelta(milliseconds=1000)
    until = T0 + timedelta(milliseconds=2000)
    assert ids(store.list_runs(since=since, until=until)) == ["on-since", "on-until"]
    assert ids(store.list_runs(since=since)) == ["on-since", "on-until", "after"]
    assert ids(store.list_runs(until=until)) == ["before", "on-since", "on-until"]
    assert ids(store.list_runs(since=since, until=since)) == ["on-since"]


def test_since_and_until_accept_iso_strings_and_naive_utc_datetimes(
    store: PipelineStateStore,
) -> None:
    for minute in range(5):
        store.create(
            {"runId": f"r{minute}", "pipelineId": "p", "createdAt": at(minute).isoformat()}
        )
    naive_since = at(1).replace(tzinfo=None)
    assert ids(store.list_runs(since=naive_since, until="2024-05-01T12:03:00.000Z")) == [
        "r1",
        "r2",
        "r3",
    ]
    assert ids(store.list_runs(since="2024-05-01T14:02:00+02:00")) == ["r2", "r3", "r4"]


def test_created_at_before_1970_and_far_in_the_future_sort_and_filter_correctly(
    store: PipelineStateStore,
) -> None:
    moments = {
        "ancient": "1901-01-01T00:00:00.001Z",
        "pre-epoch": "1969-12-31T23:59:59.999Z",
        "epoch": "1970-01-01T00:00:00.000Z",
        "now": "2024-05-01T12:00:00.000Z",
        "far-future": "9999-12-31T23:59:59.999Z",
    }
    for run_id, created in reversed(moments.items()):
        store.create({"runId": run_id, "pipelineId": "p", "createdAt": created})
    assert ids(store.list_runs()) == list(moments)
    assert ids(store.list_runs(until="1970-01-01T00:00:00.000Z")) == [
        "ancient",
        "pre-epoch",
        "epoch",
    ]
    assert ids(store.list_runs(since="1969-12-31T23:59:59.999Z", until="2024-05-01T12:00:00Z")) == [
        "pre-epoch",
        "epoch",
        "now",
    ]
    assert ids(store.list_runs(since="9999-12-31T23:59:59.999Z")) == ["far-future"]
    for run_id, created in moments.items():
        assert store.require(run_id).created_at == datetime.fromisoformat(created)


# -- paging -----------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 4, 7, 25, 100])
def test_paging_with_limit_and_offset_yields_every_run_once_in_order(
    store: PipelineStateStore, page_size: int
) -> None:
    made = make_dataset(store, count=25)
    everything = ids(store.list_runs())
    paged: list[str] = []
    for offset in range(0, 30, page_size):
        page = ids(store.list_runs(limit=page_size, offset=offset))
        assert len(page) <= page_size
        paged.extend(page)
    assert paged == everything == expected(made)


@pytest.mark.parametrize(
    "criteria",
    [
        {"status": ["running", "pending", "cancelled"]},
        {"tenant_id": "t5", "status": ["completed", "failed", "suspended", "running"]},
        {"idempotency_key": "k1", "status": ["running", "suspended", "failed", "pending"]},
        {"idempotency_key": "k1", "since": at(1)},
        {"tenant_id": "t3", "since": at(4), "until": at(12)},
    ],
    ids=["statuses", "tenant-statuses", "key-statuses", "key-since", "tenant-window"],
)
def test_paging_through_a_filtered_selection_yields_each_match_once_in_order(
    store: PipelineStateStore, criteria: dict[str, Any]
) -> None:
    made = make_dataset(store, count=30, tenants=MANY_TENANTS)
    want = expected(made, **criteria)
    assert len(want) >= 3
    for page_size in (1, 2, 3):
        paged: list[str] = []
        for offset in range(0, len(want) + page_size, page_size):
            paged.extend(ids(store.list_runs(**criteria, limit=page_size, offset=offset)))
        assert paged == want, page_size


NEWEST_FIRST_CRITERIA: list[dict[str, Any]] = [
    {},
    {"status": "running"},
    {"status": ["pending", "completed", "suspended"]},
    {"tenant_id": "t1"},
    {"tenant_id": "t2", "status": list(STATUSES)},
    {"since": at(2), "until": at(6)},
    {"idempotency_key": "k1"},
]


@pytest.mark.parametrize(
    "criteria", NEWEST_FIRST_CRITERIA, ids=[str(sorted(c)) for c in NEWEST_FIRST_CRITERIA]
)
def test_newest_first_is_the_same_selection_in_reverse_and_pages_from_the_newest(
    store: PipelineStateStore, criteria: dict[str, Any]
) -> None:
    made = make_dataset(store)
    want = list(reversed(expected(made, **criteria)))
    assert len(want) >= 2
    assert ids(store.list_runs(**criteria, newest_first=True)) == want
    for size in (1, 3):
        paged: list[str] = []
        for offset in range(0, len(want) + size, size):
            page = store.list_runs(**criteria, newest_first=True, limit=size, offset=offset)
            assert len(page) <= size
            paged.extend(ids(page))
        assert paged == want, size


DEEP_CRITERIA: list[dict[str, Any]] = [
    {},
    {"status": "running"},
    {"status": ["pending", "running"]},
    {"since": at(5), "until": at(40)},
]


@pytest.mark.parametrize("criteria", DEEP_CRITERIA, ids=["all", "status", "statuses", "window"])
def test_a_page_deep_into_a_large_selection_is_its_slice_in_either_order(
    store: PipelineStateStore, criteria: dict[str, Any]
) -> None:
    # 300 runs, 5 to a created_at. On Redis, a listing without a tenant merges the global
    # shards, and a page past the first few dozen runs is found by counting, not by reading
    # every run before it (mpstate/redis/paging.py).
    made = []
    for n in range(300):
        run_id = f"deep-{(n * 37) % 300:03d}"
        status = PipelineRunStatus.RUNNING if n % 3 == 0 else PipelineRunStatus.PENDING
        store.create({"runId": run_id, "pipelineId": "p", "createdAt": at(n // 5).isoformat()})
        if status is PipelineRunStatus.RUNNING:
            store.update(run_id, {"status": "running"})
        made.append(Made(run_id, at(n // 5), None, None, status))
    want = expected(made, **criteria)
    for newest_first in (False, True):
        order = want[::-1] if newest_first else want
        for limit in (1, 7, 40):
            for offset in (0, 3, 66, 101, 150, len(order) - limit, len(order) - 1, len(order)):
                page = store.list_runs(
                    **criteria, limit=limit, offset=offset, newest_first=newest_first
                )
                assert ids(page) == order[offset : offset + limit], (newest_first, limit, offset)


def test_an_offset_past_the_end_returns_nothing(store: PipelineStateStore) -> None:
    make_dataset(store, count=5)
    assert store.list_runs(offset=5) == []
    assert store.list_runs(offset=500, limit=3) == []


def test_the_largest_page_size_is_accepted(store: PipelineStateStore) -> None:
    make_dataset(store, count=3)
    assert len(store.list_runs(limit=MAX_PAGE_SIZE)) == 3


# -- ways to pass a filter --------------------------------------------------------------------


def test_a_filter_may_be_a_run_filter_a_dict_in_either_spelling_or_keywords(
    store: PipelineStateStore,
) -> None:
    made = make_dataset(store)
    want = expected(made, status=["running", "pending"], tenant_id="t1", since=at(1), limit=5)
    assert len(want) >= 2

    as_model = RunFilter(status=["running", "pending"], tenant_id="t1", since=at(1), limit=5)
    camel: dict[str, Any] = {
        "status": ["running", "pending"],
        "tenantId": "t1",
        "since": at(1),
        "limit": 5,
    }
    snake: dict[str, Any] = {
        "status": ["running", "pending"],
        "tenant_id": "t1",
        "since": at(1),
        "limit": 5,
    }

    assert ids(store.list_runs(as_model)) == want
    assert ids(store.list_runs(filter=as_model)) == want
    assert ids(store.list_runs(camel)) == want
    assert ids(store.list_runs(snake)) == want
    assert ids(store.list_runs(**snake)) == want
    assert (
        ids(
            store.list_runs(
                RunFilter(status=["running", "pending"]), tenant_id="t1", since=at(1), limit=5
            )
        )
        == want
    )
    assert (
        ids(
            store.list_runs({"tenantId": "t1"}, status=["running", "pending"], since=at(1), limit=5)
        )
        == want
    )


@pytest.mark.parametrize(
    "criteria",
    [
        {"limit": 0},
        {"limit": MAX_PAGE_SIZE + 1},
        {"offset": -1},
        {"since": at(5), "until": at(4)},
        {"status": []},
        {"status": "sleeping"},
        {"status": ["running", "sleeping"]},
        {"tenant_id": ""},
        {"no_such_field": 1},
        {"since": "yesterday"},
    ],
    ids=[
        "zero-limit",
        "huge-limit",
        "negative-offset",
        "since-after-until",
        "no-status",
        "unknown-status",
        "one-unknown-status",
        "empty-tenant",
        "unknown-field",
        "bad-date",
    ],
)
def test_an_invalid_filter_is_refused(store: PipelineStateStore, criteria: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        store.list_runs(**criteria)
    with pytest.raises(InvalidInputError):
        store.list_runs(criteria)


@pytest.mark.parametrize("not_a_filter", ["status=running", ["running"], 3])
def test_a_filter_that_is_not_a_mapping_is_refused(
    store: PipelineStateStore, not_a_filter: Any
) -> None:
    with pytest.raises(InvalidInputError):
        store.list_runs(not_a_filter)


# -- status changes -----------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [None, "t1"])
def test_a_status_change_moves_the_run_between_status_results(
    store: PipelineStateStore, tenant: str | None
) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "tenantId": tenant})
    store.create({"runId": "r2", "pipelineId": "p", "tenantId": tenant})
    scope: dict[str, Any] = {} if tenant is None else {"tenant_id": tenant}

    def by_status() -> dict[str, list[str]]:
        return {s.value: ids(store.list_runs(status=s, **scope)) for s in STATUSES}

    assert by_status()["pending"] == ["r1", "r2"]
    for status in ["running", "suspended", "running", "completed"]:
        store.update("r1", {"status": status})
        listing = by_status()
        assert listing[status] == ["r1"]
        assert listing["pending"] == ["r2"]
        assert sum(len(v) for v in listing.values()) == 2
    store.update("r1", {"status": "completed"})
    assert by_status()["completed"] == ["r1"]
    store.commit("r2", {"status": "failed"})
    listing = by_status()
    assert listing["failed"] == ["r2"]
    assert listing["pending"] == []
    assert ids(store.list_runs(status=["completed", "failed"], **scope)) == ["r1", "r2"]
    assert ids(store.list_runs(**scope)) == ["r1", "r2"]


@pytest.mark.parametrize("status", STATUSES, ids=[s.value for s in STATUSES])
def test_a_run_created_with_a_status_is_listed_under_it(
    store: PipelineStateStore, status: PipelineRunStatus
) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "tenantId": "t", "status": status.value})
    store.create({"runId": "r2", "pipelineId": "p", "status": status.value})
    assert ids(store.list_runs(status=status)) == ["r1", "r2"]
    assert ids(store.list_runs(status=status, tenant_id="t")) == ["r1"]
    others = [s for s in STATUSES if s is not status]
    assert store.list_runs(status=others) == []
    assert store.list_runs(status=others, tenant_id="t") == []


def test_a_refused_status_change_leaves_the_run_in_its_status_results(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "tenantId": "t"})
    store.update("r1", {"status": "failed"})
    with pytest.raises(Exception):  # noqa: B017 - any refusal; the listing is what is checked
        store.update("r1", {"status": "running"})
    assert ids(store.list_runs(status="failed")) == ["r1"]
    assert ids(store.list_runs(status="failed", tenant_id="t")) == ["r1"]
    assert store.list_runs(status="running") == []


# -- counts by status -----------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [None, "t1", "t2"])
def test_count_by_status_counts_every_status_of_the_selection(
    store: PipelineStateStore, tenant: str | None
) -> None:
    made = make_dataset(store)
    want = {
        status: sum(1 for m in made if m.status is status and tenant in (None, m.tenant_id))
        for status in PipelineRunStatus
    }
    assert store.count_by_status(tenant) == want
    assert sum(want.values()) == len(expected(made, **({"tenant_id": tenant} if tenant else {})))


def test_count_by_status_follows_a_status_change(store: PipelineStateStore) -> None:
    store.create({"runId": "r1", "pipelineId": "p", "tenantId": "t1"})
    assert store.count_by_status()[PipelineRunStatus.PENDING] == 1
    store.update("r1", {"status": "running"})
    counts = store.count_by_status("t1")
    assert (counts[PipelineRunStatus.PENDING], counts[PipelineRunStatus.RUNNING]) == (0, 1)


def test_a_tenant_view_counts_only_its_tenant_and_refuses_another(
    store: PipelineStateStore,
) -> None:
    made = make_dataset(store)
    view = store.for_tenant("t1")
    assert view.count_by_status() == store.count_by_status("t1")
    assert sum(view.count_by_status().values()) == sum(m.tenant_id == "t1" for m in made)
    with pytest.raises(InvalidInputError, match="scoped to tenant"):
        view.count_by_status("t2")


def test_a_refused_status_change_leaves_the_counts_as_they_were(store: PipelineStateStore) -> None:
    # A step finishing after its run was cancelled: the late write is refused, and the status it
    # asked for must not be counted (the Redis store indexes a status ahead of the write).
    store.create({"runId": "r1", "pipelineId": "p", "tenantId": "t1"})
    running = store.update("r1", {"status": "running"})
    store.cancel("r1", "operator")
    with pytest.raises(VersionConflictError):
        store.update("r1", {"status": "completed"}, expected_version=running.version)
    for tenant in (None, "t1"):
        counts = store.count_by_status(tenant)
        assert (counts[PipelineRunStatus.CANCELLED], counts[PipelineRunStatus.COMPLETED]) == (1, 0)
    assert ids(store.list_runs(status="completed")) == []
