"""Links into Flower, the Celery monitor: one per step task, and a search for a run's tasks."""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["RUN_ID_KWARG", "run_search_api_link", "run_search_link", "task_link"]

#: The kwarg ``PipelineTask`` gives each step task so Flower can find a run's tasks; the same
#: name as ``mpstate.celery.identity.RUN_ID`` (not imported: that package needs Celery).
RUN_ID_KWARG = "mpstate_run_id"


def task_link(flower_url: str, task_id: str) -> str:
    """Flower's page for one Celery task."""
    return f"{flower_url.rstrip('/')}/task/{quote(task_id, safe='')}"


def _search_query(run_id: str) -> str:
    # Flower's query syntax splits terms on spaces and parentheses; quoting keeps such an id one
    # exact term (a quote or backslash inside is escaped).
    if any(ch.isspace() or ch in '()"\\' for ch in run_id):
        run_id = '"' + run_id.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return quote(f"kwargs:{RUN_ID_KWARG}={run_id}", safe="")


def run_search_link(flower_url: str, run_id: str) -> str:
    """Flower's task list filtered to the run's step tasks (by their identity kwarg)."""
    return f"{flower_url.rstrip('/')}/tasks?search={_search_query(run_id)}"


def run_search_api_link(flower_url: str, run_id: str) -> str:
    """The same search through Flower's API, which honours ``search`` (Flower 2.2's task page
    pre-fills its search box only from ``state``, ``worker`` and ``name``)."""
    return f"{flower_url.rstrip('/')}/api/tasks?search={_search_query(run_id)}"
