"""Every Redis key mpstate uses, built in one place.

Ids are percent-escaped (everything but ``A-Z a-z 0-9 - . _ ~`` becomes ``%XX`` of its UTF-8
bytes), so no id can contain ``:``, ``{`` or ``}`` once in a key: distinct ids always give distinct
keys and no id can reach another key space.

Every key carries a hash tag (``{...}``), which decides its Redis Cluster slot. All keys of one run
share the tag ``{<escaped run id>}``, so each per-run script touches one slot. The indexes live
in three kinds of groups, each group one slot: the global indexes, each tenant's (``{T}``) and
each idempotency key's; the idempotency claim, each external job pointer and each job id's set
of providers have slots of their own. On a cluster, writes to those are follow-up calls made by
the store around the per-run script (``mpstate.redis.indexing``); on a single Redis the run's
script settles its index groups itself. Each webhook delivery claim has a slot of
its own; the unmatched callbacks and their counts share one slot (``{unmatched}``), so one script
writes both.

The global indexes (every run, runs by status) are sharded: ``GLOBAL_SHARDS`` groups, a run in
the one ``shard_of`` its id, so creates and status changes from every tenant spread over
``GLOBAL_SHARDS`` slots instead of one. The shards' tags (``shard_tags``) put shard ``i`` in the
``i``-th ``1/GLOBAL_SHARDS`` of the slot range, and a run's shard is the one whose range holds
the run's own slot: any contiguous allocation of slots gives each primary its share of the
shards, and the shard of a run usually lives on the run's primary. A listing of every run merges
the shards (``mpstate.redis.paging``). A single Redis uses the same shards: one layout, one
protocol, tested everywhere.

Layout (prefix ``mp``)::

    mp:run:{R}                         hash    the run: camelCase field -> JSON value; _seq etc.,
                                               _ops: recent writes' outcomes, for their retries
    mp:run:{R}:events                  stream  the event log, entry id 0-<seq>, field e = event JSON
    mp:run:{R}:lock                    string  lock holder's random token, PX = lock TTL
    mp:run:{R}:lock:wake               list    pushed on release; waiters BLPOP it
    mp:run:{R}:ops                     hash    op id -> outcome of writes past the run's _ops
    mp:run:{R}:op:<op id>              string  a lock release's outcome (op id release-<token>)
    mp:run:{R}:void                    set     claim tokens whose create of R was called off
    mp:idem:{T:K}                      string  "<claim token>:<run id>" holding key K of tenant T
    mp:job:{P:J}                       string  run id that recorded job J of provider P
    mp:jobproviders:{J}                set     providers P with a pointer mp:job:{P:J} (a hint)
    mp:delivery:{P:D}                  string  random token of the claim of delivery D of P
    mp:{unmatched}                     stream  callbacks that matched no run, field c = JSON; capped
    mp:{unmatched}:counts              hash    "<provider>\\n<reason>" -> callbacks recorded (all)
    mp:idx:{all.<n>.<salt>}            zset    runs of global shard n, score = created_at (epoch ms)
    mp:idx:{all.<n>.<salt>}:status:<s> zset    runs of global shard n by status
    mp:idx:{all.<n>.<salt>}:entries    hash    run id -> "score:version" and writers' pending marks;
                                               "" -> the group's TTL record
    mp:idx:tenant:{T}                  zset    runs of tenant T
    mp:idx:tenant:{T}:status:<s>       zset    runs of tenant T by status
    mp:idx:tenant:{T}:entries          hash    as a global shard's entries, for tenant T's indexes
    mp:idx:idem:{K}                    zset    runs created with idempotency key K (any tenant)
    mp:idx:idem:{K}:entries            hash    as a global shard's entries, for key K's index
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from mpstate.errors import InvalidInputError
from mpstate.models import PipelineRunStatus

__all__ = ["GLOBAL_SHARDS", "IndexGroup", "RedisKeys", "escape_id", "shard_of", "shard_tags"]

#: How many shards (groups, slots) the global indexes are split into. Part of the stored layout:
#: every process that writes or reads one store must use the same number, so it is a constant,
#: read when a ``RedisKeys`` is built (the scale benchmark sets it to 1 to measure the one-slot
#: layout that came before: shard tag ``all``, ``mp:idx:{all}``). 16 spreads the global writes
#: over 16 slots, enough for 16 primaries, while a listing of every run merges 16 pages.
GLOBAL_SHARDS = 16


@lru_cache(maxsize=16384)
def escape_id(value: str) -> str:
    """Percent-escape an id for use inside a key (injective; never yields ``:{}``)."""
    return quote(value, safe="")


def shard_of(run_id: str, shards: int) -> int:
    """The global shard (0 to ``shards`` - 1) of run ``run_id``: the shard whose slice of the
    slot range holds the run's own slot (CRC16 of the escaped id, as Redis Cluster hashes it), so
    stable across processes, hosts and versions."""
    return shard_of_slot(key_slot(escape_id(run_id).encode()), shards)


@lru_cache(maxsize=8)
def shard_tags(shards: int) -> tuple[str, ...]:
    """The hash tags of ``shards`` global shards, shard ``i``'s slot in the ``i``-th
    ``1/shards`` of the slot range: ``all.<i>.<salt>``, the first salt 0, 1, ... that lands
    there (``all`` alone for one shard). Pinned by tests/redis/test_keys.py: changing a tag moves
    stored entries out of sight."""
    if shards < 1:
        raise InvalidInputError(f"the global indexes need at least one shard, not {shards}")
    if shards == 1:
        return ("all",)
    tags = []
    for shard in range(shards):
        salt = 0
        while shard_of_slot(key_slot(f"all.{shard}.{salt}".encode()), shards) != shard:
            salt += 1
        tags.append(f"all.{shard}.{salt}")
    return tuple(tags)


def shard_of_slot(slot: int, shards: int) -> int:
    """Which of ``shards`` equal slices of the slot range holds ``slot``."""
    return slot * shards // REDIS_CLUSTER_HASH_SLOTS


class RedisKeys:
    """Builds key names for one prefix."""

    __slots__ = ("_shards", "prefix")

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise InvalidInputError(f"prefix must be a non-empty string, not {prefix!r}")
        if any(ch in prefix for ch in "{}"):
            raise InvalidInputError("prefix cannot contain '{' or '}': they would set the hash tag")
        self.prefix = prefix
        self._shards = tuple(
            IndexGroup(f"{prefix}:idx:{{{tag}}}", None) for tag in shard_tags(GLOBAL_SHARDS)
        )

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

    def operations(self, run_id: str) -> str:
        return f"{self._run_base(run_id)}:ops"

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

    def by_tenant(self, tenant_id: str) -> str:
        return self.tenant_group(tenant_id).everything

    def by_idempotency_key(self, key: str) -> str:
        return f"{self.prefix}:idx:idem:{{{escape_id(key)}}}"

    def global_group(self, run_id: str) -> IndexGroup:
        """The global shard run ``run_id`` is indexed in (one slot; ``shard_of``)."""
        return self._shards[shard_of(run_id, len(self._shards))]

    def global_groups(self) -> tuple[IndexGroup, ...]:
        """Every shard of the global indexes, in shard order: together, every run."""
        return self._shards

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
        groups = [self.global_group(run_id)]
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
