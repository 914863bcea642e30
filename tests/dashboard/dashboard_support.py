"""Helpers for the dashboard tests: runs written straight to the store in a given shape, a
store that counts its round trips, and reading the pages' HTML."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

from mpstate import PipelineStateStore, RedisPipelineStateStore
from mpstate.models import PipelineRun
from mpstate.plans import Plan, drive

Serve = Callable[[Any], str]

#: The moment the test runs are created around (their created_at counts back from it).
BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class CountingStore(RedisPipelineStateStore):
    """A Redis store that counts the requests its plans send (each one round trip)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def _drive(self, plan: Plan[Any]) -> Any:
        return drive(plan, self._count)

    def _count(self, request: Any) -> Any:
        self.calls.append(type(request).__name__)
        return self._executor(request)

    def for_tenant(self, tenant_id: str) -> CountingStore:
        view = super().for_tenant(tenant_id)
        view.calls = self.calls  # one count for the store and its views
        return view


def at(minutes_ago: float) -> datetime:
    return BASE - timedelta(minutes=minutes_ago)


def create_run(
    store: PipelineStateStore,
    run_id: str,
    *,
    pipeline: str = "render",
    tenant: str | None = None,
    created: datetime | None = None,
    steps: Sequence[dict[str, Any]] | None = None,
    status: str = "running",
    patch: dict[str, Any] | None = None,
    events: Sequence[dict[str, Any]] = (),
) -> PipelineRun:
    """A run as if it got this far: created, started, with ``events`` and ``patch`` applied."""
    store.create(
        {
            "runId": run_id,
            "pipelineId": pipeline,
            "tenantId": tenant,
            "createdAt": (created or BASE).isoformat(),
            "steps": list(steps or [{"stepId": "a", "operation": "op.a"}]),
        }
    )
    store.commit(
        run_id,
        {"status": status, **(patch or {})},
        [{"kind": "run-started", "runId": run_id}, *({"runId": run_id, **e} for e in events)],
    )
    return store.require(run_id)


def gated_run(store: PipelineStateStore, run_id: str, *, tenant: str | None = None) -> str:
    """``a`` done, ``review`` waiting for a verdict, ``c`` pending; the run suspended (gate).
    Returns the approval token."""
    token = secrets.token_urlsafe(24)
    approval = {"gateType": "approval", "token": token, "details": {"image": "img-1"}}
    create_run(
        store,
        run_id,
        tenant=tenant,
        status="suspended",
        steps=[
            {"stepId": "a", "operation": "op.a", "status": "completed"},
            {
                "stepId": "review",
                "operation": "op.review",
                "status": "waiting",
                "approval": approval,
            },
            {"stepId": "c", "operation": "op.c"},
        ],
        patch={"suspendReason": "gate", "resumeToken": token, "resumable": True},
        events=[
            {"kind": "step-started", "stepId": "a", "attempt": 1},
            {"kind": "step-completed", "stepId": "a", "artifactIds": [], "costUsd": 0.1},
            {"kind": "step-started", "stepId": "review", "attempt": 1},
            {
                "kind": "step-gated",
                "stepId": "review",
                "gateType": "approval",
                "verdict": "awaiting-approval",
            },
            {"kind": "run-suspended", "reason": "gate", "resumeToken": token},
        ],
    )
    return token


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text inside each element with an id or a
    data-field (enough to check the DOM contract without a browser)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def tags(html: str, tag: str, **attrs: str) -> list[dict[str, str]]:
    """The attributes of each ``tag`` whose attributes include ``attrs`` (``class_`` matches one
    class; a value of ``*`` only asks that the attribute is present)."""
    parser = _Elements()
    parser.feed(html)
    found = []
    for name, have in parser.tags:
        if name != tag:
            continue
        ok = True
        for given, want in attrs.items():
            key = given.rstrip("_").replace("_", "-")
            if key == "class":
                ok = ok and want in have.get("class", "").split()
            elif want == "*":
                ok = ok and key in have
            else:
                ok = ok and have.get(key) == want
        if ok:
            found.append(have)
    return found


def row_ids(html: str) -> list[str]:
    return [attrs["data-run-id"] for attrs in tags(html, "tr", data_run_id="*")]


def field_text(html: str, run_id: str, field: str) -> str:
    """The text of ``td[data-field=field]`` in the row of ``run_id``."""
    row = re.search(rf'<tr data-run-id="{re.escape(run_id)}">(.*?)</tr>', html, re.S)
    assert row, f"no row for {run_id}"
    cell = re.search(rf'<td data-field="{field}"[^>]*>(.*?)</td>', row.group(1), re.S)
    assert cell, f"no {field} in the row of {run_id}"
    return re.sub(r"<[^>]+>", "", cell.group(1)).strip()


def csrf_of(html: str) -> str:
    field = tags(html, "input", name="csrf_token")
    assert field, "no csrf_token field"
    return field[0]["value"]
