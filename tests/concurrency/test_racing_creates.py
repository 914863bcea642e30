"""Concurrent creates: of one run id, or of one idempotency key, exactly one wins.

All creators wait at a barrier and are released together, on threads (in-memory and real Redis)
and on several OS processes (real Redis). Each contender creates a different pipeline id, so the
stored run names its winner and the test can check that the one told "created" is the one stored.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from race_helpers import (
    CTX,
    create_or_get_outcome,
    create_outcome,
    racing_creates_in_process,
    run_processes,
    run_threads,
    warm_pool,
)

from mpstate import PipelineStateStore, RedisPipelineStateStore

pytestmark = pytest.mark.timeout(60)

CONTENDERS = 24
PROCESSES = 4


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def same_id(count: int) -> list[dict[str, Any]]:
    return [{"runId": "the-run", "pipelineId": f"p{i}", "tenantId": "acme"} for i in range(count)]


def same_key(count: int) -> list[dict[str, Any]]:
    return [
        {"runId": f"run-{i}", "pipelineId": f"p{i}", "tenantId": "acme", "idempotencyKey": "k"}
        for i in range(count)
    ]


def race_on_threads(
    store: PipelineStateStore, runs: list[dict[str, Any]], *, or_get: bool
) -> list[tuple[Any, ...]]:
    if isinstance(store, RedisPipelineStateStore):
        warm_pool(store.client, len(runs))
    start = threading.Barrier(len(runs))

    def creator(i: int) -> tuple[Any, ...]:
        start.wait(30)
        return create_or_get_outcome(store, runs[i]) if or_get else create_outcome(store, runs[i])

    return run_threads(len(runs), creator)


def race_on_processes(
    redis_url: str, prefix: str, runs: list[dict[str, Any]], *, or_get: bool
) -> list[tuple[Any, ...]]:
    start = CTX.Barrier(len(runs))
    shares = [runs[i::PROCESSES] for i in range(PROCESSES)]
    per_process = run_processes(
        racing_creates_in_process,
        [(redis_url, prefix, share, start, or_get) for share in shares],
    )
    return [outcome for outcomes in per_process for outcome in outcomes]


def assert_one_run_id_winner(store: PipelineStateStore, outcomes: list[tuple[Any, ...]]) -> None:
    kinds = Counter(outcome[0] for outcome in outcomes)
    assert kinds == {"created": 1, "exists": len(outcomes) - 1}
    (winner,) = [outcome for outcome in outcomes if outcome[0] == "created"]
    assert all(outcome[1] == "the-run" for outcome in outcomes)
    stored = store.require("the-run")
    assert stored.pipeline_id == winner[2]
    assert stored.version == 1
    assert [event.kind for event in stored.events] == ["run-created"]
    assert [run.run_id for run in store.list_runs()] == ["the-run"]
    assert [run.run_id for run in store.list_runs(tenant_id="acme")] == ["the-run"]


def assert_one_key_winner(store: PipelineStateStore, outcomes: list[tuple[Any, ...]]) -> None:
    kinds = Counter(outcome[0] for outcome in outcomes)
    assert kinds == {"created": 1, "key-in-use": len(outcomes) - 1}
    (winner,) = [outcome[1] for outcome in outcomes if outcome[0] == "created"]
    losers = [outcome for outcome in outcomes if outcome[0] == "key-in-use"]
    assert all(existing == winner for _, _, existing in losers)
    for _, loser, _ in losers:
        assert store.get(loser) is None
    assert [run.run_id for run in store.list_runs()] == [winner]
    assert [run.run_id for run in store.list_runs(idempotency_key="k")] == [winner]
    assert store.require(winner).idempotency_key == "k"


def assert_all_got_the_winner(store: PipelineStateStore, outcomes: list[tuple[Any, ...]]) -> None:
    assert sum(created for _, _, created in outcomes) == 1
    (winner,) = [(run_id, pipeline) for run_id, pipeline, created in outcomes if created]
    assert {(run_id, pipeline) for run_id, pipeline, _ in outcomes} == {winner}
    stored = store.require(winner[0])
    assert (stored.run_id, stored.pipeline_id) == winner
    assert [event.kind for event in stored.events] == ["run-created"]
    assert [run.run_id for run in store.list_runs()] == [winner[0]]


# -- threads, in-memory and real Redis ------------------------------------------------------------


def test_concurrent_creates_of_one_run_id_let_exactly_one_succeed(
    store: PipelineStateStore,
) -> None:
    outcomes = race_on_threads(store, same_id(CONTENDERS), or_get=False)
    assert_one_run_id_winner(store, outcomes)


def test_concurrent_creates_with_one_idempotency_key_let_exactly_one_succeed_and_name_it(
    store: PipelineStateStore,
) -> None:
    outcomes = race_on_threads(store, same_key(CONTENDERS), or_get=False)
    assert_one_key_winner(store, outcomes)


def test_concurrent_create_or_get_of_one_run_id_returns_one_run_created_once(
    store: PipelineStateStore,
) -> None:
    outcomes = race_on_threads(store, same_id(CONTENDERS), or_get=True)
    assert_all_got_the_winner(store, outcomes)


def test_concurrent_create_or_get_with_one_idempotency_key_returns_the_key_holder_to_all(
    store: PipelineStateStore,
) -> None:
    outcomes = race_on_threads(store, same_key(CONTENDERS), or_get=True)
    assert_all_got_the_winner(store, outcomes)


# -- several processes, real Redis ----------------------------------------------------------------


def test_creates_of_one_run_id_from_several_processes_let_exactly_one_succeed(
    redis_url: str, redis_client: Any, prefix: str
) -> None:
    outcomes = race_on_processes(redis_url, prefix, same_id(CONTENDERS), or_get=False)
    assert len(outcomes) == CONTENDERS
    assert_one_run_id_winner(RedisPipelineStateStore(redis_client, prefix=prefix), outcomes)


def test_creates_with_one_idempotency_key_from_several_processes_let_exactly_one_succeed(
    redis_url: str, redis_client: Any, prefix: str
) -> None:
    outcomes = race_on_processes(redis_url, prefix, same_key(CONTENDERS), or_get=False)
    assert len(outcomes) == CONTENDERS
    assert_one_key_winner(RedisPipelineStateStore(redis_client, prefix=prefix), outcomes)


def test_create_or_get_from_several_processes_returns_one_run_created_once(
    redis_url: str, redis_client: Any, prefix: str
) -> None:
    outcomes = race_on_processes(redis_url, prefix, same_id(CONTENDERS), or_get=True)
    assert len(outcomes) == CONTENDERS
    assert_all_got_the_winner(RedisPipelineStateStore(redis_client, prefix=prefix), outcomes)
