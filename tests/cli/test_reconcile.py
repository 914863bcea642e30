"""``mpstate reconcile``: lists stalled steps (``--dry-run``), re-enqueues them through the broker
(``--broker-url``) or the operator's app (``--app``), fails them (``--policy fail``), and refuses
bad options with exit 2 before touching anything.

Stalled runs are made the way a dead worker leaves them: a step's start (or a completion) is
committed through the store with no message for the next attempt anywhere, and the test waits
until the run has been idle for longer than ``--stale-after``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery

from mpstate import MpStateError, PipelineRun, RedisPipelineStateStore, audit_run
from mpstate.celery import MpState
from mpstate.celery.identity import ATTEMPT_BASE, RUN_ID, STEP_ID
from mpstate.celery.transitions import (
    WORKER_LOST,
    Transition,
    complete_step,
    start_run,
    start_step,
)
from mpstate.fields import utc_now
from mpstate.testing._servers import free_port

from .support import DEFAULT_QUEUE, RunCli, script_env

STALE = "0.3"
STALE_S = 0.3
#: The queue a bare app (``--broker-url`` alone) publishes to: Celery's default.
#: Set by the ``--app`` tests; the CLI loads it as ``<this module>:APP``.
APP: Celery | None = None

STEPS = [
    {"stepId": "one", "operation": "rc.one", "inputs": {"prompt": "a bike"}},
    {"stepId": "two", "operation": "rc.two"},
]


@pytest.fixture(autouse=True)
def _no_operator_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPSTATE_CELERY_APP", raising=False)


# -- runs left behind by a dead worker ---------------------------------------------------------


def commit(store: RedisPipelineStateStore, run: PipelineRun, t: Transition | None) -> PipelineRun:
    assert t is not None
    return store.commit(run.run_id, t.patch or None, t.events, expected_version=run.version).run


def started(store: RedisPipelineStateStore, run_id: str) -> PipelineRun:
    run = store.create(
        {"runId": run_id, "pipelineId": "product-photo", "tenantId": "acme", "steps": STEPS}
    )
    return commit(store, run, start_run(run))


def lost_attempt(store: RedisPipelineStateStore, run_id: str) -> PipelineRun:
    """Step one started by a worker that then died: no message for it exists."""
    run = started(store, run_id)
    meta = {"taskId": "lost-task", "worker": "dead@host"}
    return commit(store, run, start_step(run, "one", attempt=0, task_id="lost-task", meta=meta))


def lost_advancement(store: RedisPipelineStateStore, run_id: str) -> PipelineRun:
    """Step one completed by a process that died before publishing step two."""
    run = started(store, run_id)
    meta = {"taskId": "t-one"}
    run = commit(store, run, start_step(run, "one", attempt=0, task_id="t-one", meta=meta))
    return commit(
        store,
        run,
        complete_step(run, "one", artifact_ids=["a-1"], cost_usd=0.0, cache_key=None, meta=meta),
    )


def wait_idle(store: RedisPipelineStateStore, *run_ids: str, seconds: float = STALE_S) -> None:
    """Until neither the runs nor their logs have moved for ``seconds`` (the reconciler's test)."""
    deadline = time.monotonic() + 10
    for run_id in run_ids:
        while True:
            run = store.require(run_id)
            last = max(run.updated_at.timestamp(), run.events[-1].at / 1000)
            if utc_now().timestamp() - last > seconds + 0.05:
                break
            assert time.monotonic() < deadline, f"run {run_id} never went idle"
            time.sleep(0.03)


def snapshot(store: RedisPipelineStateStore, *run_ids: str) -> list[PipelineRun]:
    return [store.require(run_id) for run_id in run_ids]


# -- the broker --------------------------------------------------------------------------------


def messages(client: redis.Redis, queue: str, run_id: str) -> list[dict[str, Any]]:
    """The kombu messages waiting in ``queue`` for ``run_id``, oldest first."""
    found = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # LPUSHed: the oldest is last
        message = json.loads(raw)
        if message["headers"].get(RUN_ID) == run_id:
            message["raw"] = raw
            args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            message["args"], message["kwargs"] = args, kwargs
            found.append(message)
    return found


@pytest.fixture
def broker(redis_url: str, prefix: str) -> Iterator[tuple[str, redis.Redis]]:
    """A broker URL on the suite's Redis (database 1, away from the stores), and a client to it.

    A bare app publishes to Celery's default queue; afterwards exactly the messages of this
    test's runs (ids start with its prefix) are removed, never the whole queue.
    """
    parts = urlsplit(redis_url)
    url = urlunsplit(parts._replace(path="/1"))
    client = redis.Redis.from_url(url)
    yield url, client
    for raw in client.lrange(DEFAULT_QUEUE, 0, -1):
        if str(json.loads(raw)["headers"].get(RUN_ID, "")).startswith(prefix):
            client.lrem(DEFAULT_QUEUE, 0, raw)
    client.close()


# -- dry run and output ------------------------------------------------------------------------


def test_a_dry_run_lists_the_stalled_steps_and_changes_nothing(
    run_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    attempt, advancement = f"{prefix}-a", f"{prefix}-b"
    lost_attempt(store, attempt)
    lost_advancement(store, advancement)
    wait_idle(store, attempt, advancement)
    before = snapshot(store, attempt, advancement)

    result = run_cli("--broker-url", "memory://", "reconcile", "--stale-after", STALE, "--dry-run")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    (attempt_row,) = [line for line in lines if attempt in line]
    (advancement_row,) = [line for line in lines if advancement in line]
    assert attempt_row.split()[1:3] == ["one", "running"]
    assert advancement_row.split()[1:3] == ["two", "pending"]
    assert attempt_row.rstrip().endswith("none (dry run)")
    assert lines[-1] == "2 stalled: 0 requeued, 0 failed, 0 skipped"
    assert snapshot(store, attempt, advancement) == before


def test_reconcile_json_prints_the_report_with_each_stalled_step(
    run_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    run_id = f"{prefix}-a"
    lost_attempt(store, run_id)
    wait_idle(store, run_id)

    result = run_cli(
        "--broker-url", "memory://", "reconcile", "--stale-after", STALE, "--dry-run", json=True
    )

    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    report = json.loads(result.stdout)
    assert set(report) == {
        "dryRun",
        "stalled",
        "requeued",
        "failed",
        "skipped",
        "unpublished",
        "expired",
        "repolled",
        "timedOut",
    }
    assert report["dryRun"] is True
    (stalled,) = report["stalled"]
    assert set(stalled) == {"runId", "stepId", "status", "idleS", "tenantId"}
    assert (stalled["runId"], stalled["stepId"], stalled["status"], stalled["tenantId"]) == (
        run_id,
        "one",
        "running",
        "acme",
    )
    assert isinstance(stalled["idleS"], float) and stalled["idleS"] >= STALE_S
    assert report["requeued"] == report["failed"] == report["skipped"] == []
    assert report["unpublished"] == []


def test_reconcile_says_so_when_nothing_is_stalled(
    run_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    run_id = f"{prefix}-a"
    lost_attempt(store, run_id)  # just now: not idle for ten minutes
    before = snapshot(store, run_id)

    result = run_cli("--broker-url", "memory://", "reconcile", "--stale-after", "10m")
    as_json = run_cli("--broker-url", "memory://", "reconcile", "--stale-after", "10m", json=True)

    assert (result.exit_code, result.stdout) == (0, "nothing stalled\n")
    assert json.loads(as_json.stdout) == {
        "dryRun": False,
        "stalled": [],
        "requeued": [],
        "failed": [],
        "skipped": [],
        "expired": [],
        "repolled": [],
        "timedOut": [],
        "unpublished": [],
    }
    assert snapshot(store, run_id) == before


# -- bad options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--stale-after", "0"],
        ["--stale-after", "0s"],
        ["--stale-after=-1"],
        ["--stale-after", "abc"],
        ["--stale-after", "nan"],
        ["--stale-after", "inf"],
        ["--stale-after", "10x"],
        [],  # --stale-after is required
        ["--stale-after", "10m", "--policy", "retry"],
    ],
    ids=lambda args: " ".join(args) or "no --stale-after",
)
def test_a_bad_option_exits_2_and_changes_nothing(
    run_cli: RunCli, store: RedisPipelineStateStore, prefix: str, args: list[str]
) -> None:
    run_id = f"{prefix}-a"
    lost_attempt(store, run_id)
    wait_idle(store, run_id)
    before = snapshot(store, run_id)

    result = run_cli("--broker-url", "memory://", "reconcile", *args)

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    assert snapshot(store, run_id) == before


def test_reconcile_without_app_or_broker_url_exits_2_and_changes_nothing(
    run_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    run_id = f"{prefix}-a"
    lost_attempt(store, run_id)
    wait_idle(store, run_id)
    before = snapshot(store, run_id)

    result = run_cli("reconcile", "--stale-after", STALE)

    assert result.exit_code == 2
    assert result.stderr == "error: give --app or --broker-url (MPSTATE_BROKER_URL)\n"
    assert snapshot(store, run_id) == before


# -- repairing through the broker ----------------------------------------------------------------


def test_with_a_broker_url_a_stalled_pending_step_is_enqueued_to_the_broker(
    run_cli: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    broker_url, client = broker
    run_id = f"{prefix}-b"
    before = lost_advancement(store, run_id)
    events_before = store.list_events(run_id)
    wait_idle(store, run_id)

    result = run_cli("--broker-url", broker_url, "reconcile", "--stale-after", STALE)

    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if run_id in line]
    assert row.split()[1:3] == ["two", "pending"]
    assert row.rstrip().endswith("requeued")
    assert result.stdout.splitlines()[-1] == "1 stalled: 1 requeued, 0 failed, 0 skipped"
    after = store.require(run_id)
    assert after.version == before.version + 1
    assert after.events == events_before
    task_id = after.step("two").task_id
    assert task_id
    (message,) = messages(client, DEFAULT_QUEUE, run_id)
    headers = message["headers"]
    assert (headers["task"], headers["id"]) == ("rc.two", task_id)
    assert (headers[RUN_ID], headers[STEP_ID], headers[ATTEMPT_BASE]) == (run_id, "two", 0)
    assert message["kwargs"] == {}  # a bare app does not know rc.two is a PipelineTask
    assert audit_run(after) == []


def test_with_a_broker_url_a_lost_attempt_is_logged_worker_lost_and_enqueued_again(
    run_cli: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    broker_url, client = broker
    run_id = f"{prefix}-a"
    lost_attempt(store, run_id)
    wait_idle(store, run_id)

    result = run_cli("--broker-url", broker_url, "reconcile", "--stale-after", STALE, json=True)

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["runId"] for s in report["requeued"]] == [run_id]
    after = store.require(run_id)
    failed = after.events[-1]
    assert (failed.kind, failed.code, failed.retryable) == ("step-failed", WORKER_LOST, True)
    (message,) = messages(client, DEFAULT_QUEUE, run_id)
    assert message["headers"]["id"] == after.step("one").task_id != "lost-task"
    assert message["headers"][ATTEMPT_BASE] == 1
    assert message["kwargs"] == {"prompt": "a bike"}
    assert audit_run(after) == []


def test_policy_fail_fails_the_run_and_publishes_nothing(
    run_cli: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    broker_url, client = broker
    run_id = f"{prefix}-a"
    lost_attempt(store, run_id)
    wait_idle(store, run_id)

    result = run_cli(
        "--broker-url", broker_url, "reconcile", "--stale-after", STALE, "--policy", "fail"
    )

    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if run_id in line]
    assert row.rstrip().endswith("failed")
    after = store.require(run_id)
    assert after.status == "failed"
    assert [e.kind for e in after.events][-2:] == ["step-failed", "run-failed"]
    assert after.events[-1].code == WORKER_LOST
    assert messages(client, DEFAULT_QUEUE, run_id) == []
    assert audit_run(after) == []


# -- repairing through the operator's app ----------------------------------------------------------


@pytest.fixture
def app(redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """An operator's app on the suite's Redis with its own queue, loadable as ``APP_PATH``."""
    app = Celery(f"mpstate-test-{prefix}", broker=redis_url, set_as_current=False)
    app.conf.task_default_queue = f"{prefix}-q"
    monkeypatch.setattr(sys.modules[__name__], "APP", app)
    yield app
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(f"{prefix}-q")
    app.close()


APP_PATH = f"{__name__}:APP"


def test_with_app_the_step_is_enqueued_on_the_apps_queue(
    run_cli: RunCli,
    store: RedisPipelineStateStore,
    redis_client: redis.Redis,
    prefix: str,
    app: Celery,
) -> None:
    run_id = f"{prefix}-b"
    lost_advancement(store, run_id)
    wait_idle(store, run_id)

    result = run_cli("reconcile", "--stale-after", STALE, "--app", APP_PATH)

    assert result.exit_code == 0, result.output
    (message,) = messages(redis_client, f"{prefix}-q", run_id)
    assert message["headers"]["id"] == store.require(run_id).step("two").task_id
    # The MpState the CLI bound for the pass is gone again.
    with pytest.raises(MpStateError, match="no MpState"):
        MpState.of(app)


def test_with_app_the_apps_own_mpstate_is_used_and_left_bound(
    run_cli: RunCli,
    store: RedisPipelineStateStore,
    redis_client: redis.Redis,
    prefix: str,
    app: Celery,
) -> None:
    mp = MpState(app, store)
    try:

        @app.task(name="rc.fragile", shared=False, max_retries=0)
        def fragile() -> None:  # registered here: its retry limit (none) applies
            raise AssertionError("never runs in this test")

        run = store.create(
            {
                "runId": f"{prefix}-f",
                "pipelineId": "p",
                "steps": [{"stepId": "one", "operation": "rc.fragile"}],
            }
        )
        run = commit(store, run, start_run(run))
        commit(store, run, start_step(run, "one", attempt=0, task_id="lost", meta={}))
        wait_idle(store, run.run_id)

        result = run_cli("reconcile", "--stale-after", STALE, "--app", APP_PATH, json=True)

        assert result.exit_code == 0, result.output
        assert [s["runId"] for s in json.loads(result.stdout)["failed"]] == [run.run_id]
        assert store.require(run.run_id).status == "failed"
        assert messages(redis_client, f"{prefix}-q", run.run_id) == []
        assert MpState.of(app) is mp
    finally:
        mp.close()


# -- the console script ------------------------------------------------------------------------


def run_script(
    script: Path, redis_url: str, prefix: str, broker_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    options = ["--redis-url", redis_url, "--prefix", prefix, "--broker-url", broker_url]
    return subprocess.run(
        [str(script), *options, *args],
        capture_output=True,
        check=False,
        text=True,
        env=script_env(),
        timeout=60,
    )


def test_the_console_script_reconciles_through_the_broker(
    console_script: Path,
    store: RedisPipelineStateStore,
    redis_url: str,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    broker_url, client = broker
    run_id = f"{prefix}-b"
    lost_advancement(store, run_id)
    wait_idle(store, run_id)

    process = run_script(
        console_script, redis_url, prefix, broker_url, "--json", "reconcile", "--stale-after", STALE
    )

    assert process.returncode == 0, process.stderr
    assert [s["runId"] for s in json.loads(process.stdout)["requeued"]] == [run_id]
    assert len(messages(client, DEFAULT_QUEUE, run_id)) == 1


def test_an_unreachable_broker_is_reported_in_one_line(
    console_script: Path, store: RedisPipelineStateStore, redis_url: str, prefix: str
) -> None:
    run_id = f"{prefix}-a"
    lost_attempt(store, run_id)
    wait_idle(store, run_id)
    broker_url = f"redis://127.0.0.1:{free_port()}/0"

    process = run_script(
        console_script, redis_url, prefix, broker_url, "reconcile", "--stale-after", STALE
    )

    assert process.returncode != 0
    assert process.stderr.startswith("error: ")
    assert len(process.stderr.splitlines()) == 1, process.stderr
