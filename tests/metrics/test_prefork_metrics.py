"""A prefork worker in multiprocess mode: the counts of its pool children (including children
replaced meanwhile) are added up by ``mpstate metrics serve`` and scraped over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery_support import Harness, PreforkWorker, start_prefork_worker, wait_for
from metrics_support import assert_no_id_in_labels, scrape

from celery_app.embedded import bind_loopback

HERE = Path(__file__).resolve().parent

RUNS = 4
STEPS = [
    {"stepId": "prepare", "operation": "pm.prepare"},
    {"stepId": "finish", "operation": "pm.finish"},
]


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    path = tmp_path / "prom"
    path.mkdir()
    return path


@pytest.fixture
def worker(h: Harness, redis_url: str, multiproc_dir: Path) -> Iterator[PreforkWorker]:
    started = start_prefork_worker(
        h,
        "metrics_prefork_app",
        {
            "PYTHONPATH": os.pathsep.join([str(HERE.parent / "celery"), str(HERE)]),
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
            "MPSTATE_PREFORK_BROKER": h.broker_url,
            "MPSTATE_PREFORK_STORE": redis_url,
            "MPSTATE_PREFORK_PREFIX": h.prefix,
            "MPSTATE_PREFORK_QUEUE": h.queue,
        },
    )
    yield started
    started.stop()


@pytest.fixture
def exporter(h: Harness, redis_url: str, multiproc_dir: Path) -> Iterator[str]:
    """``mpstate metrics serve`` in a subprocess on a free port; its base URL."""
    sock = bind_loopback()
    port = sock.getsockname()[1]
    sock.close()
    command = [
        sys.executable, "-c", "from mpstate.cli import main; main()",
        "--redis-url", redis_url, "--prefix", h.prefix,
        "metrics", "serve", "--port", str(port), "--multiproc-dir", str(multiproc_dir),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/metrics", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, what="mpstate metrics serve to answer")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_counts_from_every_pool_child_are_added_up_by_the_exporter(
    h: Harness, worker: PreforkWorker, exporter: str, multiproc_dir: Path
) -> None:
    runs = [h.mp.start_run("batch", STEPS, tenant_id="acme") for _ in range(RUNS)]
    try:
        done = [h.wait_terminal(run.run_id, timeout=30) for run in runs]
    except AssertionError:
        print(worker.log.read_text(errors="replace")[-4000:])
        raise
    assert all(run.status == "completed" for run in done)
    pids = {step.outputs["pid"] for run in done for step in run.steps}
    assert len(pids) >= 2  # executed by several pool children (each runs at most two tasks)

    with httpx.Client(timeout=10.0) as http:
        found = wait_for(
            lambda: (
                (s := scrape(http, exporter)).get(
                    "mpstate_runs_completed_total", pipeline="batch", tenant="acme"
                )
                == RUNS
                and s
            ),
            what="every run's completion in the scrape",
        )

    batch = {"pipeline": "batch", "tenant": "acme"}
    assert found.get("mpstate_run_cost_usd_total", **batch) == pytest.approx(RUNS * 0.03)
    for operation in ("pm.prepare", "pm.finish"):
        count = "mpstate_step_duration_seconds_count"
        assert found.get(count, operation=operation, outcome="completed") == RUNS
        assert found.get("mpstate_step_queue_wait_seconds_count", operation=operation) == RUNS
    # run-started is committed where start_run was called (this process, not instrumented).
    assert found.get("mpstate_runs_started_total", **batch) == 0
    assert found.get("mpstate_runs", status="completed") == RUNS
    # Every child wrote its own file; the exporter read them all.
    files = {path.name for path in multiproc_dir.glob("*.db")}
    assert {f"counter_{pid}.db" for pid in pids} <= files
    assert_no_id_in_labels(found, [run.run_id for run in runs] + [h.prefix])
