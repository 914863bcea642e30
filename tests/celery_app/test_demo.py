"""``make demo`` as a user runs it: ``python -m celery_app.demo`` in a subprocess.

Embedded (no arguments), on the suite's Redis (``--redis``), and against a provider that always
fails. Output goes to a pipe, so the demo prints one line per event and the run tables at the
end; a wide ``COLUMNS`` keeps rich from abbreviating the tables.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from key_cleanup import delete_prefix, delete_queue

from mpstate import PipelineRun, RedisPipelineStateStore

ROOT = Path(__file__).resolve().parents[2]

#: The demo's fixed names on ``--redis``: store prefix (also the cache's) and Celery queue.
DEMO_PREFIX = "mpstate-demo"
DEMO_QUEUE = "mpstate-demo"

STEPS = ["generate", "voiceover", "upscale", "quality", "video"]

TERMINAL_KINDS = {"run-completed", "run-failed", "run-cancelled"}

#: Seconds the demo may take before the test gives up on it.
TIMEOUT_S = 120


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the demo with ``args`` and return its result (output merged into stdout)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MPSTATE_")}
    env |= {"COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "celery_app.demo", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode() if isinstance(exc.output, bytes) else exc.output
        pytest.fail(f"the demo did not finish within {TIMEOUT_S} s; its output:\n{output}")


def step_statuses(output: str) -> list[dict[str, str]]:
    """The rows of the run tables: step, status and attempts of each."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 9 and cells[1] in STEPS:
            rows.append({"step": cells[1], "status": cells[4], "attempts": cells[5]})
    return rows


def event_lines(output: str, kind: str, step_id: str | None = None) -> list[str]:
    """The lines the demo printed for events of ``kind`` (of step ``step_id``), one per event
    (table rows, which name a step's last event too, are not event lines)."""
    return [
        line
        for line in output.splitlines()
        if "│" not in line and kind in line.split() and (step_id is None or step_id in line.split())
    ]


def report(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}; output:\n{result.stdout}"


def test_the_embedded_demo_completes_a_run() -> None:
    result = run_demo()
    out = result.stdout

    assert result.returncode == 0, report(result)
    assert "1/1 run(s) completed" in out, report(result)
    rows = step_statuses(out)
    assert [r["step"] for r in rows] == STEPS, report(result)
    assert {r["status"] for r in rows} == {"completed"}, report(result)
    for step_id in STEPS:
        assert len(event_lines(out, "step-completed", step_id)) == 1, report(result)
    assert len(event_lines(out, "run-completed")) == 1, report(result)
    assert re.search(r"1/1 run\(s\) completed, total cost \$\d+\.\d{3}", out), report(result)
    # How to look at it: the runs are gone, the demo says how to keep them.
    assert "To keep them and look at them with the CLI" in out, report(result)
    assert 'make demo ARGS="--redis redis://' in out, report(result)
    assert "runs list --tenant demo" in out, report(result)


@pytest.fixture
def demo_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the suite's Redis; the demo's keys are deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    delete_prefix(client, DEMO_PREFIX)
    delete_queue(client, DEMO_QUEUE)
    assert not list(client.scan_iter(match=f"{DEMO_PREFIX}:demo-cache:*"))
    client.close()


def assert_log_is_whole(run: PipelineRun) -> None:
    seqs = [event.seq for event in run.events]
    assert seqs == list(range(1, len(seqs) + 1)), (run.run_id, seqs)
    terminal = [event.kind for event in run.events if event.kind in TERMINAL_KINDS]
    assert terminal == ["run-completed"], (run.run_id, terminal)
    assert run.events[-1].kind == "run-completed"


def test_the_demo_on_redis_keeps_its_runs_in_the_store(
    redis_url: str, demo_redis: redis.Redis
) -> None:
    store = RedisPipelineStateStore.from_url(redis_url, prefix=DEMO_PREFIX)
    try:
        before = {run.run_id for run in store.list_runs(tenant_id="demo")}
        result = run_demo("--redis", redis_url, "--runs", "3")

        assert result.returncode == 0, report(result)
        assert "3/3 run(s) completed" in result.stdout, report(result)
        assert "Look at it:" in result.stdout, report(result)
        assert f"--redis-url {redis_url} --prefix {DEMO_PREFIX}" in result.stdout, report(result)

        new = [run for run in store.list_runs(tenant_id="demo") if run.run_id not in before]
        completed = [
            run for run in new if run.pipeline_id == "product-photo" and run.status == "completed"
        ]
        assert len(completed) >= 3, [(run.run_id, run.status) for run in new]
        for listed in completed:
            assert_log_is_whole(store.require(listed.run_id))
    finally:
        store.close()


def test_the_demo_fails_when_the_video_provider_always_fails() -> None:
    result = run_demo("--failure-rate", "1", "--provider-delay", "0.1")
    out = result.stdout

    assert result.returncode == 1, report(result)
    assert "0/1 run(s) completed" in out, report(result)
    rows = step_statuses(out)
    statuses = {row["step"]: row["status"] for row in rows}
    attempts = {row["step"]: row["attempts"] for row in rows}
    assert statuses == {
        "generate": "completed",
        "voiceover": "completed",
        "upscale": "completed",
        "quality": "completed",
        "video": "failed",
    }, report(result)
    failures = event_lines(out, "step-failed", "video")
    assert len(failures) == 4, report(result)  # maxRetries 3: every attempt failed
    assert all("RENDER_FARM_BUSY" in line for line in failures), report(result)
    assert attempts["video"] == "4", report(result)
    assert len(event_lines(out, "run-failed")) == 1, report(result)
    assert "run-completed" not in out, report(result)
