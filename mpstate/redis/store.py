"""``RedisPipelineStateStore``: the contract on Redis, every single-run write one atomic script.

Writes (create, commit/update/cancel/append_event, lock acquire/release/extend) are each one
EVALSHA of a script in ``scripts/`` that checks every guard before it writes anything. Each write
carries a fresh operation id recorded by the script, so a redis-py retry after a lost reply replays
the outcome instead of applying the write twice. Reads use one MULTI/EXEC pipeline or a bounded
number of pipelined round trips.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from mpstate.changes import CommitResult, Refusal, RunChange, refusal_error
from mpstate.errors import StateStoreUnavailableError
from mpstate.events import PipelineEvent, RunCreated, event_document
from mpstate.fields import epoch_ms, iso_z, utc_now
from mpstate.filters import RunFilter, sort_key
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.redis.codec import (
    decode_events,
    decode_run,
    encode_fields,
    json_value,
    run_document,
    text,
)
from mpstate.redis.keys import RedisKeys
from mpstate.redis.scripts import load_scripts
from mpstate.store import LockAttempt, PipelineStateStore, StoreOptions

__all__ = ["RedisPipelineStateStore"]

_STATUSES = tuple(PipelineRunStatus)
_STATUS_JSON = tuple(json_value(status.value) for status in _STATUSES)
#: How long a write's outcome is kept for retries of the same operation.
_OPERATION_TTL_MS = 10 * 60 * 1000
#: Run id -> tenant entries kept to build a status change's index keys in one round trip.
_TENANT_CACHE_SIZE = 10_000

_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


@contextmanager
def _reachable() -> Iterator[None]:
    """Report connection refused/reset/timeout as ``StateStoreUnavailableError`` (cause chained)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StateStoreUnavailableError(f"Redis is unavailable: {exc}") from exc
    except redis.exceptions.ReadOnlyError as exc:
        raise StateStoreUnavailableError(f"Redis refused the write: {exc}") from exc


def _as_set(statuses: frozenset[PipelineRunStatus] | None) -> str:
    if not statuses:
        return ""
    return "|" + "|".join(json_value(s.value) for s in sorted(statuses)) + "|"


class RedisPipelineStateStore(PipelineStateStore):
    """The store on Redis >= 6.2. Keys are listed in ``mpstate.redis.keys``."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "mp",
        *,
        run_ttl_seconds: float = 30 * 86400,
        lock_ttl_seconds: float = 60,
        idempotency_ttl_seconds: float = 86400,
        external_job_ttl_seconds: float = 7 * 86400,
        lock_acquire_timeout_ms: int = 5000,
        lock_poll_interval_ms: int = 100,
    ) -> None:
        super().__init__(
            StoreOptions(
                run_ttl_seconds=run_ttl_seconds,
                lock_ttl_seconds=lock_ttl_seconds,
                idempotency_ttl_seconds=idempotency_ttl_seconds,
                external_job_ttl_seconds=external_job_ttl_seconds,
                lock_acquire_timeout_ms=lock_acquire_timeout_ms,
                lock_poll_interval_ms=lock_poll_interval_ms,
            )
        )
        self.client = client
        self.keys = RedisKeys(prefix)
        self._scripts = load_scripts(client)
        self._tenants: OrderedDict[str, str] = OrderedDict()
        self._tenants_mutex = threading.Lock()
        opts = self.options
        self._run_ttl_ms = int(opts.run_ttl_seconds * 1000)
        self._idem_ttl_ms = int(opts.idempotency_ttl_seconds * 1000)
        self._job_ttl_ms = int(opts.external_job_ttl_seconds * 1000)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        retries: int = 2,
        **options: Any,
    ) -> Self:
        """A store on a new client for ``url`` with bounded timeouts and retries.

        An unreachable server raises ``StateStoreUnavailableError`` after at most
        ``(retries + 1) * (socket_connect_timeout or socket_timeout)`` plus a short backoff.
        Retried writes are safe: every write script is idempotent per operation.
        """
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
            health_check_interval=30,
        )
        return cls(client, **options)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    # -- creating ---------------------------------------------------------------------------

    def _insert(
        self, run: PipelineRun, created_event: RunCreated, *, return_existing: bool
    ) -> tuple[PipelineRun, bool]:
        k = self.keys
        run_key = k.run(run.run_id)
        status = PipelineRunStatus(run.status)
        keys = [
            run_key,
            k.events(run.run_id),
            k.operation(run.run_id, uuid.uuid4().hex),
            k.idempotency(run.tenant_id, run.idempotency_key) if run.idempotency_key else run_key,
            k.all_runs(),
            k.by_status(status),
            k.by_tenant(run.tenant_id) if run.tenant_id else run_key,
            k.by_tenant_status(run.tenant_id, status) if run.tenant_id else run_key,
            k.by_idempotency_key(run.idempotency_key) if run.idempotency_key else run_key,
            *(k.job(provider, job_id) for provider, job_id in sorted(run.external_jobs())),
        ]
        args: list[Any] = [
            "1" if return_existing else "0",
            epoch_ms(run.created_at),
            self._run_ttl_ms,
            self._idem_ttl_ms,
            self._job_ttl_ms,
            run.run_id,
            event_document(created_event),
            "1" if run.tenant_id else "0",
            "1" if run.idempotency_key else "0",
            _OPERATION_TTL_MS,
            "",
            *encode_fields(run_document(run)),
        ]
        while True:
            with _reachable():
                reply = self._scripts.create_run(keys=keys, args=args)
            code = int(reply[0])
            if code in (1, 2):
                self._remember_tenant(run.run_id, run.tenant_id)
                return run, True
            if code == Refusal.ALREADY_EXISTS:
                if return_existing:
                    existing = decode_run(reply[1])
                    assert existing is not None
                    return existing, False
                raise refusal_error(Refusal.ALREADY_EXISTS, run.run_id)
            holder_id = text(reply[1])
            holder = self._load(holder_id, include_events=False)
            if holder is None or holder.idempotency_key != run.idempotency_key:
                # The key outlived its run: take it over, unless it moved again meanwhile.
                args[10] = holder_id
                continue
            if return_existing:
                return holder, False
            raise refusal_error(
                Refusal.IDEMPOTENCY_KEY_IN_USE,
                run.run_id,
                idempotency_key=run.idempotency_key,
                existing_run_id=holder_id,
            )

    # -- writing ----------------------------------------------------------------------------

    def _apply(self, change: RunChange) -> CommitResult:
        k = self.keys
        run_id = change.run_id
        run_key = k.run(run_id)
        tenant_hint = change.tenant or self._known_tenant(run_id)
        keys = [run_key, k.events(run_id), k.operation(run_id, uuid.uuid4().hex)]
        keys += [k.by_status(status) for status in _STATUSES]
        keys += self._tenant_status_keys(tenant_hint, run_key)
        keys += [k.job(provider, job_id) for provider, job_id in self._jobs_in(change)]
        new_status = change.new_status
        events = [event_document(event) for event in change.events]
        patch = change.patch
        fields = (
            encode_fields(
                patch.model_dump(mode="json", by_alias=True, include=set(patch.model_fields_set))
            )
            if patch is not None
            else []
        )
        args: list[Any] = [
            json_value(change.tenant) if change.tenant else "",
            "" if change.fence is None else change.fence,
            _as_set(change.unchanged_if),
            "" if change.expected_version is None else change.expected_version,
            _as_set(change.allowed_from),
            "1" if change.bump_version else "0",
            json_value(iso_z(utc_now())),
            self._run_ttl_ms,
            self._job_ttl_ms,
            _OPERATION_TTL_MS,
            json_value(tenant_hint) if tenant_hint else "",
            json_value(new_status.value) if new_status is not None else "",
            len(events),
            "1" if change.ends_log else "0",
            *_STATUS_JSON,
            run_id,
            *events,
            *fields,
        ]
        while True:
            with _reachable():
                reply = self._scripts.commit_run(keys=keys, args=args)
            code = int(reply[0])
            if code == 1:
                run = decode_run(reply[2])
                assert run is not None
                self._remember_tenant(run_id, run.tenant_id)
                return CommitResult(run, tuple(int(seq) for seq in reply[1]))
            if code == 0:
                run = decode_run(reply[2])
                assert run is not None
                return CommitResult(run, (), changed=False)
            if code == 2:
                return self._replayed(run_id, text(reply[1]))
            if code == -8:
                # The index keys were built for the wrong tenant: rebuild them and try again.
                stored_tenant = _json_str(text(reply[1]))
                keys[9:15] = self._tenant_status_keys(stored_tenant, run_key)
                args[10] = json_value(stored_tenant)
                continue
            raise self._refusal(change, Refusal(code), reply)

    def _refusal(self, change: RunChange, refusal: Refusal, reply: Sequence[Any]) -> Exception:
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

    def _replayed(self, run_id: str, outcome: str) -> CommitResult:
        """A retried script found its own earlier write: report that write's outcome."""
        _, _, seq_list = outcome.partition(":")
        run = self._load(run_id, include_events=False)
        if run is None:
            raise refusal_error(Refusal.NOT_FOUND, run_id)
        return CommitResult(run, tuple(int(s) for s in seq_list.split(",") if s))

    def _tenant_status_keys(self, tenant_id: str | None, placeholder: str) -> list[str]:
        if not tenant_id:
            return [placeholder] * len(_STATUSES)
        return [self.keys.by_tenant_status(tenant_id, status) for status in _STATUSES]

    @staticmethod
    def _jobs_in(change: RunChange) -> list[tuple[str, str]]:
        values = change.values
        jobs: set[tuple[str, str]] = set()
        ids = values.get("external_job_ids")
        if isinstance(ids, dict):
            jobs.update(ids.items())
        legacy = values.get("external_job_id")
        if isinstance(legacy, str):
            provider, _, job_id = legacy.partition(":")
            jobs.add((provider, job_id))
        return sorted(jobs)

    def _known_tenant(self, run_id: str) -> str | None:
        with self._tenants_mutex:
            tenant = self._tenants.get(run_id)
            if tenant is not None:
                self._tenants.move_to_end(run_id)
            return tenant or None

    def _remember_tenant(self, run_id: str, tenant_id: str | None) -> None:
        with self._tenants_mutex:
            self._tenants[run_id] = tenant_id or ""
            self._tenants.move_to_end(run_id)
            if len(self._tenants) > _TENANT_CACHE_SIZE:
                self._tenants.popitem(last=False)

    # -- reading ----------------------------------------------------------------------------

    def _load(self, run_id: str, *, include_events: bool) -> PipelineRun | None:
        with _reachable(), self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.run(run_id))
            if include_events:
                pipe.xrange(self.keys.events(run_id))
            replies = pipe.execute()
        events = decode_events(replies[1]) if include_events else None
        return decode_run(replies[0], events)

    def _read_events(
        self, run_id: str, since_seq: int, limit: int | None
    ) -> list[PipelineEvent] | None:
        with _reachable(), self.client.pipeline(transaction=True) as pipe:
            pipe.exists(self.keys.run(run_id))
            pipe.xrange(self.keys.events(run_id), min=f"(0-{since_seq}", count=limit)
            exists, entries = pipe.execute()
        return decode_events(entries) if exists else None

    def _find_job(self, provider: str, job_id: str) -> PipelineRun | None:
        with _reachable():
            run_id = self.client.get(self.keys.job(provider, job_id))
        return None if run_id is None else self._load(text(run_id), include_events=False)

    def _select(self, run_filter: RunFilter) -> list[PipelineRun]:
        """Page through the most selective index, checking each run against the filter.

        One round trip reads the candidates of every source index, one loads them. A candidate
        that is gone (expired) is pruned from the index and one that no longer matches is skipped;
        only then is another pass needed, fetching as many more as were skipped.
        """
        sources = self._index_sources(run_filter)
        low = epoch_ms(run_filter.since) if run_filter.since else "-inf"
        high = epoch_ms(run_filter.until) if run_filter.until else "+inf"
        wanted = None if run_filter.limit is None else run_filter.offset + run_filter.limit
        skipped: set[str] = set()
        while True:
            fetch = None if wanted is None else wanted + len(skipped)
            with _reachable(), self.client.pipeline(transaction=False) as pipe:
                for source in sources:
                    pipe.zrange(
                        source,
                        low,
                        high,
                        byscore=True,
                        withscores=True,
                        offset=0 if fetch else None,
                        num=fetch,
                    )
                per_source = pipe.execute()
            exhausted = fetch is None or all(len(found) < fetch for found in per_source)
            merged = sorted(
                {(score, text(member)) for found in per_source for member, score in found}
            )
            candidates = [(score, member) for score, member in merged if member not in skipped]
            candidates = candidates[:wanted] if wanted is not None else candidates
            runs = self._load_many([member for _, member in candidates])
            matched: list[PipelineRun] = []
            gone: list[tuple[str, float]] = []
            for (score, member), run in zip(candidates, runs, strict=True):
                if run is None:
                    gone.append((member, score))
                    skipped.add(member)
                elif run_filter.matches(run):
                    matched.append(run)
                else:
                    skipped.add(member)
            if gone:
                self._prune(sources, gone)
            if len(matched) == len(candidates) or exhausted:
                matched.sort(key=sort_key)
                return run_filter.page(matched)

    def _index_sources(self, run_filter: RunFilter) -> list[str]:
        k = self.keys
        if run_filter.idempotency_key is not None:
            return [k.by_idempotency_key(run_filter.idempotency_key)]
        statuses = sorted(run_filter.status) if run_filter.status else None
        tenant = run_filter.tenant_id
        if tenant is not None:
            if statuses:
                return [k.by_tenant_status(tenant, status) for status in statuses]
            return [k.by_tenant(tenant)]
        if statuses:
            return [k.by_status(status) for status in statuses]
        return [k.all_runs()]

    def _load_many(self, run_ids: list[str]) -> list[PipelineRun | None]:
        if not run_ids:
            return []
        with _reachable(), self.client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(self.keys.run(run_id))
            replies = pipe.execute()
        return [decode_run(reply) for reply in replies]

    def _prune(self, sources: list[str], gone: list[tuple[str, float]]) -> None:
        args = [item for member, score in gone for item in (member, score)]
        with _reachable():
            for source in sources:
                self._scripts.prune_index(keys=[source], args=args)

    # -- locking ----------------------------------------------------------------------------

    def _try_lock(self, run_id: str, token: str, ttl_ms: int) -> LockAttempt:
        keys = [self.keys.lock(run_id), self.keys.run(run_id)]
        with _reachable():
            scope = json_value(self._tenant) if self._tenant else ""
            reply = self._scripts.acquire_lock(keys=keys, args=[token, ttl_ms, scope])
        code = int(reply[0])
        if code == Refusal.NOT_FOUND:
            raise refusal_error(Refusal.NOT_FOUND, run_id)
        if code == 1:
            return LockAttempt(int(reply[1]), run=decode_run(reply[2]))
        return LockAttempt(None, max(1, int(reply[1])))

    def _wait_for_release(self, run_id: str, wait_ms: float) -> None:
        # BLPOP wakes as soon as a release pushes; its timeout is capped by the caller at the
        # holder's remaining TTL and the poll interval, since nobody pushes when a holder dies.
        with _reachable():
            self.client.blpop([self.keys.lock_wake(run_id)], timeout=wait_ms / 1000)

    def _release_lock(self, run_id: str, token: str) -> bool:
        keys = [self.keys.lock(run_id), self.keys.lock_wake(run_id)]
        with _reachable():
            return bool(
                self._scripts.release_lock(keys=keys, args=[token, self.options.lock_ttl_ms])
            )

    def _extend_lock(self, run_id: str, token: str, ttl_ms: int) -> bool:
        with _reachable():
            return bool(
                self._scripts.extend_lock(keys=[self.keys.lock(run_id)], args=[token, ttl_ms])
            )


def _json_str(document: str) -> str:
    """A JSON string (or null) read back from the run hash, as text ("" for null)."""
    value = json.loads(document)
    return str(value) if value is not None else ""
