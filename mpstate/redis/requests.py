"""The requests a Redis plan yields, and what the sync and asyncio executors share to carry them
out (``execution.py``, ``mpstate/aio/redis_execution.py``).

A plan asks for one ``Command``, one ``Script`` or a ``Batch`` of them (pipelined: one round trip
per node; on Redis Cluster the items may live in any slots, and their order across slots is not
guaranteed, so a plan that needs an order yields one batch after another).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from mpstate.errors import MpStateError, StateStoreUnavailableError
from mpstate.redis.scripts import lua_script

__all__ = [
    "DURABLE_SCRIPTS",
    "UNAVAILABLE",
    "Batch",
    "Command",
    "Ordered",
    "Script",
    "batch_args",
    "eval_args",
    "reachable",
    "scripts_to_reload",
]

#: Connection refused/reset/timed out: retried, then reported as ``StateStoreUnavailableError``.
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


#: The scripts whose writes a failover must not undo silently: with replica acknowledgements
#: asked for, each is followed by WAIT on its own connection (index follow-ups are repairable).
DURABLE_SCRIPTS = frozenset(
    {"create_run", "commit_run", "claim_idempotency_key", "void_claim", "acquire_lock"}
)


@dataclass(frozen=True, slots=True)
class Command:
    """One Redis command, e.g. ``Command(("GET", key))``; routed by its key on a cluster."""

    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Script:
    """One run of ``scripts/<name>.lua``; every key must hash to one slot."""

    name: str
    keys: Sequence[str]
    args: Sequence[Any]


@dataclass(frozen=True, slots=True)
class Batch:
    """Commands and scripts sent together; the reply is the list of their replies, in order."""

    items: tuple[Command | Script, ...]


@dataclass(frozen=True, slots=True)
class Ordered:
    """Requests that must take effect in this order; the reply is the list of their replies.

    A single Redis gets them in one pipeline (one connection keeps the order); a cluster gets
    them one after another, since its pipeline does not keep order across nodes. Each must be
    idempotent: after a NOSCRIPT mid-pipeline the whole sequence is sent again.
    """

    requests: tuple[Command | Script | Batch, ...]

    def commands(self) -> list[Command | Script]:
        """Every command and script, flattened in order."""
        flat: list[Command | Script] = []
        for request in self.requests:
            flat.extend(request.items if isinstance(request, Batch) else (request,))
        return flat

    def regroup(self, flat_replies: list[Any]) -> list[Any]:
        """The flat pipeline replies, grouped back into one reply per request."""
        replies: list[Any] = []
        position = 0
        for request in self.requests:
            if isinstance(request, Batch):
                replies.append(flat_replies[position : position + len(request.items)])
                position += len(request.items)
            else:
                replies.append(flat_replies[position])
                position += 1
        return replies


def eval_args(script: Script, *, by_sha: bool) -> tuple[Any, ...]:
    """``EVALSHA``/``EVAL`` arguments for a script request."""
    lua = lua_script(script.name)
    if len(script.keys) not in lua.key_counts:
        raise MpStateError(
            f"{lua.file_name} takes {_counts(lua.key_counts)} keys, not {len(script.keys)}"
        )
    head = ("EVALSHA", lua.sha) if by_sha else ("EVAL", lua.source)
    return (*head, len(script.keys), *script.keys, *script.args)


def _counts(counts: range) -> str:
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def batch_args(item: Command | Script) -> tuple[Any, ...]:
    """The command a batch item sends (scripts by SHA)."""
    return item.args if isinstance(item, Command) else eval_args(item, by_sha=True)


def scripts_to_reload(batch: Batch | Ordered, replies: list[Any]) -> list[int]:
    """Positions of the batch's scripts the server did not know (to be sent again as EVAL).

    Any other error in the replies is raised: a batch either answers fully or fails.
    """
    reload: list[int] = []
    for position, reply in enumerate(replies):
        if isinstance(reply, redis.exceptions.NoScriptError):
            reload.append(position)
        elif isinstance(reply, BaseException):
            raise reply
    return reload


@contextmanager
def reachable() -> Iterator[None]:
    """Report an unreachable or read-only Redis as ``StateStoreUnavailableError`` (cause chained).

    A cluster that is failing over (``CLUSTERDOWN``, ``TRYAGAIN``, a moved slot whose new owner is
    not reachable yet) is unavailable in the same sense: the write was not applied.
    """
    try:
        yield
    except UNAVAILABLE as exc:
        raise StateStoreUnavailableError(f"Redis is unavailable: {exc}") from exc
    except redis.exceptions.ReadOnlyError as exc:
        raise StateStoreUnavailableError(f"Redis refused the write: {exc}") from exc
    except (
        redis.exceptions.ClusterDownError,
        redis.exceptions.TryAgainError,
        redis.exceptions.ClusterError,
        redis.exceptions.SlotNotCoveredError,
    ) as exc:
        raise StateStoreUnavailableError(f"Redis Cluster is unavailable: {exc}") from exc
    except redis.exceptions.RedisClusterException as exc:
        # Also raised for programming errors (keys of several slots), which are not outages.
        if "cannot be connected" not in str(exc):
            raise
        raise StateStoreUnavailableError(f"Redis Cluster is unavailable: {exc}") from exc
