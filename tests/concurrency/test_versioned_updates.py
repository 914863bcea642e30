"""Versioned updates and commits under contention: no update is lost, no seq is skipped or reused.

Every writer does the read-modify-write the Celery layer does (read the run, compute the new
value, write it back with ``expected_version``) and retries on ``VersionConflictError``. The
control test does the same without ``expected_version`` and shows that updates are then lost: the
workload really races, so the exact totals of the other tests are the compare-and-set's doing.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from race_helpers import (
    CTX,
    Target,
    cas_increments_in_process,
    commit_progress_events,
    increment_blindly,
    increment_with_retries,
    run_processes,
    run_threads,
    warm_pool,
)

from mpstate import PipelineStateStore, RedisPipelineStateStore

pytestmark = pytest.mark.timeout(60)

WRITERS = 20
INCREMENTS = 10


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """In-memory, real Redis and a real cluster: fakeredis says nothing about real concurrency."""
    return str(request.param)


def new_run(store: PipelineStateStore, run_id: str = "contended") -> str:
    store.create({"runId": run_id, "pipelineId": "p"})
    if isinstance(store, RedisPipelineStateStore):
        warm_pool(store.client, WRITERS + 2)
    return run_id


def test_concurrent_compare_and_set_increments_are_never_lost(store: PipelineStateStore) -> None:
    run_id = new_run(store)
    start = threading.Barrier(WRITERS)

    def writer(_: int) -> int:
        start.wait(30)
        return increment_with_retries(store, run_id, INCREMENTS)

    conflicts = sum(run_threads(WRITERS, writer))

    run = store.require(run_id, include_events=False)
    assert run.cost_usd == WRITERS * INCREMENTS
    assert run.version == 1 + WRITERS * INCREMENTS
    # The writers really interleaved: some of them read a version that was gone when they wrote.
    assert conflicts > 0


def test_blind_read_modify_write_loses_updates_which_is_why_expected_version_exists(
    store: PipelineStateStore,
) -> None:
    """Control: the same workload without ``expected_version`` ends below the true total."""
    run_id = new_run(store)
    start = threading.Barrier(WRITERS)
    increments = 5

    def writer(_: int) -> None:
        start.wait(30)
        increment_blindly(store, run_id, increments, pause=0.001)

    run_threads(WRITERS, writer)

    run = store.require(run_id, include_events=False)
    # Every write was applied (the version counts them) but writers overwrote each other's sums.
    assert run.version == 1 + WRITERS * increments
    assert run.cost_usd < WRITERS * increments


@pytest.mark.parametrize("guarded", [True, False], ids=["compare-and-set", "unconditional"])
def test_concurrent_commits_give_their_events_contiguous_unique_seqs(
    store: PipelineStateStore, guarded: bool
) -> None:
    run_id = new_run(store)
    start = threading.Barrier(WRITERS)
    commits = 5

    def writer(index: int) -> list[tuple[int, ...]]:
        start.wait(30)
        return commit_progress_events(store, run_id, index, commits, guarded=guarded)

    given = run_threads(WRITERS, writer)

    log = store.list_events(run_id)
    successful = [seqs for per_writer in given for seqs in per_writer]
    appended = sum(len(seqs) for seqs in successful)
    assert len(successful) == WRITERS * commits
    # seqs 1..n, no gap and no duplicate; run-created is 1 and every successful commit's events
    # (and only those: refused attempts appended nothing) follow.
    assert [event.seq for event in log] == list(range(1, len(log) + 1))
    assert len(log) == 1 + appended
    assert log[0].kind == "run-created"
    # Each commit got consecutive seqs, and they are the seqs its own events were stored under.
    by_seq = {event.seq: event for event in log}
    for writer_index, per_writer in enumerate(given):
        for commit_index, seqs in enumerate(per_writer):
            assert list(seqs) == list(range(seqs[0], seqs[0] + len(seqs)))
            for k, seq in enumerate(seqs):
                event: Any = by_seq[seq]
                assert event.message == f"{writer_index}:{commit_index}:{k}"
    assert sorted(seq for seqs in successful for seq in seqs) == list(range(2, len(log) + 1))
    assert store.require(run_id, include_events=False).version == 1 + len(successful)


def test_compare_and_set_increments_from_several_processes_are_never_lost(
    target: Target,
) -> None:
    processes, threads, increments = 4, 5, 5
    store = target.store()
    run_id = new_run(store)
    start = CTX.Barrier(processes * threads)

    conflicts = run_processes(
        cas_increments_in_process,
        [(target.url, target.prefix, run_id, threads, increments, start)] * processes,
    )

    total = processes * threads * increments
    run = store.require(run_id, include_events=False)
    assert run.cost_usd == total
    assert run.version == 1 + total
    assert sum(conflicts) > 0
