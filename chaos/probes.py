"""Bad input, sent while the load runs, each checked to be refused and to change nothing.

The probes aim at canary runs: runs of their own tenant, suspended on a provider job nobody else
calls back, so any change to them can only come from a probe. Each canary is snapshotted before
the probes; after the load it must be exactly as it was. Then each canary is completed by one
valid callback through the receiver, which shows the path the probes attacked still works.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from mpstate import (
    InvalidInputError,
    InvalidTransitionError,
    PipelineRun,
    RunAlreadyExistsError,
    RunNotFoundError,
    StateStoreUnavailableError,
    VersionConflictError,
    log_state,
)
from mpstate.celery.transitions import start_run, start_step, suspend_step
from mpstate.store import PipelineStateStore
from mpstate.webhooks import signed_headers

__all__ = ["CANARY_TENANT", "Canaries", "ProbeResult", "receiver_probes", "store_probes"]

CANARY_TENANT = "canary"
#: Seconds a probe is retried while the store is unavailable.
OUTAGE_S = 60.0
PROVIDER = "video"


@dataclass(frozen=True)
class ProbeResult:
    """One bad input: what it should have got, and what it got."""

    target: str  # "receiver" or "store"
    name: str
    expected: str
    actual: str

    @property
    def refused(self) -> bool:
        return self.expected == self.actual


@dataclass
class Canaries:
    """Runs suspended on jobs only the probes (and, at the end, one valid callback) touch."""

    store: PipelineStateStore
    count: int = 3
    run_ids: list[str] = field(default_factory=list)
    snapshots: dict[str, tuple[int, int, dict[str, Any]]] = field(default_factory=dict)

    def create(self) -> Canaries:
        for index in range(self.count):
            run = self.store.create(
                {
                    "runId": f"canary-{index}",
                    "pipelineId": "canary",
                    "tenantId": CANARY_TENANT,
                    "steps": [{"stepId": "video", "operation": "video.generate"}],
                }
            )
            for decide in (
                start_run,
                lambda r: start_step(r, "video", attempt=0, task_id="canary", meta={}),
                lambda r: suspend_step(r, "video", provider=PROVIDER, job_id=job_of(r), meta={}),
            ):
                transition = decide(run)
                assert transition is not None
                run = self.store.commit(
                    run.run_id,
                    transition.patch or None,
                    transition.events,
                    expected_version=run.version,
                ).run
            self.run_ids.append(run.run_id)
            self.snapshots[run.run_id] = _snapshot(self.store.require(run.run_id))
        return self

    def changed(self) -> list[str]:
        """Canaries that are not exactly as snapshotted."""
        return [
            run_id
            for run_id in self.run_ids
            if _snapshot(self.store.require(run_id)) != self.snapshots[run_id]
        ]


def job_of(run: PipelineRun) -> str:
    return f"job-{run.run_id}"


def _snapshot(run: PipelineRun) -> tuple[int, int, dict[str, Any]]:
    return run.version, len(run.events), log_state(run)


def _success(job_id: str) -> bytes:
    return json.dumps(
        {"jobId": job_id, "status": "succeeded", "artifactIds": [job_id], "costUsd": 0.5}
    ).encode()


def receiver_probes(receiver_url: str, secret: str, job_id: str) -> list[ProbeResult]:
    """Malformed, unsigned, forged, stale, oversized and misrouted callbacks for ``job_id``."""
    url = f"{receiver_url}/webhooks/{PROVIDER}"
    body = _success(job_id)
    now = int(time.time())

    def signed(payload: bytes, *, key: str = secret, at: int | None = None) -> dict[str, str]:
        return {"Content-Type": "application/json", **signed_headers(key, payload, timestamp=at)}

    cases: list[tuple[str, int, Callable[[httpx.Client], httpx.Response]]] = [
        ("unsigned", 401, lambda c: c.post(url, content=body)),
        ("wrong secret", 401, lambda c: c.post(url, content=body, headers=signed(body, key="x"))),
        (
            "tampered body",
            401,
            lambda c: c.post(url, content=body.replace(b"0.5", b"0.0"), headers=signed(body)),
        ),
        (
            "replayed after the window",
            401,
            lambda c: c.post(url, content=body, headers=signed(body, at=now - 3600)),
        ),
        (
            "timestamp from the future",
            401,
            lambda c: c.post(url, content=body, headers=signed(body, at=now + 3600)),
        ),
        (
            "malformed JSON",
            400,
            lambda c: c.post(url, content=b"{not json", headers=signed(b"{not json")),
        ),
        (
            "no job id",
            400,
            lambda c: c.post(
                url, content=b'{"status":"succeeded"}', headers=signed(b'{"status":"succeeded"}')
            ),
        ),
        (
            "unknown outcome",
            400,
            lambda c: _post_signed(c, url, {"jobId": job_id, "status": "maybe"}, signed),
        ),
        (
            "negative cost",
            400,
            lambda c: _post_signed(
                c, url, {"jobId": job_id, "status": "succeeded", "costUsd": -5}, signed
            ),
        ),
        (
            "oversized",
            413,
            lambda c: _post_signed(
                c, url, {"jobId": job_id, "status": "succeeded", "pad": "x" * 300_000}, signed
            ),
        ),
        (
            "unknown provider",
            404,
            lambda c: c.post(f"{receiver_url}/webhooks/nope", content=body, headers=signed(body)),
        ),
        ("wrong method", 405, lambda c: c.get(url)),
    ]
    results = []
    with httpx.Client(timeout=10) as client:
        for name, expected, send in cases:
            try:
                actual = str(send(client).status_code)
            except httpx.HTTPError as exc:
                actual = type(exc).__name__
            results.append(ProbeResult("receiver", name, str(expected), actual))
    return results


def _post_signed(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    signed: Callable[[bytes], dict[str, str]],
) -> httpx.Response:
    body = json.dumps(payload).encode()
    return client.post(url, content=body, headers=signed(body))


def store_probes(store: PipelineStateStore, run_id: str) -> list[ProbeResult]:
    """Invalid events, patches, ids, versions and cross-tenant writes against ``run_id``."""
    run = store.require(run_id, include_events=False)
    other_tenant = store.for_tenant("someone-else")
    progress = {"kind": "step-progress", "runId": run_id, "stepId": "video", "pct": 50}
    cases: list[tuple[str, type[Exception] | None, Callable[[], object]]] = [
        (
            "unknown event kind",
            InvalidInputError,
            lambda: store.append_event(run_id, {"kind": "step-exploded", "runId": run_id}),
        ),
        (
            "event of another run",
            InvalidInputError,
            lambda: store.append_event(run_id, {**progress, "runId": "canary-x"}),
        ),
        (
            "progress over 100%",
            InvalidInputError,
            lambda: store.append_event(run_id, {**progress, "pct": 150}),
        ),
        (
            "NaN progress",
            InvalidInputError,
            lambda: store.append_event(run_id, {**progress, "pct": float("nan")}),
        ),
        (
            "terminal event before another",
            InvalidInputError,
            lambda: store.commit(
                run_id,
                None,
                [{"kind": "run-completed", "runId": run_id, "totalCostUsd": 0}, progress],
            ),
        ),
        ("unknown status", InvalidInputError, lambda: store.update(run_id, {"status": "bogus"})),
        ("unknown field", InvalidInputError, lambda: store.update(run_id, {"noSuchField": 1})),
        ("negative cost", InvalidInputError, lambda: store.update(run_id, {"costUsd": -1})),
        (
            "forbidden transition",
            InvalidTransitionError,
            lambda: store.update(run_id, {"status": "pending"}),
        ),
        (
            "stale version",
            VersionConflictError,
            lambda: store.update(run_id, {"costUsd": 1}, expected_version=run.version + 5),
        ),
        (
            "version zero",
            InvalidInputError,
            lambda: store.update(run_id, {"costUsd": 1}, expected_version=0),
        ),
        ("fence zero", InvalidInputError, lambda: store.update(run_id, {"costUsd": 1}, fence=0)),
        ("empty id", InvalidInputError, lambda: store.get("")),
        ("huge id", InvalidInputError, lambda: store.get("r" * 100_000)),
        ("id not a string", InvalidInputError, lambda: store.get(42)),  # type: ignore[arg-type]
        ("lone surrogate id", InvalidInputError, lambda: store.get("run-\ud800")),
        ("create an existing run", RunAlreadyExistsError, lambda: store.create(run.model_dump())),
        (
            "another tenant's write",
            RunNotFoundError,
            lambda: other_tenant.update(run_id, {"costUsd": 1}),
        ),
        ("another tenant's cancel", RunNotFoundError, lambda: other_tenant.cancel(run_id, "no")),
        ("page size zero", InvalidInputError, lambda: store.list_runs(limit=0)),
        ("empty provider", InvalidInputError, lambda: store.find_by_external_job_id("", "job")),
        ("reason not text", InvalidInputError, lambda: store.cancel(run_id, 123)),  # type: ignore[arg-type]
    ]
    results = [
        ProbeResult("store", name, _name(expected), _outcome(call))
        for name, expected, call in cases
    ]
    hidden = other_tenant.get(run_id)
    results.append(
        ProbeResult("store", "another tenant's read", "None", "None" if hidden is None else "a run")
    )
    return results


def _name(error: type[Exception] | None) -> str:
    return "accepted" if error is None else error.__name__


def _outcome(call: Callable[[], object]) -> str:
    """What ``call`` got: "accepted" or the error's name. An outage (the Redis restart) is not
    an answer: the call is tried again."""
    deadline = time.monotonic() + OUTAGE_S
    while True:
        try:
            call()
        except StateStoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        except Exception as exc:  # the probe records whatever it got
            return type(exc).__name__
        else:
            return "accepted"
