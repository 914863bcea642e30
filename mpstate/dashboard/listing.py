"""Reading one page of the runs list from the store, in a bounded number of round trips.

A page costs one ``list_runs`` and one ``count_by_status``, whatever the number of runs. Two
filters the store does not index, ``pipeline`` and the suspend ``reason``, are applied here:
the page then reads store pages of ``SCAN_PAGE`` runs until it holds ``PAGE_SIZE`` matches or
``MAX_SCAN_PAGES`` were read (its "older" link continues where the scan stopped). A search
costs at most three reads: a provider job id given as ``provider:job_id``, then the exact run
id, then a run id prefix among the newest ``PREFIX_SCAN`` runs (``mpstate.lookup``; an older run
is found by its full id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mpstate.dashboard.query import PAGE_SIZE, ListQuery
from mpstate.errors import InvalidInputError
from mpstate.lookup import PREFIX_SCAN, runs_named
from mpstate.models import PipelineRun, PipelineRunStatus
from mpstate.store import PipelineStateStore

__all__ = ["MAX_SCAN_PAGES", "SCAN_PAGE", "RunsPage", "read_runs_page"]

#: Runs read per store page when the dashboard filters (pipeline, reason).
SCAN_PAGE = 200
#: Most store pages one list page reads when the dashboard filters.
MAX_SCAN_PAGES = 10


@dataclass(slots=True)
class RunsPage:
    """The runs of one list page, the counts by status, and where the neighbouring pages are."""

    runs: list[PipelineRun]
    counts: dict[PipelineRunStatus, int]
    older_offset: int | None = None
    newer_offset: int | None = None
    notes: list[str] = field(default_factory=list)


def read_runs_page(store: PipelineStateStore, query: ListQuery) -> RunsPage:
    """The page ``query`` asks for (``store`` may be a tenant view)."""
    counts = store.count_by_status(query.tenant)
    if query.q is not None:
        runs, note = _search(store, query.q)
        return RunsPage(runs, counts, notes=[note] if note else [])
    if query.filtered_here:
        return _scan(store, query, counts)
    runs = store.list_runs(_store_filter(query), limit=PAGE_SIZE + 1, offset=query.offset)
    return RunsPage(
        runs[:PAGE_SIZE],
        counts,
        older_offset=query.offset + PAGE_SIZE if len(runs) > PAGE_SIZE else None,
        newer_offset=max(0, query.offset - PAGE_SIZE) if query.offset else None,
    )


def _store_filter(query: ListQuery) -> dict[str, Any]:
    """The part of the query the store applies (a reason filter reads suspended runs only)."""
    statuses = [PipelineRunStatus.SUSPENDED] if query.reason is not None else query.statuses
    fields: dict[str, Any] = {"newest_first": True}
    if statuses:
        fields["status"] = list(statuses)
    if query.tenant is not None:
        fields["tenant_id"] = query.tenant
    if query.since is not None:
        fields["since"] = query.since
    if query.until is not None:
        fields["until"] = query.until
    return fields


def _matches_here(query: ListQuery, run: PipelineRun) -> bool:
    return (query.pipeline is None or run.pipeline_id == query.pipeline) and (
        query.reason is None or run.suspend_reason == query.reason
    )


def _scan(
    store: PipelineStateStore, query: ListQuery, counts: dict[PipelineRunStatus, int]
) -> RunsPage:
    """Read store pages from ``query.offset`` until a page of matches is full (bounded)."""
    if (
        query.reason is not None
        and query.statuses
        and (PipelineRunStatus.SUSPENDED not in query.statuses)
    ):
        return RunsPage([], counts, notes=["a suspend reason only matches suspended runs"])
    base = _store_filter(query)
    found: list[PipelineRun] = []
    position = query.offset
    exhausted = False
    for _ in range(MAX_SCAN_PAGES):
        batch = store.list_runs(base, limit=SCAN_PAGE, offset=position)
        for index, run in enumerate(batch):
            if _matches_here(query, run):
                found.append(run)
                if len(found) == PAGE_SIZE:
                    position += index + 1
                    break
        else:
            position += len(batch)
            exhausted = len(batch) < SCAN_PAGE
            if not exhausted:
                continue
        break
    notes = []
    if not exhausted and len(found) < PAGE_SIZE:
        notes.append(
            f"read {MAX_SCAN_PAGES * SCAN_PAGE} runs for this page (the most one page reads); "
            "'older' continues"
        )
    return RunsPage(
        found,
        counts,
        older_offset=None if exhausted else position,
        # Where the newer page started is not known without scanning again: back to the newest.
        newer_offset=0 if query.offset else None,
        notes=notes,
    )


def _search(store: PipelineStateStore, q: str) -> tuple[list[PipelineRun], str | None]:
    """Runs ``q`` names: an exact run id, a ``provider:job_id``, else a run id prefix."""
    provider, sep, job_id = q.partition(":")
    if sep and provider and job_id:
        by_job = _quietly(store.find_by_external_job_id, provider, job_id)
        if by_job is not None:
            return [by_job], None
    matches = runs_named(store, q, scan=PREFIX_SCAN)
    if not matches:
        return [], (
            f"no run has the id {q!r}, the provider job {q!r} or an id starting with it "
            f"(prefixes are looked for among the newest {PREFIX_SCAN:,} runs)"
        )
    if len(matches) > 1:
        return matches[:PAGE_SIZE], f"{len(matches)} runs have an id starting with {q!r}"
    return matches, None


def _quietly(read: Any, *args: Any, **kwargs: Any) -> PipelineRun | None:
    """A lookup whose argument may not even be a valid id: that is "not found", not an error."""
    try:
        found: PipelineRun | None = read(*args, **kwargs)
    except InvalidInputError:
        return None
    return found
