"""The pages' Jinja2 environment: templates shipped in the package, autoescaped, with the
filters the templates use (costs, times, event summaries) and links relative to the mount."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request

from mpstate.cli.render import format_cost, format_time
from mpstate.events import PipelineEvent

__all__ = ["event_detail", "make_environment", "path_for"]

#: Event fields the log shows in their own columns, not in the detail.
_SHOWN_APART = frozenset({"runId", "at", "seq", "kind", "stepId", "meta"})


def path_for(request: Request, name: str, **params: str) -> str:
    """The path of route ``name`` under the app's mount (``root_path``), without the host, so a
    link works behind a proxy that rewrites the host."""
    return request.url_for(name, **params).path


def format_ms(at: int | None) -> str:
    """An event's epoch-millisecond time, UTC to the millisecond."""
    if at is None:
        return "-"
    moment = datetime.fromtimestamp(at / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_detail(event: PipelineEvent) -> str:
    """The event's own fields as ``name=value`` (and its meta), for one line of the log."""
    document = event.model_dump(mode="json", by_alias=True, exclude_none=True)
    parts = [
        f"{name}={json.dumps(value) if not isinstance(value, str) else value}"
        for name, value in document.items()
        if name not in _SHOWN_APART
    ]
    meta = document.get("meta") or {}
    parts.extend(f"{name}={value}" for name, value in meta.items())
    return " ".join(parts)


def make_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("mpstate.dashboard", "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    filters: dict[str, Any] = {
        "cost": format_cost,
        "when": format_time,
        "ms": format_ms,
        "event_detail": event_detail,
    }
    env.filters.update(filters)
    return env
