"""``RedisBackend``: the store's primitives on Redis or Redis Cluster, as plans.

Every write to a run is one script in the run's slot (``scripts/``) that checks every guard before
it writes anything, and carries a fresh operation id the script records, so a retry after a lost
reply replays the outcome instead of applying the write twice. What lives in other slots is
written around that script, never inside it: external job pointers and index entries first,
index entries settled after (``indexing.py``), the idempotency key claimed first and the claim
made safe to take over by voiding (``claim_idempotency_key.lua``, ``void_claim.lua``). The sync
and asyncio shells drive these plans; none of this code does I/O itself.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from mpstate.changes import Applied, Refusal, RunChange, refusal_error
from mpstate.core import LockAttempt, StoreCore, StoreOptions
from mpstate.deliveries import (
    UNMATCHED_KEPT,
    UnmatchedCallback,
    counts_field,
    parse_counts_field,
)
from mpstate.errors import MpStateError
from mpstate.events import PipelineEvent, RunCreated, event_document
from mpstate.fields import epoch_ms, iso_z, now_ms, utc_now
from mpstate.filters import RunFilter
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.plans import Pause, Plan
from mpstate.redis.codec import (
    decode_events,
    decode_run,
    decode_run_hash,
    decode_unmatched,
    encode_fields,
    json_value,
    run_document,
    text,
)
from mpstate.redis.indexing import Indexer
from mpstate.redis.keys import IndexGroup, RedisKeys, escape_id
from mpstate.redis.requests import Batch, Command, Ordered, Script

__all__ = ["RedisBackend"]

log = logging.getLogger("mpstate.redis")

#: How long a write's outcome is kept for retries of the same operation.
_OPERATION_TTL_MS = 10 * 60 * 1000
#: Pauses before a claim whose run does not exist yet is voided (its creator is usually mid-way).
_CLAIM_GRACE_S = (0.005, 0.015, 0.045)
#: Run id -> (tenant, score) entries kept so a status change needs no read first.
_RUN_CACHE_SIZE = 10_000
#: Unmatched callbacks read per XREVRANGE when only one provider's are wanted.
_UNMATCHED_PAGE = 500

#: An index zset a selection reads: its group and, for a status zset, that status.
_Source = tuple[IndexGroup, PipelineRunStatus | None]


def _as_set(statuses: frozenset[PipelineRunStatus] | None) -> str:
    if not statuses:
        return ""
    return "|" + "|".join(json_value(s.value) for s in sorted(statuses)) + "|"


def _operation_id() -> str:
    """A random id for one write (random bytes, not a counter: prefork children copy counters)."""
    return os.urandom(12).hex()


def _json_str(document: bytes | str) -> str:
    """A JSON string (or null) read back from the run hash, as text ("" for null)."""
    value = json.loads(document)
    return str(value) if value is not None else ""


def _pairs(reply: Any) -> list[tuple[str, float]]:
    """(member, score) pairs from a ZRANGE ... WITHSCORES reply, flat or paired."""
    if reply and isinstance(reply[0], list | tuple):
        return [(text(member), float(score)) for member, score in reply]
    return [(text(m), float(text(s))) for m, s in zip(reply[0::2], reply[1::2], strict=True)]


class RedisBackend(StoreCore):
    """The primitives on Redis >= 6.2, single node or cluster. Keys: ``mpstate.redis.keys``."""

    #: The client's socket timeout in seconds (None: unknown); bounds blocking reads.
    _socket_timeout: float | None = None

    def __init__(
        self,
        prefix: str = "mp",
        *,
        run_ttl_seconds: float = 30 * 86400,
        lock_ttl_seconds: float = 60,
        idempotency_ttl_seconds: float = 86400,
        external_job_ttl_seconds: float = 7 * 86400,
        lock_acquire_timeout_ms: int = 5000,
        lock_poll_interval_ms: int = 100,
        unmatched_kept: int = UNMATCHED_KEPT,
    ) -> None:
        super().__init__(
            StoreOptions(
                run_ttl_seconds=run_ttl_seconds,
                lock_ttl_seconds=lock_ttl_seconds,
                idempotency_ttl_seconds=idempotency_ttl_seconds,
                external_job_ttl_seconds=external_job_ttl_seconds,
                lock_acquire_timeout_ms=lock_acquire_timeout_ms,
                lock_poll_interval_ms=lock_poll_interval_ms,
                unmatched_kept=unmatched_kept,
            )
        )
        self.keys = RedisKeys(prefix)
        opts = self.options
        self._run_ttl_ms = int(opts.run_ttl_seconds * 1000)
        self._idem_ttl_ms = int(opts.idempotency_ttl_seconds * 1000)
        self._job_ttl_ms = int(opts.external_job_ttl_seconds * 1000)
        # Twice the run TTL: with re-indexing at half a run TTL, an index outlives its runs.
        self.indexer = Indexer(self.keys, 2 * self._run_ttl_ms)
        self._runs: OrderedDict[str, tuple[str | None, int]] = OrderedDict()
        self._runs_mutex = threading.Lock()

    # -- creating ---------------------------------------------------------------------------

    def _insert(
        self, run: PipelineRun, created_event: RunCreated, *, return_existing: bool
    ) -> Plan[tuple[PipelineRun, bool]]:
        k = self.keys
        score = epoch_ms(run.created_at)
        fields = encode_fields(run_document(run))
        voided: set[str] = set()
        while True:
            token = ""
            if run.idempotency_key is not None:
                claimed = yield from self._claim_key(run, return_existing, voided)
                if isinstance(claimed, PipelineRun):
                    return claimed, False
                token = claimed
            nonce, now = self.indexer.nonce(), now_ms()
            ahead = [self.indexer.add_new_run(run, score, nonce, now)]
            ahead += self._job_pointers(run.run_id, run.external_jobs())
            create = Script(
                "create_run",
                [k.run(run.run_id), k.events(run.run_id), k.operation(run.run_id, _operation_id()),
                 k.void(run.run_id)],
                ["1" if return_existing else "0", score, self._run_ttl_ms,
                 event_document(created_event), _OPERATION_TTL_MS, token, now, *fields],
            )  # fmt: skip
            reply = (yield Ordered((*ahead, create)))[-1]
            code = int(reply[0])
            if code in (1, 2):  # 2: this very create, retried after a lost reply
                yield self.indexer.settle_created(run, score, nonce, now_ms())
                self._remember(run.run_id, run.tenant_id, score)
                return run, True
            yield self._release_marks(run.run_id, run.tenant_id, run.idempotency_key, score, nonce)
            if code == Refusal.ALREADY_EXISTS:
                if return_existing:
                    return decode_run(reply[1]), False
                raise refusal_error(Refusal.ALREADY_EXISTS, run.run_id)
            if code != Refusal.CLAIM_VOIDED:
                raise MpStateError(f"create_run answered an unknown code {code}")
            # The claim was voided by a caller that found this run missing: claim again.
            voided.add(token)

    def _claim_key(
        self, run: PipelineRun, return_existing: bool, voided: set[str]
    ) -> Plan[str | PipelineRun]:
        """Claim the run's idempotency key: the claim token, or the live run holding the key.

        A claim whose run does not exist after a short grace (its creator is usually a round trip
        away from creating it) is voided in that run's slot before it is taken over, so a slow
        creator holding it can no longer create its run (create_run refuses a voided token): of
        concurrent creates with one key, exactly one run is ever created. ``voided`` holds this
        create's own tokens that were voided: a claim still carrying one is stale.
        """
        assert run.idempotency_key is not None
        k = self.keys
        key = k.idempotency(run.tenant_id, run.idempotency_key)
        token = os.urandom(8).hex()
        claim = f"{token}:{run.run_id}"
        stale = ""
        while True:
            reply = yield Script("claim_idempotency_key", [key], [claim, stale, self._idem_ttl_ms])
            if int(reply[0]) == 1:
                return token
            current = text(reply[1])
            holder_token, _, holder_id = current.partition(":")
            if holder_id == run.run_id:
                if holder_token in voided:
                    stale = current  # our own voided claim, left by a voider that went away
                    continue
                return holder_token  # another create of this very run: create_run settles it
            holder = yield from self._claim_holder(holder_id)
            if holder is None:
                voided_reply = yield Script(
                    "void_claim",
                    [k.run(holder_id), k.void(holder_id)],
                    [holder_token, self._idem_ttl_ms],
                )
                if int(voided_reply[0]) == 1:
                    stale = current
                    continue
                holder = decode_run(voided_reply[1])
            if (holder.tenant_id, holder.idempotency_key) != (run.tenant_id, run.idempotency_key):
                stale = current  # the claim outlived its run's hold on the key
                continue
            if return_existing:
                return holder
            raise refusal_error(
                Refusal.IDEMPOTENCY_KEY_IN_USE,
                run.run_id,
                idempotency_key=run.idempotency_key,
                existing_run_id=holder_id,
            )

    def _claim_holder(self, run_id: str) -> Plan[PipelineRun | None]:
        """The run a claim names, waiting briefly for a creator that is about to create it."""
        for pause_s in _CLAIM_GRACE_S:
            holder = yield from self._load(run_id, include_events=False)
            if holder is not None:
                return holder
            yield Pause(pause_s)
        return (yield from self._load(run_id, include_events=False))

    def _job_pointers(self, run_id: str, jobs: Iterable[tuple[str, str]]) -> list[Batch]:
        """Point each external job at the run, before the write that records it on the run, and
        add its provider to the job id's set (``find_job_providers``).

        A pointer is only a hint (``find_by_external_job_id`` checks the run names the job), so
        one left by a refused write is harmless, while a recorded job is never without one. The
        set is a hint too: each pointer written renews the whole set's TTL, so it outlives every
        pointer of its job id, and a provider may stay named after its own pointer expired.
        """
        k, ttl = self.keys, self._job_ttl_ms
        providers: dict[str, list[str]] = {}
        commands: list[Command] = []
        for provider, job in sorted(jobs):
            commands.append(Command(("SET", k.job(provider, job), run_id, "PX", ttl)))
            providers.setdefault(job, []).append(provider)
        for job, names in providers.items():
            # One key, so one node: the pipeline sends SADD before PEXPIRE, and the set never
            # lives without a TTL.
            commands.append(Command(("SADD", k.job_providers(job), *names)))
            commands.append(Command(("PEXPIRE", k.job_providers(job), ttl)))
        return [Batch(tuple(commands))] if commands else []

    # -- writing ----------------------------------------------------------------------------

    def _apply(self, change: RunChange) -> Plan[Applied]:
        k = self.keys
        run_id = change.run_id
        new_status = change.new_status
        operation = escape_id(change.operation_id) if change.operation_id else _operation_id()
        keys = [k.run(run_id), k.events(run_id), k.operation(run_id, operation)]
        ahead = self._job_pointers(run_id, change.external_jobs())
        nonce = ""
        placement: tuple[str | None, int] | None = None
        if new_status is not None:
            placement = yield from self._placement(run_id)
            if placement is not None:
                nonce = self.indexer.nonce()
                ahead.append(self._status_entries(run_id, placement, new_status, nonce))
        fields = encode_fields(change.document)
        if change.bump_version:
            fields += ["updatedAt", json_value(iso_z(utc_now()))]
        args: list[Any] = [
            json_value(change.tenant) if change.tenant else "",
            "" if change.fence is None else change.fence,
            _as_set(change.unchanged_if),
            "" if change.expected_version is None else change.expected_version,
            _as_set(change.allowed_from),
            "1" if change.bump_version else "0",
            self._run_ttl_ms,
            _OPERATION_TTL_MS,
            len(change.events),
            "1" if change.ends_log else "0",
            json_value(new_status.value) if new_status is not None else "",
            self._placement_hint(placement),
            now_ms(),
            self._run_ttl_ms // 2,
            "1" if change.returns_run else "0",
            *(event_document(event) for event in change.events),
            *fields,
        ]
        while True:
            reply = (yield Ordered((*ahead, Script("commit_run", keys, args))))[-1]
            code = int(reply[0])
            if code == Refusal.WRONG_TENANT_KEYS:
                # The entries were added for another placement (the run was re-created): redo.
                placement = (_json_str(reply[1]) or None, int(text(reply[2])))
                self._remember(run_id, *placement)
                if nonce:
                    yield self._release_marks(run_id, placement[0], None, placement[1], nonce)
                assert new_status is not None
                nonce = self.indexer.nonce()
                ahead = [self._status_entries(run_id, placement, new_status, nonce)]
                args[11] = self._placement_hint(placement)
                continue
            break
        if code == 1:
            seqs = tuple(int(seq) for seq in reply[1])
            run = decode_run(reply[2]) if change.returns_run else None
            if nonce or int(reply[3]):
                if run is None:
                    run = yield from self._load(run_id, include_events=False)
                if run is not None:
                    self._remember(run_id, run.tenant_id, epoch_ms(run.created_at))
                    yield self._settle(run, nonce, everything=bool(int(reply[3])))
                if not change.returns_run:
                    run = None
            return Applied(run, seqs)
        if code == 2:
            return (yield from self._replayed(run_id, text(reply[1]), nonce))
        unchanged = decode_run(reply[2]) if code == 0 else None
        if nonce and placement is not None:
            yield from self._withdraw(run_id, placement, nonce, unchanged)
        if unchanged is not None:
            return Applied(unchanged, (), changed=False)
        raise self._refusal(change, code, reply)

    def _withdraw(
        self,
        run_id: str,
        placement: tuple[str | None, int],
        nonce: str,
        run: PipelineRun | None,
    ) -> Plan[None]:
        """After a refused status change: settle the run as it is into its status indexes,
        which takes out the entry added ahead of the write (so counts by status stay right), and
        clears this writer's marks. A run that is gone only has its marks cleared."""
        if run is None:
            run = yield from self._load(run_id, include_events=False)
        if run is None:
            yield self._release_marks(run_id, placement[0], None, placement[1], nonce)
            return
        yield self._settle(run, nonce, everything=False)

    def _placement(self, run_id: str) -> Plan[tuple[str | None, int] | None]:
        """The run's tenant and index score (both immutable): cached, else read (None: no run)."""
        placement = self._known(run_id)
        if placement is None:
            found = yield Command(("HMGET", self.keys.run(run_id), "tenantId", "_score"))
            if found[0] is not None:
                placement = (_json_str(found[0]) or None, int(text(found[1])))
        return placement

    def _status_entries(
        self,
        run_id: str,
        placement: tuple[str | None, int],
        status: PipelineRunStatus,
        nonce: str,
    ) -> Batch:
        """Add the run to ``status``'s indexes ahead of the write that moves it there."""
        tenant, score = placement
        return self.indexer.add_status(
            run_id, tenant_id=tenant, score=score, status=status, nonce=nonce, now_ms=now_ms()
        )

    @staticmethod
    def _placement_hint(placement: tuple[str | None, int] | None) -> str:
        if placement is None:
            return ""
        return f"{json_value(placement[0])}|{placement[1]}"

    def _settle(self, run: PipelineRun, nonce: str, *, everything: bool) -> Batch:
        """Settle ``run`` into its status groups (every group, re-asserting TTLs, if asked)."""
        score = epoch_ms(run.created_at)
        groups = self.keys.groups_of(run.tenant_id, run.idempotency_key if everything else None)
        status = PipelineRunStatus(run.status)
        return self.indexer.settle(
            groups, run.run_id, score, version=run.version, status=status, nonce=nonce,
            now_ms=now_ms(),
        )  # fmt: skip

    def _release_marks(
        self,
        run_id: str,
        tenant_id: str | None,
        idempotency_key: str | None,
        score: int,
        nonce: str,
    ) -> Batch:
        """Clear this writer's pending marks after a refused write (its entries stay for now)."""
        groups = self.keys.groups_of(tenant_id, idempotency_key)
        return self.indexer.release(groups, run_id, score, nonce, now_ms())

    def _refusal(self, change: RunChange, code: int, reply: Sequence[Any]) -> Exception:
        try:
            refusal = Refusal(code)
        except ValueError:  # a script and this module disagree: a bug, not a refusal to guess
            return MpStateError(f"commit_run answered an unknown code {code}")
        detail = text(reply[1]) if len(reply) > 1 else None
        status = (
            _json_str(detail)
            if detail is not None and refusal in (Refusal.INVALID_TRANSITION, Refusal.LOG_ENDED)
            else None
        )
        return refusal_error(
            refusal,
            change.run_id,
            expected_version=change.expected_version,
            actual_version=int(detail) if refusal is Refusal.VERSION_CONFLICT and detail else None,
            fence=change.fence,
            current_fence=int(detail) if refusal is Refusal.STALE_FENCE and detail else None,
            status=status,
            new_status=change.new_status.value if change.new_status else None,
        )

    def _replayed(self, run_id: str, outcome: str, nonce: str) -> Plan[Applied]:
        """A retried script found its own earlier write: report that write's outcome.

        Whether the first attempt settled its index entries is unknown, so settle the run as it
        is now (idempotent).
        """
        _, _, seq_list = outcome.partition(":")
        run = yield from self._load(run_id, include_events=False)
        if run is None:
            raise refusal_error(Refusal.NOT_FOUND, run_id)
        if nonce:
            yield self._settle(run, nonce, everything=False)
        return Applied(run, tuple(int(s) for s in seq_list.split(",") if s))

    def _known(self, run_id: str) -> tuple[str | None, int] | None:
        with self._runs_mutex:
            placement = self._runs.get(run_id)
            if placement is not None:
                self._runs.move_to_end(run_id)
            return placement

    def _remember(self, run_id: str, tenant_id: str | None, score: int) -> None:
        with self._runs_mutex:
            self._runs[run_id] = (tenant_id, score)
            self._runs.move_to_end(run_id)
            if len(self._runs) > _RUN_CACHE_SIZE:
                self._runs.popitem(last=False)

    # -- reading ----------------------------------------------------------------------------

    def _load(self, run_id: str, *, include_events: bool) -> Plan[PipelineRun | None]:
        keys = [self.keys.run(run_id), self.keys.events(run_id)]
        reply = yield Script("load_run", keys, ["1" if include_events else "0"])
        if not reply:
            return None
        return decode_run(reply[0], decode_events(reply[1]) if include_events else None)

    def _read_events(
        self, run_id: str, since_seq: int, limit: int | None
    ) -> Plan[list[PipelineEvent] | None]:
        keys = [self.keys.run(run_id), self.keys.events(run_id)]
        reply = yield Script("read_events", keys, [since_seq, "" if limit is None else limit])
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
        """Read one page of the most selective index, then only the runs on that page.

        One round trip finds the page's run ids (by rank, O(log N + page) for one index), one loads
        those runs. An entry whose run is gone (expired) or contradicts it (a stale entry) is
        repaired in its index and skipped; only then is another pass needed, reading as many
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
            candidates = [(member, score) for member, score in page if member not in dropped]
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
        settle = self.indexer.settle_created(run, epoch_ms(run.created_at), "", now_ms())
        return [item for item in settle.items if isinstance(item, Script)]

    def _repairs(
        self, sources: list[_Source], member: str, score: int, run: PipelineRun | None
    ) -> list[Script]:
        """Settle what the run says into the groups whose entries contradicted it."""
        now = now_ms()
        repairs: list[Script] = []
        for group, status in sources:
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
            )
            repairs += [item for item in settle.items if isinstance(item, Script)]
        return repairs

    def _page_ids(
        self, sources: list[_Source], run_filter: RunFilter, extra: int
    ) -> Plan[list[tuple[str, float]]]:
        """Index entries ``[offset, offset + limit + extra)`` of the filter's window, in order."""
        low = str(epoch_ms(run_filter.since)) if run_filter.since else "-inf"
        high = str(epoch_ms(run_filter.until)) if run_filter.until else "+inf"
        count = -1 if run_filter.limit is None else run_filter.limit + extra
        zsets = [self._zset(source) for source in sources]
        order = "desc" if run_filter.newest_first else "asc"
        if len(zsets) == 1:
            flat = yield Script("page_index", zsets, [low, high, run_filter.offset, count, order])
            return _pairs(flat)
        # Several statuses: merge the heads of their indexes (ids only; no run is read here).
        head = None if count < 0 else run_filter.offset + count
        limit = () if head is None else ("LIMIT", 0, head)
        scores: tuple[str, ...] = (
            (high, low, "BYSCORE", "REV") if run_filter.newest_first else (low, high, "BYSCORE")
        )
        per_source = yield Batch(
            tuple(Command(("ZRANGE", zset, *scores, *limit, "WITHSCORES")) for zset in zsets)
        )
        found = {(score, member) for reply in per_source for member, score in _pairs(reply)}
        merged = sorted(found, reverse=run_filter.newest_first)
        window = merged[run_filter.offset : None if head is None else head]
        return [(member, score) for score, member in window]

    @staticmethod
    def _zset(source: _Source) -> str:
        group, status = source
        return group.everything if status is None else group.status(status)

    def _index_sources(self, run_filter: RunFilter) -> list[_Source]:
        k = self.keys
        if run_filter.idempotency_key is not None:
            return [(k.idempotency_group(run_filter.idempotency_key), None)]
        group = k.tenant_group(run_filter.tenant_id) if run_filter.tenant_id else k.global_group()
        if run_filter.status:
            return [(group, status) for status in sorted(run_filter.status)]
        return [(group, None)]

    def _load_many(self, run_ids: list[str]) -> Plan[list[PipelineRun | None]]:
        if not run_ids:
            return []
        replies = yield Batch(tuple(Command(("HGETALL", self.keys.run(r))) for r in run_ids))
        return [decode_run_hash(reply) for reply in replies]

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
        group = self.keys.tenant_group(tenant_id) if tenant_id else self.keys.global_group()
        statuses = list(PipelineRunStatus)
        cards = yield Batch(tuple(Command(("ZCARD", group.status(s))) for s in statuses))
        return {status: int(n) for status, n in zip(statuses, cards, strict=True)}

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
        args = [token, self.options.lock_ttl_ms, _OPERATION_TTL_MS]
        return bool((yield Script("release_lock", keys, args)))

    def _extend_lock(self, run_id: str, token: str, ttl_ms: int) -> Plan[bool]:
        keys = [self.keys.lock(run_id)]
        return bool((yield Script("extend_lock", keys, [token, ttl_ms])))
