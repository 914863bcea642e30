"""Index maintenance across slots: add before the run's write, settle after, repair on read.

On Redis Cluster an index lives in another slot than the run, so one script cannot write both.
The store keeps every index correct with two idempotent follow-up writes per index group around
the per-run script (``add_index_entries-2-3.lua`` before, ``settle_index_entries-2-8.lua`` after):

* an index never misses a run whose write was acknowledged: the entry is added (with a pending
  mark) before the write, so a writer that dies in between leaves at most an extra entry;
* an index never keeps a wrong entry for long: settling is ordered by the run's (created_at,
  version), so late or repeated follow-ups change nothing, and a reader that meets an entry its
  run contradicts settles that run's state into the group itself (repair on read);
* nobody removes an entry a writer is about to make true: pending marks block removals until
  settled or expired (``PENDING_MARK_MS``, far above any write's round trip).

On a single Redis every key is reachable from one script, so there the run's own script settles
its groups itself, after its write, with the same function (``includes/settle_group.lua``, which
``settle_index_entries`` runs too): a create or a status change is then one script, and no writer
can die between its write and its settle. The entries hashes and the rules are the same, so the
two ways of writing interoperate on the same keys (``in_script``).

Limit: a run id created again after its run expired, by a creator that dies between its create
and its settle, keeps the old incarnation's score in the indexes until a read whose window covers
that score (or, when created later than the old one, its next write) rescores it (README,
Scaling out).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.redis.codec import json_value
from mpstate.redis.keys import IndexGroup, RedisKeys
from mpstate.redis.requests import Batch, Script

__all__ = ["PENDING_MARK_MS", "Indexer"]

#: How long an entry added ahead of its run's write is protected from removal.
PENDING_MARK_MS = 60_000

_STATUS_JSON = tuple(json_value(status.value) for status in PipelineRunStatus)
#: The statuses in the order of a group's status zsets, as settle_group.lua's ``o.statuses``.
_STATUS_LIST = "|" + "|".join(_STATUS_JSON) + "|"


def status_position(status: PipelineRunStatus) -> str:
    """Where a status's zset is among a group's status zsets (1-based), as the scripts name it."""
    return str(list(PipelineRunStatus).index(status) + 1)


class Indexer:
    """Builds the follow-up writes for one store's keys and index TTL."""

    __slots__ = ("index_ttl_ms", "keys")

    def __init__(self, keys: RedisKeys, index_ttl_ms: int) -> None:
        self.keys = keys
        self.index_ttl_ms = index_ttl_ms

    @staticmethod
    def nonce() -> str:
        """A random id for one writer's pending marks."""
        return os.urandom(8).hex()

    def add(
        self,
        run_id: str,
        score: int,
        entries: Iterable[tuple[IndexGroup, list[str]]],
        nonce: str,
        now_ms: int,
        *,
        status: PipelineRunStatus | None,
    ) -> Batch:
        """Add the run to the given zsets of each group, marking it pending in each group (the
        mark names the status zset added to, so a settle knows where the run may be)."""
        added = "" if status is None else status_position(status)
        mark = f"{now_ms + PENDING_MARK_MS}:{nonce}:{added}"
        return Batch(
            tuple(
                Script(
                    "add_index_entries",
                    [group.entries, *zsets],
                    [run_id, score, self.index_ttl_ms, mark, now_ms],
                )
                for group, zsets in entries
            )
        )

    def add_new_run(self, run: PipelineRun, score: int, nonce: str, now_ms: int) -> Batch:
        """Before a create: every group's all-runs zset and, where tracked, the zset of the
        status the run is created in (pending, or later for a run created started)."""
        status = PipelineRunStatus(run.status)
        entries = []
        for group in self.keys.groups_of(run.run_id, run.tenant_id, run.idempotency_key):
            zsets = [group.everything]
            if group.tracks_status:
                zsets.append(group.status(status))
            entries.append((group, zsets))
        return self.add(run.run_id, score, entries, nonce, now_ms, status=status)

    def add_status(
        self,
        run_id: str,
        *,
        tenant_id: str | None,
        score: int,
        status: PipelineRunStatus,
        nonce: str,
        now_ms: int,
    ) -> Batch:
        """Before a status change: the new status's zset of the global and tenant groups."""
        groups = self.keys.groups_of(run_id, tenant_id)
        entries = ((g, [g.status(status)]) for g in groups)
        return self.add(run_id, score, entries, nonce, now_ms, status=status)

    def in_script(
        self, run_id: str, groups: Iterable[IndexGroup]
    ) -> tuple[list[str], dict[str, str]]:
        """The keys and options with which a run's own script (``create_run``, ``commit_run``)
        settles ``groups`` itself, after its write (a single Redis only: the keys span slots)."""
        keys: list[str] = []
        sizes: list[str] = []
        for group in groups:
            group_keys = [group.entries, group.everything, *group.statuses()]
            keys += group_keys
            sizes.append(str(len(group_keys)))
        options = {
            "groups": ",".join(sizes),
            "statuses": _STATUS_LIST,
            "run": run_id,
            "index_ttl": str(self.index_ttl_ms),
        }
        return keys, options

    def settle(
        self,
        groups: Iterable[IndexGroup],
        run_id: str,
        score: int,
        *,
        version: int | None,
        status: PipelineRunStatus | None,
        nonce: str,
        now_ms: int,
        created: bool = False,
        sweep: bool = False,
        renew: bool = False,
    ) -> Batch:
        """Settle a run's ``version`` and ``status`` into each group (settle_index_entries-2-8.lua).

        ``version`` None only clears this writer's marks (its write was refused); ``status``
        None says the run is gone; ``created`` says this writer has just created the run (a new
        incarnation of its id replaces an older one's entries whatever their order); ``sweep``
        takes the run out of every other status zset (a reader repairing what contradicted it),
        where a writer's settle only removes it from those it may be in; ``renew`` renews the
        TTLs of the group's keys (a run re-asserting its entries), which otherwise a key gets
        when it is created or the group's renewal is due (the group's TTL record).
        """
        flags = "".join(flag for flag, on in (("c", created), ("s", sweep), ("r", renew)) if on)
        status_arg = "gone" if status is None else json_value(status.value)
        return Batch(
            tuple(
                Script(
                    "settle_index_entries",
                    [group.entries, group.everything, *group.statuses()],
                    [
                        run_id,
                        score,
                        "" if version is None else version,
                        status_arg,
                        self.index_ttl_ms,
                        now_ms,
                        nonce,
                        flags,
                        *(_STATUS_JSON if group.tracks_status else ()),
                    ],
                )
                for group in groups
            )
        )

    def release(
        self, groups: Iterable[IndexGroup], run_id: str, score: int, nonce: str, now_ms: int
    ) -> Batch:
        """Clear this writer's pending marks after its write was refused (its entries stay until
        a reader or a later write settles the run)."""
        return self.settle(
            groups,
            run_id,
            score,
            version=None,
            status=PipelineRunStatus.PENDING,  # not read when only clearing marks
            nonce=nonce,
            now_ms=now_ms,
        )

    def settle_created(
        self, run: PipelineRun, score: int, nonce: str, now_ms: int, *, sweep: bool = False
    ) -> Batch:
        """Settle a run this writer has just created into every group it belongs to."""
        return self.settle(
            self.keys.groups_of(run.run_id, run.tenant_id, run.idempotency_key),
            run.run_id,
            score,
            version=run.version,
            status=PipelineRunStatus(run.status),
            nonce=nonce,
            now_ms=now_ms,
            created=True,
            sweep=sweep,
        )
