"""Idempotency-key claims on Redis: a create takes its run's key before it creates the run.

The key lives in its own slot, so the claim is one script there (``claim_idempotency_key-1.lua``)
and the create another in the run's slot. A claim whose run never appears (its creator died, or
is slow) is voided in that run's slot before it is taken over (``void_claim-2.lua``); the create
refuses a voided token, so of concurrent creates with one key exactly one run is ever created.
Plans only: the sync and asyncio executors carry out their requests.
"""

from __future__ import annotations

import os

from mpstate.changes import Refusal, refusal_error
from mpstate.models import PipelineRun
from mpstate.plans import Pause, Plan
from mpstate.redis.codec import decode_run, text
from mpstate.redis.keys import RedisKeys
from mpstate.redis.requests import Script
from mpstate.redis.selection import load_run

__all__ = ["IdempotencyClaims"]

#: Pauses before a claim whose run does not exist yet is voided (its creator is usually mid-way).
_CLAIM_GRACE_S = (0.005, 0.015, 0.045)


class IdempotencyClaims:
    """Claims of idempotency keys, each held ``ttl_ms`` (the store's idempotency TTL)."""

    __slots__ = ("keys", "ttl_ms")

    def __init__(self, keys: RedisKeys, ttl_ms: int) -> None:
        self.keys = keys
        self.ttl_ms = ttl_ms

    def claim(
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
            reply = yield Script("claim_idempotency_key", [key], [claim, stale, self.ttl_ms])
            if int(reply[0]) == 1:
                return token
            current = text(reply[1])
            holder_token, _, holder_id = current.partition(":")
            if holder_id == run.run_id:
                if holder_token in voided:
                    stale = current  # our own voided claim, left by a voider that went away
                    continue
                return holder_token  # another create of this very run: create_run settles it
            holder = yield from self._holder(holder_id)
            if holder is None:
                voided_reply = yield Script(
                    "void_claim",
                    [k.run(holder_id), k.void(holder_id)],
                    [holder_token, self.ttl_ms],
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

    def _holder(self, run_id: str) -> Plan[PipelineRun | None]:
        """The run a claim names, waiting briefly for a creator that is about to create it."""
        for pause_s in _CLAIM_GRACE_S:
            holder = yield from load_run(self.keys, run_id, include_events=False)
            if holder is not None:
                return holder
            yield Pause(pause_s)
        return (yield from load_run(self.keys, run_id, include_events=False))
