"""``mpstate runs approve``, ``runs reject`` and ``runs resume``: answer a suspended run from the
command line, and ``runs list --reason`` to find the runs waiting for an answer.

Suspended runs are made through the transitions a worker commits: a step gated by its definition
that completed (it waits for a verdict, the run suspended for ``gate``), a step that spent the
budget (the next one held, the run suspended for ``budget``), a step waiting for a provider
(``webhook``). The commands publish what the answer lets start through a bare app on
``--broker-url`` (the suite's Redis, database 2; the message is read back from Celery's default
queue there) or through ``--app``. Exit codes: 0 answered, 1 nothing waits for this answer (or
it was given already, or the budget still refuses), 2 bad input, 3 unknown run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import redis
from celery import Celery

from mpstate import PipelineRun, RedisPipelineStateStore, audit_run
from mpstate.celery.identity import RUN_ID, STEP_ID
from mpstate.celery.transitions import (
    Transition,
    complete_step,
    start_run,
    start_step,
    suspend_step,
)
from mpstate.models import StepStatus, SuspendReason

from .support import DEFAULT_QUEUE, RunCli, messages

#: The queue a bare app (``--broker-url`` alone) publishes to: Celery's default.
#: Set by the ``--app`` test; the CLI loads it as ``<this module>:APP``.
APP: Celery | None = None
APP_PATH = f"{__name__}:APP"

GATE = {"type": "approval", "onTimeout": "reject"}


# -- runs as a worker leaves them ----------------------------------------------------------------


def commit(store: RedisPipelineStateStore, run: PipelineRun, t: Transition | None) -> PipelineRun:
    assert t is not None
    return store.commit(run.run_id, t.patch or None, t.events, expected_version=run.version).run


def begin(
    store: RedisPipelineStateStore,
    run_id: str,
    steps: Sequence[Mapping[str, Any]],
    **fields: Any,
) -> PipelineRun:
    run = store.create(
        {"runId": run_id, "pipelineId": "product-photo", "steps": list(steps), **fields}
    )
    return commit(store, run, start_run(run))


def started(store: RedisPipelineStateStore, run: PipelineRun, step_id: str) -> PipelineRun:
    task_id = run.step(step_id).task_id or f"t-{step_id}"
    meta = {"taskId": task_id}
    return commit(store, run, start_step(run, step_id, attempt=0, task_id=task_id, meta=meta))


def ran(
    store: RedisPipelineStateStore, run: PipelineRun, step_id: str, cost: float = 0.0
) -> PipelineRun:
    """The step's task ran and returned an artifact and ``cost``."""
    run = started(store, run, step_id)
    done = complete_step(
        run,
        step_id,
        artifact_ids=[f"art-{step_id}"],
        cost_usd=cost,
        cache_key=None,
        meta={"taskId": run.step(step_id).task_id or ""},
    )
    return commit(store, run, done)


def gated(store: RedisPipelineStateStore, run_id: str) -> PipelineRun:
    """``a`` (gated) -> ``b``: a's result waits for a verdict, the run is suspended for it."""
    run = begin(
        store,
        run_id,
        [
            {"stepId": "a", "operation": "sp.a", "gate": GATE},
            {"stepId": "b", "operation": "sp.b", "inputs": {"size": 2}, "dependsOn": ["a"]},
        ],
    )
    run = ran(store, run, "a", cost=0.5)
    assert (run.status, run.suspend_reason) == ("suspended", SuspendReason.GATE)
    return store.require(run_id)


def two_gated(store: RedisPipelineStateStore, run_id: str) -> PipelineRun:
    """``a`` and ``b`` (both gated, side by side) -> ``c``: two steps wait for a verdict."""
    run = begin(
        store,
        run_id,
        [
            {"stepId": "a", "operation": "sp.a", "gate": GATE},
            {"stepId": "b", "operation": "sp.b", "gate": GATE},
            {"stepId": "c", "operation": "sp.c", "dependsOn": ["a", "b"]},
        ],
    )
    run = ran(store, run, "a")
    run = ran(store, run, "b")
    assert (run.status, run.suspend_reason) == ("suspended", SuspendReason.GATE)
    return store.require(run_id)


def over_budget(store: RedisPipelineStateStore, run_id: str) -> PipelineRun:
    """``a`` spent the whole $1.00 budget: ``b`` (estimated $0.20) is held, the run suspended."""
    run = begin(
        store,
        run_id,
        [
            {"stepId": "a", "operation": "sp.a"},
            {
                "stepId": "b",
                "operation": "sp.b",
                "inputs": {"size": 2},
                "dependsOn": ["a"],
                "estimatedCostUsd": 0.2,
            },
        ],
        budget={"maxUsd": 1.0},
    )
    run = ran(store, run, "a", cost=1.0)
    assert (run.status, run.suspend_reason) == ("suspended", SuspendReason.BUDGET)
    assert run.step("b").status is StepStatus.HELD
    return store.require(run_id)


def awaiting_provider(store: RedisPipelineStateStore, run_id: str) -> PipelineRun:
    run = begin(store, run_id, [{"stepId": "a", "operation": "sp.a"}])
    run = started(store, run, "a")
    run = commit(store, run, suspend_step(run, "a", provider="veo", job_id="job-1", meta={}))
    assert (run.status, run.suspend_reason) == ("suspended", SuspendReason.WEBHOOK)
    return store.require(run_id)


def running(store: RedisPipelineStateStore, run_id: str) -> PipelineRun:
    begin(store, run_id, [{"stepId": "a", "operation": "sp.a"}])
    return store.require(run_id)


# -- the broker ------------------------------------------------------------------------------------


@pytest.fixture
def answer(run_cli: RunCli, broker: tuple[str, redis.Redis]) -> RunCli:
    """``mpstate --broker-url <broker> runs <command> ...``."""

    def run(command: str, *args: str, json: bool = False) -> Any:
        return run_cli("--broker-url", broker[0], "runs", command, *args, json=json)

    return run


def assert_published(client: redis.Redis, run: PipelineRun, step_id: str) -> None:
    """Exactly one message waits for ``run``: its step ``step_id``."""
    (message,) = messages(client, DEFAULT_QUEUE, run.run_id)
    step = run.step(step_id)
    headers = message["headers"]
    assert (headers["task"], headers["id"]) == (step.operation, step.task_id)
    assert (headers[RUN_ID], headers[STEP_ID]) == (run.run_id, step_id)
    assert message["kwargs"] == step.inputs


def kinds(run: PipelineRun) -> list[tuple[str, str | None]]:
    return [(event.kind, getattr(event, "step_id", None)) for event in run.events]


# -- approve ---------------------------------------------------------------------------------------


def test_approve_completes_the_gated_step_and_publishes_the_next_one(
    answer: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    run_id = f"{prefix}-g"
    before = gated(store, run_id)

    result = answer("approve", run_id, "--by", "ops", "--note", "colours ok")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"run '{run_id}' approved: status running\n"
    assert result.stderr == ""
    run = store.require(run_id)
    assert (run.status, run.suspend_reason, run.resumable) == ("running", None, False)
    a = run.step("a")
    assert (a.status, a.artifact_ids, a.cost_usd, a.approval) == (
        StepStatus.COMPLETED,
        ["art-a"],
        0.5,
        None,
    )
    assert kinds(run)[len(before.events) :] == [
        ("step-gated", "a"),
        ("run-resumed", None),
        ("step-completed", "a"),
    ]
    verdict = run.events[len(before.events)]
    assert (verdict.verdict, verdict.meta) == ("approved", {"by": "ops", "note": "colours ok"})
    assert_published(broker[1], run, "b")
    assert audit_run(run) == []


def test_approve_json_prints_the_run_document(
    answer: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    run_id = f"{prefix}-g"
    gated(store, run_id)

    result = answer("approve", run_id, json=True)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["runId"], document["status"], document["suspendReason"]) == (
        run_id,
        "running",
        None,
    )
    assert document["steps"][0]["status"] == "completed"
    assert "events" not in document


def test_approving_twice_exits_1_the_second_time_and_changes_nothing(
    answer: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    run_id = f"{prefix}-g"
    gated(store, run_id)
    assert answer("approve", run_id).exit_code == 0
    after_first = store.require(run_id)

    again = answer("approve", run_id)
    rejected = answer("reject", run_id)

    assert (again.exit_code, rejected.exit_code) == (1, 1)
    assert again.stderr == f"error: run '{run_id}' has no step waiting for a verdict\n"
    assert again.stdout == ""
    assert store.require(run_id) == after_first
    assert_published(broker[1], after_first, "b")  # still the one message


@pytest.mark.parametrize("make", [running, over_budget, awaiting_provider])
def test_approve_or_reject_of_a_run_with_no_step_waiting_for_a_verdict_exits_1(
    answer: RunCli, store: RedisPipelineStateStore, prefix: str, make: Any
) -> None:
    run_id = f"{prefix}-r"
    before = make(store, run_id)

    approved = answer("approve", run_id)
    rejected = answer("reject", run_id)

    assert (approved.exit_code, rejected.exit_code) == (1, 1)
    assert approved.stderr == f"error: run '{run_id}' has no step waiting for a verdict\n"
    assert store.require(run_id) == before


@pytest.mark.parametrize("command", ["approve", "reject", "resume"])
def test_answering_an_unknown_run_exits_3(
    answer: RunCli, store: RedisPipelineStateStore, command: str
) -> None:
    result = answer(command, "nope")

    assert result.exit_code == 3
    assert result.stderr == "error: run 'nope' not found\n"
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["approve", "reject"])
def test_a_verdict_for_another_tenants_run_exits_3_and_changes_nothing(
    answer: RunCli, store: RedisPipelineStateStore, prefix: str, command: str
) -> None:
    run_id = f"{prefix}-g"
    before = gated(store, run_id)

    result = answer(command, run_id, "--tenant", "globex")

    assert result.exit_code == 3
    assert store.require(run_id) == before


def test_with_several_steps_waiting_a_verdict_needs_step(
    answer: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    run_id = f"{prefix}-g2"
    before = two_gated(store, run_id)

    result = answer("approve", run_id)

    assert result.exit_code == 2
    assert result.stderr == "error: several steps wait for a verdict (a, b): give --step\n"
    assert store.require(run_id) == before


def test_approving_one_of_several_waiting_steps_leaves_the_run_suspended_for_the_other(
    answer: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    run_id = f"{prefix}-g2"
    two_gated(store, run_id)

    result = answer("approve", run_id, "--step", "b")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"run '{run_id}' approved: status suspended\nsuspended again: waits for gate\n"
    )
    run = store.require(run_id)
    approval = run.step("a").approval
    assert approval is not None
    assert (run.status, run.suspend_reason, run.resume_token) == (
        "suspended",
        SuspendReason.GATE,
        approval.token,
    )
    assert (run.step("a").status, run.step("b").status) == (
        StepStatus.WAITING,
        StepStatus.COMPLETED,
    )
    assert messages(broker[1], DEFAULT_QUEUE, run_id) == []  # c still waits for a

    unknown = answer("approve", run_id, "--step", "b")  # answered already
    assert unknown.exit_code == 1
    assert unknown.stderr == f"error: step 'b' of run '{run_id}' waits for no verdict\n"

    last = answer("approve", run_id)  # one step waits now: no --step needed
    assert last.exit_code == 0, last.output
    run = store.require(run_id)
    assert run.status == "running"
    assert_published(broker[1], run, "c")
    assert audit_run(run) == []


# -- reject ----------------------------------------------------------------------------------------


def test_reject_fails_the_run_with_gate_rejected_and_publishes_nothing(
    answer: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    run_id = f"{prefix}-g"
    before = gated(store, run_id)

    result = answer("reject", run_id, "--by", "ops", "--note", "wrong colour")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"run '{run_id}' rejected: status failed\n"
    run = store.require(run_id)
    assert (run.status, run.suspend_reason, run.resumable) == ("failed", None, False)
    assert run.step("a").status is StepStatus.GATED
    assert kinds(run)[len(before.events) :] == [("step-gated", "a"), ("run-failed", None)]
    verdict, failed = run.events[len(before.events) :]
    assert (verdict.verdict, verdict.meta) == ("rejected", {"by": "ops", "note": "wrong colour"})
    assert failed.code == "gate-rejected"
    assert messages(broker[1], DEFAULT_QUEUE, run_id) == []
    assert audit_run(run) == []

    again = answer("approve", run_id)
    assert again.exit_code == 1
    assert store.require(run_id) == run


# -- resume ----------------------------------------------------------------------------------------


def test_resume_with_a_raised_budget_releases_the_held_step_and_publishes_it(
    answer: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    run_id = f"{prefix}-b"
    before = over_budget(store, run_id)

    result = answer("resume", run_id, "--raise-budget", "2.5", "--by", "ops")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"run '{run_id}' resumed: status running\n"
    run = store.require(run_id)
    assert (run.status, run.budget, run.resumable) == ("running", {"maxUsd": 2.5}, False)
    assert run.step("b").status is StepStatus.PENDING
    assert kinds(run)[len(before.events) :] == [("run-resumed", None), ("step-gated", "b")]
    resumed, released = run.events[len(before.events) :]
    assert (resumed.from_step_id, resumed.meta) == ("b", {"by": "ops", "maxUsd": 2.5})
    assert (released.gate_type, released.verdict) == ("budget", "within-budget")
    assert_published(broker[1], run, "b")
    assert audit_run(run) == []

    again = answer("resume", run_id, "--raise-budget", "5")
    assert again.exit_code == 1
    assert again.stderr == f"error: run '{run_id}' is running: nothing to resume\n"


def test_resume_without_raising_a_budget_that_still_refuses_exits_1_and_changes_nothing(
    answer: RunCli,
    store: RedisPipelineStateStore,
    prefix: str,
    broker: tuple[str, redis.Redis],
) -> None:
    run_id = f"{prefix}-b"
    before = over_budget(store, run_id)

    plain = answer("resume", run_id)
    too_little = answer("resume", run_id, "--raise-budget", "1.1")  # b needs $0.20 more

    assert (plain.exit_code, too_little.exit_code) == (1, 1)
    assert plain.stderr.startswith(f"error: run '{run_id}' is still over its budget")
    assert len(plain.stderr.splitlines()) == 1
    assert plain.stdout == ""
    assert store.require(run_id) == before
    assert messages(broker[1], DEFAULT_QUEUE, run_id) == []


@pytest.mark.parametrize("amount", ["0", "-1", "0.5", "1", "1.0", "lots"])
def test_a_raise_budget_that_is_not_a_raise_exits_2_and_changes_nothing(
    answer: RunCli, store: RedisPipelineStateStore, prefix: str, amount: str
) -> None:
    run_id = f"{prefix}-b"
    before = over_budget(store, run_id)

    result = answer("resume", run_id, "--raise-budget", amount)

    assert result.exit_code == 2
    assert "--raise-budget" in result.stderr
    assert store.require(run_id) == before


@pytest.mark.parametrize("make", [gated, awaiting_provider, running])
def test_resume_of_a_run_not_suspended_for_its_budget_exits_1_and_changes_nothing(
    answer: RunCli, store: RedisPipelineStateStore, prefix: str, make: Any
) -> None:
    run_id = f"{prefix}-r"
    before = make(store, run_id)

    result = answer("resume", run_id, "--raise-budget", "9")

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: run '{run_id}' is ")
    assert result.stderr.endswith(": nothing to resume\n")
    assert store.require(run_id) == before


def test_answering_without_app_or_broker_url_exits_2_and_changes_nothing(
    run_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    run_id = f"{prefix}-g"
    before = gated(store, run_id)

    result = run_cli("runs", "approve", run_id)

    assert result.exit_code == 2
    assert result.stderr == "error: give --app or --broker-url (MPSTATE_BROKER_URL)\n"
    assert store.require(run_id) == before


def test_with_app_the_approved_runs_next_step_is_published_on_the_apps_queue(
    run_cli: RunCli,
    store: RedisPipelineStateStore,
    redis_client: redis.Redis,
    prefix: str,
    app: Celery,
) -> None:
    run_id = f"{prefix}-g"
    gated(store, run_id)

    result = run_cli("runs", "approve", run_id, "--app", APP_PATH)

    assert result.exit_code == 0, result.output
    run = store.require(run_id)
    (message,) = messages(redis_client, f"{prefix}-q", run_id)
    assert (message["headers"]["task"], message["headers"]["id"]) == ("sp.b", run.step("b").task_id)


# -- runs list --reason ----------------------------------------------------------------------------


@pytest.fixture
def suspended_runs(store: RedisPipelineStateStore, prefix: str) -> dict[str, str]:
    """One run of each kind, by what it waits for."""
    made = {
        "gate": gated(store, f"{prefix}-g"),
        "gate2": two_gated(store, f"{prefix}-g2"),
        "budget": over_budget(store, f"{prefix}-b"),
        "webhook": awaiting_provider(store, f"{prefix}-w"),
        "running": running(store, f"{prefix}-r"),
    }
    return {name: run.run_id for name, run in made.items()}


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("gate", ["gate", "gate2"]), ("budget", ["budget"]), ("webhook", ["webhook"])],
)
def test_list_reason_lists_only_the_runs_suspended_for_it(
    run_cli: RunCli, suspended_runs: dict[str, str], reason: str, expected: list[str]
) -> None:
    result = run_cli("runs", "list", "--reason", reason, json=True)

    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert sorted(doc["runId"] for doc in listed) == sorted(suspended_runs[n] for n in expected)
    assert {(doc["status"], doc["suspendReason"]) for doc in listed} == {("suspended", reason)}


def test_list_reason_in_a_table_names_only_the_matching_runs(
    run_cli: RunCli, suspended_runs: dict[str, str]
) -> None:
    result = run_cli("runs", "list", "--reason", "budget")

    assert result.exit_code == 0, result.output
    assert suspended_runs["budget"] in result.stdout
    others = [run_id for name, run_id in suspended_runs.items() if name != "budget"]
    assert not [run_id for run_id in others if run_id in result.stdout]


def test_list_reason_is_newest_first_and_says_how_to_list_the_next_page(
    run_cli: RunCli, suspended_runs: dict[str, str]
) -> None:
    newest = run_cli("runs", "list", "--reason", "gate", json=True)
    oldest = run_cli("runs", "list", "--reason", "gate", "--oldest-first", json=True)
    first_page = run_cli("runs", "list", "--reason", "gate", "--limit", "1")
    second_page = run_cli("runs", "list", "--reason", "gate", "--limit", "1", "--offset", "1")

    gates = [suspended_runs["gate2"], suspended_runs["gate"]]
    assert [doc["runId"] for doc in json.loads(newest.stdout)] == gates
    assert [doc["runId"] for doc in json.loads(oldest.stdout)] == gates[::-1]
    assert first_page.stdout.splitlines()[1].split()[0] == gates[0]
    assert first_page.stdout.splitlines()[-1] == (
        "more runs: mpstate runs list --limit 1 --reason gate --offset 1"
    )
    assert second_page.stdout.splitlines()[1].split()[0] == gates[1]
    assert "more runs" not in second_page.stdout


def test_list_reason_with_another_status_exits_2(
    run_cli: RunCli, suspended_runs: dict[str, str]
) -> None:
    result = run_cli("runs", "list", "--reason", "gate", "--status", "running")

    assert result.exit_code == 2
    assert "--reason" in result.stderr


def test_list_reason_when_nothing_waits_for_it_says_so(
    run_cli: RunCli, store: RedisPipelineStateStore, prefix: str
) -> None:
    gated(store, f"{prefix}-g")

    as_json = run_cli("runs", "list", "--reason", "budget", json=True)
    table = run_cli("runs", "list", "--reason", "budget")

    assert (as_json.exit_code, table.exit_code) == (0, 0)
    assert json.loads(as_json.stdout) == []
    assert table.stdout.startswith("no runs match")
