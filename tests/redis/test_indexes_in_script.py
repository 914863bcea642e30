"""On a single Redis the run's own script settles its index groups (``indexes_in_script``).

Every key is reachable from one script there, so ``create_run`` and ``commit_run`` write the
run and settle its groups with the function ``settle_index_entries`` runs
(``includes/settle_group.lua``): a create or a status change is one script, and no writer can die
between its write and its settle. The rules and the entries hashes are the cluster's, so both
ways of writing leave the same indexes and respect each other's pending marks on the same keys.
The contract suite runs both on every run (the ``redis6`` backend writes follow-ups), and
test_index_follow_ups.py drives the follow-ups request by request.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from index_support import entries_without_ttl_record, ids, members, text
from plan_steps import PlanSteps
from redis.asyncio import Redis as AsyncRedis

from mpstate import (
    InvalidInputError,
    InvalidTransitionError,
    PipelineRunStatus,
    RedisPipelineStateStore,
    VersionConflictError,
)
from mpstate.aio import AsyncRedisPipelineStateStore
from mpstate.events import StepProgress
from mpstate.fields import epoch_ms
from mpstate.redis.keys import IndexGroup, RedisKeys

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RUNNING = PipelineRunStatus.RUNNING
SUSPENDED = PipelineRunStatus.SUSPENDED
COMPLETED = PipelineRunStatus.COMPLETED


def in_script(client: redis.Redis, prefix: str) -> RedisPipelineStateStore:
    """A store that settles indexes in the run's script (a single Redis' default), as another
    process would be: it shares no cache with any other store."""
    return RedisPipelineStateStore(client, prefix=prefix)


def follow_ups(client: redis.Redis, prefix: str) -> RedisPipelineStateStore:
    """A store on the same server that writes its indexes as on a cluster."""
    return RedisPipelineStateStore(client, prefix=prefix, indexes_in_script=False)


def commit_plan(
    store: RedisPipelineStateStore, patch: dict[str, Any], expected_version: int | None = None
) -> PlanSteps:
    """An ``update("r1", patch)`` of ``store``, to be driven request by request."""
    plan = store._backend._plan_commit(
        "r1", patch, [], expected_version=expected_version, fence=None, operation_id=None
    )
    return PlanSteps(store, plan)


def global_group(keys: RedisKeys, run_id: str) -> IndexGroup:
    """The group of every run that holds ``run_id``."""
    return keys.groups_of(run_id, None)[0]


def settled(client: redis.Redis, group: IndexGroup, run_id: str) -> str | None:
    """The group's entries field for the run: "<score>:<version>:<status>" and live marks."""
    found = client.hget(group.entries, run_id)
    return None if found is None else text(found)


def document(run_id: str, tenant: str | None = "t", **fields: Any) -> dict[str, Any]:
    return {"runId": run_id, "pipelineId": "p", "tenantId": tenant, **fields}


def test_a_create_and_a_status_change_are_each_one_script_that_leaves_the_indexes_settled(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = in_script(redis_client, prefix)
    k = store.keys
    groups = [global_group(k, "r1"), k.tenant_group("t")]
    score = epoch_ms(T0)

    creator = PlanSteps(
        store,
        store._backend._plan_create(
            document("r1", createdAt=T0.isoformat()), return_existing=False
        ),
    )
    creator.finish()
    assert creator.names() == ["create_run"]  # no add_index_entries before, no settle after
    for group in groups:
        assert members(redis_client, group.everything) == {"r1": score}
        assert members(redis_client, group.status(PipelineRunStatus.PENDING)) == {"r1": score}
        assert settled(redis_client, group, "r1") == f"{score}:1:1"  # pending: status zset 1

    writer = commit_plan(store, {"status": "running"})
    writer.finish()
    assert writer.names() == ["commit_run"]  # the creator's cache spares the placement read
    for group in groups:
        assert members(redis_client, group.status(PipelineRunStatus.PENDING)) == {}
        assert members(redis_client, group.status(RUNNING)) == {"r1": score}
        assert settled(redis_client, group, "r1") == f"{score}:2:2"
    assert ids(store.list_runs(status="running")) == ["r1"]
    assert ids(store.list_runs(tenant_id="t", status="running")) == ["r1"]


def index_dump(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every index key under ``prefix`` (named without it): zsets as {member: score}, entries
    hashes as {run id: field}; and whether each has a TTL."""
    dump: dict[str, Any] = {}
    for raw in client.scan_iter(match=f"{prefix}:idx:*"):
        key = text(raw)
        name = key.removeprefix(prefix)
        kind = text(client.type(key))
        if kind == "zset":
            value: Any = members(client, key)
        else:
            value = entries_without_ttl_record(client, key)
            if ":idx:idem:" in key:
                # A group without statuses: its entry's version is that of whichever write
                # settled it last (a status change does not; a reader's repair may), so only
                # the score (the incarnation) is compared.
                value = {run_id: field.split(":")[0] for run_id, field in value.items()}
        dump[name] = (kind, value, client.pttl(key) > 0)
    return dump


def the_same_writes(store: RedisPipelineStateStore) -> None:
    """Creates, status changes, refusals, a cancel and a create_or_get of an existing run."""
    store.create(document("r1", createdAt=T0.isoformat()))
    store.create(document("r2", "u", idempotencyKey="k", createdAt=(T0 + timedelta(1)).isoformat()))
    store.create(document("r3", None, createdAt=(T0 + timedelta(2)).isoformat()))
    store.update("r1", {"status": "running"})
    store.update("r1", {"status": "completed"})
    with pytest.raises(InvalidTransitionError):
        store.update("r1", {"status": "running"})
    store.update("r3", {"status": "running"})
    with pytest.raises(VersionConflictError):
        store.update("r3", {"status": "suspended"}, expected_version=1)
    store.update("r3", {"status": "suspended"}, expected_version=2)
    store.cancel("r2", "stop")
    store.create_or_get(document("r2", "u", idempotencyKey="k"))
    store.append_event("r3", StepProgress(run_id="r3", step_id="s", pct=50))


def read_every_index(store: RedisPipelineStateStore) -> None:
    """List every status of every group, so readers repair whatever entry its run contradicts."""
    for tenant in (None, "t", "u"):
        for status in PipelineRunStatus:
            store.list_runs(tenant_id=tenant, status=status.value)
    store.list_runs(idempotency_key="k")


def test_both_ways_of_writing_leave_the_same_indexes_and_in_script_leaves_nothing_to_repair(
    redis_client: redis.Redis, prefix: str
) -> None:
    the_same_writes(in_script(redis_client, f"{prefix}a"))
    the_same_writes(follow_ups(redis_client, f"{prefix}b"))
    written = index_dump(redis_client, f"{prefix}a")

    read_every_index(in_script(redis_client, f"{prefix}a"))
    read_every_index(follow_ups(redis_client, f"{prefix}b"))

    one, other = index_dump(redis_client, f"{prefix}a"), index_dump(redis_client, f"{prefix}b")
    assert one == other
    # Follow-ups leave entries for readers to repair (here: create_or_get of the existing r2 adds
    # it to "pending" ahead of its refused create); the run's own script leaves none.
    assert one == written
    keys = RedisPipelineStateStore(redis_client, prefix=f"{prefix}a").keys
    named = [
        keys.tenant_group("u").status(PipelineRunStatus.CANCELLED),
        keys.by_idempotency_key("k"),
        global_group(keys, "r2").entries,
    ]
    assert {key.removeprefix(f"{prefix}a") for key in named} <= set(one)
    assert all(has_ttl for _, _, has_ttl in one.values())
    assert members(redis_client, global_group(keys, "r3").status(SUSPENDED)) == {
        "r3": epoch_ms(T0 + timedelta(2))
    }


def test_a_status_change_in_script_keeps_the_entries_a_follow_up_writers_live_mark_protects(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = in_script(redis_client, prefix)
    k = store.keys
    groups = [global_group(k, "r1"), k.tenant_group("t")]
    store.create(document("r1", createdAt=T0.isoformat()))
    store.update("r1", {"status": "running"})
    # A follow-up writer (another process, or an older mpstate) adds r1 to "suspended" under
    # its pending mark, then stalls before its commit.
    slow_store = follow_ups(redis_client, prefix)
    slow = commit_plan(slow_store, {"status": "suspended"}, expected_version=2)
    slow.run_through("add_index_entries")

    store.update("r1", {"status": "completed"})  # in script, while the mark is live

    # The run is listed as completed at once; nothing was removed under the live mark (the slow
    # writer might still make "suspended" true), so "running" and "suspended" keep r1 for now.
    assert ids(store.list_runs(status="completed")) == ["r1"]
    for group in groups:
        assert "r1" in members(redis_client, group.status(COMPLETED))
        assert "r1" in members(redis_client, group.status(RUNNING))
        assert "r1" in members(redis_client, group.status(SUSPENDED))
    assert store.list_runs(status=["running", "suspended"]) == []  # readers skip stale entries

    with pytest.raises(VersionConflictError):
        slow.finish()  # refused; it settles the run as it is, which clears its mark
    for group in groups:
        assert members(redis_client, group.status(SUSPENDED)) == {}
        assert "r1" in members(redis_client, group.status(COMPLETED))
        assert ";" not in (settled(redis_client, group, "r1") or "")  # no mark left
    assert store.list_runs(status=["running", "suspended"]) == []
    for group in groups:  # the next reader that meets the running entry removes it
        assert members(redis_client, group.status(RUNNING)) == {}


@pytest.mark.parametrize(
    "delta", [timedelta(hours=1), -timedelta(hours=1)], ids=["later", "earlier"]
)
def test_a_run_id_created_again_after_it_expired_is_listed_in_its_window_by_its_create_alone(
    redis_client: redis.Redis, prefix: str, delta: timedelta
) -> None:
    # With follow-ups, a re-creator that dies before its settle leaves the old score in the
    # global index (a documented limit: test_index_follow_ups.py); in script there is no such gap.
    store = in_script(redis_client, prefix)
    k = store.keys
    store.create(document("r1", "old", createdAt=T0.isoformat()))
    store.update("r1", {"status": "running"})
    redis_client.delete(k.run("r1"), k.events("r1"))  # expired; its index entries stay
    created_at = T0 + delta

    creator = PlanSteps(
        in_script(redis_client, prefix),
        store._backend._plan_create(
            document("r1", "new", createdAt=created_at.isoformat()), return_existing=False
        ),
    )
    creator.finish()

    assert creator.names() == ["create_run"]
    score = epoch_ms(created_at)
    assert members(redis_client, global_group(k, "r1").everything) == {"r1": score}
    assert members(redis_client, global_group(k, "r1").status(PipelineRunStatus.PENDING)) == {
        "r1": score
    }
    assert (
        members(redis_client, global_group(k, "r1").status(RUNNING)) == {}
    )  # the old incarnation's, swept
    window: dict[str, Any] = {"since": created_at, "until": created_at}
    assert ids(store.list_runs(**window)) == ["r1"]
    assert ids(store.list_runs(tenant_id="new", status="pending", **window)) == ["r1"]
    assert store.list_runs(tenant_id="old") == []  # the old tenant's entry: repaired on read
    assert members(redis_client, k.by_tenant("old")) == {}


def test_a_status_change_by_a_writer_whose_cached_tenant_is_stale_settles_the_runs_own_groups(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = in_script(redis_client, prefix)
    k = store.keys
    store.create(document("r1", "old", createdAt=T0.isoformat()))  # caches (old, T0)
    redis_client.delete(k.run("r1"), k.events("r1"))
    in_script(redis_client, prefix).create(document("r1", "new", createdAt=T0.isoformat()))

    writer = commit_plan(store, {"status": "running"})
    writer.finish()

    # Refused for naming the old tenant's indexes (-8), then written with the run's own.
    assert writer.names() == ["commit_run", "commit_run"]
    assert "r1" in members(redis_client, k.tenant_group("new").status(RUNNING))
    assert "r1" not in members(redis_client, k.tenant_group("old").status(RUNNING))
    assert ids(store.list_runs(tenant_id="new", status="running")) == ["r1"]
    assert store.list_runs(tenant_id="old", status="running") == []


@pytest.mark.parametrize("value", ["yes", 1, 0])
def test_indexes_in_script_takes_only_a_bool_or_none(
    redis_client: redis.Redis, prefix: str, value: Any
) -> None:
    with pytest.raises(InvalidInputError, match="indexes_in_script"):
        RedisPipelineStateStore(redis_client, prefix=prefix, indexes_in_script=value)
    with pytest.raises(InvalidInputError, match="indexes_in_script"):
        AsyncRedisPipelineStateStore(AsyncRedis(), prefix=prefix, indexes_in_script=value)


def test_a_cluster_store_refuses_indexes_in_script(cluster_client: Any, prefix: str) -> None:
    with pytest.raises(InvalidInputError, match="single Redis"):
        RedisPipelineStateStore(cluster_client, prefix=prefix, indexes_in_script=True)
    # The default on a cluster: follow-ups.
    assert not RedisPipelineStateStore(
        cluster_client, prefix=prefix
    )._backend.writer.indexes_in_script
