"""replay_run: a run's log-determined state rebuilt from its events, one event kind at a time.

The property: a run driven through the transitions of ``mpstate.celery.transitions`` (committed
the way ``StepLifecycle`` commits them, the reconciler's ``recover_step`` included) and
``store.cancel``, in any order, equals its replay and has no audit findings after every commit,
on every backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from mpstate import (
    InMemoryPipelineStateStore,
    InvalidTransitionError,
    PipelineEvent,
    PipelineRun,
    PipelineRunStatus,
    PipelineStateStore,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunResumed,
    RunStarted,
    RunSuspended,
    StepCached,
    StepCompleted,
    StepError,
    StepFailed,
    StepGated,
    StepProgress,
    StepStarted,
    StepState,
    StepStatus,
    audit_run,
)
from mpstate.celery.transitions import (
    Transition,
    complete_step,
    fail_awaiting_step,
    fail_step,
    gate_step,
    recover_step,
    resume_step,
    start_run,
    start_step,
    suspend_step,
)
from mpstate.replay import LOG_FIELDS, STEP_LOG_FIELDS, log_state, replay_run

RUN = "r1"

Decide = Callable[[PipelineRun], Transition | None]


def apply(store: PipelineStateStore, run_id: str, decide: Decide) -> None:
    """Decide on the run as stored and commit the transition, as ``StepLifecycle`` does."""
    run = store.require(run_id, include_events=False)
    transition = decide(run)
    if transition is not None:
        store.commit(
            run_id, transition.patch or None, transition.events, expected_version=run.version
        )


# -- the property -------------------------------------------------------------------------------

#: A step index (wrapped to the run's steps), or None: the step the run is on, most often.
STEP = st.sampled_from([None, None, None, 0, 1, 2, 3])
ARTIFACTS = st.lists(st.sampled_from(["img-1", "img-2", "vid-1", "aud-1"]), max_size=3)
COST = st.floats(min_value=0, max_value=50, allow_nan=False, allow_infinity=False)
CODE = st.sampled_from(["timeout", "E_PROVIDER"])
MAX_RETRIES = st.none() | st.integers(0, 3)
#: True seven times in eight, so that runs live long enough to do something.
MOSTLY_TRUE = st.integers(0, 7).map(bool)


class RunDrivenThroughTransitions(RuleBasedStateMachine):
    """One run of 2 to 4 steps; every rule is one transition (or a cancel) on the stored run."""

    def __init__(self, store: PipelineStateStore) -> None:
        super().__init__()
        self.store = store
        self.run_id = f"run-{uuid.uuid4().hex[:12]}"
        self.step_ids: list[str] = []
        self.jobs = 0
        self.recoveries = 0
        self.operations = 0

    def step_id(self, run: PipelineRun, index: int | None) -> str:
        """The step at ``index`` (wrapped), or the run's current step for ``None``."""
        if index is None:
            index = min(run.current_step_index, len(run.steps) - 1)
        return self.step_ids[index % len(self.step_ids)]

    def apply(self, decide: Decide) -> None:
        self.operations += 1
        apply(self.store, self.run_id, decide)

    @initialize(step_count=st.integers(2, 4))
    def create_run(self, step_count: int) -> None:
        self.step_ids = [f"s{i}" for i in range(step_count)]
        steps = [{"stepId": step_id, "operation": "render"} for step_id in self.step_ids]
        self.store.create({"runId": self.run_id, "pipelineId": "p", "steps": steps})

    @rule()
    def run_starts(self) -> None:
        self.apply(start_run)

    @rule(step=STEP, attempt=st.integers(0, 3), task_id=st.sampled_from(["task-1", "task-2"]))
    def step_starts(self, step: int | None, attempt: int, task_id: str) -> None:
        self.apply(
            lambda run: start_step(
                run, self.step_id(run, step), attempt=attempt, task_id=task_id, meta={}
            )
        )

    @rule(
        step=STEP,
        artifact_ids=ARTIFACTS,
        cost_usd=COST,
        cache_key=st.none() | st.sampled_from(["ck-1", "ck-2"]),
    )
    def step_completes(
        self, step: int | None, artifact_ids: list[str], cost_usd: float, cache_key: str | None
    ) -> None:
        self.apply(
            lambda run: complete_step(
                run,
                self.step_id(run, step),
                artifact_ids=artifact_ids,
                cost_usd=0.0 if cache_key is not None else cost_usd,
                cache_key=cache_key,
                meta={},
            )
        )

    @rule(step=STEP, code=CODE, retryable=MOSTLY_TRUE)
    def step_fails(self, step: int | None, code: str, retryable: bool) -> None:
        self.apply(
            lambda run: fail_step(
                run,
                self.step_id(run, step),
                code=code,
                message="it broke",
                retryable=retryable,
                meta={},
            )
        )

    @rule(step=STEP, passed=MOSTLY_TRUE)
    def gate_decides(self, step: int | None, passed: bool) -> None:
        self.apply(
            lambda run: gate_step(
                run,
                self.step_id(run, step),
                gate_type="quality",
                verdict="v",
                passed=passed,
                meta={},
            )
        )

    @rule(step=STEP, provider=st.sampled_from(["runway", "replicate"]))
    def step_suspends(self, step: int | None, provider: str) -> None:
        self.jobs += 1
        job_id = f"job-{self.jobs}"
        self.apply(
            lambda run: suspend_step(
                run, self.step_id(run, step), provider=provider, job_id=job_id, meta={}
            )
        )

    @rule(step=STEP, artifact_ids=ARTIFACTS, cost_usd=COST)
    def provider_completes(
        self, step: int | None, artifact_ids: list[str], cost_usd: float
    ) -> None:
        self.apply(
            lambda run: resume_step(
                run, self.step_id(run, step), artifact_ids=artifact_ids, cost_usd=cost_usd, meta={}
            )
        )

    @rule(step=STEP, code=CODE, retryable=MOSTLY_TRUE, default_max_retries=MAX_RETRIES)
    def provider_fails(
        self, step: int | None, code: str, retryable: bool, default_max_retries: int | None
    ) -> None:
        self.apply(
            lambda run: fail_awaiting_step(
                run,
                self.step_id(run, step),
                code=code,
                message="provider said no",
                retryable=retryable,
                default_max_retries=default_max_retries,
                meta={},
            )
        )

    @rule(step=STEP, requeue=MOSTLY_TRUE, default_max_retries=MAX_RETRIES)
    def reconciler_recovers(
        self, step: int | None, requeue: bool, default_max_retries: int | None
    ) -> None:
        self.recoveries += 1
        task_id = f"task-recovered-{self.recoveries}"
        self.apply(
            lambda run: recover_step(
                run,
                self.step_id(run, step),
                seen_version=run.version,
                requeue=requeue,
                task_id=task_id,
                default_max_retries=default_max_retries,
                meta={},
            )
        )

    @precondition(lambda self: self.operations >= 8)
    @rule(reason=st.sampled_from(["user asked", ""]))
    def run_is_cancelled(self, reason: str) -> None:
        try:
            self.store.cancel(self.run_id, reason)
        except InvalidTransitionError:
            finished = {PipelineRunStatus.COMPLETED, PipelineRunStatus.FAILED}
            assert self.store.require(self.run_id).status in finished

    @invariant()
    def the_run_agrees_with_its_log(self) -> None:
        run = self.store.require(self.run_id)
        assert audit_run(run) == []
        assert log_state(replay_run(run, run.events)) == log_state(run)


def test_a_run_driven_through_any_transitions_equals_its_replay(
    store: PipelineStateStore,
) -> None:
    run_state_machine_as_test(
        lambda: RunDrivenThroughTransitions(store),
        settings=settings(
            max_examples=60,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.parametrize("failing_step", ["a", "b"])
def test_a_step_failure_coded_gate_rejected_after_a_passed_gate_equals_its_replay(
    failing_step: str,
) -> None:
    store = InMemoryPipelineStateStore()
    store.create({"runId": RUN, "pipelineId": "p", "steps": [step("a"), step("b")]})
    apply(store, RUN, start_run)
    apply(store, RUN, lambda run: start_step(run, "a", attempt=0, task_id="t1", meta={}))
    apply(
        store,
        RUN,
        lambda run: gate_step(run, "a", gate_type="quality", verdict="ok", passed=True, meta={}),
    )
    if failing_step == "b":
        apply(
            store,
            RUN,
            lambda run: complete_step(
                run, "a", artifact_ids=[], cost_usd=0.0, cache_key=None, meta={}
            ),
        )
        apply(store, RUN, lambda run: start_step(run, "b", attempt=0, task_id="t2", meta={}))
    apply(
        store,
        RUN,
        lambda run: fail_step(
            run, failing_step, code="gate-rejected", message="", retryable=False, meta={}
        ),
    )

    run = store.require(RUN)
    assert audit_run(run) == []
    assert log_state(replay_run(run, run.events)) == log_state(run)


# -- each event kind ----------------------------------------------------------------------------


def step(step_id: str) -> dict[str, str]:
    return {"stepId": step_id, "operation": "render"}


def definition(*step_ids: str, **fields: Any) -> PipelineRun:
    steps = [StepState(step_id=step_id, operation=f"op-{step_id}") for step_id in step_ids]
    return PipelineRun(run_id=RUN, pipeline_id="p", steps=steps, **fields)


def logged(*events: PipelineEvent) -> list[PipelineEvent]:
    """``events`` after run-created, numbered from 1 as the store numbers them."""
    log = [RunCreated(run_id=RUN, pipeline_def_hash=""), *events]
    return [event.model_copy(update={"seq": seq}) for seq, event in enumerate(log, start=1)]


def replayed(*events: PipelineEvent) -> PipelineRun:
    return replay_run(definition("a", "b"), logged(*events))


def started(step_id: str, attempt: int = 0) -> StepStarted:
    return StepStarted(run_id=RUN, step_id=step_id, attempt=attempt)


def completed(
    step_id: str, cost_usd: float = 0.0, artifact_ids: tuple[str, ...] = ()
) -> StepCompleted:
    return StepCompleted(
        run_id=RUN, step_id=step_id, artifact_ids=list(artifact_ids), cost_usd=cost_usd
    )


def failed(step_id: str, *, retryable: bool, code: str = "timeout") -> StepFailed:
    return StepFailed(run_id=RUN, step_id=step_id, code=code, retryable=retryable)


def gated(step_id: str) -> StepGated:
    return StepGated(run_id=RUN, step_id=step_id, gate_type="quality", verdict="blurry")


def suspended(token: str = "tok-1") -> RunSuspended:
    return RunSuspended(run_id=RUN, reason="webhook", resume_token=token)


def run_failed(code: str, reason: str = "gave up") -> RunFailed:
    return RunFailed(run_id=RUN, code=code, terminal_reason=reason)


def test_a_created_run_replays_as_pending_with_no_step_begun() -> None:
    stored = definition(
        "a",
        status=PipelineRunStatus.RUNNING,
        current_step_index=1,
        cost_usd=3.0,
        error="old",
        resume_token="tok",
        resumable=True,
    )
    stored.steps[0] = stored.steps[0].model_copy(
        update={
            "status": StepStatus.COMPLETED,
            "attempts": 2,
            "artifact_ids": ["x"],
            "cost_usd": 3.0,
            "cache_key": "ck",
            "last_error": StepError(code="E"),
        }
    )

    run = replay_run(stored, logged())

    assert log_state(run) == log_state(definition("a"))
    assert run.status is PipelineRunStatus.PENDING
    assert run.steps[0].status is StepStatus.PENDING
    assert run.steps[0].attempts == 0


def test_run_started_makes_the_run_running() -> None:
    run = replayed(RunStarted(run_id=RUN))
    assert run.status is PipelineRunStatus.RUNNING
    assert run.current_step_index == 0


def test_a_started_step_is_running_with_its_attempts_and_the_run_runs_on_it() -> None:
    run = replayed(started("b", attempt=2))

    assert run.status is PipelineRunStatus.RUNNING
    assert run.current_step_index == 1
    assert run.step("b").status is StepStatus.RUNNING
    assert run.step("b").attempts == 3
    assert run.step("a").status is StepStatus.PENDING


def test_a_redelivered_earlier_attempt_does_not_lower_the_attempts() -> None:
    run = replayed(started("a", attempt=2), started("a", attempt=0))
    assert run.step("a").attempts == 3


def test_step_progress_changes_nothing() -> None:
    progress = StepProgress(run_id=RUN, step_id="a", pct=50, cost_usd_accrued=1.5)
    assert log_state(replayed(started("a"), progress)) == log_state(replayed(started("a")))


def test_a_completed_step_has_its_artifacts_and_cost_and_the_run_moves_past_it() -> None:
    run = replayed(
        started("a"), completed("a", 1.25, ("img-1",)), started("b"), completed("b", 0.5)
    )

    assert run.step("a").status is StepStatus.COMPLETED
    assert run.step("a").artifact_ids == ["img-1"]
    assert run.step("a").cost_usd == 1.25
    assert run.step("a").cache_key is None
    assert run.cost_usd == 1.75
    assert run.current_step_index == 2
    assert run.status is PipelineRunStatus.RUNNING


def test_a_cached_step_replays_with_its_cache_key_and_no_cost() -> None:
    cached = StepCached(run_id=RUN, step_id="a", cache_key="ck-1", artifact_ids=["img-1"])

    run = replayed(started("a"), cached)

    assert run.step("a").status is StepStatus.CACHED
    assert run.step("a").cache_key == "ck-1"
    assert run.step("a").artifact_ids == ["img-1"]
    assert run.step("a").cost_usd == 0.0
    assert run.cost_usd == 0.0
    assert run.current_step_index == 1


def test_completing_a_step_of_a_suspended_run_makes_it_running_again() -> None:
    run = replayed(started("a"), suspended(), completed("a", 1.0))
    assert run.status is PipelineRunStatus.RUNNING
    assert run.current_step_index == 1


def test_a_retryable_failure_leaves_the_step_running_with_its_error_code() -> None:
    run = replayed(started("a"), failed("a", retryable=True, code="E_TIMEOUT"))

    assert run.step("a").status is StepStatus.RUNNING
    assert run.step("a").last_error is not None
    assert (run.step("a").last_error.code, run.step("a").last_error.retryable) == (
        "E_TIMEOUT",
        True,
    )
    assert run.status is PipelineRunStatus.RUNNING
    assert log_state(run)["steps"]["a"]["last_error"] == ("E_TIMEOUT", True)


def test_a_retryable_failure_of_a_suspended_run_makes_it_running_and_not_resumable() -> None:
    run = replayed(started("a"), suspended(), failed("a", retryable=True))

    assert run.status is PipelineRunStatus.RUNNING
    assert run.resumable is False
    assert run.step("a").status is StepStatus.RUNNING


def test_a_final_failure_fails_the_step() -> None:
    run = replayed(started("a"), failed("a", retryable=False, code="E_BAD"))

    assert run.step("a").status is StepStatus.FAILED
    assert log_state(run)["steps"]["a"]["last_error"] == ("E_BAD", False)
    assert run.status is PipelineRunStatus.RUNNING


def test_step_gated_by_itself_changes_nothing() -> None:
    assert log_state(replayed(started("a"), gated("a"))) == log_state(replayed(started("a")))


def test_a_gate_rejected_run_failed_marks_the_gated_step_gated() -> None:
    run = replayed(started("a"), gated("a"), run_failed("gate-rejected", "rejected: blurry"))

    assert run.step("a").status is StepStatus.GATED
    assert run.step("b").status is StepStatus.PENDING
    assert run.status is PipelineRunStatus.FAILED
    assert run.error == "rejected: blurry"


def test_a_run_failed_with_another_code_marks_no_step_gated() -> None:
    run = replayed(started("a"), gated("a"), run_failed("E_BAD", "step a failed"))

    assert run.step("a").status is StepStatus.RUNNING
    assert run.status is PipelineRunStatus.FAILED
    assert run.error == "step a failed"


def test_a_gate_rejected_run_failed_without_a_gated_step_marks_no_step_gated() -> None:
    run = replayed(started("a"), run_failed("gate-rejected"))
    assert [s.status for s in run.steps] == [StepStatus.RUNNING, StepStatus.PENDING]
    assert run.status is PipelineRunStatus.FAILED


def test_run_suspended_sets_the_resume_token_and_resumable() -> None:
    run = replayed(started("a"), suspended("tok-9"))

    assert run.status is PipelineRunStatus.SUSPENDED
    assert run.resume_token == "tok-9"
    assert run.resumable is True


def test_run_resumed_makes_the_run_running_and_not_resumable_keeping_the_token() -> None:
    run = replayed(started("a"), suspended("tok-9"), RunResumed(run_id=RUN, from_step_id="a"))

    assert run.status is PipelineRunStatus.RUNNING
    assert run.resumable is False
    assert run.resume_token == "tok-9"


def test_run_completed_completes_the_run() -> None:
    run = replayed(
        started("a"),
        completed("a", 1.0),
        started("b"),
        completed("b", 2.0),
        RunCompleted(run_id=RUN, total_cost_usd=3.0),
    )
    assert run.status is PipelineRunStatus.COMPLETED
    assert run.cost_usd == 3.0


def test_a_cancelled_run_replays_as_cancelled_with_the_reason_as_its_error() -> None:
    run = replayed(started("a"), RunCancelled(run_id=RUN, reason="user asked"))

    assert run.status is PipelineRunStatus.CANCELLED
    assert run.error == "user asked"
    assert run.step("a").status is StepStatus.RUNNING


@pytest.mark.parametrize(
    "event",
    [
        started("ghost", attempt=1),
        StepProgress(run_id=RUN, step_id="ghost", pct=10),
        completed("ghost", 5.0, ("x",)),
        StepCached(run_id=RUN, step_id="ghost", cache_key="ck", artifact_ids=["x"]),
        failed("ghost", retryable=True),
        failed("ghost", retryable=False),
        gated("ghost"),
    ],
    ids=lambda event: event.kind,
)
def test_step_events_naming_unknown_steps_change_nothing(event: PipelineEvent) -> None:
    before = replayed(RunStarted(run_id=RUN), started("a"))
    after = replayed(RunStarted(run_id=RUN), started("a"), event)
    assert log_state(after) == log_state(before)


def test_a_gate_on_an_unknown_step_is_not_the_gated_step() -> None:
    run = replayed(started("a"), gated("ghost"), run_failed("gate-rejected"))
    assert [s.status for s in run.steps] == [StepStatus.RUNNING, StepStatus.PENDING]


def test_replay_is_pure() -> None:
    run = definition("a", "b", status=PipelineRunStatus.RUNNING, cost_usd=1.0)
    events = logged(started("a"), completed("a", 1.0, ("img",)), suspended())
    run.events = list(events)
    run_before = run.model_copy(deep=True)
    events_before = [event.model_copy(deep=True) for event in events]

    replay_run(run, events)

    assert run == run_before
    assert events == events_before
    assert run.events == events_before


def test_replay_reads_any_iterable_of_events_once() -> None:
    events = logged(started("a"), completed("a", 1.0))
    run = replay_run(definition("a", "b"), iter(events))
    assert run.step("a").status is StepStatus.COMPLETED


def test_replay_keeps_what_the_log_does_not_describe_and_has_no_events() -> None:
    run = definition(
        "a",
        tenant_id="t1",
        budget={"maxUsd": 5},
        pipeline_def_hash="sha:1",
        external_job_ids={"runway": "job-1"},
        version=7,
    )
    run.steps[0] = run.steps[0].model_copy(
        update={"inputs": {"prompt": "cat"}, "max_retries": 2, "task_id": "t-1"}
    )
    run.events = logged()

    result = replay_run(run, logged(started("a")))

    kept = {"status", "current_step_index", "events", "steps"}
    assert result.model_dump(exclude=kept) == run.model_dump(exclude=kept)
    assert result.events == []
    assert result.steps[0].operation == "op-a"
    assert result.steps[0].inputs == {"prompt": "cat"}
    assert result.steps[0].max_retries == 2
    assert result.steps[0].task_id == "t-1"


def test_log_state_holds_the_log_fields_of_the_run_and_its_steps() -> None:
    state = log_state(definition("a", "b"))

    assert set(state) == {*LOG_FIELDS, "steps"}
    assert list(state["steps"]) == ["a", "b"]
    assert set(state["steps"]["a"]) == set(STEP_LOG_FIELDS)


def test_log_state_compares_the_last_error_by_code_and_retryable_only() -> None:
    one = definition("a")
    other = definition("a")
    one.steps[0].last_error = StepError(code="E", message="first", retryable=True)
    other.steps[0].last_error = StepError(code="E", message="second", retryable=True)
    assert log_state(one) == log_state(other)

    other.steps[0].last_error = StepError(code="E", message="first", retryable=False)
    assert log_state(one) != log_state(other)


def test_log_state_does_not_see_float_noise_in_costs() -> None:
    noisy = definition("a", cost_usd=0.1 + 0.2)
    noisy.steps[0].cost_usd = 0.1 + 0.2
    exact = definition("a", cost_usd=0.3)
    exact.steps[0].cost_usd = 0.3
    assert log_state(noisy) == log_state(exact)


def test_a_run_written_through_the_store_equals_its_replay(store: PipelineStateStore) -> None:
    store.create({"runId": RUN, "pipelineId": "p", "steps": [step("a"), step("b")]})
    apply(store, RUN, start_run)
    apply(store, RUN, lambda run: start_step(run, "a", attempt=0, task_id="t1", meta={}))
    apply(
        store,
        RUN,
        lambda run: fail_step(run, "a", code="timeout", message="", retryable=True, meta={}),
    )
    apply(
        store,
        RUN,
        lambda run: complete_step(
            run, "a", artifact_ids=["img"], cost_usd=0.0, cache_key="ck", meta={}
        ),
    )
    apply(store, RUN, lambda run: start_step(run, "b", attempt=0, task_id="t2", meta={}))
    apply(
        store,
        RUN,
        lambda run: suspend_step(run, "b", provider="runway", job_id="j1", meta={}),
    )
    store.cancel(RUN, "operator")

    run = store.require(RUN)
    replay = replay_run(run, run.events)

    assert log_state(replay) == log_state(run)
    assert replay.status is PipelineRunStatus.CANCELLED
    assert replay.step("a").cache_key == "ck"
    assert replay.resumable is True
