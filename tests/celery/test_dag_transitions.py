"""The step transitions on a graph: a diamond ``a -> (b, c) -> d`` (pure functions, no Celery).

As in ``test_transitions.py``, decisions are chained by committing them to an in-memory store,
which only carries the state from one decision to the next. Every run is audited at the end.
"""

from __future__ import annotations

from typing import Any

import pytest
from transition_support import CommittedRun

from mpstate import (
    InvalidInputError,
    InvalidTransitionError,
    PipelineRun,
    VersionConflictError,
    audit_run,
)
from mpstate.celery.transitions import (
    Transition,
    complete_step,
    fail_awaiting_step,
    fail_step,
    gate_step,
    resume_step,
    start_run,
    start_step,
    suspend_step,
)
from mpstate.definitions import fresh_step, new_run
from mpstate.models import FailurePolicy, PipelineRunStatus, StepStatus
from mpstate.rerun import carried_steps

META = {"taskId": "t"}

#: a -> (b, c) -> d
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


class Diamond(CommittedRun):
    """A diamond run in an in-memory store, moved along by committing transitions."""

    def __init__(
        self,
        policy: FailurePolicy = FailurePolicy.FAIL_FAST,
        *,
        started: bool = True,
        run: PipelineRun | None = None,
    ) -> None:
        if run is None:
            steps = [
                {"stepId": s, "operation": f"op.{s}", "dependsOn": needs}
                for s, needs in DIAMOND.items()
            ]
            run = new_run("p", steps, run_id="r1", failure_policy=policy)
        super().__init__(run, started=started)

    def decide_start(self, step: str, attempt: int = 0) -> Transition | None:
        return start_step(self.run, step, attempt=attempt, task_id=f"t-{step}", meta=META)

    def start(self, *steps: str) -> PipelineRun:
        for step in steps:
            self.apply(self.decide_start(step))
        return self.run

    def complete(self, step: str, cost: float = 0.1) -> Transition | None:
        return complete_step(
            self.run,
            step,
            artifact_ids=[f"{step}-1"],
            cost_usd=cost,
            cache_key=None,
            meta=META,
            outputs={"from": step},
        )

    def await_job(self, step: str, job_id: str, provider: str = "vid") -> Transition | None:
        return suspend_step(self.run, step, provider=provider, job_id=job_id, meta=META)

    def callback(self, step: str, job_id: str, provider: str = "vid") -> Transition | None:
        return resume_step(
            self.run,
            step,
            provider=provider,
            job_id=job_id,
            artifact_ids=[f"{step}-video"],
            cost_usd=0.5,
            meta=META,
        )

    def failed_callback(
        self, step: str, job_id: str, *, retryable: bool, provider: str = "vid"
    ) -> Transition | None:
        return fail_awaiting_step(
            self.run,
            step,
            provider=provider,
            job_id=job_id,
            code="PROVIDER_DOWN",
            message="try later",
            retryable=retryable,
            default_max_retries=3,
            meta=META,
        )

    def fail(self, step: str, *, retryable: bool = False) -> Transition | None:
        return fail_step(
            self.run, step, code="Bad", message="broken", retryable=retryable, meta=META
        )

    def audited(self) -> PipelineRun:
        run = self.run
        assert audit_run(run) == []
        return run


def kinds_of(transition: Transition | None) -> list[str]:
    assert transition is not None
    return [event.kind for event in transition.events]


def enqueued(transition: Transition | None) -> list[str]:
    assert transition is not None
    return [step.step_id for step in transition.enqueue]


def a_done() -> Diamond:
    """a completed: b and c are published."""
    runs = Diamond()
    runs.start("a")
    runs.apply(runs.complete("a"))
    return runs


# -- fan-out and fan-in ---------------------------------------------------------------------------


def test_starting_the_run_publishes_only_the_step_with_no_dependencies() -> None:
    runs = Diamond(started=False)
    transition = start_run(runs.run)
    assert kinds_of(transition) == ["run-started"]
    assert enqueued(transition) == ["a"]
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.step("a").task_id is not None
    assert [run.step(s).task_id for s in "bcd"] == [None, None, None]


def test_completing_the_first_step_publishes_both_branches_exactly_once() -> None:
    runs = Diamond()
    runs.start("a")
    transition = runs.complete("a")
    assert kinds_of(transition) == ["step-completed"]
    assert enqueued(transition) == ["b", "c"]
    assert transition is not None
    assert len({s.task_id for s in transition.enqueue}) == 2
    runs.apply(transition)
    assert runs.complete("a") is None  # a duplicate completion publishes nothing again
    assert runs.published == ["a", "b", "c"]


def test_completing_one_branch_publishes_nothing_and_keeps_the_run_running() -> None:
    runs = a_done()
    runs.start("b", "c")
    transition = runs.complete("b")
    assert kinds_of(transition) == ["step-completed"]
    assert enqueued(transition) == []
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.step("d").status is StepStatus.PENDING
    assert run.current_step_index == 2  # c is the first step not done


def test_completing_the_second_branch_publishes_the_join_exactly_once() -> None:
    runs = a_done()
    runs.start("b", "c")
    runs.apply(runs.complete("b"))
    transition = runs.complete("c")
    assert kinds_of(transition) == ["step-completed"]
    assert enqueued(transition) == ["d"]
    runs.apply(transition)
    assert runs.complete("c") is None  # a duplicate completion of c does not publish d again
    assert runs.published == ["a", "b", "c", "d"]
    runs.start("d")
    last = runs.complete("d")
    assert kinds_of(last) == ["step-completed", "run-completed"]
    assert enqueued(last) == []
    run = runs.apply(last)
    assert run.status is PipelineRunStatus.COMPLETED
    assert run.current_step_index == 4
    assert run.cost_usd == pytest.approx(0.4)
    assert run.step("b").outputs == {"from": "b"}
    runs.audited()


def test_of_two_branches_completing_at_once_the_second_to_commit_publishes_the_join() -> None:
    runs = a_done()
    runs.start("b", "c")
    seen = runs.run
    for_b = runs.complete("b")
    for_c = runs.complete("c")
    # Each decided on the same version: neither sees the other branch done.
    assert enqueued(for_b) == [] and enqueued(for_c) == []
    runs.apply(for_b)
    assert for_c is not None
    with pytest.raises(VersionConflictError):
        runs.store.commit(runs.run_id, for_c.patch, for_c.events, expected_version=seen.version)
    again = runs.complete("c")  # as StepLifecycle does on a conflict: read, decide again
    assert enqueued(again) == ["d"]
    runs.apply(again)
    assert runs.published == ["a", "b", "c", "d"]
    runs.audited()


def test_the_join_is_refused_a_start_until_both_branches_are_done() -> None:
    runs = Diamond()
    assert runs.decide_start("d") is None
    runs.start("a")
    runs.apply(runs.complete("a"))
    assert runs.decide_start("d") is None
    runs.start("b", "c")
    runs.apply(runs.complete("b"))
    assert runs.decide_start("d") is None  # c still runs
    runs.apply(runs.complete("c"))
    assert kinds_of(runs.decide_start("d")) == ["step-started"]


def test_the_branches_start_in_either_order() -> None:
    runs = a_done()
    runs.start("c", "b")
    run = runs.run
    assert (run.step("b").status, run.step("c").status) == (StepStatus.RUNNING,) * 2
    assert run.current_step_index == 1


# -- a branch waiting for a provider --------------------------------------------------------------


def b_waits_while_c_runs() -> Diamond:
    runs = a_done()
    runs.start("b", "c")
    runs.apply(runs.await_job("b", "j-b"))
    return runs


def test_a_branch_waiting_while_the_other_runs_logs_only_step_waiting() -> None:
    runs = a_done()
    runs.start("b", "c")
    transition = runs.await_job("b", "j-b")
    assert kinds_of(transition) == ["step-waiting"]
    assert enqueued(transition) == []
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING
    assert (run.resumable, run.resume_token) == (False, None)
    assert run.step("b").status is StepStatus.WAITING
    assert run.step("b").awaited_job is not None
    assert run.step("b").awaited_job.job_id == "j-b"
    runs.audited()


def test_a_waiting_step_is_refused_a_start_and_a_task_completion() -> None:
    runs = b_waits_while_c_runs()
    assert runs.run.status is PipelineRunStatus.RUNNING
    assert runs.decide_start("b", attempt=1) is None
    assert runs.complete("b") is None


def test_the_other_branch_ending_suspends_the_run_on_the_waiting_one() -> None:
    runs = b_waits_while_c_runs()
    transition = runs.complete("c")
    assert kinds_of(transition) == ["step-completed", "run-suspended"]
    assert enqueued(transition) == []
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.SUSPENDED
    assert run.resumable is True
    assert run.resume_token == transition.events[-1].resume_token
    runs.audited()


def test_the_waiting_branchs_callback_resumes_the_run_and_publishes_the_join() -> None:
    runs = b_waits_while_c_runs()
    runs.apply(runs.complete("c"))
    transition = runs.callback("b", "j-b")
    assert kinds_of(transition) == ["run-resumed", "step-completed"]
    assert transition is not None and transition.events[0].from_step_id == "b"
    assert enqueued(transition) == ["d"]
    run = runs.apply(transition)
    assert (run.status, run.resumable) == (PipelineRunStatus.RUNNING, False)
    assert run.step("b").artifact_ids == ["b-video"]
    assert runs.callback("b", "j-b") is None  # delivered again: nothing
    runs.audited()


def test_a_callback_while_the_other_branch_runs_completes_the_step_without_run_resumed() -> None:
    runs = b_waits_while_c_runs()
    transition = runs.callback("b", "j-b")
    assert kinds_of(transition) == ["step-completed"]
    assert enqueued(transition) == []
    runs.apply(transition)
    assert kinds_of(runs.complete("c")) == ["step-completed"]
    assert enqueued(runs.complete("c")) == ["d"]


def both_wait() -> Diamond:
    runs = a_done()
    runs.start("b", "c")
    runs.apply(runs.await_job("b", "j-b"))
    transition = runs.await_job("c", "j-c")
    assert kinds_of(transition) == ["step-waiting", "run-suspended"]
    runs.apply(transition)
    return runs


@pytest.mark.parametrize(("first", "second"), [("b", "c"), ("c", "b")])
def test_two_branches_waiting_on_one_provider_resume_in_either_order(
    first: str, second: str
) -> None:
    runs = both_wait()
    token = runs.run.resume_token

    one = runs.callback(first, f"j-{first}")
    assert kinds_of(one) == ["run-resumed", "step-completed", "run-suspended"]
    assert one is not None and one.events[1].step_id == first
    assert enqueued(one) == []
    run = runs.apply(one)
    assert run.status is PipelineRunStatus.SUSPENDED
    assert run.resumable is True
    assert run.resume_token not in (None, token)  # a fresh token

    two = runs.callback(second, f"j-{second}")
    assert kinds_of(two) == ["run-resumed", "step-completed"]
    assert two is not None and two.events[1].step_id == second
    assert enqueued(two) == ["d"]
    run = runs.apply(two)
    assert (run.status, run.resumable) == (PipelineRunStatus.RUNNING, False)
    assert runs.published == ["a", "b", "c", "d"]
    runs.audited()


def test_a_callback_naming_another_steps_job_or_an_unknown_job_is_ignored() -> None:
    runs = both_wait()
    assert runs.callback("b", "j-c") is None
    assert runs.callback("c", "j-b") is None
    assert runs.callback("b", "j-unknown") is None
    assert runs.callback("b", "j-b", provider="other") is None
    assert runs.failed_callback("b", "j-c", retryable=False) is None


def test_a_callback_for_a_superseded_job_of_the_step_is_ignored() -> None:
    runs = b_waits_while_c_runs()
    retried = runs.failed_callback("b", "j-b", retryable=True)
    assert kinds_of(retried) == ["step-failed"]
    assert enqueued(retried) == ["b"]
    runs.apply(retried)
    runs.apply(runs.decide_start("b", attempt=1))
    runs.apply(runs.await_job("b", "j-b2"))
    assert [(j.job_id, j.attempt) for j in runs.run.step("b").external_jobs] == [
        ("j-b", 0),
        ("j-b2", 1),
    ]
    assert runs.run.step_of_job("vid", "j-b") is not None
    assert runs.callback("b", "j-b") is None  # the first attempt's job answered late
    assert runs.failed_callback("b", "j-b", retryable=False) is None
    assert kinds_of(runs.callback("b", "j-b2")) == ["step-completed"]


# -- failures -------------------------------------------------------------------------------------


def test_a_branch_failing_for_good_under_fail_fast_fails_the_run_and_revokes_the_other() -> None:
    runs = a_done()
    runs.start("b", "c")
    transition = runs.fail("b")
    assert kinds_of(transition) == ["step-failed", "run-failed"]
    assert transition is not None
    assert transition.revoke == ("t-c",)
    assert enqueued(transition) == []
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.FAILED
    assert run.error == "step b failed: Bad: broken"
    assert run.step("b").error == "broken"
    assert runs.complete("c") is None  # c's late result changes nothing
    runs.audited()


def test_under_fail_fast_a_queued_branch_that_never_started_is_revoked_too() -> None:
    runs = a_done()
    queued = runs.run.step("c").task_id
    runs.start("b")
    transition = runs.fail("b")
    assert transition is not None
    assert transition.revoke == (queued,)
    assert runs.apply(transition).status is PipelineRunStatus.FAILED


def test_a_retryable_failure_of_a_branch_revokes_nothing() -> None:
    runs = a_done()
    runs.start("b", "c")
    transition = runs.fail("b", retryable=True)
    assert kinds_of(transition) == ["step-failed"]
    assert transition is not None and transition.revoke == ()
    assert runs.apply(transition).status is PipelineRunStatus.RUNNING


def test_under_finish_branches_the_other_branch_runs_to_its_end_then_the_run_fails() -> None:
    runs = Diamond(FailurePolicy.FINISH_BRANCHES)
    runs.start("a")
    runs.apply(runs.complete("a"))
    runs.start("b", "c")

    failed = runs.fail("b")
    assert kinds_of(failed) == ["step-failed"]
    assert failed is not None and failed.revoke == ()
    run = runs.apply(failed)
    assert run.status is PipelineRunStatus.RUNNING
    assert run.error is None

    last = runs.complete("c")
    assert kinds_of(last) == ["step-completed", "run-failed"]
    assert enqueued(last) == []  # d waits for b, which failed: it never becomes ready
    run = runs.apply(last)
    assert run.status is PipelineRunStatus.FAILED
    assert run.error == "step b failed: Bad: broken"
    assert run.step("c").status is StepStatus.COMPLETED
    assert run.step("d").status is StepStatus.PENDING
    assert run.step("d").task_id is None
    assert runs.published == ["a", "b", "c"]
    runs.audited()


def test_under_finish_branches_a_waiting_branch_suspends_the_run_and_its_callback_fails_it() -> (
    None
):
    runs = Diamond(FailurePolicy.FINISH_BRANCHES)
    runs.start("a")
    runs.apply(runs.complete("a"))
    runs.start("b", "c")
    runs.apply(runs.await_job("c", "j-c"))

    failed = runs.fail("b")
    assert kinds_of(failed) == ["step-failed", "run-suspended"]
    run = runs.apply(failed)
    assert run.status is PipelineRunStatus.SUSPENDED

    last = runs.callback("c", "j-c")
    assert kinds_of(last) == ["run-resumed", "step-completed", "run-failed"]
    assert enqueued(last) == []
    run = runs.apply(last)
    assert run.status is PipelineRunStatus.FAILED
    assert run.resumable is False
    runs.audited()


def test_a_gate_rejecting_a_branch_fails_the_run_at_once_whatever_the_policy() -> None:
    runs = Diamond(FailurePolicy.FINISH_BRANCHES)
    runs.start("a")
    runs.apply(runs.complete("a"))
    runs.start("b", "c")
    transition = gate_step(
        runs.run, "b", gate_type="quality", verdict="blurry", passed=False, meta=META
    )
    assert kinds_of(transition) == ["step-gated", "run-failed"]
    assert transition is not None and transition.revoke == ("t-c",)
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.FAILED
    assert run.step("b").status is StepStatus.GATED
    runs.audited()


# -- re-runs --------------------------------------------------------------------------------------


def failed_at_c() -> PipelineRun:
    """A diamond run that failed at c, after a and b completed."""
    runs = a_done()
    runs.start("b", "c")
    runs.apply(runs.complete("b"))
    runs.apply(runs.fail("c"))
    run = runs.run
    assert [run.step(s).status for s in "abcd"] == [
        StepStatus.COMPLETED,
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.PENDING,
    ]
    return run


def rerun_of(original: PipelineRun) -> Diamond:
    """A pending re-run of ``original`` (as ``MpState.rerun`` creates it), in a store of its
    own."""
    rerun = new_run(
        original.pipeline_id,
        [fresh_step(step) for step in original.steps],
        run_id="r1-rerun1",
        failure_policy=original.failure_policy,
        rerun_of=original.run_id,
    )
    return Diamond(started=False, run=rerun)


def test_a_rerun_carries_the_succeeded_steps_before_the_first_failure_by_default() -> None:
    assert sorted(carried_steps(failed_at_c())) == ["a", "b"]


def test_a_rerun_from_a_named_step_runs_it_and_everything_depending_on_it_again() -> None:
    original = failed_at_c()
    assert sorted(carried_steps(original, "b")) == ["a"]  # b and d again; c had failed
    assert sorted(carried_steps(original, "a")) == []
    assert sorted(carried_steps(original, "d")) == ["a", "b"]


def test_a_rerun_start_logs_the_carried_steps_cached_and_publishes_what_they_make_ready() -> None:
    original = failed_at_c()
    carried = carried_steps(original)
    runs = rerun_of(original)

    transition = start_run(runs.run, carried, meta={"rerunOf": "r1"})

    assert kinds_of(transition) == ["run-started", "step-cached", "step-cached"]
    assert transition is not None
    assert [e.step_id for e in transition.events[1:]] == ["a", "b"]
    assert [e.cache_key for e in transition.events[1:]] == ["rerun:r1:a", "rerun:r1:b"]
    assert transition.events[1].artifact_ids == ["a-1"]
    assert enqueued(transition) == ["c"]  # d still waits for c
    run = runs.apply(transition)
    assert run.status is PipelineRunStatus.RUNNING
    assert (run.step("a").status, run.step("b").status) == (StepStatus.CACHED,) * 2
    assert run.step("b").outputs == {"from": "b"}
    assert run.cost_usd == 0.0
    assert run.current_step_index == 2
    runs.audited()


def test_a_rerun_from_the_first_step_carries_nothing_and_publishes_only_it() -> None:
    original = failed_at_c()
    carried = carried_steps(original, "a")
    runs = rerun_of(original)
    transition = start_run(runs.run, carried)
    assert kinds_of(transition) == ["run-started"]
    assert enqueued(transition) == ["a"]


def test_a_rerun_from_one_branch_publishes_both_branches_its_carried_step_made_ready() -> None:
    original = failed_at_c()
    carried = carried_steps(original, "b")
    runs = rerun_of(original)
    transition = start_run(runs.run, carried)
    assert kinds_of(transition) == ["run-started", "step-cached"]
    assert enqueued(transition) == ["b", "c"]


def test_only_a_failed_or_cancelled_run_can_be_rerun() -> None:
    live = a_done().run
    with pytest.raises(InvalidTransitionError, match="only a failed or cancelled run"):
        carried_steps(live)
    runs = a_done()
    runs.start("b", "c")
    runs.apply(runs.complete("b"))
    runs.apply(runs.complete("c"))
    runs.start("d")
    completed = runs.apply(runs.complete("d"))
    assert completed.status is PipelineRunStatus.COMPLETED
    with pytest.raises(InvalidTransitionError):
        carried_steps(completed, "a")


def test_a_rerun_from_an_unknown_step_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="has no step 'x'"):
        carried_steps(failed_at_c(), "x")


def test_a_cancelled_run_whose_every_step_succeeded_needs_a_step_named_to_rerun() -> None:
    runs = a_done()
    runs.start("b", "c")
    runs.apply(runs.complete("b"))
    runs.apply(runs.complete("c"))
    runs.start("d")
    done: dict[str, Any] = {"status": "completed"}
    steps = [{**s.model_dump(mode="json", by_alias=True), **done} for s in runs.run.steps]
    runs.store.update(runs.run_id, {"steps": steps})
    cancelled = runs.store.cancel(runs.run_id, "stop")
    with pytest.raises(InvalidInputError, match="succeeded: name the step"):
        carried_steps(cancelled)
    assert sorted(carried_steps(cancelled, "c")) == ["a", "b"]
