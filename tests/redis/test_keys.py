"""RedisKeys: escaping is injective, ids never leak key syntax, a run's keys share one slot."""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter

import fakeredis
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from mpstate import (
    InvalidInputError,
    PipelineRunStatus,
    PipelineStateStore,
    RedisPipelineStateStore,
    RunStarted,
)
from mpstate.fields import MAX_ID_LENGTH
from mpstate.redis.keys import GLOBAL_SHARDS, RedisKeys, escape_id, shard_of, shard_tags

#: Ids that would collide or break out of their key under a naive scheme.
TRICKY_IDS = [
    "a:b",
    "a%3Ab",
    "a%253Ab",
    "a{b}",
    "{a}b",
    "a}b{",
    "{}",
    "a b",
    "a\tb\nc",
    "ünïcødé-🙂",
    "日本語",
    "*",
    "a*",
    "[a]",
    "a?b",
    "a\\b",
    "%",
    "~._-",
    "k" * 1024,
    "🙂" * 256,
]

ids = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes: between the first '{' and the next '}'."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def per_run_keys(keys: RedisKeys, run_id: str) -> list[str]:
    return [
        keys.run(run_id),
        keys.events(run_id),
        keys.lock(run_id),
        keys.lock_wake(run_id),
        keys.operation(run_id, "0123abcd"),
    ]


def labelled_keys(keys: RedisKeys, a: str, b: str) -> list[tuple[str, tuple[object, ...]]]:
    """Every key the builder makes from ids ``a`` and ``b``, with what it was built from."""
    labelled: list[tuple[str, tuple[object, ...]]] = [
        (keys.run(a), ("run", a)),
        (keys.events(a), ("events", a)),
        (keys.lock(a), ("lock", a)),
        (keys.lock_wake(a), ("lock_wake", a)),
        (keys.operation(a, "0123abcd"), ("operation", a)),
        (keys.idempotency(a, b), ("idempotency", a, b)),
        (keys.idempotency(None, a), ("idempotency", None, a)),
        (keys.job(a, b), ("job", a, b)),
        (keys.job_providers(a), ("job_providers", a)),
        (keys.delivery(a, b), ("delivery", a, b)),
        (keys.unmatched(), ("unmatched",)),
        (keys.unmatched_counts(), ("unmatched_counts",)),
        (keys.by_tenant(a), ("by_tenant", a)),
        (keys.by_idempotency_key(a), ("by_idempotency_key", a)),
        (keys.global_group(a).everything, ("global_group", shard_of(a, GLOBAL_SHARDS))),
    ]
    labelled += [
        (keys.tenant_group(a).status(s), ("tenant_group.status", a, s)) for s in PipelineRunStatus
    ]
    labelled += [
        (keys.global_group(a).status(s), ("global_group.status", shard_of(a, GLOBAL_SHARDS), s))
        for s in PipelineRunStatus
    ]
    return labelled


def all_keys_of(keys: RedisKeys, a: str, b: str) -> list[str]:
    return [key for key, _ in labelled_keys(keys, a, b)]


# -- escaping -----------------------------------------------------------------------------------


@given(ids)
def test_an_escaped_id_never_contains_key_syntax(value: str) -> None:
    escaped = escape_id(value)
    assert not set(escaped) & set(":{}")
    assert escaped.isascii()


@given(ids, ids)
def test_escaping_is_injective(a: str, b: str) -> None:
    assert (escape_id(a) == escape_id(b)) == (a == b)


def test_escaping_the_tricky_ids_gives_distinct_safe_names() -> None:
    escaped = [escape_id(value) for value in TRICKY_IDS]
    assert len(set(escaped)) == len(TRICKY_IDS)
    for name in escaped:
        assert not set(name) & set(":{}")


@given(ids, ids, ids, ids)
def test_two_keys_are_equal_only_when_built_the_same_way_from_the_same_ids(
    a: str, b: str, c: str, d: str
) -> None:
    keys = RedisKeys("mp")
    built: dict[str, tuple[object, ...]] = {}
    for key, label in [*labelled_keys(keys, a, b), *labelled_keys(keys, c, d)]:
        assert built.setdefault(key, label) == label


def test_no_two_tricky_ids_share_any_key() -> None:
    keys = RedisKeys("mp")
    seen: dict[str, tuple[str, str]] = {}
    for a, b in itertools.product(TRICKY_IDS[:10], repeat=2):
        for key in [keys.idempotency(a, b), keys.job(a, b), keys.delivery(a, b)]:
            assert seen.setdefault(key, (a, b)) == (a, b)
    for value in TRICKY_IDS:
        for key in [
            *per_run_keys(keys, value),
            keys.by_tenant(value),
            keys.by_idempotency_key(value),
            keys.job_providers(value),
        ]:
            assert key not in seen
            seen[key] = (value, "")


def test_a_key_contains_no_colon_or_brace_from_an_id() -> None:
    # Built from a tricky id, every key has exactly the ':', '{' and '}' it has when built from a
    # plain id: the id contributed none.
    keys = RedisKeys("mp")
    plain = all_keys_of(keys, "x", "y")
    for value in TRICKY_IDS:
        for tricky_key, plain_key in zip(all_keys_of(keys, value, value), plain, strict=True):
            for ch in ":{}":
                assert tricky_key.count(ch) == plain_key.count(ch), (value, tricky_key)


# -- hash tags ------------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", TRICKY_IDS)
def test_all_keys_of_one_run_share_the_runs_hash_tag_and_slot(run_id: str) -> None:
    keys = RedisKeys("mp")
    run_keys = per_run_keys(keys, run_id)
    assert {hash_tag(key) for key in run_keys} == {escape_id(run_id)}
    slots = {key_slot(key.encode()) for key in run_keys}
    assert slots == {key_slot(escape_id(run_id).encode())}


@given(ids)
def test_every_run_id_gets_one_slot_for_all_its_keys(run_id: str) -> None:
    keys = RedisKeys("mp:with:colons")
    assert len({key_slot(key.encode()) for key in per_run_keys(keys, run_id)}) == 1


def test_a_tenants_indexes_share_the_tenants_hash_tag() -> None:
    keys = RedisKeys("mp")
    for tenant in TRICKY_IDS:
        tenant_keys = [
            keys.by_tenant(tenant),
            *(keys.tenant_group(tenant).status(s) for s in PipelineRunStatus),
        ]
        assert {hash_tag(key) for key in tenant_keys} == {escape_id(tenant)}


def test_idempotency_and_job_keys_hash_on_both_of_their_ids() -> None:
    keys = RedisKeys("mp")
    assert hash_tag(keys.idempotency("t:1", "k{2}")) == f"{escape_id('t:1')}:{escape_id('k{2}')}"
    assert hash_tag(keys.idempotency(None, "k")) == ":k"
    assert hash_tag(keys.job("fal", "a:b")) == f"fal:{escape_id('a:b')}"
    assert hash_tag(keys.delivery("fal", "a:b")) == f"fal:{escape_id('a:b')}"


@pytest.mark.parametrize("job_id", TRICKY_IDS)
def test_a_job_ids_providers_hash_on_the_job_id_alone(job_id: str) -> None:
    # One key per job id, whatever the providers: SADD and PEXPIRE go to one slot.
    keys = RedisKeys("mp")
    assert keys.job_providers(job_id) == f"mp:jobproviders:{{{escape_id(job_id)}}}"
    assert hash_tag(keys.job_providers(job_id)) == escape_id(job_id)


def test_the_unmatched_callbacks_and_their_counts_share_one_slot_of_their_own() -> None:
    keys = RedisKeys("mp")
    assert keys.unmatched() == "mp:{unmatched}"
    assert keys.unmatched_counts() == "mp:{unmatched}:counts"
    assert hash_tag(keys.unmatched()) == hash_tag(keys.unmatched_counts()) == "unmatched"
    shard_slots = {key_slot(group.everything.encode()) for group in keys.global_groups()}
    assert key_slot(keys.unmatched().encode()) not in shard_slots


# -- the global shards ----------------------------------------------------------------------------

#: The 16 shard tags as first shipped: a stored index is found only under the same tags.
SHIPPED_SHARD_TAGS = (
    "all.0.61", "all.1.62", "all.2.41", "all.3.42", "all.4.0", "all.5.3", "all.6.22", "all.7.21",
    "all.8.41", "all.9.42", "all.10.23", "all.11.20", "all.12.11", "all.13.12", "all.14.1",
    "all.15.2",
)  # fmt: skip


def test_the_global_shards_tags_are_the_shipped_ones() -> None:
    assert GLOBAL_SHARDS == 16
    assert shard_tags(16) == SHIPPED_SHARD_TAGS
    assert shard_tags(1) == ("all",)  # one shard: the layout before sharding, mp:idx:{all}
    keys = RedisKeys("mp")
    assert [group.everything for group in keys.global_groups()] == [
        f"mp:idx:{{{tag}}}" for tag in SHIPPED_SHARD_TAGS
    ]


@pytest.mark.parametrize("shards", [2, 3, 5, 16, 64])
def test_shard_i_hashes_into_the_ith_slice_of_the_slot_range(shards: int) -> None:
    for shard, tag in enumerate(shard_tags(shards)):
        slot = key_slot(f"mp:idx:{{{tag}}}".encode())
        assert shard * 16384 // shards <= slot < (shard + 1) * 16384 // shards, (shard, tag)


@given(st.integers(0, 16383), st.integers(0, 16383))
def test_any_contiguous_slot_range_holds_its_share_of_the_shards_within_two(a: int, b: int) -> None:
    first, last = sorted((a, b))
    slots = [key_slot(group.everything.encode()) for group in RedisKeys("mp").global_groups()]
    inside = sum(first <= slot <= last for slot in slots)
    assert abs(inside - (last - first + 1) * GLOBAL_SHARDS / 16384) < 2


@pytest.mark.parametrize("primaries", range(2, 9))
def test_an_even_split_of_the_slots_gives_each_primary_its_share_of_the_shards(
    primaries: int,
) -> None:
    # Slots split into equal contiguous ranges, as redis-cli --cluster create and the suite's
    # LocalRedisCluster assign them: each primary holds 16/primaries shards, rounded.
    held = [0] * primaries
    for group in RedisKeys("mp").global_groups():
        held[key_slot(group.everything.encode()) * primaries // 16384] += 1
    assert set(held) <= {GLOBAL_SHARDS // primaries, -(-GLOBAL_SHARDS // primaries)}, held


def test_a_runs_shard_is_a_pure_function_of_its_id() -> None:
    # CRC16 of the escaped id: the same in every process and version (Python's hash() is not:
    # it changes with PYTHONHASHSEED, and these pinned values would not hold).
    assert {r: shard_of(r, 16) for r in ["r1", "run-42", "ünïcødé", "a:b", "{x}"]} == {
        "r1": 2, "run-42": 4, "ünïcødé": 15, "a:b": 5, "{x}": 6,
    }  # fmt: skip
    assert all(shard_of(r, 1) == 0 for r in TRICKY_IDS)


@given(ids)
def test_a_run_is_indexed_in_the_shard_whose_slice_holds_the_runs_own_slot(run_id: str) -> None:
    keys = RedisKeys("mp")
    group = keys.global_group(run_id)
    assert keys.groups_of(run_id, "t", "k")[0] == group
    assert group == keys.global_groups()[shard_of(run_id, GLOBAL_SHARDS)]
    run_slot = key_slot(keys.run(run_id).encode())
    assert key_slot(group.everything.encode()) // 1024 == run_slot // 1024


@pytest.mark.parametrize("kind", ["random", "sequential"])
def test_run_ids_spread_evenly_over_the_shards(kind: str) -> None:
    rng = random.Random(0)
    run_ids = [
        str(uuid.UUID(int=rng.getrandbits(128))) if kind == "random" else f"run-{n}"
        for n in range(16_000)
    ]
    per_shard = Counter(shard_of(run_id, GLOBAL_SHARDS) for run_id in run_ids)
    assert len(per_shard) == GLOBAL_SHARDS
    # 1,000 each on average; the binomial deviation is about 31.
    assert all(850 <= n <= 1150 for n in per_shard.values()), per_shard


# -- prefixes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["a{b", "a}b", "{mp}", ""])
def test_a_prefix_that_would_set_the_hash_tag_or_is_empty_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidInputError):
        RedisKeys(prefix)
    with pytest.raises(InvalidInputError):
        RedisPipelineStateStore(fakeredis.FakeRedis(), prefix=prefix)


@pytest.mark.parametrize("special", ["*", "?", "[", "]", "\\", "[x]", "[^a]"])
def test_a_prefix_with_glob_characters_scans_exactly_its_own_keys(
    redis_client: redis.Redis, prefix: str, special: str
) -> None:
    mine = RedisKeys(f"{prefix}{special}")
    lookalikes = [RedisKeys(f"{prefix}{other}") for other in ["x", "*x", "xx", "[", "]", "\\", "a"]]
    written = [mine.global_group("r").everything, mine.run("r")]
    written += [k.global_group("r").everything for k in lookalikes if k.prefix != mine.prefix]
    try:
        for key in written:
            redis_client.set(key, "1", px=60_000)
        found = {key.decode() for key in redis_client.scan_iter(match=mine.pattern(), count=1000)}
        assert found == {mine.global_group("r").everything, mine.run("r")}
    finally:
        redis_client.delete(*written)


# -- end to end ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["fakeredis", "redis"], indirect=True)
def test_tricky_ids_work_end_to_end_without_colliding(store: PipelineStateStore) -> None:
    for n, run_id in enumerate(TRICKY_IDS):
        store.create(
            {
                "runId": run_id,
                "pipelineId": f"p{n}",
                "tenantId": TRICKY_IDS[-1 - n],
                "idempotencyKey": run_id,
                "externalJobIds": {run_id: TRICKY_IDS[-1 - n]},
                "createdAt": "2024-05-01T00:00:00Z",
            }
        )

    assert [r.run_id for r in store.list_runs()] == sorted(TRICKY_IDS)
    for n, run_id in enumerate(TRICKY_IDS):
        run = store.require(run_id)
        assert run.run_id == run_id
        assert run.pipeline_id == f"p{n}"
        assert [e.run_id for e in run.events] == [run_id]
        tenant = TRICKY_IDS[-1 - n]
        assert [r.run_id for r in store.list_runs(tenant_id=tenant)] == [run_id]
        view = store.for_tenant(tenant)
        assert [r.run_id for r in view.list_runs()] == [run_id]
        assert view.require(run_id).tenant_id == tenant
        assert view.update(run_id, {"currentStepIndex": 1}).tenant_id == tenant
        assert [r.run_id for r in store.list_runs(idempotency_key=run_id)] == [run_id]
        found = store.find_by_external_job_id(run_id, tenant)
        assert found is not None
        assert found.run_id == run_id

    for run_id in TRICKY_IDS:
        with store.lock(run_id, timeout_ms=0) as held:
            assert held.run.run_id == run_id
            store.update(run_id, {"status": "running"}, fence=held.fence)
            store.append_event(run_id, RunStarted(run_id=run_id), fence=held.fence)
    for run_id in TRICKY_IDS:
        assert [e.seq for e in store.list_events(run_id)] == [1, 2]
        assert store.require(run_id).version == 3
    assert [r.run_id for r in store.list_runs(status="running")] == sorted(TRICKY_IDS)


@pytest.mark.parametrize("backend", ["fakeredis", "redis"], indirect=True)
def test_the_longest_ids_work_end_to_end(store: PipelineStateStore) -> None:
    run_id = "{:}" * (MAX_ID_LENGTH // 3)
    tenant = "ü" * MAX_ID_LENGTH
    store.create({"runId": run_id, "pipelineId": "p", "tenantId": tenant, "idempotencyKey": run_id})
    assert store.require(run_id).tenant_id == tenant
    assert [r.run_id for r in store.for_tenant(tenant).list_runs(idempotency_key=run_id)] == [
        run_id
    ]
    with store.lock(run_id, timeout_ms=0):
        pass
