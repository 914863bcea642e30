"""Finding runs by what an operator typed: a run id, or the start of one.

The demo, ``mpstate events`` and the dashboard print short ids (the first eight characters), and
operators type those back. The exact id is tried first (one read); otherwise the newest
``PREFIX_SCAN`` runs are searched for ids starting with what was given. The store indexes runs by
time, not by id, so the search is bounded (one page of ``list_runs``): an older run needs its
whole id. The CLI's ``RUN`` arguments and the dashboard's search both use it.
"""

from __future__ import annotations

from mpstate.errors import InvalidInputError
from mpstate.models import PipelineRun
from mpstate.store import PipelineStateStore

__all__ = ["PREFIX_SCAN", "runs_named"]

#: How many of the newest runs a prefix is looked for among.
PREFIX_SCAN = 1_000


def runs_named(
    store: PipelineStateStore, given: str, *, scan: int = PREFIX_SCAN
) -> list[PipelineRun]:
    """The run whose id is ``given`` (a list of one), else the newest ``scan`` runs whose id
    starts with it, newest first (none, one, or several: the caller decides what several
    means). Runs come without their logs. A ``given`` that cannot be an id matches nothing."""
    try:
        exact = store.get(given, include_events=False)
    except InvalidInputError:
        return []
    if exact is not None:
        return [exact]
    if not given:
        return []
    newest = store.list_runs(newest_first=True, limit=scan)
    return [run for run in newest if run.run_id.startswith(given)]
