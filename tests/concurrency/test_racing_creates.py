"""Concurrent creates: of one run id, or of one idempotency key, exactly one wins.

All creators wait at a barrier and are released together, on threads (in-memory, real Redis and
a real Redis Cluster) and on several OS processes (real Redis and the cluster). Each contender
creates a different pipeline id, so the stored run names its winner and the test can check that
the one told "created" is the one stored.

With an idempotency key the key is claimed in its own slot before the run is created in the
run's slot; a claim whose run still does not exist after a short grace is voided before it is
taken over. The losers of a race mostly find the winner's run within that grace; the rounds test
also runs without it, so the losers void each other's claims (hundreds of them on the cluster),
and each round checks what that leaves: no voided claim created its run, and no loser stays in
any index once it was listed.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from race_helpers import (
    CTX,
    Target,
    create_or_get_outcome,
    create_or_get_rounds_in_process,
    create_outcome,
    racing_creates_in_process,
    run_processes,
    run_threads,
    warm_pool,
)
from redis.cluster import RedisCluster

from mpstate import PipelineRunStatus, PipelineStateStore, RedisPipelineStateStore

pytestmark = pytest.mark.timeout(60)

CONTENDERS = 24
PROCESSES = 4


@pytest.fixture(params=["memory", "redis", "cluster"])
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
    target: Target, runs: list[dict[str, Any]], *, or_get: bool
) -> list[tuple[Any, ...]]:
    start = CTX.Barrier(len(runs))
    shares = [runs[i::PROCESSES] for i in range(PROCESSES)]
    per_process = run_processes(
        racing_creates_in_process,
        [(target.url, target.prefix, share, start, or_get) for share in shares],
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
    target: Target,
) -> None:
    outcomes = race_on_processes(target, same_id(CONTENDERS), or_get=False)
    assert len(outcomes) == CONTENDERS
    assert_one_run_id_winner(target.store(), outcomes)


def test_creates_with_one_idempotency_key_from_several_processes_let_exactly_one_succeed(
    target: Target,
) -> None:
    outcomes = race_on_processes(target, same_key(CONTENDERS), or_get=False)
    assert len(outcomes) == CONTENDERS
    assert_one_key_winner(target.store(), outcomes)


def test_create_or_get_from_several_processes_returns_one_run_created_once(
    target: Target,
) -> None:
    outcomes = race_on_processes(target, same_id(CONTENDERS), or_get=True)
    assert len(outcomes) == CONTENDERS
    assert_all_got_the_winner(target.store(), outcomes)


# -- one idempotency key, many threads in several processes, round after round --------------------

KEY_ROUNDS = 5
THREADS_PER_PROCESS = 12


def keyed_round(round_index: int, count: int) -> list[dict[str, Any]]:
    """``count`` creates of different run ids with the round's one idempotency key."""
    return [
        {
            "runId": f"r{round_index}-{i}",
            "pipelineId": f"p{round_index}-{i}",
            "tenantId": "acme",
            "idempotencyKey": f"key-{round_index}",
        }
        for i in range(count)
    ]


def assert_round_has_one_key_holder(
    target: Target, round_index: int, outcomes: list[tuple[Any, ...]]
) -> None:
    store = target.store()
    assert len(outcomes) == PROCESSES * THREADS_PER_PROCESS
    told_created = sorted({outcome for outcome in outcomes if outcome[2]})
    assert len(told_created) == 1, f"round {round_index}: created {told_created}"
    assert sum(created for _, _, created in outcomes) == 1, outcomes
    (winner,) = [(run_id, pipeline) for run_id, pipeline, created in outcomes if created]
    assert {(run_id, pipeline) for run_id, pipeline, _ in outcomes} == {winner}
    stored = store.require(winner[0])
    assert (stored.pipeline_id, stored.idempotency_key) == (winner[1], f"key-{round_index}")
    assert [event.kind for event in stored.events] == ["run-created"]
    for run in keyed_round(round_index, PROCESSES * THREADS_PER_PROCESS):
        if run["runId"] != winner[0]:
            assert store.get(run["runId"]) is None, run["runId"]
    key = f"key-{round_index}"
    assert [run.run_id for run in store.list_runs(idempotency_key=key)] == [winner[0]]
    claim = target.client.get(store.keys.idempotency("acme", key))
    assert claim is not None and claim.decode().endswith(f":{winner[0]}")


@pytest.mark.parametrize(
    "claim_grace",
    [
        pytest.param(None, id="claim-grace"),
        # Claims voided at once: far more claims are voided, racing each other (the grace makes
        # most losers find the winner's run instead), so the void path itself is raced.
        pytest.param((), id="no-claim-grace"),
    ],
)
def test_create_or_get_with_one_idempotency_key_from_many_threads_in_several_processes_gives_every_caller_the_one_run(  # noqa: E501
    target: Target, claim_grace: tuple[float, ...] | None
) -> None:
    rounds = [keyed_round(r, PROCESSES * THREADS_PER_PROCESS) for r in range(KEY_ROUNDS)]
    start = CTX.Barrier(PROCESSES * THREADS_PER_PROCESS)
    shares = [
        [runs[p * THREADS_PER_PROCESS : (p + 1) * THREADS_PER_PROCESS] for runs in rounds]
        for p in range(PROCESSES)
    ]

    per_process = run_processes(
        create_or_get_rounds_in_process,
        [(target.url, target.prefix, share, start, claim_grace) for share in shares],
        timeout=90,
    )

    for round_index in range(KEY_ROUNDS):
        outcomes = [outcome for rounds_of in per_process for outcome in rounds_of[round_index]]
        assert_round_has_one_key_holder(target, round_index, outcomes)
    store = target.store()
    winners = {run.run_id for run in store.list_runs()}
    assert len(winners) == KEY_ROUNDS
    assert {run.run_id for run in store.list_runs(tenant_id="acme", status="pending")} == winners
    # A voided claim never created its run: a voided run id exists only if it claimed the key
    # again, under a token nobody voided, and won with that one.
    void_sets = scan_keys(target, f"{target.prefix}:run:*:void")
    voided = 0
    for key in void_sets:
        voided += target.client.scard(key)
        run_id = key.decode().split("{", 1)[1].split("}", 1)[0]
        if run_id in winners:
            run = store.require(run_id)
            claim = target.client.get(store.keys.idempotency("acme", run.idempotency_key or ""))
            assert not target.client.sismember(key, claim.split(b":")[0]), key
        else:
            assert store.get(run_id) is None, key
    k = store.keys
    for zsets in [
        [group.everything for group in k.global_groups()],  # every shard
        [group.status(PipelineRunStatus.PENDING) for group in k.global_groups()],
        [k.by_tenant("acme")],
        [k.tenant_group("acme").status(PipelineRunStatus.PENDING)],
    ]:
        found = {m.decode() for zset in zsets for m in target.client.zrange(zset, 0, -1)}
        assert found == winners, zsets
    print(f"{voided} claims of {len(void_sets)} runs voided over {KEY_ROUNDS} rounds")
    if claim_grace == () and isinstance(target.client, RedisCluster):
        assert voided > 0  # (hundreds, usually) or this run did not race the void path at all


def scan_keys(target: Target, pattern: str) -> list[bytes]:
    """Every key matching ``pattern`` (on every master of a cluster)."""
    client = target.client
    if isinstance(client, RedisCluster):
        found: list[bytes] = []
        for node in client.get_primaries():
            found += list(client.get_redis_connection(node).scan_iter(match=pattern, count=1000))
        return found
    return list(client.scan_iter(match=pattern, count=1000))
