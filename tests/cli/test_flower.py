"""Flower links: a step's task page, and the search that finds a run's step tasks."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from mpstate.celery.identity import RUN_ID
from mpstate.cli.flower import RUN_ID_KWARG, run_search_api_link, run_search_link, task_link


def test_the_search_kwarg_is_the_one_step_tasks_carry() -> None:
    assert RUN_ID_KWARG == RUN_ID


def test_task_link_points_at_flowers_task_page() -> None:
    assert task_link("http://flower:5555/", "3f2a-9") == "http://flower:5555/task/3f2a-9"


def test_run_search_link_urlencodes_the_kwarg_search() -> None:
    link = run_search_link("http://flower:5555", "run-1")

    assert link == "http://flower:5555/tasks?search=kwargs%3Ampstate_run_id%3Drun-1"
    assert run_search_api_link("http://flower:5555", "run-1") == (
        "http://flower:5555/api/tasks?search=kwargs%3Ampstate_run_id%3Drun-1"
    )


@pytest.mark.parametrize(
    "run_id", ["run-1", "run 1", 'a "quoted" (run)', "back\\slash", "ünï:cødé"]
)
def test_flowers_query_parser_reads_the_search_as_one_exact_kwarg_term(run_id: str) -> None:
    search = pytest.importorskip("flower.utils.search")
    query = parse_qs(urlsplit(run_search_link("http://f", run_id)).query)["search"][0]

    term = search.parse_query(query)

    assert term == search.Term("kwargs", f"{RUN_ID_KWARG}={run_id}")
