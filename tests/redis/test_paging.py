"""Merged pages over several index zsets (mpstate/redis/paging.py): exact at any offset, flat in
the number of runs, and the repair of stale entries in a global shard.

A listing of every run reads the global shards merged by (created_at, run id); so does a listing
of several statuses. Each test fails if the mechanism it is about is taken away: a merge that
misses a shard or a tie, a page found by reading every entry before it, a repair sent to the
wrong shard.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpstate import PipelineRunStatus, RedisPipelineStateStore
from mpstate.plans import drive
from mpstate.redis.keys import GLOBAL_SHARDS, shard_of
from mpstate.redis.paging import Entry, Window, pairs, read_page
from mpstate.redis.requests import Batch, Command, Script

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["redis", "cluster"])
def client(request: pytest.FixtureRequest) -> Any:
    """A real single Redis, or a real 3-master cluster; the test's prefix is deleted after."""
    return request.getfixturevalue(f"{request.param}_client")


@pytest.fixture
def store(client: Any, prefix: str) -> RedisPipelineStateStore:
    return RedisPipelineStateStore(client, prefix=prefix)


class Reads:
    """The store's executor, counting round trips and the index entries they returned."""

    def __init__(self, store: RedisPipelineStateStore) -> None:
        self.executor = store._executor
        self.round_trips = 0
        self.entries = 0

    def __call__(self, request: Any) -> Any:
        reply = self.executor(request)
        self.round_trips += 1
        items = request.items if isinstance(request, Batch) else (request,)
        replies = reply if isinstance(request, Batch) else (reply,)
        for item, answer in zip(items, replies, strict=True):
            reads_entries = isinstance(item, Script) and item.name == "page_index"
            if reads_entries or (isinstance(item, Command) and item.args[0] == "ZRANGE"):
                self.entries += len(pairs(answer))
        return reply


def zsets_of(store: RedisPipelineStateStore, count: int) -> list[str]:
    """``count`` zsets under the store's prefix, in slots of their own (as the shards are)."""
    return [group.everything for group in store.keys.global_groups()[:count]]


def fill(client: Any, zsets: list[str], entries: list[Entry], rng: random.Random) -> None:
    """Each entry into one of the zsets, at random."""
    by_zset: dict[str, dict[str, float]] = {}
    for score, member in entries:
        by_zset.setdefault(rng.choice(zsets), {})[member] = score
    for zset, mapping in by_zset.items():
        for start in range(0, len(mapping), 5000):
            client.zadd(zset, dict(list(mapping.items())[start : start + 5000]))


def expected_page(
    entries: list[Entry], window: Window, offset: int, count: int | None
) -> list[Entry]:
    low = float(window.low)
    high = float(window.high)
    inside = sorted(
        (entry for entry in entries if low <= entry[0] <= high), reverse=window.newest_first
    )
    return inside[offset:] if count is None else inside[offset : offset + count]


# -- exact at any offset --------------------------------------------------------------------------


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_merged_page_is_the_slice_of_the_zsets_sorted_together(
    store: RedisPipelineStateStore, client: Any, data: st.DataObject
) -> None:
    # Scores from a narrow range, so many entries tie across zsets and are ordered by member.
    zsets = zsets_of(store, data.draw(st.integers(2, 6), label="zsets"))
    size = data.draw(st.integers(0, 160), label="entries")
    scores = data.draw(st.lists(st.integers(0, 25), min_size=size, max_size=size))
    entries = [(float(score), f"m{n:03d}") for n, score in enumerate(scores)]
    client.delete(*zsets)
    fill(client, zsets, entries, random.Random(data.draw(st.integers(0, 1000))))
    low = data.draw(st.one_of(st.just("-inf"), st.integers(0, 12).map(str)), label="low")
    high = data.draw(st.one_of(st.just("+inf"), st.integers(12, 25).map(str)), label="high")
    window = Window(low, high, data.draw(st.booleans(), label="newest_first"))
    offset = data.draw(st.integers(0, size + 3), label="offset")
    count = data.draw(st.one_of(st.none(), st.integers(1, 12)), label="count")
    shares = data.draw(st.integers(1, len(zsets)), label="shares")  # only sets the first reads

    page = drive(read_page(zsets, window, offset, count, shares=shares), store._executor)

    assert page == expected_page(entries, window, offset, count)


@pytest.mark.parametrize("newest_first", [False, True])
def test_runs_created_at_the_same_millisecond_in_different_shards_page_in_run_id_order(
    store: RedisPipelineStateStore, newest_first: bool
) -> None:
    run_ids = [f"same-{n:03d}" for n in range(120)]
    assert len({shard_of(run_id, GLOBAL_SHARDS) for run_id in run_ids}) == GLOBAL_SHARDS
    for run_id in run_ids:
        store.create({"runId": run_id, "pipelineId": "p", "createdAt": T0.isoformat()})
    want = sorted(run_ids, reverse=newest_first)

    for limit in (1, 3, 50):
        for offset in (0, 1, 17, 65, 70, 101, 119, 120):  # past 64: the page is found by counts
            page = store.list_runs(limit=limit, offset=offset, newest_first=newest_first)
            assert [run.run_id for run in page] == want[offset : offset + limit], (limit, offset)


# -- flat in the number of runs -------------------------------------------------------------------


@pytest.mark.parametrize("newest_first", [False, True])
def test_a_page_reads_about_a_page_of_entries_at_any_offset(
    store: RedisPipelineStateStore, client: Any, newest_first: bool
) -> None:
    # 32,000 entries over the 16 shards; reading every entry before a deep page would take
    # thousands per shard, and the heads of all of them 16 x (offset + 50).
    rng = random.Random(7)
    entries = [(float(1_700_000_000_000 + 3 * n), str(uuid.UUID(int=rng.getrandbits(128))))
               for n in range(32_000)]  # fmt: skip
    zsets = zsets_of(store, GLOBAL_SHARDS)
    fill(client, zsets, entries, rng)
    window = Window("-inf", "+inf", newest_first)

    for offset in (0, 50, 1_000, 16_000, 31_000, 31_950):
        reads = Reads(store)
        page = drive(read_page(zsets, window, offset, 50, shares=GLOBAL_SHARDS), reads)
        assert page == expected_page(entries, window, offset, 50), offset
        assert reads.entries <= 1_000, (offset, reads.entries)  # 16 shards, a page of 50
        assert reads.round_trips <= (2 if offset <= 64 else 7), (offset, reads.round_trips)


# -- repair on read in a shard --------------------------------------------------------------------


def test_a_stale_entry_in_one_shard_is_skipped_and_repaired_in_that_shard_alone(
    store: RedisPipelineStateStore, client: Any
) -> None:
    k = store.keys
    run_ids = [f"r{n:03d}" for n in range(200)]
    for n, run_id in enumerate(run_ids):
        created = T0 + timedelta(seconds=n // 3)  # ties across shards too
        store.create({"runId": run_id, "pipelineId": "p", "createdAt": created.isoformat()})
    gone = {"r000", "r071", "r072", "r150", "r151", "r152", "r199"}
    client.delete(*(k.run(run_id) for run_id in gone))  # expired; their entries remain
    live = [run_id for run_id in run_ids if run_id not in gone]
    settled: list[Script] = []
    executor = store._executor

    def logging(request: Any) -> Any:
        items = request.items if isinstance(request, Batch) else (request,)
        settled.extend(i for i in items if isinstance(i, Script) and i.name.startswith("settle"))
        return executor(request)

    store._executor = logging  # type: ignore[assignment]
    # Paged from the start, as a reader does: an offset counts the entries before it, and the
    # stale ones among them are repaired by the pages that met them (the deep ones included).
    paged: list[str] = []
    for offset in range(0, 201, 3):
        paged += [run.run_id for run in store.list_runs(limit=3, offset=offset)]
    assert paged == live
    assert [r.run_id for r in store.list_runs(limit=50, offset=150)] == live[150:200]

    for run_id in gone:  # repaired: out of its shard's zsets and entries hash
        shard = k.global_group(run_id)
        assert client.zscore(shard.everything, run_id) is None, run_id
        assert client.hget(shard.entries, run_id) is None, run_id
    # Each repair settled the run in its own shard only, never in the 15 others.
    touched = Counter(script.args[0] for script in settled)
    assert set(touched) == gone
    for script in settled:
        assert script.keys[0] == k.global_group(script.args[0]).entries, script


def test_count_by_status_sums_the_shards(store: RedisPipelineStateStore) -> None:
    for n in range(64):
        store.create({"runId": f"c{n}", "pipelineId": "p"})
        if n % 4 == 0:
            store.update(f"c{n}", {"status": "running"})
    assert len({shard_of(f"c{n}", GLOBAL_SHARDS) for n in range(64)}) > 8
    counts = store.count_by_status()
    assert counts[PipelineRunStatus.PENDING] == 48
    assert counts[PipelineRunStatus.RUNNING] == 16
    assert sum(counts.values()) == 64
