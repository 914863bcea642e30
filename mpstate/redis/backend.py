"""``RedisBackend``: the store's primitives on Redis or Redis Cluster, as plans.

The backend composes three parts, each in its own module, and keeps the small primitives:

- ``writes.RunWriter``: create and commit, each one script in the run's slot with the index
  entries and job pointers written around it;
- ``claims.IdempotencyClaims``: the idempotency key claimed before a create, and voided claims;
- ``selection.RunSelector``: ``list_runs``, a page of an index and the repair of stale entries;
- here: reads of one run and its events, external job pointers, webhook deliveries, unmatched
  callbacks, counts by status and the run lock.

None of this code does I/O itself: a store pairs the backend with an executor that does,
``execution.RedisExecutor`` (sync) or ``mpstate.aio.redis_execution.AsyncRedisExecutor``.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

from mpstate.changes import Applied, Refusal, RunChange, refusal_error
from mpstate.core import LockAttempt, StoreCore
from mpstate.deliveries import UnmatchedCallback, counts_field, parse_counts_field
from mpstate.errors import InvalidInputError
from mpstate.events import PipelineEvent
from mpstate.filters import RunFilter
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.options import StoreOptions
from mpstate.plans import Plan
from mpstate.redis.claims import IdempotencyClaims
from mpstate.redis.codec import decode_events, decode_run, decode_unmatched, json_value, text
from mpstate.redis.indexing import Indexer
from mpstate.redis.keys import RedisKeys
from mpstate.redis.requests import Batch, Command, Script
from mpstate.redis.selection import RunSelector, load_run
from mpstate.redis.writes import OPERATION_TTL_MS, RunWriter

__all__ = ["ClientFacts", "RedisBackend"]

log = logging.getLogger("mpstate.redis")

#: Unmatched callbacks read per XREVRANGE when only one provider's are wanted.
_UNMATCHED_PAGE = 500


class ClientFacts(Protocol):
    """What a backend needs to know of the client its executor drives (sync or asyncio)."""

    #: The client's socket timeout in seconds (None: unknown).
    socket_timeout: float | None
    #: Whether the client is a Redis Cluster's.
    cluster: bool


class RedisBackend(StoreCore):
    """The primitives on Redis >= 6.2, single node or cluster. Keys: ``mpstate.redis.keys``.

    ``socket_timeout`` is the client's (in seconds; None: unknown): it bounds blocking reads.
    ``cluster`` says the client is a Redis Cluster's. ``indexes_in_script``: a run's script
    settles its index groups itself, rather than follow-up writes around it
    (``mpstate.redis.indexing``); None (the default) does so on a single Redis, and a cluster
    cannot (its groups live in other slots than the run).
    """

    def __init__(
        self,
        prefix: str = "mp",
        options: StoreOptions | None = None,
        *,
        socket_timeout: float | None = None,
        cluster: bool = False,
        indexes_in_script: bool | None = None,
    ) -> None:
        super().__init__(options or StoreOptions())
        if indexes_in_script is None:
            indexes_in_script = not cluster
        elif not isinstance(indexes_in_script, bool):
            raise InvalidInputError(
                f"indexes_in_script must be True, False or None, not {indexes_in_script!r}"
            )
        elif indexes_in_script and cluster:
            raise InvalidInputError(
                "indexes_in_script=True needs a single Redis: on a cluster a run's index groups "
                "live in other slots than the run"
            )
        self._socket_timeout = socket_timeout
        self.keys = RedisKeys(prefix)
        opts = self.options
        self._run_ttl_ms = int(opts.run_ttl_seconds * 1000)
        self._idem_ttl_ms = int(opts.idempotency_ttl_seconds * 1000)
        self._job_ttl_ms = int(opts.external_job_ttl_seconds * 1000)
        # Twice the run TTL: with re-indexing at half a run TTL, an index outlives its runs.
        self.indexer = Indexer(self.keys, 2 * self._run_ttl_ms)
        self.writer = RunWriter(
            self.keys,
            self.indexer,
            IdempotencyClaims(self.keys, self._idem_ttl_ms),
            run_ttl_ms=self._run_ttl_ms,
            job_ttl_ms=self._job_ttl_ms,
            indexes_in_script=indexes_in_script,
        )
        self.selector = RunSelector(self.keys, self.indexer)

    @classmethod
    def for_client(
        cls,
        prefix: str,
        options: StoreOptions,
        client: ClientFacts,
        *,
        indexes_in_script: bool | None,
    ) -> RedisBackend:
        """The backend for an executor's client (``RedisExecutor``, ``AsyncRedisExecutor``)."""
        return cls(
            prefix,
            options,
            socket_timeout=client.socket_timeout,
            cluster=client.cluster,
            indexes_in_script=indexes_in_script,
        )

    # -- creating and writing: ``writes.py`` ---------------------------------------------------

    def _insert(
        self, run: PipelineRun, events: tuple[PipelineEvent, ...], *, return_existing: bool
    ) -> Plan[tuple[PipelineRun, bool]]:
        return self.writer.insert(run, events, return_existing=return_existing)

    def _apply(self, change: RunChange) -> Plan[Applied]:
        return self.writer.apply(change)

    # -- reading ----------------------------------------------------------------------------

    def _load(self, run_id: str, *, include_events: bool) -> Plan[PipelineRun | None]:
        return load_run(self.keys, run_id, include_events=include_events)

    def _read_events(
        self, run_id: str, since_seq: int, limit: int | None
    ) -> Plan[list[PipelineEvent] | None]:
        keys = [self.keys.run(run_id), self.keys.events(run_id)]
        reply = yield Script("read_events", keys, [since_seq, "" if limit is None else limit])
        return decode_events(reply[1]) if int(reply[0]) else None

    def _read_last_event(self, run_id: str) -> Plan[list[PipelineEvent] | None]:
        # XREVRANGE + - COUNT 1: one entry read, however long the log.
        keys = [self.keys.run(run_id), self.keys.events(run_id)]
        reply = yield Script("read_last_event", keys, [])
        return decode_events(reply[1]) if int(reply[0]) else None

    def _wait_for_events(
        self, run_id: str, since_seq: int, wait_s: float
    ) -> Plan[list[PipelineEvent]]:
        # XREAD BLOCK holds one pooled connection for the wait.
        block_ms = self._block_ms(wait_s * 1000)
        key = self.keys.events(run_id)
        reply = yield Command(("XREAD", "BLOCK", block_ms, "STREAMS", key, f"0-{since_seq}"))
        if not reply:
            return []
        # RESP2 answers [[key, entries]], RESP3 {key: entries}.
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return decode_events(entries)

    def _find_job(self, provider: str, job_id: str) -> Plan[PipelineRun | None]:
        run_id = yield Command(("GET", self.keys.job(provider, job_id)))
        if run_id is None:
            return None
        return (yield from self._load(text(run_id), include_events=False))

    def _job_providers(self, job_id: str) -> Plan[set[str]]:
        members = yield Command(("SMEMBERS", self.keys.job_providers(job_id)))
        return {text(member) for member in members}

    def _select(self, run_filter: RunFilter) -> Plan[list[PipelineRun]]:
        return self.selector.select(run_filter)

    # -- webhook deliveries -----------------------------------------------------------------

    def _claim_delivery(self, provider: str, delivery_id: str, ttl_ms: int) -> Plan[bool]:
        """``SET NX`` of a random token: one claimer wins, and a retry whose first attempt took
        the claim (its reply lost) finds its own token there and still wins."""
        key = self.keys.delivery(provider, delivery_id)
        token = os.urandom(8).hex()
        if (yield Command(("SET", key, token, "NX", "PX", ttl_ms))):
            return True
        holder = yield Command(("GET", key))
        return holder is not None and text(holder) == token

    def _release_delivery(self, provider: str, delivery_id: str) -> Plan[None]:
        yield Command(("DEL", self.keys.delivery(provider, delivery_id)))

    def _record_unmatched(self, callback: UnmatchedCallback) -> Plan[None]:
        # Stream and counts share one slot: one script appends, trims and counts together. A
        # retry after a lost reply may record the callback twice (operators' data: acceptable).
        k = self.keys
        yield Script(
            "record_unmatched",
            [k.unmatched(), k.unmatched_counts()],
            [callback.model_dump_json(), counts_field(callback), self.options.unmatched_kept,
             self._run_ttl_ms],
        )  # fmt: skip

    def _list_unmatched(self, provider: str | None, limit: int) -> Plan[list[UnmatchedCallback]]:
        """XREVRANGE in pages until ``limit`` match or the kept ones are read.

        Only the newest ``unmatched_kept`` entries are read: ``MAXLEN ~`` trims in whole stream
        nodes and may leave a few more, which are treated as dropped already.
        """
        unread = self.options.unmatched_kept
        found: list[UnmatchedCallback] = []
        end = "+"
        while unread > 0:
            count = min(unread, limit if provider is None else max(limit, _UNMATCHED_PAGE))
            entries = yield Command(("XREVRANGE", self.keys.unmatched(), end, "-", "COUNT", count))
            for _, fields in entries:
                callback = decode_unmatched(fields)
                if provider is None or callback.provider == provider:
                    found.append(callback)
                    if len(found) == limit:
                        return found
            if len(entries) < count:
                break
            unread -= len(entries)
            end = f"({text(entries[-1][0])}"  # exclusive: before the oldest entry read
        return found

    def _count_by_status(self, tenant_id: str | None) -> Plan[dict[PipelineRunStatus, int]]:
        """ZCARD of each status zset of the tenant's group, or summed over the global shards:
        one batch (one round trip on a single Redis, one per primary on a cluster)."""
        groups = (self.keys.tenant_group(tenant_id),) if tenant_id else self.keys.global_groups()
        statuses = list(PipelineRunStatus)
        cards = yield Batch(
            tuple(Command(("ZCARD", group.status(s))) for group in groups for s in statuses)
        )
        counts = dict.fromkeys(statuses, 0)
        for position, n in enumerate(cards):
            counts[statuses[position % len(statuses)]] += int(n)
        return counts

    def _count_unmatched(self) -> Plan[dict[tuple[str, str], int]]:
        counts = yield Command(("HGETALL", self.keys.unmatched_counts()))
        return {parse_counts_field(text(name)): int(n) for name, n in counts.items()}

    # -- locking ----------------------------------------------------------------------------

    def _try_lock(self, run_id: str, token: str, ttl_ms: int) -> Plan[LockAttempt]:
        keys = [self.keys.lock(run_id), self.keys.run(run_id)]
        scope = json_value(self._tenant) if self._tenant else ""
        reply = yield Script("acquire_lock", keys, [token, ttl_ms, scope])
        code = int(reply[0])
        if code == Refusal.NOT_FOUND:
            raise refusal_error(Refusal.NOT_FOUND, run_id)
        if code == 1:
            return LockAttempt(int(reply[1]), run=decode_run(reply[2]))
        return LockAttempt(None, max(1, int(reply[1])))

    def _wait_for_release(self, run_id: str, wait_ms: float) -> Plan[None]:
        # BLPOP wakes as soon as a release pushes; its timeout is capped by the caller at the
        # holder's remaining TTL and the poll interval, since nobody pushes when a holder dies.
        timeout = self._block_ms(wait_ms) / 1000
        yield Command(("BLPOP", self.keys.lock_wake(run_id), timeout))

    def _block_ms(self, wait_ms: float) -> int:
        """How long one blocking read (BLPOP, XREAD BLOCK) may block, in whole milliseconds.

        At least 10: Redis 6.2 truncates 0.001 s to 0 ms, which both read as "block forever".
        At most half the socket timeout (1 s when the client's is unknown): a blocking read
        longer than the socket timeout would be reported as an outage.
        """
        ceiling_ms = self._socket_timeout * 500 if self._socket_timeout else 1000
        return round(min(max(10, wait_ms), ceiling_ms))

    def _release_lock(self, run_id: str, token: str) -> Plan[bool]:
        k = self.keys
        keys = [k.lock(run_id), k.lock_wake(run_id), k.operation(run_id, f"release-{token}")]
        args = [token, self.options.lock_ttl_ms, OPERATION_TTL_MS]
        return bool((yield Script("release_lock", keys, args)))

    def _extend_lock(self, run_id: str, token: str, ttl_ms: int) -> Plan[bool]:
        keys = [self.keys.lock(run_id)]
        return bool((yield Script("extend_lock", keys, [token, ttl_ms])))
