"""``mpstate runs list`` and ``runs show``: filters really filter, JSON matches the store, and a
Flower URL adds links to the steps' tasks."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from click.testing import CliRunner

from mpstate import RedisPipelineStateStore, StepError
from mpstate.cli import cli
from mpstate.cli.context import CliContext

from .support import RunCli, make_run

STEPS: list[dict[str, Any]] = [
    {
        "stepId": "generate",
        "operation": "image.generate",
        "status": "completed",
        "attempts": 2,
        "costUsd": 0.04,
        "taskId": "task-gen-1",
    },
    {
        "stepId": "upscale",
        "operation": "image.upscale",
        "status": "running",
        "attempts": 1,
        "taskId": "task-up-7",
        "lastError": StepError(code="provider-timeout", message="took too long").model_dump(),
    },
    {"stepId": "video", "operation": "video.generate"},
]


#: Lines ``runs list`` may print after its table.
NOTES = ("more runs: ", "left out at ")


def listed_ids(output: str) -> list[str]:
    """Run ids in the first column of a ``runs list`` table (its header row and the notes after
    it skipped)."""
    return [
        line.split()[0]
        for line in output.splitlines()[1:]
        if line.strip() and not line.startswith(NOTES)
    ]


@pytest.fixture
def fleet(store: RedisPipelineStateStore) -> None:
    """Runs of two tenants, in four statuses, created over a week."""
    now = datetime.now(UTC)
    make_run(store, "old-done", status="completed", created_at=now - timedelta(days=6))
    make_run(store, "acme-running", status="running", created_at=now - timedelta(hours=3))
    make_run(store, "acme-pending", created_at=now - timedelta(minutes=20))
    make_run(store, "globex-running", tenant_id="globex", status="running")
    make_run(store, "globex-cancelled", tenant_id="globex", status="cancelled")


@pytest.mark.usefixtures("fleet")
def test_runs_list_shows_every_run_newest_first(run_cli: RunCli) -> None:
    result = run_cli("runs", "list")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split()[:4] == ["run", "pipeline", "tenant", "status"]
    ids = listed_ids(result.stdout)
    assert sorted(ids[:2]) == ["globex-cancelled", "globex-running"]
    assert ids[2:] == ["acme-pending", "acme-running", "old-done"]
    assert "more runs" not in result.stdout


@pytest.mark.usefixtures("fleet")
def test_runs_list_oldest_first_shows_every_run_in_creation_order(run_cli: RunCli) -> None:
    result = run_cli("runs", "list", "--oldest-first")

    assert result.exit_code == 0, result.output
    ids = listed_ids(result.stdout)
    assert ids[:3] == ["old-done", "acme-running", "acme-pending"]
    assert sorted(ids[3:]) == ["globex-cancelled", "globex-running"]


@pytest.mark.usefixtures("fleet")
def test_runs_list_keeps_only_the_tenants_runs(run_cli: RunCli) -> None:
    result = run_cli("runs", "list", "--tenant", "globex")

    assert result.exit_code == 0, result.output
    assert sorted(listed_ids(result.stdout)) == ["globex-cancelled", "globex-running"]


@pytest.mark.usefixtures("fleet")
def test_runs_list_status_can_be_repeated_to_mean_any_of_them(run_cli: RunCli) -> None:
    running = run_cli("runs", "list", "--status", "running")
    running_or_cancelled = run_cli("runs", "list", "--status", "running", "--status", "CANCELLED")

    assert sorted(listed_ids(running.stdout)) == ["acme-running", "globex-running"]
    assert sorted(listed_ids(running_or_cancelled.stdout)) == [
        "acme-running",
        "globex-cancelled",
        "globex-running",
    ]


@pytest.mark.usefixtures("fleet")
def test_runs_list_since_accepts_a_relative_duration_and_until_an_iso_time(
    run_cli: RunCli,
) -> None:
    last_day = run_cli("runs", "list", "--since", "1d")
    last_hour_acme = run_cli("runs", "list", "--since", "1h", "--tenant", "acme")
    until = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    before_the_last_hour = run_cli("runs", "list", "--until", until)

    assert "old-done" not in listed_ids(last_day.stdout)
    assert len(listed_ids(last_day.stdout)) == 4
    assert listed_ids(last_hour_acme.stdout) == ["acme-pending"]
    assert listed_ids(before_the_last_hour.stdout) == ["acme-running", "old-done"]


@pytest.mark.usefixtures("fleet")
def test_runs_list_pages_with_limit_and_offset_from_the_newest(run_cli: RunCli) -> None:
    first = run_cli("runs", "list", "--limit", "2")
    second = run_cli("runs", "list", "--limit", "2", "--offset", "2", "--tenant", "acme")

    assert sorted(listed_ids(first.stdout)) == ["globex-cancelled", "globex-running"]
    assert listed_ids(second.stdout) == ["old-done"]


@pytest.mark.usefixtures("fleet")
def test_runs_list_oldest_first_pages_from_the_oldest(run_cli: RunCli) -> None:
    first = run_cli("runs", "list", "--oldest-first", "--limit", "2")
    second = run_cli(
        "runs", "list", "--oldest-first", "--limit", "2", "--offset", "2", "--tenant", "acme"
    )

    assert listed_ids(first.stdout) == ["old-done", "acme-running"]
    assert listed_ids(second.stdout) == ["acme-pending"]


def next_page(output: str) -> list[str] | None:
    """The arguments of the "more runs" hint's command (after ``mpstate``), if there is one."""
    hints = [line for line in output.splitlines() if line.startswith("more runs: ")]
    if not hints:
        return None
    (hint,) = hints
    words = shlex.split(hint.removeprefix("more runs: "))
    assert words[0] == "mpstate"
    return words[1:]


@pytest.mark.usefixtures("fleet")
def test_runs_list_says_how_to_list_the_next_page_until_the_last(run_cli: RunCli) -> None:
    first = run_cli("runs", "list", "--tenant", "acme", "--limit", "2")

    assert listed_ids(first.stdout) == ["acme-pending", "acme-running"]
    assert first.stdout.splitlines()[-1] == (
        "more runs: mpstate runs list --tenant acme --limit 2 --offset 2"
    )
    second = run_cli(*(next_page(first.stdout) or []))
    assert listed_ids(second.stdout) == ["old-done"]
    assert next_page(second.stdout) is None


@pytest.mark.usefixtures("fleet")
def test_the_next_page_hint_repeats_every_option_given_and_pins_a_relative_time(
    run_cli: RunCli,
) -> None:
    args = ["runs", "list", "--status", "running", "--status", "pending", "--since", "7d"]
    pages = [run_cli(*args, "--oldest-first", "--limit", "1")]
    while (following := next_page(pages[-1].stdout)) is not None:
        pages.append(run_cli(*following))

    assert [listed_ids(page.stdout) for page in pages] == [
        ["acme-running"],
        ["acme-pending"],
        ["globex-running"],
    ]
    hint = next_page(pages[0].stdout)
    assert hint is not None
    since = hint[hint.index("--since") + 1]
    assert abs(datetime.fromisoformat(since) - (datetime.now(UTC) - timedelta(days=7))) < timedelta(
        minutes=1
    )
    assert hint == [
        *("runs", "list", "--status", "running", "--status", "pending", "--since", since),
        *("--limit", "1", "--oldest-first", "--offset", "1"),
    ]


@pytest.mark.usefixtures("fleet")
def test_a_page_that_ends_with_the_last_run_has_no_next_page_hint(run_cli: RunCli) -> None:
    result = run_cli("runs", "list", "--limit", "5")

    assert len(listed_ids(result.stdout)) == 5
    assert "more runs" not in result.stdout


@pytest.mark.usefixtures("fleet")
def test_runs_list_json_stays_one_array_of_the_page_when_more_runs_match(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    result = run_cli("runs", "list", "--limit", "2", "--offset", "1", json=True)

    assert result.exit_code == 0, result.output
    expected = store.list_runs(newest_first=True, limit=2, offset=1)
    assert json.loads(result.stdout) == [
        run.model_dump(mode="json", by_alias=True, exclude={"events"}) for run in expected
    ]


def test_runs_list_says_so_when_nothing_matches_and_where_it_looked(
    run_cli: RunCli, store: RedisPipelineStateStore, redis_url: str, prefix: str
) -> None:
    make_run(store, "r1")

    result = run_cli("runs", "list", "--status", "failed")

    assert result.exit_code == 0
    assert result.stdout.strip() == (
        f"no runs match in Redis {redis_url}, database 0, prefix {prefix!r}"
    )


def test_no_runs_match_names_the_database_in_use(redis_url: str, prefix: str) -> None:
    url = f"{redis_url.rsplit('/', 1)[0]}/3"

    result = CliRunner().invoke(cli, ["--redis-url", url, "--prefix", prefix, "runs", "list"])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"no runs match in Redis {url}, database 3, prefix {prefix!r}"


def test_the_store_hint_masks_the_password() -> None:
    where = CliContext(redis_url="rediss://ops:hunter2@redis.internal/2?db=5", prefix="mp").where()

    assert where == "Redis rediss://ops:***@redis.internal/2?db=5, database 5, prefix 'mp'"


def test_runs_list_row_shows_step_position_cost_attempts_and_version(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", steps=STEPS, currentStepIndex=1, costUsd=0.04, status="running")

    row = run_cli("runs", "list").stdout.splitlines()[1]

    assert re.match(
        r"r1\s+product-photo\s+acme\s+running\s+2/3 upscale\s+\$0\.04\s+3\s+2\s+\d{4}-", row
    ), row


@pytest.mark.usefixtures("fleet")
def test_runs_list_json_is_the_stores_page_as_documents(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    result = run_cli("runs", "list", "--status", "running", json=True)

    assert result.exit_code == 0, result.output
    expected = [
        run.model_dump(mode="json", by_alias=True, exclude={"events"})
        for run in store.list_runs(status="running", limit=50, newest_first=True)
    ]
    assert json.loads(result.stdout) == expected
    assert [doc["runId"] for doc in expected] == ["globex-running", "acme-running"]


def test_runs_show_prints_the_header_and_every_step(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(
        store,
        "r1",
        steps=STEPS,
        status="running",
        currentStepIndex=1,
        costUsd=0.04,
        externalJobIds={"veo": "job-42"},
    )

    result = run_cli("runs", "show", "r1")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"status\s+running", out)
    assert re.search(r"pipeline\s+product-photo", out)
    assert re.search(r"tenant\s+acme", out)
    assert re.search(r"cost\s+\$0\.04", out)
    assert re.search(r"version\s+2", out)
    assert re.search(r"external jobs\s+veo:job-42", out)
    # Each step with what it waits for (a linear run: the step before it).
    assert re.search(r"generate\s+-\s+image\.generate\s+completed\s+2\s+\$0\.04\s+task-gen-1", out)
    assert re.search(
        r"upscale\s+generate\s+image\.upscale\s+running\s+1\s+\$0\.00\s+task-up-7", out
    )
    assert "provider-timeout: took too long" in out
    assert re.search(r"video\s+upscale\s+video\.generate\s+pending\s+0\s+\$0\.00\s+-", out)
    assert "flower" not in out
    assert "http" not in out


def test_runs_show_prints_the_runs_error(run_cli: RunCli, store: RedisPipelineStateStore) -> None:
    make_run(store, "r1", status="cancelled")

    assert re.search(r"error\s+test cancelled it", run_cli("runs", "show", "r1").stdout)


def test_runs_show_with_a_flower_url_links_each_step_task_and_searches_the_run(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r 1", steps=STEPS, status="running")

    result = run_cli("--flower-url", "http://flower.test:5555/", "runs", "show", "r 1")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "http://flower.test:5555/task/task-gen-1" in out
    assert "http://flower.test:5555/task/task-up-7" in out
    assert re.search(r"video\s+.*\s-\s*$", out, re.MULTILINE)  # no task yet: no link
    search = re.search(r"flower\s+http://flower\.test:5555/tasks\?search=(\S+)", out)
    assert search is not None, out
    assert unquote(search.group(1)) == 'kwargs:mpstate_run_id="r 1"'
    assert "http://flower.test:5555/api/tasks?search=" + search.group(1) in out


def test_runs_show_takes_the_flower_url_and_store_from_the_environment(
    redis_url: str, prefix: str, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", steps=STEPS)
    env = {
        "MPSTATE_REDIS_URL": redis_url,
        "MPSTATE_PREFIX": prefix,
        "MPSTATE_FLOWER_URL": "http://flower.env",
    }

    result = CliRunner().invoke(cli, ["runs", "show", "r1"], env=env)

    assert result.exit_code == 0, result.output
    assert "http://flower.env/task/task-gen-1" in result.stdout
    assert "http://flower.env/tasks?search=kwargs%3Ampstate_run_id%3Dr1" in result.stdout


def test_runs_show_json_is_the_run_document_without_its_log(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", steps=STEPS, status="running")

    result = run_cli("--flower-url", "http://flower.test", "runs", "show", "r1", json=True)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert "events" not in document
    expected = store.require("r1").model_dump(mode="json", by_alias=True, exclude={"events"})
    assert document == expected
    assert document["steps"][1]["taskId"] == "task-up-7"


def test_runs_show_with_another_tenant_is_not_found(
    run_cli: RunCli, store: RedisPipelineStateStore
) -> None:
    make_run(store, "r1", tenant_id="acme")

    assert run_cli("runs", "show", "r1", "--tenant", "acme").exit_code == 0
    result = run_cli("runs", "show", "r1", "--tenant", "globex")

    assert result.exit_code == 3
    assert result.stderr == "error: run 'r1' not found\n"
