"""Webhook deliveries: a delivery id is claimed once per TTL; unmatched callbacks are kept and
counted for operators. Neither belongs to a tenant."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from aio_bridge import BlockingView
from pydantic import ValidationError

from mpstate import InvalidInputError, PipelineStateStore, UnmatchedCallback, UnmatchedReason
from mpstate.deliveries import MAX_DETAIL_LENGTH
from mpstate.fields import MAX_ID_LENGTH, now_ms

StoreFactory = Callable[..., PipelineStateStore]


def unmatched(provider: str = "fal", n: int = 0, **fields: Any) -> UnmatchedCallback:
    fields.setdefault("reason", "unknown-job")
    return UnmatchedCallback(provider=provider, job_id=f"j{n}", at=1_700_000_000_000 + n, **fields)


# -- claiming a delivery ------------------------------------------------------------------------


def test_the_first_claim_of_a_delivery_wins_and_a_repeat_is_refused(
    store: PipelineStateStore,
) -> None:
    assert store.claim_delivery("fal", "req-1", 60) is True
    assert store.claim_delivery("fal", "req-1", 60) is False
    assert store.claim_delivery("fal", "req-1", 0.5) is False


def test_a_delivery_can_be_claimed_again_once_its_ttl_has_passed(
    store: PipelineStateStore,
) -> None:
    assert store.claim_delivery("standard", "msg_1", 0.2) is True
    assert store.claim_delivery("standard", "msg_1", 0.2) is False
    time.sleep(0.35)
    assert store.claim_delivery("standard", "msg_1", 0.2) is True
    assert store.claim_delivery("standard", "msg_1", 0.2) is False


def test_a_released_delivery_is_claimed_again_and_only_that_one(
    store: PipelineStateStore,
) -> None:
    assert store.claim_delivery("fal", "req-1", 60) is True
    assert store.claim_delivery("fal", "req-2", 60) is True

    store.release_delivery("fal", "req-1")  # the receiver could not handle it: 503
    store.release_delivery("fal", "never-claimed")  # nothing to forget: no error

    assert store.claim_delivery("fal", "req-1", 60) is True
    assert store.claim_delivery("fal", "req-1", 60) is False
    assert store.claim_delivery("fal", "req-2", 60) is False


def test_claims_of_other_providers_and_other_delivery_ids_are_independent(
    store: PipelineStateStore,
) -> None:
    assert store.claim_delivery("fal", "d1", 60) is True
    assert store.claim_delivery("replicate", "d1", 60) is True
    assert store.claim_delivery("fal", "d2", 60) is True
    # Ids that a naive "provider:id" key would confuse stay apart.
    assert store.claim_delivery("a:b", "c", 60) is True
    assert store.claim_delivery("a", "b:c", 60) is True
    assert store.claim_delivery("{x}", "ü 🙂", 60) is True
    for provider, delivery_id in [("fal", "d1"), ("replicate", "d1"), ("a:b", "c"), ("a", "b:c")]:
        assert store.claim_delivery(provider, delivery_id, 60) is False


def _claim_in_threads(store: PipelineStateStore, claims: int) -> list[object]:
    """``claims`` threads released together, each claiming one delivery once."""
    barrier = threading.Barrier(claims)
    results: list[object] = [None] * claims

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = store.claim_delivery("fal", "raced", 60)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(claims)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _claim_in_tasks(view: BlockingView, claims: int) -> list[object]:
    """``claims`` asyncio tasks on the async store, gathered (as tests/aio race them)."""

    async def race() -> list[object]:
        attempts = (view.async_store.claim_delivery("fal", "raced", 60) for _ in range(claims))
        return list(await asyncio.gather(*attempts, return_exceptions=True))

    return view.run(race())


@pytest.mark.parametrize("claims", [5, 20])
def test_of_concurrent_claims_of_one_delivery_exactly_one_wins(
    store: PipelineStateStore, claims: int
) -> None:
    if isinstance(store, BlockingView):
        results = _claim_in_tasks(store, claims)
    else:
        results = _claim_in_threads(store, claims)
    assert sorted(results, key=str) == [False] * (claims - 1) + [True]
    assert store.claim_delivery("fal", "raced", 60) is False


BAD_IDS: list[Any] = ["", None, 5, b"fal", "x" * (MAX_ID_LENGTH + 1), "\ud800"]
BAD_TTLS: list[Any] = [0, -1, -0.5, math.nan, math.inf, True, "60", None, 1e300]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_claim_with_a_bad_provider_or_delivery_id_is_refused(
    store: PipelineStateStore, bad: Any
) -> None:
    with pytest.raises(InvalidInputError):
        store.claim_delivery(bad, "d1", 60)
    with pytest.raises(InvalidInputError):
        store.claim_delivery("fal", bad, 60)


@pytest.mark.parametrize("bad_ttl", BAD_TTLS)
def test_a_claim_with_a_bad_ttl_is_refused_and_claims_nothing(
    store: PipelineStateStore, bad_ttl: Any
) -> None:
    with pytest.raises(InvalidInputError):
        store.claim_delivery("fal", "d1", bad_ttl)
    assert store.claim_delivery("fal", "d1", 60) is True


def test_the_longest_ids_can_be_claimed(store: PipelineStateStore) -> None:
    assert store.claim_delivery("p" * MAX_ID_LENGTH, "🙂" * MAX_ID_LENGTH, 60) is True
    assert store.claim_delivery("p" * MAX_ID_LENGTH, "🙂" * MAX_ID_LENGTH, 60) is False


# -- unmatched callbacks ------------------------------------------------------------------------


def test_recorded_callbacks_are_listed_newest_first_exactly_as_recorded(
    store: PipelineStateStore,
) -> None:
    first = unmatched("fal", 1, reason=UnmatchedReason.UNKNOWN_JOB, delivery_id="req-1")
    second = unmatched("replicate", 2, reason="unknown-provider", detail="nobody awaits 🙂")
    third = UnmatchedCallback(provider="fal", reason="other-provider")
    for callback in [first, second, third]:
        store.record_unmatched(callback)

    listed = store.list_unmatched()
    assert listed == [third, second, first]
    assert listed[2].reason == "unknown-job"
    assert type(listed[2].reason) is str
    assert listed[0].job_id is None
    assert listed[0].detail == ""
    assert abs(listed[0].at - now_ms()) < 60_000


def test_a_callback_can_be_recorded_from_its_mapping(store: PipelineStateStore) -> None:
    store.record_unmatched(
        {"provider": "fal", "jobId": "j1", "reason": "unknown-job", "deliveryId": "d", "at": 5}
    )
    assert store.list_unmatched() == [
        UnmatchedCallback(provider="fal", job_id="j1", reason="unknown-job", delivery_id="d", at=5)
    ]


def test_unmatched_callbacks_are_filtered_by_provider_and_limited(
    store: PipelineStateStore,
) -> None:
    recorded = [unmatched("fal" if n % 3 else "replicate", n) for n in range(12)]
    for callback in recorded:
        store.record_unmatched(callback)
    newest_first = recorded[::-1]
    fal = [c for c in newest_first if c.provider == "fal"]

    assert store.list_unmatched() == newest_first
    assert store.list_unmatched(limit=3) == newest_first[:3]
    assert store.list_unmatched(provider="fal") == fal
    assert store.list_unmatched(provider="fal", limit=2) == fal[:2]
    assert store.list_unmatched(provider="replicate", limit=100) == [
        c for c in newest_first if c.provider == "replicate"
    ]
    assert store.list_unmatched(provider="nobody") == []
    assert store.list_unmatched(limit=1) == [recorded[-1]]


def test_an_old_callback_of_one_provider_is_found_behind_many_newer_ones(
    store: PipelineStateStore,
) -> None:
    # More newer callbacks than one page of a filtered read holds on Redis (500).
    store.record_unmatched(unmatched("rare", 0))
    for n in range(1, 601):
        store.record_unmatched(unmatched("busy", n))
    assert [c.job_id for c in store.list_unmatched(provider="rare")] == ["j0"]
    assert [c.job_id for c in store.list_unmatched(provider="busy", limit=2)] == ["j600", "j599"]


def test_only_the_newest_callbacks_up_to_the_cap_are_kept_but_all_are_counted(
    make_store: StoreFactory,
) -> None:
    store = make_store(unmatched_kept=5)
    store.record_unmatched(unmatched("rare", 0))
    recorded = [unmatched("fal", n) for n in range(1, 15)]
    for callback in recorded:
        store.record_unmatched(callback)

    assert store.list_unmatched(limit=100) == recorded[::-1][:5]
    assert store.list_unmatched(provider="rare") == []  # dropped: older than the newest 5
    assert store.count_unmatched() == {("rare", "unknown-job"): 1, ("fal", "unknown-job"): 14}


def test_unmatched_callbacks_are_counted_by_provider_and_reason(
    store: PipelineStateStore,
) -> None:
    assert store.count_unmatched() == {}
    for provider, reason in [
        ("fal", "unknown-job"),
        ("fal", "unknown-job"),
        ("fal", "other-provider"),
        ("replicate", "unknown-job"),
        ("line\nbreak", "unknown-provider"),  # a provider may hold a newline; a reason cannot
    ]:
        store.record_unmatched(UnmatchedCallback(provider=provider, reason=reason))
    assert store.count_unmatched() == {
        ("fal", "unknown-job"): 2,
        ("fal", "other-provider"): 1,
        ("replicate", "unknown-job"): 1,
        ("line\nbreak", "unknown-provider"): 1,
    }


BAD_CALLBACKS: dict[str, Any] = {
    "not a callback": "fal",
    "a list": [("provider", "fal")],
    "no provider": {"reason": "unknown-job"},
    "empty provider": {"provider": "", "reason": "unknown-job"},
    "long provider": {"provider": "p" * (MAX_ID_LENGTH + 1), "reason": "unknown-job"},
    "empty job id": {"provider": "fal", "jobId": "", "reason": "unknown-job"},
    "empty delivery id": {"provider": "fal", "deliveryId": "", "reason": "unknown-job"},
    "no reason": {"provider": "fal"},
    "reason with a newline": {"provider": "fal", "reason": "unknown\njob"},
    "reason not a slug": {"provider": "fal", "reason": "Unknown Job"},
    "reason as bytes": {"provider": "fal", "reason": b"unknown-job"},
    "long reason": {"provider": "fal", "reason": "r" * 65},
    "long detail": {"provider": "fal", "reason": "x", "detail": "d" * (MAX_DETAIL_LENGTH + 1)},
    "detail not text": {"provider": "fal", "reason": "x", "detail": 5},
    "lone surrogate": {"provider": "fal", "reason": "x", "detail": "\ud800"},
    "negative at": {"provider": "fal", "reason": "x", "at": -1},
    "at a bool": {"provider": "fal", "reason": "x", "at": True},
    "at text": {"provider": "fal", "reason": "x", "at": "5"},
    "unknown field": {"provider": "fal", "reason": "x", "runId": "r1"},
}


@pytest.mark.parametrize("bad", BAD_CALLBACKS.values(), ids=BAD_CALLBACKS.keys())
def test_a_bad_callback_is_refused_and_nothing_is_recorded(
    store: PipelineStateStore, bad: Any
) -> None:
    with pytest.raises(InvalidInputError):
        store.record_unmatched(bad)
    assert store.list_unmatched() == []
    assert store.count_unmatched() == {}


def test_the_longest_detail_is_kept_whole(store: PipelineStateStore) -> None:
    callback = unmatched(detail="ü" * MAX_DETAIL_LENGTH)
    store.record_unmatched(callback)
    assert store.list_unmatched() == [callback]


@pytest.mark.parametrize(
    "bad",
    [
        {"provider": ""},
        {"provider": 5},
        {"limit": 0},
        {"limit": -1},
        {"limit": True},
        {"limit": 1.5},
        {"limit": "10"},
    ],
)
def test_listing_with_bad_arguments_is_refused(store: PipelineStateStore, bad: Any) -> None:
    with pytest.raises(InvalidInputError):
        store.list_unmatched(**bad)


def test_a_callback_is_immutable() -> None:
    callback = unmatched()
    with pytest.raises(ValidationError):
        callback.provider = "other"  # type: ignore[misc]


# -- tenancy ------------------------------------------------------------------------------------


def test_a_tenant_view_refuses_every_delivery_operation(store: PipelineStateStore) -> None:
    view = store.for_tenant("acme")
    operations: list[Callable[[], object]] = [
        lambda: view.claim_delivery("fal", "d1", 60),
        lambda: view.record_unmatched(unmatched()),
        view.list_unmatched,
        view.count_unmatched,
    ]
    for operation in operations:
        with pytest.raises(InvalidInputError, match="tenant"):
            operation()
    # Nothing was written through the view; the unscoped store works as usual.
    assert store.claim_delivery("fal", "d1", 60) is True
    assert store.list_unmatched() == []
    assert store.count_unmatched() == {}
