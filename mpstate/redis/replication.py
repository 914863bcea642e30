"""Replica acknowledgements: a durable script followed by ``WAIT`` on its own connection.

Redis replicates asynchronously, so a write acknowledged by a primary that dies before its
replica got it is lost in the failover. With ``replica_acks=N`` the store sends each durable
script (``DURABLE_SCRIPTS``) with ``WAIT N timeout`` in one pipeline to the node serving the
script's slot (WAIT counts the writes of its own connection) and reports a write fewer replicas
confirmed as ``WriteNotReplicatedError``.

``replicated`` decides, as a plan, what the replies mean (NOSCRIPT, a moved slot, too few
acknowledgements); the sync and asyncio executors only send its ``OnNode`` pipelines and
``RefreshSlots`` requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from mpstate._checks import check_int
from mpstate.errors import WriteNotReplicatedError
from mpstate.plans import Plan
from mpstate.redis.requests import DURABLE_SCRIPTS, Script, eval_args

__all__ = ["OnNode", "RefreshSlots", "ReplicaAcks", "replicated"]


@dataclass(frozen=True, slots=True)
class ReplicaAcks:
    """How many replicas must confirm a durable write (0: none asked), and WAIT's timeout."""

    count: int = 0
    timeout_ms: int = 1000

    def __post_init__(self) -> None:
        check_int(self.count, "replica_acks", minimum=0)
        check_int(self.timeout_ms, "replica_ack_timeout_ms", minimum=1)

    def wanted_for(self, script: Script) -> bool:
        """Whether ``script`` is to be followed by WAIT."""
        return self.count > 0 and script.name in DURABLE_SCRIPTS


@dataclass(frozen=True, slots=True)
class OnNode:
    """Commands sent in one pipeline on one connection to the node serving ``key``.

    The reply is the list of their replies, errors included as exception values; None when no
    node is known to serve the key yet (a cluster failing over).
    """

    key: str
    commands: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True, slots=True)
class RefreshSlots:
    """Read the cluster's slot map again (nothing to do on a single Redis); the reply is None."""


def replicated(script: Script, acks: ReplicaAcks) -> Plan[Any]:
    """Run ``script`` and WAIT for ``acks``; the script's reply.

    A slot that moved, or no node known for it, raises ``ConnectionError`` after a slot refresh:
    the executor retries the request as a whole (safe, every write script is idempotent).
    """
    key = script.keys[0]
    wait = ("WAIT", acks.count, acks.timeout_ms)
    reply: Any = None
    acknowledged: Any = 0
    for by_sha in (True, False):  # EVAL when the node does not know the script yet
        replies = yield OnNode(key, (eval_args(script, by_sha=by_sha), wait))
        if replies is None:
            yield RefreshSlots()
            raise redis.exceptions.ConnectionError(f"no node serves {key!r} yet")
        reply, acknowledged = replies
        if not isinstance(reply, redis.exceptions.NoScriptError):
            break
    if isinstance(reply, redis.exceptions.MovedError | redis.exceptions.AskError):
        yield RefreshSlots()
        raise redis.exceptions.ConnectionError(f"the slot moved: {reply}")
    for outcome in (reply, acknowledged):
        if isinstance(outcome, BaseException):
            raise outcome
    if int(acknowledged) < acks.count:
        raise WriteNotReplicatedError(acks.count, int(acknowledged), acks.timeout_ms)
    return reply
