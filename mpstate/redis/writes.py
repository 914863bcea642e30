"""Writing runs on Redis: creating one, and committing a change to one, as plans.

Every write to a run is one script in the run's slot (``create_run``, ``commit_run``) that checks
every guard before it writes anything, and carries a fresh operation id the script records in
the run hash, so a retry after a lost reply replays the outcome instead of writing twice. What
lives in other slots is written around that script, never inside it: external job pointers and
index entries first, index entries settled after (``indexing.py``), the idempotency key claimed
first (``claims.py``). The sync and asyncio shells drive these plans; none of this code does I/O.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from mpstate.changes import Applied, Refusal, RunChange, Written, refusal_error
from mpstate.errors import MpStateError
from mpstate.events import TERMINAL_EVENT_KINDS, PipelineEvent, event_document
from mpstate.fields import epoch_ms, iso_z, now_ms
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.plans import Plan
from mpstate.redis.claims import IdempotencyClaims
from mpstate.redis.codec import (
    decode_run,
    encode_fields,
    hash_fields,
    json_value,
    run_document,
    text,
)
from mpstate.redis.indexing import Indexer
from mpstate.redis.keys import RedisKeys, escape_id
from mpstate.redis.requests import Batch, Command, Ordered, Script
from mpstate.redis.selection import load_run

__all__ = ["OPERATION_TTL_MS", "RunWriter", "operation_id"]

#: How long a write's outcome is kept for retries of the same operation (in the run hash's
#: ``_ops``: ``scripts/includes/operations.lua``).
OPERATION_TTL_MS = 10 * 60 * 1000
#: A run's TTL is renewed by a write when a tenth of it has passed since it was last renewed
#: (commit_run-3-19.lua), not by every write: its keys live between 0.9 and 1 run TTL after the
#: last.
RENEWALS_PER_TTL = 10
#: Run id -> (tenant, score) entries kept so a status change needs no read first.
_RUN_CACHE_SIZE = 10_000


def operation_id() -> str:
    """A random id for one write (random bytes, not a counter: prefork children copy counters)."""
    return os.urandom(12).hex()


def _as_set(statuses: frozenset[PipelineRunStatus] | None) -> str:
    if not statuses:
        return ""
    return "|" + "|".join(json_value(s.value) for s in sorted(statuses)) + "|"


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def _packed(options: dict[str, str]) -> str:
    """A script's options as its ``ARGV[1]``: one JSON object of strings (the scripts decode it
    with ``cjson``; strings, so no number goes through a Lua float)."""
    return json.dumps(options, ensure_ascii=False, separators=(",", ":"))


def _written_fields(change: RunChange) -> list[str | bytes]:
    """The patch as field, JSON value pairs, with updatedAt when the version goes up."""
    fields = hash_fields(change.encoded)
    if change.bump_version:
        fields += ["updatedAt", json_value(iso_z(change.updated_at))]
    return fields


def _json_str(document: bytes | str) -> str:
    """A JSON string (or null) read back from the run hash, as text ("" for null)."""
    value = json.loads(document)
    return str(value) if value is not None else ""


class RunWriter:
    """``create`` and ``commit`` on Redis, with a cache of each run's tenant and index score
    (both immutable) that spares a status change a read first.

    ``indexes_in_script``: the run's script settles its index groups itself (a single Redis),
    instead of follow-up writes around it (a cluster; ``indexing.py``).
    """

    def __init__(
        self,
        keys: RedisKeys,
        indexer: Indexer,
        claims: IdempotencyClaims,
        *,
        run_ttl_ms: int,
        job_ttl_ms: int,
        indexes_in_script: bool,
    ) -> None:
        self.keys = keys
        self.indexes_in_script = indexes_in_script
        self.indexer = indexer
        self.claims = claims
        self._run_ttl_ms = run_ttl_ms
        self._job_ttl_ms = job_ttl_ms
        self._runs: OrderedDict[str, tuple[str | None, int]] = OrderedDict()
        self._runs_mutex = threading.Lock()

    # -- creating ---------------------------------------------------------------------------

    def insert(
        self, run: PipelineRun, events: tuple[PipelineEvent, ...], *, return_existing: bool
    ) -> Plan[tuple[PipelineRun, bool]]:
        k = self.keys
        score = epoch_ms(run.created_at)
        fields = encode_fields(run_document(run))
        voided: set[str] = set()
        while True:
            token = ""
            if run.idempotency_key is not None:
                claimed = yield from self.claims.claim(run, return_existing, voided)
                if isinstance(claimed, PipelineRun):
                    return claimed, False
                token = claimed
            nonce, now = self.indexer.nonce(), now_ms()
            ahead = self.job_pointers(run.run_id, run.external_jobs())
            index_keys, index_options = self._created_indexes(run)
            if not self.indexes_in_script:
                ahead.insert(0, self.indexer.add_new_run(run, score, nonce, now))
            options = index_options | {
                "existing": "1" if return_existing else "0",
                "score": str(score),
                "token": token,
                "now": str(now),
                "run_ttl": str(self._run_ttl_ms),
                "op_ttl": str(OPERATION_TTL_MS),
                "op": operation_id(),
                "events": str(len(events)),
                "ends": "1" if events[-1].kind in TERMINAL_EVENT_KINDS else "0",
            }
            create = Script(
                "create_run",
                [k.run(run.run_id), k.events(run.run_id), k.void(run.run_id),
                 k.operations(run.run_id), *index_keys],
                [_packed(options), *(event_document(event) for event in events), *fields],
            )  # fmt: skip
            reply = (yield Ordered((*ahead, create)))[-1]
            code = int(reply[0])
            if code in (Written.APPLIED, Written.REPLAYED):  # replayed: this very create
                if not self.indexes_in_script:
                    yield self.indexer.settle_created(run, score, nonce, now_ms())
                self._remember(run.run_id, run.tenant_id, score)
                return run, True
            if not self.indexes_in_script:
                tenant, key = run.tenant_id, run.idempotency_key
                yield self._release_marks(run.run_id, tenant, key, score, nonce)
            if code == Refusal.ALREADY_EXISTS:
                if return_existing:
                    return decode_run(reply[1]), False
                raise refusal_error(Refusal.ALREADY_EXISTS, run.run_id)
            if code != Refusal.CLAIM_VOIDED:
                raise MpStateError(f"create_run answered an unknown code {code}")
            # The claim was voided by a caller that found this run missing: claim again.
            voided.add(token)

    def _created_indexes(self, run: PipelineRun) -> tuple[list[str], dict[str, str]]:
        """The index keys and options with which ``create_run`` settles a new run's groups
        itself, or none when they are written around it."""
        if not self.indexes_in_script:
            return [], {"groups": ""}
        groups = self.keys.groups_of(run.run_id, run.tenant_id, run.idempotency_key)
        keys, options = self.indexer.in_script(run.run_id, groups)
        status = json_value(PipelineRunStatus(run.status).value)
        return keys, options | {"version": str(run.version), "status": status}

    def job_pointers(self, run_id: str, jobs: Iterable[tuple[str, str]]) -> list[Batch]:
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

    # -- committing -------------------------------------------------------------------------

    def apply(self, change: RunChange) -> Plan[Applied]:
        k = self.keys
        run_id = change.run_id
        new_status = change.new_status
        operation = escape_id(change.operation_id) if change.operation_id else operation_id()
        keys = [k.run(run_id), k.events(run_id), k.operations(run_id)]
        ahead = self.job_pointers(run_id, change.external_jobs())
        placement: tuple[str | None, int] | None = None
        nonce, index_options = "", {"groups": ""}
        index_keys: list[str] = []
        if new_status is not None:
            placement = yield from self._placement(run_id)
            if placement is not None:
                nonce, index_keys, index_options, entries = self._status_indexes(
                    run_id, placement, new_status
                )
                ahead += entries
        options = self._commit_options(change, placement) | index_options | {"op": operation}
        rest = [*(event_document(event) for event in change.events), *_written_fields(change)]
        while True:
            commit = Script("commit_run", [*keys, *index_keys], [_packed(options), *rest])
            reply = (yield Ordered((*ahead, commit)))[-1]
            code = int(reply[0])
            if code == Refusal.WRONG_TENANT_KEYS:
                # The indexes named were another placement's (the run was re-created): clear
                # the marks left there, and redo with the run's.
                if nonce and placement is not None:
                    yield self._release_marks(run_id, placement[0], None, placement[1], nonce)
                placement = (_json_str(reply[1]) or None, int(text(reply[2])))
                self._remember(run_id, *placement)
                assert new_status is not None
                nonce, index_keys, index_options, ahead = self._status_indexes(
                    run_id, placement, new_status
                )
                options |= index_options | {"placement": self._placement_hint(placement)}
                continue
            break
        if code == Written.APPLIED:
            seqs = tuple(int(seq) for seq in reply[1])
            run = decode_run(reply[2]) if change.returns_run else change.after
            if nonce or int(reply[3]):
                if run is None:
                    run = yield from load_run(self.keys, run_id, include_events=False)
                if run is not None:
                    self._remember(run_id, run.tenant_id, epoch_ms(run.created_at))
                    yield self._settle(run, nonce, everything=bool(int(reply[3])))
                if not change.returns_run:
                    run = None
            return Applied(run, seqs)
        if code == Written.REPLAYED:
            return (yield from self._replayed(run_id, text(reply[1]), nonce))
        unchanged = decode_run(reply[2]) if code == Written.UNCHANGED else None
        if nonce and placement is not None:
            yield from self._withdraw(run_id, placement, nonce, unchanged)
        if unchanged is not None:
            return Applied(unchanged, (), changed=False)
        raise self._refusal(change, code, reply)

    def _commit_options(
        self, change: RunChange, placement: tuple[str | None, int] | None
    ) -> dict[str, str]:
        """commit_run-3-19.lua's options (its header names them), every one a string."""
        new_status = change.new_status
        return {
            "tenant": json_value(change.tenant) if change.tenant else "",
            "fence": _text(change.fence),
            "unchanged": _as_set(change.unchanged_if),
            "expected": _text(change.expected_version),
            "allowed": _as_set(change.allowed_from),
            "bump": "1" if change.bump_version else "0",
            "events": str(len(change.events)),
            "ends": "1" if change.ends_log else "0",
            "status": json_value(new_status.value) if new_status is not None else "",
            "placement": self._placement_hint(placement),
            "now": str(now_ms()),
            "run_ttl": str(self._run_ttl_ms),
            "op_ttl": str(OPERATION_TTL_MS),
            "renew_after": str(self._run_ttl_ms // RENEWALS_PER_TTL),
            "reindex_after": str(self._run_ttl_ms // 2),
            "document": "1" if change.returns_run else "0",
        }

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
            run = yield from load_run(self.keys, run_id, include_events=False)
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

    def _status_indexes(
        self, run_id: str, placement: tuple[str | None, int], status: PipelineRunStatus
    ) -> tuple[str, list[str], dict[str, str], list[Batch]]:
        """How a status change reaches the run's index groups: the pending marks' nonce, the
        keys and options with which ``commit_run`` settles them itself (a single Redis), and
        the entries to add ahead of it (a cluster: follow-ups, settled after)."""
        if self.indexes_in_script:
            groups = self.keys.groups_of(run_id, placement[0])
            keys, options = self.indexer.in_script(run_id, groups)
            return "", keys, options, []
        nonce = self.indexer.nonce()
        return nonce, [], {"groups": ""}, [self._status_entries(run_id, placement, status, nonce)]

    @staticmethod
    def _placement_hint(placement: tuple[str | None, int] | None) -> str:
        if placement is None:
            return ""
        return f"{json_value(placement[0])}|{placement[1]}"

    def _settle(self, run: PipelineRun, nonce: str, *, everything: bool) -> Batch:
        """Settle ``run`` into its status groups (every group, renewing their TTLs, if asked)."""
        score = epoch_ms(run.created_at)
        groups = self.keys.groups_of(
            run.run_id, run.tenant_id, run.idempotency_key if everything else None
        )
        status = PipelineRunStatus(run.status)
        return self.indexer.settle(
            groups, run.run_id, score, version=run.version, status=status, nonce=nonce,
            now_ms=now_ms(), renew=everything,
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
        groups = self.keys.groups_of(run_id, tenant_id, idempotency_key)
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
        run = yield from load_run(self.keys, run_id, include_events=False)
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
