"""The data the store benchmark works on: run documents, events, and a fast bulk loader.

Runs look like a small media pipeline (three steps with inputs, a tenant, a pipeline hash), so
encoding and decoding costs are those of a realistic record, not of an empty one.

``bulk_create`` loads tens of thousands of runs quickly: it lets the store build the create script
call for one template run (so keys and arguments are exactly the library's own), then replays that
call for every run with the run id and creation time substituted, pipelined in batches. The result
is checked afterwards (index size, a decoded run, a listed page) by the caller and by
``verify_bulk``. If the template call does not contain the values to substitute (the library
changed how it encodes a create), it falls back to plain ``store.create`` calls.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from mpstate.fields import epoch_ms, iso_z
from mpstate.plans import drive
from mpstate.redis import RedisPipelineStateStore
from mpstate.redis.requests import Batch, Ordered, Script, batch_args
from mpstate.redis.scripts import SCRIPT_NAMES, lua_script

__all__ = [
    "BULK_EPOCH",
    "bulk_create",
    "bulk_run_id",
    "progress_event",
    "run_document",
    "verify_bulk",
]

#: Creation time of the first bulk-loaded run; run i is created ``i`` seconds later. A fixed
#: past date keeps it distinct from ``updatedAt`` (now) in the template substitution.
BULK_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

_BATCH = 1_000


def run_document(
    run_id: str,
    tenant_id: str,
    *,
    created_at: datetime | None = None,
    external_job_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A run as a client would create it: three steps with inputs, a tenant, a hash."""
    steps = [
        {
            "stepId": name,
            "operation": operation,
            "inputs": {"source": f"s3://media/{run_id}/input.mp4", "preset": "720p"},
            "maxRetries": 3,
        }
        for name, operation in (
            ("probe", "ffprobe"),
            ("transcode", "ffmpeg-transcode"),
            ("caption", "whisper-caption"),
        )
    ]
    document: dict[str, Any] = {
        "runId": run_id,
        "pipelineId": "video-ingest",
        "tenantId": tenant_id,
        "pipelineDefHash": "sha256:9f2c1e7b4a5d6c8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f",
        "steps": steps,
        "budget": {"maxCostUsd": 5.0},
    }
    if created_at is not None:
        document["createdAt"] = created_at
    if external_job_ids:
        document["externalJobIds"] = external_job_ids
    return document


def progress_event(run_id: str, pct: float, *, meta: bool = True) -> dict[str, Any]:
    """A step-progress event, the most frequent event of a running pipeline (with the task's
    ``meta`` unless ``meta=False``)."""
    event: dict[str, Any] = {
        "kind": "step-progress",
        "runId": run_id,
        "stepId": "transcode",
        "pct": pct,
        "etaMs": 12_000,
        "message": "encoding",
    }
    if meta:
        event["meta"] = {"taskId": "c0ffee00-1234-5678-9abc-def012345678", "worker": "w1"}
    return event


def bulk_run_id(tenant_id: str, index: int) -> str:
    """The id of the ``index``-th bulk-loaded run of ``tenant_id`` (sorts like ``index``)."""
    return f"{tenant_id}-run-{index:07d}"


def _created_at(index: int) -> datetime:
    return BULK_EPOCH + timedelta(seconds=index)


def _text(item: Any) -> str:
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def _recorded_create(store: RedisPipelineStateStore, document: dict[str, Any]) -> list[Any]:
    """The requests ``store.create(document)`` makes, recorded instead of sent (each answered
    as a successful create would be)."""
    requests: list[Any] = []

    def answer(request: Any) -> Any:
        if isinstance(request, Ordered):
            return [answer(inner) for inner in request.requests]
        if isinstance(request, Batch):
            return [answer(item) for item in request.items]
        if isinstance(request, Script) and request.name in ("create_run", "claim_idempotency_key"):
            return [1]
        return 1

    def record(request: Any) -> Any:
        requests.append(request)
        return answer(request)

    drive(store._backend._plan_create(document, return_existing=False), record)
    return requests


def _commands(request: Any) -> list[tuple[Any, ...]]:
    if isinstance(request, Ordered):
        items: Any = request.commands()
    else:
        items = request.items if isinstance(request, Batch) else (request,)
    return [batch_args(item) for item in items]


def bulk_create(
    client: redis.Redis,
    prefix: str,
    tenant_id: str,
    count: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Create ``count`` runs of ``tenant_id`` (ids ``bulk_run_id``); returns the method used.

    The requests of one ``store.create`` are recorded once, then sent for every run with the
    run id and created_at substituted, many runs per pipeline (in order, on one connection):
    the same scripts and keys as ``create``, without a round trip per request.
    """
    store = RedisPipelineStateStore(client, prefix=prefix)
    template_id = bulk_run_id(tenant_id, 0)
    template = _recorded_create(
        store, run_document(template_id, tenant_id, created_at=_created_at(0))
    )
    commands = [command for request in template for command in _commands(request)]
    tokens = (template_id, iso_z(_created_at(0)), str(epoch_ms(_created_at(0))))
    flat = "\x00".join(_text(item) for command in commands for item in command)
    if not all(token in flat for token in tokens):
        print("bulk load: cannot substitute the template; using store.create", file=sys.stderr)
        return _create_one_by_one(client, prefix, tenant_id, count)

    for script_name in SCRIPT_NAMES:
        client.script_load(lua_script(script_name).source)
    started = time.perf_counter()
    for batch_start in range(0, count, _BATCH):
        with client.pipeline(transaction=False) as pipe:
            for index in range(batch_start, min(count, batch_start + _BATCH)):
                created = _created_at(index)
                values = (bulk_run_id(tenant_id, index), iso_z(created), str(epoch_ms(created)))

                def substitute(item: Any, values: tuple[str, str, str] = values) -> Any:
                    if not isinstance(item, str | bytes | int) or isinstance(item, bool):
                        return item
                    text = _text(item)
                    for token, value in zip(tokens, values, strict=True):
                        text = text.replace(token, value)
                    return text

                for command in commands:
                    pipe.execute_command(*map(substitute, command))
            replies = pipe.execute()
        refused = [reply for reply in replies if isinstance(reply, list) and int(reply[0]) != 1]
        if refused:
            raise RuntimeError(f"bulk create refused {len(refused)} runs, e.g. {refused[0]!r}")
        if progress is not None and (batch_start // _BATCH) % 20 == 19:
            done = batch_start + _BATCH
            progress(f"  {tenant_id}: {done:,} / {count:,} ({time.perf_counter() - started:.0f} s)")
    return "pipelined create requests"


def _create_one_by_one(client: redis.Redis, prefix: str, tenant_id: str, count: int) -> str:
    store = RedisPipelineStateStore(client, prefix=prefix)
    for index in range(count):
        store.create(
            run_document(bulk_run_id(tenant_id, index), tenant_id, created_at=_created_at(index))
        )
    return "store.create"


def verify_bulk(store: RedisPipelineStateStore, tenant_id: str, count: int) -> None:
    """Check a bulk load through the public API: index size, last run, one listed page."""
    indexed = store.client.zcard(store.keys.by_tenant(tenant_id))
    if indexed != count:
        raise RuntimeError(f"tenant {tenant_id} has {indexed} indexed runs, expected {count}")
    last = store.get(bulk_run_id(tenant_id, count - 1), include_events=True)
    if (
        last is None
        or last.tenant_id != tenant_id
        or last.created_at != _created_at(count - 1)
        or [event.kind for event in last.events] != ["run-created"]
    ):
        raise RuntimeError(f"bulk-loaded run of {tenant_id} reads back wrong: {last!r}")
    page = store.list_runs(tenant_id=tenant_id, limit=3)
    expected = [bulk_run_id(tenant_id, index) for index in range(3)]
    if [run.run_id for run in page] != expected:
        raise RuntimeError(f"tenant {tenant_id} lists {[r.run_id for r in page]}, not {expected}")
