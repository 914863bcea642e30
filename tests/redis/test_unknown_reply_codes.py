"""A reply code no script documents is an error, never a guess: a create does not loop claiming
again, and a commit is not reported as a refusal it was not."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from plan_steps import request_names

from mpstate import MpStateError, PipelineRun, RedisPipelineStateStore
from mpstate.errors import InvalidTransitionError
from mpstate.redis.requests import Ordered


def answering(store: RedisPipelineStateStore, script: str, code: int) -> list[int]:
    """Make ``script``'s reply ``{code}`` (the script still runs); returns the calls seen."""
    original = store._executor
    calls: list[int] = []

    def execute(request: Any) -> Any:
        reply = original(request)
        if script not in request_names(request):
            return reply
        calls.append(1)
        if isinstance(request, Ordered):
            return [*reply[:-1], [code]]
        return [code]

    store._executor = execute  # type: ignore[assignment]
    return calls


def test_an_unknown_create_code_raises_instead_of_claiming_again(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = RedisPipelineStateStore(redis_client, prefix=prefix)
    calls = answering(store, "create_run", -42)

    with pytest.raises(MpStateError, match="unknown code -42") as raised:
        store.create(PipelineRun(run_id="r1", pipeline_id="p", idempotency_key="k1"))

    assert type(raised.value) is MpStateError
    assert calls == [1]  # one try, no loop


def test_an_unknown_commit_code_raises_instead_of_reading_as_log_ended(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = RedisPipelineStateStore(redis_client, prefix=prefix)
    store.create(PipelineRun(run_id="r1", pipeline_id="p"))
    answering(store, "commit_run", -42)

    with pytest.raises(MpStateError, match="unknown code -42") as raised:
        store.update("r1", {"budget": {"maxUsd": 1}})

    assert not isinstance(raised.value, InvalidTransitionError)
