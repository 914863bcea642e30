"""A Redis Cluster failover: what a store's acknowledged writes become when a primary dies.

Redis replicates asynchronously, so a write the primary acknowledged can be missing on the replica
promoted in its place. Each test runs a real 3-primary cluster with one replica each
(``LocalRedisCluster``), SIGKILLs the primary serving the runs and promotes its replica:

* every run after the failover equals the replay of its own log (``audit_run``): a write is there
  whole (fields, version and events) or not at all, never half-applied;
* with ``replica_acks=1`` every acknowledged write is still there, and a write the replica did not
  confirm is reported as failed (``WriteNotReplicatedError``), never acknowledged;
* without it, an acknowledged write can be lost (shown deterministically: the replica's link is cut
  first), which is the documented limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from replica_links import cut_replication

from mpstate import (
    RedisPipelineStateStore,
    StateStoreUnavailableError,
    StepProgress,
    VersionConflictError,
    WriteNotReplicatedError,
    audit_run,
)
from mpstate.testing._cluster import LocalRedisCluster

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture
def cluster() -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(masters=3, replicas=1) as started:
        yield started


def cluster_store(cluster: LocalRedisCluster, **options: Any) -> RedisPipelineStateStore:
    url = cluster.url.replace("redis://", "redis+cluster://", 1)
    return RedisPipelineStateStore.from_url(url, socket_timeout=2.0, retries=5, **options)


def run_ids_on(cluster: LocalRedisCluster, store: RedisPipelineStateStore, count: int) -> list[str]:
    """Run ids whose keys the first primary serves (the one the tests kill)."""
    target = cluster.masters[0]
    found: list[str] = []
    n = 0
    while len(found) < count:
        run_id = f"run-{n}"
        if cluster.master_for_key(store.keys.run(run_id)).port == target.port:
            found.append(run_id)
        n += 1
    return found


def start(store: RedisPipelineStateStore, run_id: str) -> int:
    run = store.create(
        {
            "runId": run_id,
            "pipelineId": "p",
            "tenantId": "t",
            "steps": [{"stepId": "s", "operation": "op"}],
        }
    )
    return run.version


def test_a_write_the_replica_never_got_is_reported_failed_with_acks_and_lost_silently_without(
    cluster: LocalRedisCluster,
) -> None:
    acked = cluster_store(cluster, replica_acks=1, replica_ack_timeout_ms=200)
    plain = cluster_store(cluster)
    with_acks, without_acks = run_ids_on(cluster, acked, 2)
    for run_id in (with_acks, without_acks):
        start(acked, run_id)  # confirmed by the replica: survives the failover

    primary = cluster.masters[0]
    (replica,) = cluster.replicas_of(primary)
    cut_replication(primary, replica)

    with pytest.raises(WriteNotReplicatedError):
        acked.update(with_acks, {"status": "running"}, expected_version=1)
    acknowledged = plain.update(without_acks, {"status": "running"}, expected_version=1)
    assert acknowledged.version == 2  # the primary has both writes, the replica neither

    cluster.failover(0)

    after = cluster_store(cluster)
    for run_id in (with_acks, without_acks):
        run = after.require(run_id)
        assert audit_run(run) == []  # whole or absent: the log and the record agree
        assert (run.version, run.status) == (1, "pending")
    # The write reported as failed is gone, as reported; the acknowledged one is gone silently:
    # the limit replica_acks exists for. A versioned retry of either now applies once.
    assert after.update(with_acks, {"status": "running"}, expected_version=1).version == 2
    assert after.list_runs(status="running", tenant_id="t")[0].run_id == with_acks
    for store in (acked, plain, after):
        store.close()


def test_under_load_every_acknowledged_write_survives_the_failover_and_no_run_is_half_applied(
    cluster: LocalRedisCluster,
) -> None:
    store = cluster_store(cluster, replica_acks=1, replica_ack_timeout_ms=500)
    run_ids = run_ids_on(cluster, store, 8)
    for run_id in run_ids:
        start(store, run_id)
    acknowledged: dict[str, int] = dict.fromkeys(run_ids, 1)
    failed: dict[str, int] = dict.fromkeys(run_ids, 0)
    stop = threading.Event()

    def write(run_id: str) -> None:
        step = 0
        while not stop.is_set():
            step += 1
            try:
                result = store.commit(
                    run_id,
                    {"budget": {"writes": step}},
                    [StepProgress(run_id=run_id, step_id="s", pct=step % 100)],
                    expected_version=acknowledged[run_id],
                )
                acknowledged[run_id] = result.run.version
            except (StateStoreUnavailableError, VersionConflictError):
                # Reported as failed (or it did land and the version moved): re-read and go on.
                failed[run_id] += 1
                try:
                    acknowledged[run_id] = max(
                        acknowledged[run_id], store.require(run_id, include_events=False).version
                    )
                except StateStoreUnavailableError:
                    time.sleep(0.05)

    writers = [threading.Thread(target=write, args=(run_id,)) for run_id in run_ids]
    for writer in writers:
        writer.start()
    time.sleep(1.0)
    cluster.failover(0)
    time.sleep(1.5)
    stop.set()
    for writer in writers:
        writer.join(timeout=30)

    after = cluster_store(cluster)
    for run_id in run_ids:
        run = after.require(run_id)
        assert audit_run(run) == [], run_id
        assert run.version >= acknowledged[run_id], (run_id, run.version, acknowledged[run_id])
        # Each commit is a version and an event together: never one without the other.
        assert run.version == 1 + sum(event.kind == "step-progress" for event in run.events)
    assert sum(acknowledged.values()) > 8 * 5  # the writers did write on both sides of it
    store.close()
    after.close()
