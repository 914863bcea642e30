"""Reading runs on Redis: one run by id, and the runs of one page of an index.

``load_run`` reads one run (and its events, if asked) in its slot. ``RunSelector`` pages the most
selective index of a ``RunFilter`` (the zsets of one group, or of every global shard, merged by
``paging.py``) and loads only the runs on that page; an entry whose run is gone or contradicts
it is repaired in its index on the way (the rules live in ``indexing.py``). Plans only: the sync
and asyncio executors carry out their requests.
"""

from __future__ import annotations

from mpstate.fields import epoch_ms, now_ms
from mpstate.filters import RunFilter
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.plans import Plan
from mpstate.redis.codec import decode_events, decode_run, decode_run_hash
from mpstate.redis.indexing import Indexer
from mpstate.redis.keys import IndexGroup, RedisKeys
from mpstate.redis.paging import Window, read_page
from mpstate.redis.requests import Batch, Command, Script

__all__ = ["RunSelector", "load_run"]

#: An index zset a selection reads: its group and, for a status zset, that status.
_Source = tuple[IndexGroup, PipelineRunStatus | None]


def load_run(keys: RedisKeys, run_id: str, *, include_events: bool) -> Plan[PipelineRun | None]:
    """The run (with its event log if ``include_events``), or None: one script in its slot."""
    reply = yield Script(
        "load_run", [keys.run(run_id), keys.events(run_id)], ["1" if include_events else "0"]
    )
    if not reply:
        return None
    return decode_run(reply[0], decode_events(reply[1]) if include_events else None)


class RunSelector:
    """``list_runs`` on Redis: a page of an index, its runs, and repairs of stale entries."""

    __slots__ = ("indexer", "keys")

    def __init__(self, keys: RedisKeys, indexer: Indexer) -> None:
        self.keys = keys
        self.indexer = indexer

    def select(self, run_filter: RunFilter) -> Plan[list[PipelineRun]]:
        """Read one page of the most selective index, then only the runs on that page.

        One round trip finds the page's run ids (by rank, O(log N + page) for one index; merged
        from the heads of several, or a few more round trips at an offset: ``paging.py``), one
        loads those runs. An entry whose run is gone (expired) or contradicts it (a stale entry)
        is repaired in its index and skipped; only then is another pass needed, reading as many
        entries further as were dropped.
        """
        if run_filter.idempotency_key is not None and (run_filter.status or run_filter.tenant_id):
            # The key's index also holds runs of other statuses and tenants, so offsets cannot be
            # counted on it: select all of the key's runs (a handful) and page here.
            whole = run_filter.model_copy(update={"limit": None, "offset": 0})
            return run_filter.page((yield from self._scan(whole)))
        return (yield from self._scan(run_filter))

    def _scan(self, run_filter: RunFilter) -> Plan[list[PipelineRun]]:
        sources = self._index_sources(run_filter)
        dropped: set[str] = set()
        while True:
            extra = len(dropped)
            page = yield from self._page_ids(sources, run_filter, extra)
            candidates = [(member, score) for score, member in page if member not in dropped]
            if run_filter.limit is not None:
                candidates = candidates[: run_filter.limit]
            runs = yield from self._load_many([member for member, _ in candidates])
            matched: list[PipelineRun] = []
            repairs: list[Script] = []
            for (member, score), run in zip(candidates, runs, strict=True):
                if run is not None and epoch_ms(run.created_at) != int(score):
                    # An entry left by an expired incarnation of this run id whose re-creator
                    # died before settling: settle the run as created, under its own score.
                    repairs += self._rescore(run)
                if run is not None and run_filter.matches(run):
                    matched.append(run)
                    continue
                dropped.add(member)
                repairs += self._repairs(sources, member, int(score), run)
            if repairs:
                yield Batch(tuple(repairs))
            if len(dropped) == extra:
                run_filter.sort(matched)
                return matched

    def _rescore(self, run: PipelineRun) -> list[Script]:
        settle = self.indexer.settle_created(
            run, epoch_ms(run.created_at), "", now_ms(), sweep=True
        )
        return [item for item in settle.items if isinstance(item, Script)]

    def _repairs(
        self, sources: list[_Source], member: str, score: int, run: PipelineRun | None
    ) -> list[Script]:
        """Settle what the run says into the groups whose entries contradicted it (of the global
        shards, only the member's own holds its entries)."""
        now = now_ms()
        repairs: list[Script] = []
        shards = self.keys.global_groups()
        own_shard = self.keys.global_group(member)
        for group, status in sources:
            if group in shards and group != own_shard:
                continue
            belongs = run is not None and group.tenant_id in (None, run.tenant_id)
            if run is not None and belongs and status in (None, run.status):
                continue  # this entry is right; the run was dropped for another reason
            settle = self.indexer.settle(
                [group],
                member,
                score if run is None or not belongs else epoch_ms(run.created_at),
                version=run.version if run is not None and belongs else None,
                status=PipelineRunStatus(run.status) if run is not None and belongs else None,
                nonce="",
                now_ms=now,
                sweep=True,
            )
            repairs += [item for item in settle.items if isinstance(item, Script)]
        return repairs

    def _page_ids(
        self, sources: list[_Source], run_filter: RunFilter, extra: int
    ) -> Plan[list[tuple[float, str]]]:
        """Index entries ``[offset, offset + limit + extra)`` of the filter's window, in order:
        (score, run id) pairs (ids only; no run is read here)."""
        window = Window(
            str(epoch_ms(run_filter.since)) if run_filter.since else "-inf",
            str(epoch_ms(run_filter.until)) if run_filter.until else "+inf",
            run_filter.newest_first,
        )
        count = None if run_filter.limit is None else run_filter.limit + extra
        zsets = [self._zset(source) for source in sources]
        shares = len({group for group, _ in sources})  # the global shards split runs evenly
        return (yield from read_page(zsets, window, run_filter.offset, count, shares=shares))

    @staticmethod
    def _zset(source: _Source) -> str:
        group, status = source
        return group.everything if status is None else group.status(status)

    def _index_sources(self, run_filter: RunFilter) -> list[_Source]:
        k = self.keys
        if run_filter.idempotency_key is not None:
            return [(k.idempotency_group(run_filter.idempotency_key), None)]
        groups = (
            (k.tenant_group(run_filter.tenant_id),) if run_filter.tenant_id else k.global_groups()
        )
        statuses = sorted(run_filter.status) if run_filter.status else [None]
        return [(group, status) for group in groups for status in statuses]

    def _load_many(self, run_ids: list[str]) -> Plan[list[PipelineRun | None]]:
        if not run_ids:
            return []
        replies = yield Batch(tuple(Command(("HGETALL", self.keys.run(r))) for r in run_ids))
        return [decode_run_hash(reply) for reply in replies]
