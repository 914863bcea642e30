"""``RedisPipelineStateStore``: the contract on Redis, every single-run write one atomic script.

Writes (create, commit/update/cancel/append_event, lock acquire/release/extend) are each one
EVALSHA of a script in ``scripts/`` that checks every guard before it writes anything. Each write
carries a fresh operation id recorded by the script, so a redis-py retry after a lost reply replays
the outcome instead of applying the write twice. Reads use one MULTI/EXEC pipeline or a bounded
number of pipelined round trips.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self, TypeVar

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from mpstate.changes import Applied, Refusal, RunChange, refusal_error
from mpstate.errors import InvalidInputError, StateStoreUnavailableError
from mpstate.events import PipelineEvent, RunCreated, event_document
from mpstate.fields import epoch_ms, iso_z, now_ms, utc_now
from mpstate.filters import RunFilter, sort_key
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.redis.codec import (
    decode_events,
    decode_run,
    decode_run_hash,
    encode_fields,
    json_value,
    run_document,
    text,
)
from mpstate.redis.keys import RedisKeys, escape_id
from mpstate.redis.scripts import load_scripts
from mpstate.store import LockAttempt, PipelineStateStore, StoreOptions

__all__ = ["RedisPipelineStateStore"]

log = logging.getLogger("mpstate.redis")

T = TypeVar("T")

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
        retry: Retry | None = None,
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
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidInputError(f"retry must be a redis.retry.Retry, not {retry!r}")
        self.client = client
        self._retry = retry
        self._socket_timeout: float | None = client.connection_pool.connection_kwargs.get(
            "socket_timeout"
        )
        self.keys = RedisKeys(prefix)
        self._scripts = load_scripts(client)
        self._tenants: OrderedDict[str, str] = OrderedDict()
        self._tenants_mutex = threading.Lock()
        opts = self.options
        self._run_ttl_ms = int(opts.run_ttl_seconds * 1000)
        self._idem_ttl_ms = int(opts.idempotency_ttl_seconds * 1000)
        self._job_ttl_ms = int(opts.external_job_ttl_seconds * 1000)
        # Twice the run TTL: with re-indexing at half a run TTL, an index outlives its runs.
        self._index_ttl_ms = 2 * self._run_ttl_ms

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

        The client itself does not retry (redis-py would retry the connect inside every command
        retry, multiplying the wait); the store retries each whole round trip ``retries`` times
        with a short exponential backoff. An unreachable server therefore raises
        ``StateStoreUnavailableError`` after about ``(retries + 1) * (socket_connect_timeout +
        socket_timeout)`` at most. Retried writes are safe: every write script is idempotent per
        operation id.
        """
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidInputError(f"retries must be an integer >= 0, not {retries!r}")
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        retry = Retry(
            ExponentialBackoff(cap=0.5, base=0.05), retries, supported_errors=_UNAVAILABLE
        )
        return cls(client, retry=retry, **options)

    # -- round trips ----------------------------------------------------------------------------

    def _round_trip(self, call: Callable[[], T]) -> T:
        """One round trip, retried per ``retry`` on connection errors, which are then reported
        as ``StateStoreUnavailableError``. Safe for writes: every write script is idempotent per
        operation id, and a retry reuses the id."""
        with _reachable():
            if self._retry is None:
                return call()
            return self._retry.call_with_retry(call, lambda _error: None)

    def _script(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return self._round_trip(lambda: script(keys=keys, args=args))

    def _pipeline(self, build: Callable[[Pipeline], None], *, transaction: bool = False) -> Any:
        def execute() -> Any:
            with self.client.pipeline(transaction=transaction) as pipe:
                build(pipe)
                return pipe.execute()

        return self._round_trip(execute)

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
            k.operation(run.run_id, _operation_id()),
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
            self._index_ttl_ms,
            now_ms(),
            *encode_fields(run_document(run)),
        ]
        while True:
            reply = self._script(self._scripts.create_run, keys, args)
            code = int(reply[0])
            if code in (1, 2):
                self._remember_tenant(run.run_id, run.tenant_id)
                return run, True
            if code == Refusal.ALREADY_EXISTS:
                if return_existing:
                    return decode_run(reply[1]), False
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

    def _apply(self, change: RunChange) -> Applied:
        k = self.keys
        run_id = change.run_id
        run_key = k.run(run_id)
        new_status = change.new_status
        operation = escape_id(change.operation_id) if change.operation_id else _operation_id()
        keys = [run_key, k.events(run_id), k.operation(run_id, operation)]
        tenant_hint: str | None = None
        if new_status is not None:
            # Moving between status indexes: the script needs every status's keys, for the
            # run's tenant too (immutable, so a cached or scoped tenant is checked, not trusted).
            tenant_hint = change.tenant or self._known_tenant(run_id)
            keys += [k.by_status(status) for status in _STATUSES]
            keys += self._tenant_status_keys(tenant_hint, run_key)
        keys += [k.job(provider, job_id) for provider, job_id in change.external_jobs()]
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
            self._job_ttl_ms,
            _OPERATION_TTL_MS,
            run_id,
            len(change.events),
            "1" if change.ends_log else "0",
            json_value(new_status.value) if new_status is not None else "",
            json_value(tenant_hint) if tenant_hint else "",
            self._index_ttl_ms,
            now_ms(),
            self._run_ttl_ms // 2,
            "1" if change.returns_run else "0",
            *(_STATUS_JSON if new_status is not None else ()),
            *(event_document(event) for event in change.events),
            *fields,
        ]
        while True:
            reply = self._script(self._scripts.commit_run, keys, args)
            code = int(reply[0])
            if code == 1:
                seqs = tuple(int(seq) for seq in reply[1])
                run = decode_run(reply[2]) if change.returns_run else None
                if run is not None:
                    self._remember_tenant(run_id, run.tenant_id)
                if int(reply[3]):
                    self._reindex(run or self._load(run_id, include_events=False))
                return Applied(run, seqs)
            if code == 0:
                return Applied(decode_run(reply[2]), (), changed=False)
            if code == 2:
                return self._replayed(run_id, text(reply[1]))
            if code == Refusal.WRONG_TENANT_KEYS:
                # The index keys were built for another tenant: rebuild them and try again.
                stored_tenant = _json_str(text(reply[1]))
                keys[9:15] = self._tenant_status_keys(stored_tenant, run_key)
                args[13] = json_value(stored_tenant)
                continue
            raise self._refusal(change, Refusal(code), reply)

    def _reindex(self, run: PipelineRun | None) -> None:
        """Re-assert the run's index entries and their TTLs (idempotent; see index_run.lua)."""
        if run is None:
            return
        k = self.keys
        run_key = k.run(run.run_id)
        tenant = run.tenant_id
        keys = [
            run_key,
            k.all_runs(),
            *(k.by_status(status) for status in _STATUSES),
            k.by_tenant(tenant) if tenant else run_key,
            *self._tenant_status_keys(tenant, run_key),
            k.by_idempotency_key(run.idempotency_key) if run.idempotency_key else run_key,
        ]
        args = [
            run.run_id,
            self._index_ttl_ms,
            now_ms(),
            json_value(tenant),
            *_STATUS_JSON,
            "1" if run.idempotency_key else "0",
        ]
        answer = int(self._script(self._scripts.index_run, keys, args))
        if answer != 1:  # 0: the run expired meanwhile; -8 cannot happen for a decoded run
            log.info("re-indexing run %r answered %d", run.run_id, answer)

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

    def _replayed(self, run_id: str, outcome: str) -> Applied:
        """A retried script found its own earlier write: report that write's outcome."""
        _, _, seq_list = outcome.partition(":")
        run = self._load(run_id, include_events=False)
        if run is None:
            raise refusal_error(Refusal.NOT_FOUND, run_id)
        return Applied(run, tuple(int(s) for s in seq_list.split(",") if s))

    def _tenant_status_keys(self, tenant_id: str | None, placeholder: str) -> list[str]:
        if not tenant_id:
            return [placeholder] * len(_STATUSES)
        return [self.keys.by_tenant_status(tenant_id, status) for status in _STATUSES]

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
        keys = [self.keys.run(run_id), self.keys.events(run_id)]
        reply = self._script(self._scripts.load_run, keys, ["1" if include_events else "0"])
        if not reply:
            return None
        return decode_run(reply[0], decode_events(reply[1]) if include_events else None)

    def _read_events(
        self, run_id: str, since_seq: int, limit: int | None
    ) -> list[PipelineEvent] | None:
        def read(pipe: Pipeline) -> None:
            pipe.exists(self.keys.run(run_id))
            pipe.xrange(self.keys.events(run_id), min=f"(0-{since_seq}", count=limit)

        exists, entries = self._pipeline(read, transaction=True)
        return decode_events(entries) if exists else None

    def _wait_for_events(self, run_id: str, since_seq: int, wait_s: float) -> list[PipelineEvent]:
        # XREAD BLOCK holds one pooled connection for the wait.
        block_ms = self._block_ms(wait_s * 1000)
        key = self.keys.events(run_id)
        reply: Any = self._round_trip(
            lambda: self.client.xread({key: f"0-{since_seq}"}, block=block_ms)
        )
        if not reply:
            return []
        # RESP2 answers [[key, entries]], RESP3 {key: entries}.
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return decode_events(entries)

    def _find_job(self, provider: str, job_id: str) -> PipelineRun | None:
        run_id = self._round_trip(lambda: self.client.get(self.keys.job(provider, job_id)))
        return None if run_id is None else self._load(text(run_id), include_events=False)

    def _select(self, run_filter: RunFilter) -> list[PipelineRun]:
        """Read one page of the most selective index, then only the runs on that page.

        One round trip finds the page's run ids (by rank, O(log N + page) for one index), one loads
        those runs. A run that is gone (expired) is pruned from the index and one that no longer
        matches (a stale index entry) is skipped; only then is another pass needed, reading as
        many entries further as were dropped.
        """
        if run_filter.idempotency_key is not None and (run_filter.status or run_filter.tenant_id):
            # The key's index also holds runs of other statuses and tenants, so offsets cannot be
            # counted on it: select all of the key's runs (a handful) and page here.
            whole = run_filter.model_copy(update={"limit": None, "offset": 0})
            return run_filter.page(self._scan(whole))
        return self._scan(run_filter)

    def _scan(self, run_filter: RunFilter) -> list[PipelineRun]:
        sources = self._index_sources(run_filter)
        dropped: set[str] = set()
        while True:
            extra = len(dropped)
            page = self._page_ids(sources, run_filter, extra)
            candidates = [(member, score) for member, score in page if member not in dropped]
            if run_filter.limit is not None:
                candidates = candidates[: run_filter.limit]
            runs = self._load_many([member for member, _ in candidates])
            matched: list[PipelineRun] = []
            gone: list[tuple[str, float]] = []
            for (member, score), run in zip(candidates, runs, strict=True):
                if run is None:
                    gone.append((member, score))
                    dropped.add(member)
                elif run_filter.matches(run):
                    matched.append(run)
                else:
                    dropped.add(member)
            if gone:
                self._prune(sources, gone)
            if len(dropped) == extra:
                matched.sort(key=sort_key)
                return matched

    def _page_ids(
        self, sources: list[str], run_filter: RunFilter, extra: int
    ) -> list[tuple[str, float]]:
        """Index entries ``[offset, offset + limit + extra)`` of the filter's window, in order."""
        low = str(epoch_ms(run_filter.since)) if run_filter.since else "-inf"
        high = str(epoch_ms(run_filter.until)) if run_filter.until else "+inf"
        count = -1 if run_filter.limit is None else run_filter.limit + extra
        if len(sources) == 1:
            page_args = [low, high, run_filter.offset, count]
            flat = self._script(self._scripts.page_index, sources, page_args)
            return [
                (text(m), float(text(sc))) for m, sc in zip(flat[0::2], flat[1::2], strict=True)
            ]
        # Several statuses: merge the heads of their indexes (ids only; no run is read here).
        head = None if count < 0 else run_filter.offset + count

        def read_heads(pipe: Pipeline) -> None:
            for source in sources:
                pipe.zrange(
                    source,
                    low,
                    high,
                    byscore=True,
                    withscores=True,
                    offset=None if head is None else 0,
                    num=head,
                )

        per_source = self._pipeline(read_heads)
        merged = sorted({(score, text(member)) for found in per_source for member, score in found})
        window = merged[run_filter.offset : None if head is None else head]
        return [(member, score) for score, member in window]

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

        def read(pipe: Pipeline) -> None:
            for run_id in run_ids:
                pipe.hgetall(self.keys.run(run_id))

        replies = self._pipeline(read)
        return [decode_run_hash(reply) for reply in replies]

    def _prune(self, sources: list[str], gone: list[tuple[str, float]]) -> None:
        args = [item for member, score in gone for item in (member, score)]
        for source in sources:
            self._script(self._scripts.prune_index, [source], args)

    # -- locking ----------------------------------------------------------------------------

    def _try_lock(self, run_id: str, token: str, ttl_ms: int) -> LockAttempt:
        keys = [self.keys.lock(run_id), self.keys.run(run_id)]
        scope = json_value(self._tenant) if self._tenant else ""
        reply = self._script(self._scripts.acquire_lock, keys, [token, ttl_ms, scope])
        code = int(reply[0])
        if code == Refusal.NOT_FOUND:
            raise refusal_error(Refusal.NOT_FOUND, run_id)
        if code == 1:
            return LockAttempt(int(reply[1]), run=decode_run(reply[2]))
        return LockAttempt(None, max(1, int(reply[1])))

    def _wait_for_release(self, run_id: str, wait_ms: float) -> None:
        # BLPOP wakes as soon as a release pushes; its timeout is capped by the caller at the
        # holder's remaining TTL and the poll interval, since nobody pushes when a holder dies.
        timeout = self._block_ms(wait_ms) / 1000
        wake = self.keys.lock_wake(run_id)
        self._round_trip(lambda: self.client.blpop([wake], timeout=timeout))

    def _block_ms(self, wait_ms: float) -> int:
        """How long one blocking read (BLPOP, XREAD BLOCK) may block, in whole milliseconds.

        At least 10: Redis 6.2 truncates 0.001 s to 0 ms, which both read as "block forever".
        At most half the socket timeout (1 s when the client's is unknown): a blocking read
        longer than the socket timeout would be reported as an outage.
        """
        ceiling_ms = self._socket_timeout * 500 if self._socket_timeout else 1000
        return round(min(max(10, wait_ms), ceiling_ms))

    def _release_lock(self, run_id: str, token: str) -> bool:
        k = self.keys
        keys = [k.lock(run_id), k.lock_wake(run_id), k.operation(run_id, f"release-{token}")]
        args = [token, self.options.lock_ttl_ms, _OPERATION_TTL_MS]
        return bool(self._script(self._scripts.release_lock, keys, args))

    def _extend_lock(self, run_id: str, token: str, ttl_ms: int) -> bool:
        keys = [self.keys.lock(run_id)]
        return bool(self._script(self._scripts.extend_lock, keys, [token, ttl_ms]))


def _operation_id() -> str:
    """A random id for one write (random bytes, not a counter: prefork children copy counters)."""
    return os.urandom(12).hex()


def _json_str(document: str) -> str:
    """A JSON string (or null) read back from the run hash, as text ("" for null)."""
    value = json.loads(document)
    return str(value) if value is not None else ""
