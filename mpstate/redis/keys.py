"""Every Redis key mpstate uses, built in one place.

Ids are percent-escaped (everything but ``A-Z a-z 0-9 - . _ ~`` becomes ``%XX`` of its UTF-8
bytes), so no id can contain ``:``, ``{`` or ``}`` once in a key: distinct ids always give distinct
keys and no id can reach another key space. Every key of one run carries the run's hash tag
``{<escaped run id>}``, so each per-run script touches one Redis Cluster slot.

Layout (prefix ``mp``)::

    mp:run:{R}                  hash    the run: camelCase field -> JSON value, plus _seq/_fence/...
    mp:run:{R}:events           stream  the event log, entry id 0-<seq>, field e = event JSON
    mp:run:{R}:lock             string  lock holder's random token, PX = lock TTL
    mp:run:{R}:lock:wake        list    pushed on release; waiters BLPOP it
    mp:run:{R}:op:<op id>       string  outcome of a write, so a retried script is not re-applied
    mp:idem:{T:K}               string  run id holding idempotency key K in tenant T
    mp:job:{P:J}                string  run id that recorded job J of provider P
    mp:idx:all                  zset    every run, score = created_at (epoch ms), member = run id
    mp:idx:status:<s>           zset    runs by status
    mp:idx:tenant:{T}           zset    runs of tenant T
    mp:idx:tenant:{T}:status:<s> zset   runs of tenant T by status
    mp:idx:idem:{K}             zset    runs created with idempotency key K (any tenant)
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote

from mpstate.errors import InvalidInputError
from mpstate.models import PipelineRunStatus

__all__ = ["RedisKeys", "escape_id"]


@lru_cache(maxsize=16384)
def escape_id(value: str) -> str:
    """Percent-escape an id for use inside a key (injective; never yields ``:{}``)."""
    return quote(value, safe="")


class RedisKeys:
    """Builds key names for one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise InvalidInputError(f"prefix must be a non-empty string, not {prefix!r}")
        if any(ch in prefix for ch in "{}"):
            raise InvalidInputError("prefix cannot contain '{' or '}': they would set the hash tag")
        self.prefix = prefix

    def _run_base(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{escape_id(run_id)}}}"

    def run(self, run_id: str) -> str:
        return self._run_base(run_id)

    def events(self, run_id: str) -> str:
        return f"{self._run_base(run_id)}:events"

    def lock(self, run_id: str) -> str:
        return f"{self._run_base(run_id)}:lock"

    def lock_wake(self, run_id: str) -> str:
        return f"{self._run_base(run_id)}:lock:wake"

    def operation(self, run_id: str, op_id: str) -> str:
        return f"{self._run_base(run_id)}:op:{op_id}"

    def idempotency(self, tenant_id: str | None, key: str) -> str:
        return f"{self.prefix}:idem:{{{escape_id(tenant_id or '')}:{escape_id(key)}}}"

    def job(self, provider: str, job_id: str) -> str:
        return f"{self.prefix}:job:{{{escape_id(provider)}:{escape_id(job_id)}}}"

    def all_runs(self) -> str:
        return f"{self.prefix}:idx:all"

    def by_status(self, status: PipelineRunStatus) -> str:
        return f"{self.prefix}:idx:status:{status.value}"

    def by_tenant(self, tenant_id: str) -> str:
        return f"{self.prefix}:idx:tenant:{{{escape_id(tenant_id)}}}"

    def by_tenant_status(self, tenant_id: str, status: PipelineRunStatus) -> str:
        return f"{self.by_tenant(tenant_id)}:status:{status.value}"

    def by_idempotency_key(self, key: str) -> str:
        return f"{self.prefix}:idx:idem:{{{escape_id(key)}}}"

    def pattern(self) -> str:
        """A SCAN pattern matching every key under this prefix (for tools and tests)."""
        escaped = "".join(f"\\{ch}" if ch in "*?[]^\\" else ch for ch in self.prefix)
        return f"{escaped}:*"
