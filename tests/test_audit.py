"""audit_run: every rule a run and its log can break, and a sound run breaking none.

Bad logs are built by hand with explicit seqs (the store refuses to write most of them), around a
run rebuilt from that very log, so the rule under test is the only thing wrong. The ``state``
rule is shown on runs written through a real store.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mpstate import (
    AuditFinding,
    PipelineEvent,
    PipelineRun,
    PipelineRunStatus,
    PipelineStateStore,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunStarted,
    StepCached,
    StepCompleted,
    StepFailed,
    StepGated,
    StepProgress,
    StepStarted,
    StepState,
    StepWaiting,
    audit_run,
)
from mpstate.audit import log_findings, state_differences
from mpstate.celery.transitions import (
    Transition,
    complete_step,
    fail_awaiting_step,
    fail_step,
    gate_step,
    recover_steps,
    resume_step,
    start_run,
    start_step,
    suspend_step,
)
from mpstate.replay import replay_run

RUN = "r1"

Decide = Callable[[PipelineRun], Transition | None]


def definition(*step_ids: str) -> PipelineRun:
    steps = [StepState(step_id=step_id, operation="render") for step_id in step_ids]
    return PipelineRun(run_id=RUN, pipeline_id="p", steps=steps)


def numbered(*events: PipelineEvent, seqs: list[int | None] | None = None) -> list[PipelineEvent]:
    """The events with seqs 1..n, or with ``seqs``."""
    numbers = seqs if seqs is not None else list(range(1, len(events) + 1))
    return [
        event.model_copy(update={"seq": seq}) for seq, event in zip(numbers, events, strict=True)
    ]


def run_of(events: list[PipelineEvent]) -> PipelineRun:
    """A run of steps a and b in exactly the state its log describes, with that log."""
    run = replay_run(definition("a", "b"), events)
    run.events = list(events)
    return run


def found(run: PipelineRun) -> list[tuple[str, str]]:
    return [(finding.rule, finding.detail) for finding in audit_run(run)]


def created() -> RunCreated:
    return RunCreated(run_id=RUN, pipeline_def_hash="")


def started(step_id: str = "a") -> StepStarted:
    return StepStarted(run_id=RUN, step_id=step_id, attempt=0)


def completed(step_id: str, cost_usd: float = 0.0) -> StepCompleted:
    return StepCompleted(run_id=RUN, step_id=step_id, artifact_ids=[], cost_usd=cost_usd)


def cached(step_id: str) -> StepCached:
    return StepCached(run_id=RUN, step_id=step_id, cache_key="ck", artifact_ids=[])


def total(cost_usd: float) -> RunCompleted:
    return RunCompleted(run_id=RUN, total_cost_usd=cost_usd)


def cancelled() -> RunCancelled:
    return RunCancelled(run_id=RUN, reason="stop")


def test_a_run_in_the_state_its_well_formed_log_describes_has_no_findings() -> None:
    run = run_of(
        numbered(
            created(),
            RunStarted(run_id=RUN),
            started("a"),
            completed("a", 1.5),
            started("b"),
            completed("b", 2.0),
            total(3.5),
        )
    )
    assert run.status is PipelineRunStatus.COMPLETED
    assert audit_run(run) == []


# -- seq ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seqs",
    [[1, 2, 4], [1, 2, 2], [1, 3, 2], [2, 3, 4], [1, None, 3]],
    ids=["gap", "duplicate", "out-of-order", "not-from-1", "missing"],
)
def test_seqs_that_are_not_1_to_n_in_order_are_a_seq_finding(seqs: list[int | None]) -> None:
    run = run_of(numbered(created(), RunStarted(run_id=RUN), started("a"), seqs=seqs))
    shown = ", ".join(map(str, seqs))
    assert found(run) == [("seq", f"seqs are not 1..3 in order: [{shown}]")]


def test_a_long_seq_finding_shows_the_first_twelve_seqs() -> None:
    progress = [StepProgress(run_id=RUN, step_id="a", pct=pct) for pct in range(20)]
    seqs: list[int | None] = [*range(1, 22), 23]
    run = run_of(numbered(created(), *progress, started("a"), seqs=seqs))

    assert found(run) == [
        ("seq", "seqs are not 1..22 in order: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ...]")
    ]


# -- first-event ----------------------------------------------------------------------------------


def test_a_log_not_starting_with_run_created_is_a_first_event_finding() -> None:
    run = run_of(numbered(RunStarted(run_id=RUN), created()))
    assert found(run) == [("first-event", "the log does not start with run-created")]


def test_an_empty_log_is_a_first_event_finding() -> None:
    assert found(run_of([])) == [("first-event", "the log does not start with run-created")]


# -- terminal -------------------------------------------------------------------------------------


def test_two_terminal_events_are_a_terminal_finding() -> None:
    run = run_of(numbered(created(), RunStarted(run_id=RUN), total(0.0), cancelled()))
    assert found(run) == [("terminal", "2 terminal events: seqs [3, 4]")]


def test_events_after_the_terminal_event_are_a_terminal_finding() -> None:
    run = run_of(numbered(created(), cancelled(), started("a")))
    assert found(run) == [("terminal", "events follow the terminal run-cancelled")]


def test_a_terminal_status_with_no_terminal_event_is_a_terminal_finding() -> None:
    run = run_of(numbered(created(), RunStarted(run_id=RUN)))
    run.status = PipelineRunStatus.COMPLETED

    findings = found(run)

    assert ("terminal", "the run is completed but its log has no terminal event") in findings
    assert [rule for rule, _ in findings] == ["terminal", "state"]


def test_a_terminal_event_with_a_live_status_is_a_terminal_finding() -> None:
    run = run_of(numbered(created(), RunStarted(run_id=RUN), cancelled()))
    run.status = PipelineRunStatus.RUNNING

    findings = found(run)

    assert ("terminal", "the log ended with run-cancelled but the run is running") in findings
    assert [rule for rule, _ in findings] == ["terminal", "state"]


# -- completion, unknown-step, foreign-event ------------------------------------------------------


@pytest.mark.parametrize(
    "again", [completed("a"), cached("a")], ids=["completed-again", "cached-again"]
)
def test_a_step_completed_twice_is_a_completion_finding(again: PipelineEvent) -> None:
    run = run_of(numbered(created(), started("a"), completed("a"), again))
    assert found(run) == [("completion", "step 'a' completed 2 times")]


def test_completions_of_different_steps_are_not_a_completion_finding() -> None:
    run = run_of(numbered(created(), completed("a"), cached("b"), total(0.0)))
    assert audit_run(run) == []


@pytest.mark.parametrize(
    "event",
    [
        started("ghost"),
        StepProgress(run_id=RUN, step_id="ghost", pct=5),
        completed("ghost"),
        cached("ghost"),
        StepFailed(run_id=RUN, step_id="ghost", code="E", retryable=True),
        StepGated(run_id=RUN, step_id="ghost", gate_type="quality", verdict="ok"),
        StepWaiting(run_id=RUN, step_id="ghost", provider="runway", job_id="j1"),
    ],
    ids=lambda event: event.kind,
)
def test_a_step_event_naming_a_step_the_run_lacks_is_an_unknown_step_finding(
    event: PipelineEvent,
) -> None:
    run = run_of(numbered(created(), RunStarted(run_id=RUN), event))
    assert found(run) == [("unknown-step", f"seq 3 ({event.kind}) names 'ghost'")]


def test_an_event_of_another_run_is_a_foreign_event_finding() -> None:
    run = run_of(numbered(created(), RunStarted(run_id="other-run")))
    assert found(run) == [("foreign-event", "seq 2 belongs to run other-run")]


# -- cost -----------------------------------------------------------------------------------------


def test_a_run_cost_other_than_the_sum_of_its_step_costs_is_a_cost_finding() -> None:
    run = run_of(numbered(created(), completed("a", 2.0)))
    run.cost_usd = 5.0

    findings = found(run)

    assert ("cost", "run cost 5.0 != sum of step costs 2.0") in findings
    assert [rule for rule, _ in findings] == ["cost", "state"]


def test_a_run_completed_total_other_than_the_logged_step_costs_is_a_cost_finding() -> None:
    run = run_of(numbered(created(), completed("a", 1.0), completed("b", 2.0), total(9.0)))
    assert found(run) == [("cost", "run-completed totals 9.0, steps logged 3.0")]


def test_float_noise_in_costs_is_not_a_cost_finding() -> None:
    run = run_of(
        numbered(created(), completed("a", 0.1), completed("b", 0.2), total(round(0.1 + 0.2, 10)))
    )
    assert audit_run(run) == []


# -- state ----------------------------------------------------------------------------------------


def steps(**statuses: str) -> list[dict[str, str]]:
    return [
        {"stepId": step_id, "operation": "render", "status": status}
        for step_id, status in statuses.items()
    ]


def test_a_status_written_with_no_event_is_a_state_finding(store: PipelineStateStore) -> None:
    store.create({"runId": RUN, "pipelineId": "p", "steps": steps(a="pending", b="pending")})
    store.update(RUN, {"status": "running"})

    assert found(store.require(RUN)) == [
        ("state", "status: stored 'running' != replayed 'pending'")
    ]


def test_a_step_status_written_with_no_event_is_a_state_finding_naming_the_step(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": RUN, "pipelineId": "p", "steps": steps(a="pending", b="pending")})
    store.update(RUN, {"steps": steps(a="pending", b="completed")})

    assert found(store.require(RUN)) == [
        ("state", "steps.b.status: stored 'completed' != replayed 'pending'")
    ]


def test_each_log_field_written_with_no_event_is_its_own_state_finding(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": RUN, "pipelineId": "p", "steps": steps(a="pending", b="pending")})
    store.update(RUN, {"currentStepIndex": 1, "resumable": True, "error": "oops"})

    assert found(store.require(RUN)) == [
        ("state", "current_step_index: stored 1 != replayed 0"),
        ("state", "error: stored 'oops' != replayed None"),
        ("state", "resumable: stored True != replayed False"),
    ]


def test_fields_the_log_does_not_describe_are_not_state_findings(
    store: PipelineStateStore,
) -> None:
    store.create({"runId": RUN, "pipelineId": "p", "steps": steps(a="pending", b="pending")})
    step_a = {"stepId": "a", "operation": "render", "taskId": "t1", "error": "note"}
    store.update(
        RUN,
        {
            "budget": {"maxUsd": 3},
            "externalJobIds": {"runway": "j1"},
            "steps": [step_a, {"stepId": "b", "operation": "render"}],
        },
    )
    assert audit_run(store.require(RUN)) == []


def test_state_differences_name_each_differing_field_by_its_path() -> None:
    stored = run_of(numbered(created(), completed("a", 1.0)))
    replayed = run_of(numbered(created()))

    assert state_differences(stored, replayed) == [
        "cost_usd: stored 1.0 != replayed 0.0",
        "current_step_index: stored 1 != replayed 0",
        "steps.a.cost_usd: stored 1.0 != replayed 0.0",
        "steps.a.status: stored 'completed' != replayed 'pending'",
    ]
    assert state_differences(stored, stored) == []


# -- the API --------------------------------------------------------------------------------------


def test_audit_run_audits_the_given_events_instead_of_the_runs_own() -> None:
    sound = numbered(created(), started("a"))
    gapped = numbered(created(), started("a"), seqs=[1, 3])
    run = run_of(sound)

    assert [f.rule for f in audit_run(run, gapped)] == ["seq"]
    run.events = gapped
    assert audit_run(run, sound) == []


def test_log_findings_leave_out_the_state() -> None:
    run = run_of(numbered(created(), started("a"), seqs=[1, 3]))
    run.status = PipelineRunStatus.SUSPENDED

    assert [f.rule for f in log_findings(run, run.events)] == ["seq"]
    assert [f.rule for f in audit_run(run)] == ["seq", "state"]


def test_a_finding_reads_as_run_rule_and_detail() -> None:
    finding = AuditFinding(RUN, "seq", "seqs are not 1..2 in order: [1, 3]")
    assert str(finding) == "run r1: [seq] seqs are not 1..2 in order: [1, 3]"


def test_every_finding_names_the_audited_run() -> None:
    run = run_of(numbered(RunStarted(run_id="other-run"), seqs=[2]))
    findings = audit_run(run)
    assert {f.rule for f in findings} == {"seq", "first-event", "foreign-event"}
    assert {f.run_id for f in findings} == {RUN}


# -- sound runs -----------------------------------------------------------------------------------


def apply(store: PipelineStateStore, decide: Decide) -> None:
    """Decide on the run as stored and commit the transition, as ``StepLifecycle`` does."""
    run = store.require(RUN, include_events=False)
    transition = decide(run)
    assert transition is not None
    store.commit(RUN, transition.patch or None, transition.events, expected_version=run.version)


def begin(store: PipelineStateStore) -> None:
    store.create({"runId": RUN, "pipelineId": "p", "steps": steps(a="pending", b="pending")})
    apply(store, start_run)
    apply(store, lambda run: start_step(run, "a", attempt=0, task_id="t1", meta={}))


def test_a_completed_run_written_through_the_transitions_has_no_findings(
    store: PipelineStateStore,
) -> None:
    begin(store)
    apply(
        store, lambda run: fail_step(run, "a", code="timeout", message="", retryable=True, meta={})
    )
    apply(store, lambda run: start_step(run, "a", attempt=1, task_id="t1", meta={}))
    apply(
        store,
        lambda run: gate_step(run, "a", gate_type="quality", verdict="ok", passed=True, meta={}),
    )
    apply(
        store,
        lambda run: complete_step(
            run, "a", artifact_ids=["img"], cost_usd=0.0, cache_key="ck", meta={}
        ),
    )
    apply(store, lambda run: start_step(run, "b", attempt=0, task_id="t2", meta={}))
    apply(store, lambda run: suspend_step(run, "b", provider="runway", job_id="j1", meta={}))
    apply(
        store,
        lambda run: resume_step(
            run,
            "b",
            provider="runway",
            job_id="j1",
            artifact_ids=["vid"],
            cost_usd=0.75,
            meta={},
        ),
    )

    run = store.require(RUN)
    assert run.status is PipelineRunStatus.COMPLETED
    assert [e.kind for e in run.events][-6:] == [
        "step-started",
        "step-waiting",
        "run-suspended",
        "run-resumed",
        "step-completed",
        "run-completed",
    ]
    assert audit_run(run) == []


def test_a_run_failed_by_a_gate_written_through_the_transitions_has_no_findings(
    store: PipelineStateStore,
) -> None:
    begin(store)
    apply(
        store,
        lambda run: gate_step(
            run, "a", gate_type="quality", verdict="blurry", passed=False, meta={}
        ),
    )

    run = store.require(RUN)
    assert run.status is PipelineRunStatus.FAILED
    assert audit_run(run) == []


def test_a_run_failed_by_its_provider_and_then_its_reconciler_has_no_findings(
    store: PipelineStateStore,
) -> None:
    begin(store)
    apply(store, lambda run: suspend_step(run, "a", provider="runway", job_id="j1", meta={}))
    apply(
        store,
        lambda run: fail_awaiting_step(
            run,
            "a",
            provider="runway",
            job_id="j1",
            code="E_PROVIDER",
            message="",
            retryable=True,
            default_max_retries=None,
            meta={},
        ),
    )
    apply(
        store,
        lambda run: recover_steps(
            run,
            ["a"],
            seen_version=run.version,
            requeue=False,
            retry_limits={"a": None},
            meta={},
        ),
    )

    run = store.require(RUN)
    assert run.status is PipelineRunStatus.FAILED
    assert [e.kind for e in run.events] == [
        "run-created",
        "run-started",
        "step-started",
        "step-waiting",
        "run-suspended",
        "step-failed",
        "step-failed",
        "run-failed",
    ]
    assert audit_run(run) == []


def test_a_cancelled_run_written_through_the_store_has_no_findings(
    store: PipelineStateStore,
) -> None:
    begin(store)
    apply(store, lambda run: suspend_step(run, "a", provider="runway", job_id="j1", meta={}))
    store.cancel(RUN, "operator")

    run = store.require(RUN)
    assert run.status is PipelineRunStatus.CANCELLED
    assert audit_run(run) == []
