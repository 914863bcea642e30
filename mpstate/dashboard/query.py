"""The runs list's query string, validated: filters, search and paging.

Every parameter is checked before the store is read, so bad input answers 400 and reads nothing.
A time is ISO-8601 (naive means UTC) or a duration meaning that long ago (``30m``, ``2h``,
``7d``), as in the CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from mpstate.errors import InvalidInputError
from mpstate.models import PipelineRunStatus, SuspendReason

__all__ = ["PAGE_SIZE", "ListQuery", "parse_list_query"]

#: Runs per page of the list.
PAGE_SIZE = 50

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RELATIVE = re.compile(r"(\d{1,9})\s*([smhdw])")
_MAX_OFFSET = 1_000_000


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What the list page shows."""

    statuses: tuple[PipelineRunStatus, ...] = ()
    pipeline: str | None = None
    tenant: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    reason: SuspendReason | None = None
    q: str | None = None
    offset: int = 0
    #: The raw ``since``/``until`` text, to refill the form.
    since_text: str = ""
    until_text: str = ""

    @property
    def filtered_here(self) -> bool:
        """Whether some filter is applied by the dashboard, not the store (pipeline, reason)."""
        return self.pipeline is not None or self.reason is not None

    def link(self, offset: int | None = None) -> str:
        """The query string of this view at another offset (``?`` included)."""
        pairs: list[tuple[str, str]] = [("status", s.value) for s in self.statuses]
        for name, value in (
            ("pipeline", self.pipeline),
            ("tenant", self.tenant),
            ("since", self.since_text),
            ("until", self.until_text),
            ("reason", self.reason.value if self.reason else None),
            ("q", self.q),
        ):
            if value:
                pairs.append((name, value))
        chosen = self.offset if offset is None else offset
        if chosen:
            pairs.append(("offset", str(chosen)))
        return "?" + urlencode(pairs) if pairs else "?"


def parse_list_query(params: QueryParams) -> ListQuery:
    """The list query of a request; ``InvalidInputError`` names the first bad parameter."""
    statuses = tuple(_status(value) for value in params.getlist("status") if value)
    reason_text = _text(params, "reason")
    try:
        reason = SuspendReason(reason_text) if reason_text else None
    except ValueError:
        raise InvalidInputError(
            f"reason must be one of {', '.join(r.value for r in SuspendReason)}, not "
            f"{reason_text!r}"
        ) from None
    since_text, until_text = _text(params, "since") or "", _text(params, "until") or ""
    since, until = _when(since_text, "since"), _when(until_text, "until")
    if since is not None and until is not None and since > until:
        raise InvalidInputError("since is after until")
    return ListQuery(
        statuses=tuple(dict.fromkeys(statuses)),
        pipeline=_text(params, "pipeline"),
        tenant=_text(params, "tenant"),
        since=since,
        until=until,
        reason=reason,
        q=_text(params, "q"),
        offset=_offset(params),
        since_text=since_text,
        until_text=until_text,
    )


def _text(params: QueryParams, name: str) -> str | None:
    value = (params.get(name) or "").strip()
    if len(value) > 256:
        raise InvalidInputError(f"{name} is longer than 256 characters")
    return value or None


def _status(value: str) -> PipelineRunStatus:
    try:
        return PipelineRunStatus(value)
    except ValueError:
        raise InvalidInputError(
            f"status must be one of {', '.join(s.value for s in PipelineRunStatus)}, not {value!r}"
        ) from None


def _offset(params: QueryParams) -> int:
    """``?offset=N``, or ``?page=N`` (1-based) as ``(N - 1) * PAGE_SIZE``."""
    for name, scale in (("offset", 1), ("page", PAGE_SIZE)):
        text = params.get(name)
        if text is None or text == "":
            continue
        if not text.isdigit() or (name == "page" and int(text) < 1):
            raise InvalidInputError(f"{name} must be a whole number, not {text!r}")
        value = int(text) * scale - (PAGE_SIZE if name == "page" else 0)
        if value > _MAX_OFFSET:
            raise InvalidInputError(f"{name} is too large")
        return value
    return 0


def _when(text: str, name: str) -> datetime | None:
    if not text:
        return None
    relative = _RELATIVE.fullmatch(text)
    if relative:
        try:
            return datetime.now(UTC) - timedelta(**{_UNITS[relative[2]]: int(relative[1])})
        except OverflowError:
            raise InvalidInputError(f"{name} {text!r} is too long ago") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"{name} {text!r} is neither ISO-8601 (2024-05-01T12:00:00Z) nor a duration like "
            "30m, 2h or 7d"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
