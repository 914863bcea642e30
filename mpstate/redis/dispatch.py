"""How a Redis plan's request becomes client calls, written once for both executors.

A request (``Command``, ``Script``, ``Batch``, ``Ordered``, ``Pause``) is carried out by
``carry_out``, itself a plan: it decides EVALSHA or EVAL, pipelines or one by one (a cluster, or
replica acknowledgements, send an ``Ordered`` request by request), which scripts of a batch to
send again after NOSCRIPT, and when to WAIT for replicas (``replication``). It yields only
client calls: ``Call`` (one command), ``Pipeline`` (commands in one pipeline, errors as values),
``Pause``, and ``replication``'s ``OnNode``/``RefreshSlots``. The sync executor
(``execution.py``) and the asyncio one (``mpstate/aio/redis_execution.py``) carry out those
calls with their client and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from mpstate.plans import Pause, Plan
from mpstate.redis.replication import ReplicaAcks, replicated
from mpstate.redis.requests import (
    Batch,
    Command,
    Ordered,
    Script,
    batch_args,
    eval_args,
    scripts_to_reload,
)

__all__ = ["Call", "Pipeline", "carry_out"]


@dataclass(frozen=True, slots=True)
class Call:
    """One command on the client (``execute_command``); its reply, or its error raised."""

    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Commands in one pipeline on the client (one round trip per node); the list of their
    replies, errors included as exception values."""

    commands: tuple[tuple[Any, ...], ...]


def carry_out(
    request: Command | Script | Batch | Ordered | Pause, *, cluster: bool, acks: ReplicaAcks
) -> Plan[Any]:
    """The reply to ``request``, on a cluster client or not, with ``acks`` asked for."""
    if isinstance(request, Pause):
        return (yield request)
    if isinstance(request, Command):
        return (yield Call(request.args))
    if isinstance(request, Script):
        return (yield from _script(request, acks))
    if isinstance(request, Ordered):
        if len(request.requests) == 1:  # nothing to order: a call, not a pipeline of one
            return [(yield from carry_out(request.requests[0], cluster=cluster, acks=acks))]
        if cluster or acks.count:  # across slots (or per connection, for WAIT): one by one
            return (yield from _each(request, cluster=cluster, acks=acks))
        flat = yield Pipeline(tuple(batch_args(item) for item in request.commands()))
        if scripts_to_reload(request, flat):  # the server lost its scripts: again, one by one
            return (yield from _each(request, cluster=cluster, acks=acks))
        return request.regroup(flat)
    if not request.items:
        return []
    replies = yield Pipeline(tuple(batch_args(item) for item in request.items))
    for position in scripts_to_reload(request, replies):
        script = request.items[position]
        assert isinstance(script, Script)
        replies[position] = yield Call(eval_args(script, by_sha=False))
    return replies


def _each(ordered: Ordered, *, cluster: bool, acks: ReplicaAcks) -> Plan[list[Any]]:
    """The replies of an ordered request's requests, carried out one after another."""
    replies = []
    for request in ordered.requests:
        replies.append((yield from carry_out(request, cluster=cluster, acks=acks)))
    return replies


def _script(script: Script, acks: ReplicaAcks) -> Plan[Any]:
    if acks.wanted_for(script):
        return (yield from replicated(script, acks))
    try:
        return (yield Call(eval_args(script, by_sha=True)))
    except redis.exceptions.NoScriptError:
        return (yield Call(eval_args(script, by_sha=False)))
