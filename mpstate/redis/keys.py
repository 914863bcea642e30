"""Every Redis key mpstate uses, built in one place.

Ids are percent-escaped (everything but ``A-Z a-z 0-9 - . _ ~`` becomes ``%XX`` of its UTF-8
bytes), so no id can contain ``:``, ``{`` or ``}`` once in a key: distinct ids always give distinct
keys and no id can reach another key space.

Every key carries a hash tag (``{...}``), which decides its Redis Cluster slot. All keys of one run
share the tag ``{<escaped run id>}``, so each per-run script touches one slot. The indexes live
in three kinds of groups, each group one slot: the global indexes (``{all}``), each tenant's
(``{T}``) and each idempotency key's; the idempotency claim, each external job pointer and each
job id's set of providers have slots of their own. Writes to those are follow-up calls made by
the store around the per-run script (``mpstate.redis.indexing``). Each webhook delivery claim has
a slot of its own; the unmatched callbacks and their counts share one slot (``{unmatched}``), so
one script writes both.

Layout (prefix ``mp``)::

    mp:run:{R}                   hash    the run: camelCase field -> JSON value, plus _seq etc.
    mp:run:{R}:events            stream  the event log, entry id 0-<seq>, field e = event JSON
    mp:run:{R}:lock              string  lock holder's random token, PX = lock TTL
    mp:run:{R}:lock:wake         list    pushed on release; waiters BLPOP it
    mp:run:{R}:op:<op id>        string  outcome of a write, so a retried script is not re-applied
    mp:run:{R}:void              set     claim tokens whose create of R was called off
    mp:idem:{T:K}                string  "<claim token>:<run id>" holding idempotency key K of T
    mp:job:{P:J}                 string  run id that recorded job J of provider P
    mp:jobproviders:{J}          set     providers P with a pointer mp:job:{P:J} (a hint)
    mp:delivery:{P:D}            string  random token of the claim of delivery D of provider P
    mp:{unmatched}               stream  callbacks that matched no run, field c = JSON; capped
    mp:{unmatched}:counts        hash    "<provider>\\n<reason>" -> callbacks recorded (all)
    mp:idx:{all}                 zset    every run, score = created_at (epoch ms), member = run id
    mp:idx:{all}:status:<s>      zset    runs by status
    mp:idx:{all}:entries         hash    run id -> "score:version" and writers' pending marks
    mp:idx:tenant:{T}            zset    runs of tenant T
    mp:idx:tenant:{T}:status:<s> zset    runs of tenant T by status
    mp:idx:tenant:{T}:entries    hash    as mp:idx:{all}:entries, for tenant T's indexes
    mp:idx:idem:{K}              zset    runs created with idempotency key K (any tenant)
    mp:idx:idem:{K}:entries      hash    as mp:idx:{all}:entries, for key K's index
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

from mpstate.errors import InvalidInputError
from mpstate.models import PipelineRunStatus

__all__ = ["IndexGroup", "RedisKeys", "escape_id"]


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

    def void(self, run_id: str) -> str:
        return f"{self._run_base(run_id)}:void"

    def idempotency(self, tenant_id: str | None, key: str) -> str:
        return f"{self.prefix}:idem:{{{escape_id(tenant_id or '')}:{escape_id(key)}}}"

    def job(self, provider: str, job_id: str) -> str:
        return f"{self.prefix}:job:{{{escape_id(provider)}:{escape_id(job_id)}}}"

    def job_providers(self, job_id: str) -> str:
        """The providers that recorded ``job_id``: tagged by the job id alone, one slot per id."""
        return f"{self.prefix}:jobproviders:{{{escape_id(job_id)}}}"

    def delivery(self, provider: str, delivery_id: str) -> str:
        return f"{self.prefix}:delivery:{{{escape_id(provider)}:{escape_id(delivery_id)}}}"

    def unmatched(self) -> str:
        """The stream of unmatched callbacks: one key (one slot) for the whole store.

        Fine on a cluster: callbacks that match no run are rare, so this slot is never hot.
        """
        return f"{self.prefix}:{{unmatched}}"

    def unmatched_counts(self) -> str:
        """Unmatched callbacks by provider and reason, in the stream's slot."""
        return f"{self.prefix}:{{unmatched}}:counts"

    def by_status(self, status: PipelineRunStatus) -> str:
        return self.global_group().status(status)

    def by_tenant(self, tenant_id: str) -> str:
        return self.tenant_group(tenant_id).everything

    def by_idempotency_key(self, key: str) -> str:
        return f"{self.prefix}:idx:idem:{{{escape_id(key)}}}"

    def global_group(self) -> IndexGroup:
        """The indexes of every run (one slot)."""
        return IndexGroup(f"{self.prefix}:idx:{{all}}", None)

    def tenant_group(self, tenant_id: str) -> IndexGroup:
        """Tenant ``tenant_id``'s indexes (one slot per tenant)."""
        return IndexGroup(f"{self.prefix}:idx:tenant:{{{escape_id(tenant_id)}}}", tenant_id)

    def idempotency_group(self, key: str) -> IndexGroup:
        """The runs created with idempotency key ``key`` (one slot per key; no statuses)."""
        return IndexGroup(self.by_idempotency_key(key), None, tracks_status=False)

    def groups_of(
        self, run_id: str, tenant_id: str | None, idempotency_key: str | None = None
    ) -> list[IndexGroup]:
        """Every index group run ``run_id`` of this tenant and idempotency key belongs to."""
        groups = [self.global_group()]
        if tenant_id:
            groups.append(self.tenant_group(tenant_id))
        if idempotency_key:
            groups.append(self.idempotency_group(idempotency_key))
        return groups

    def pattern(self) -> str:
        """A SCAN pattern matching every key under this prefix (for tools and tests)."""
        escaped = "".join(f"\\{ch}" if ch in "*?[]^\\" else ch for ch in self.prefix)
        return f"{escaped}:*"


@dataclass(frozen=True, slots=True)
class IndexGroup:
    """One slot's indexes: every run of the group, the group's runs by status, and the entries
    hash that orders follow-up writes (``mpstate/redis/scripts/settle_index_entries-2-8.lua``)."""

    everything: str
    #: The tenant whose runs these are (None: not a tenant's group).
    tenant_id: str | None
    #: Whether the group has a zset per status (the idempotency key's group does not).
    tracks_status: bool = True

    def status(self, status: PipelineRunStatus) -> str:
        return f"{self.everything}:status:{status.value}"

    @property
    def entries(self) -> str:
        return f"{self.everything}:entries"

    def statuses(self) -> list[str]:
        """The zsets by status, in ``PipelineRunStatus`` order (none if not tracked)."""
        if not self.tracks_status:
            return []
        return [self.status(status) for status in PipelineRunStatus]
