"""replay_run: a run's log-determined state rebuilt from its events, one event kind at a time.

The property: a run of any step graph (linear, or explicit with parallel branches, under either
failure policy) driven through the transitions of ``mpstate.celery.transitions`` (committed the
way ``StepLifecycle`` commits them, the reconciler's ``recover_steps`` included) and
``store.cancel``, in any order, equals its replay and has no audit findings after every commit,
on every backend; along the way no step starts before its dependencies are done, no step is
published twice but to run again, and the run's status follows from its steps.
"""

from __future__ import annotations

import uuid
from collections import Counter
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
    StepWaiting,
    audit_run,
)
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
from mpstate.graph import active_steps, dependencies, first_open_index, ready_steps
from mpstate.models import DONE_STEP_STATUSES, FailurePolicy
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

#: Picks one of the candidate steps of a rule (wrapped to how many there are).
PICK = st.integers(0, 7)
ARTIFACTS = st.lists(st.sampled_from(["img-1", "img-2", "vid-1", "aud-1"]), max_size=3)
COST = st.floats(min_value=0, max_value=50, allow_nan=False, allow_infinity=False)
CODE = st.sampled_from(["timeout", "E_PROVIDER"])
MAX_RETRIES = st.none() | st.integers(0, 3)
#: True seven times in eight, so that runs live long enough to do something.
MOSTLY_TRUE = st.integers(0, 7).map(bool)
#: Which job a provider's callback names: the one the step awaits, one it awaited before, one
#: another step awaits, or one nobody awaited.
WHICH_JOB = st.sampled_from(["awaited", "awaited", "awaited", "earlier", "other-step", "unknown"])

#: Which steps a provider calls back for: one waiting now, mostly, or any that awaited a job.
AWAITED = st.sampled_from(["waiting", "waiting", "waiting", "any"])

#: The transitions that may publish a step that was published before: to run it again.
REPUBLISHING = frozenset({"recover", "provider-fails"})


@st.composite
def step_graphs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """2 to 5 steps: linear (no step names ``depends_on``), or each step depending on any of
    the steps before it (so the graph is acyclic), with a retry limit now and then."""
    count = draw(st.integers(2, 5))
    step_ids = [f"s{i}" for i in range(count)]
    linear = draw(st.integers(0, 3)) == 0
    steps: list[dict[str, Any]] = []
    for index, step_id in enumerate(step_ids):
        step: dict[str, Any] = {"stepId": step_id, "operation": "render"}
        if not linear:
            earlier = step_ids[:index]
            step["dependsOn"] = (
                draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
            )
        retries = draw(st.none() | st.integers(0, 2))
        if retries is not None:
            step["maxRetries"] = retries
        steps.append(step)
    return steps


def done_before(events: list[PipelineEvent]) -> list[set[str]]:
    """For each event of the log, the steps completed or cached before it."""
    done: set[str] = set()
    seen = []
    for event in events:
        seen.append(set(done))
        if isinstance(event, StepCompleted | StepCached):
            done.add(event.step_id)
    return seen


class RunDrivenThroughTransitions(RuleBasedStateMachine):
    """One run of a random step graph; every rule is one transition (or a cancel) on the stored
    run, on a step the rule picks among those it could really happen to (now and then another,
    to see it refused)."""

    def __init__(self, store: PipelineStateStore) -> None:
        super().__init__()
        self.store = store
        self.run_id = f"run-{uuid.uuid4().hex[:12]}"
        self.jobs = 0
        self.operations = 0
        #: The run as last committed (only this machine writes it).
        self.run = PipelineRun(run_id=self.run_id, pipeline_id="p")
        #: How many times each step was published, over the run's life.
        self.published: Counter[str] = Counter()

    # -- helpers --------------------------------------------------------------------------------

    def read(self) -> PipelineRun:
        self.run = self.store.require(self.run_id, include_events=False)
        return self.run

    def commit(self, kind: str, decide: Decide) -> tuple[PipelineRun, Transition | None]:
        """Decide on the stored run and commit, as ``StepLifecycle`` does; then check what the
        transition publishes and revokes against the committed run."""
        self.operations += 1
        before = self.read()
        transition = decide(before)
        if transition is None:
            return before, None
        after = self.run = self.store.commit(
            self.run_id,
            transition.patch or None,
            transition.events,
            expected_version=before.version,
        ).run
        ready = {step.step_id for step in ready_steps(after.steps)}
        for step in transition.enqueue:
            stored = after.step(step.step_id)
            assert step.task_id is not None and stored.task_id == step.task_id, step.step_id
            if kind in REPUBLISHING:
                assert stored.status is StepStatus.RUNNING or step.step_id in ready, step.step_id
            else:
                assert step.step_id in ready, f"{kind} published {step.step_id}, not ready"
                assert self.published[step.step_id] == 0, f"{kind} published {step.step_id} again"
            self.published[step.step_id] += 1
        if transition.enqueue:
            assert after.status is PipelineRunStatus.RUNNING, "published steps of a stopped run"
        if transition.revoke:
            assert after.status is PipelineRunStatus.FAILED
            revocable = {s.task_id for s in after.steps if s.status is StepStatus.RUNNING}
            revocable |= {s.task_id for s in ready_steps(after.steps)}
            assert set(transition.revoke) <= revocable
        if after.status is PipelineRunStatus.FAILED and not before.is_terminal:
            # Whatever else runs or is queued is revoked: a failed run needs none of it.
            in_flight = {s.task_id for s in after.steps if s.status is StepStatus.RUNNING}
            in_flight |= {s.task_id for s in ready_steps(after.steps) if s.task_id}
            assert in_flight <= set(transition.revoke)
        failed_for_good = [
            e for e in transition.events if isinstance(e, StepFailed) and not e.retryable
        ]
        if failed_for_good and before.failure_policy is FailurePolicy.FAIL_FAST:
            assert after.status is PipelineRunStatus.FAILED
        return before, transition

    def steps_with(self, *statuses: StepStatus) -> list[str]:
        return [s.step_id for s in self.run.steps if s.status in statuses]

    def pick(self, index: int, among: str) -> str:
        """A step of the run, by ``among``: ``ready`` (pending with its dependencies done),
        ``running``, ``started`` (a task has begun it once: any status since), or ``any``; any
        step when none is."""
        steps = self.run.steps
        candidates = {
            "ready": [s.step_id for s in ready_steps(steps)],
            "running": self.steps_with(StepStatus.RUNNING),
            "started": [s.step_id for s in steps if s.attempts > 0],
        }.get(among) or [s.step_id for s in steps]
        return candidates[index % len(candidates)]

    def pick_awaited(self, index: int, among: str) -> str:
        """A step that awaited a provider job: one waiting for it now, by ``among``, or any."""
        waiting = self.steps_with(StepStatus.WAITING)
        candidates = (waiting if among == "waiting" else []) or [
            s.step_id for s in self.run.steps if s.external_jobs
        ]
        return candidates[index % len(candidates)]

    def job_for(self, run: PipelineRun, step_id: str, which: str) -> tuple[str, str, bool]:
        """(provider, job id, whether the step waits for exactly it) for ``which`` job."""
        step = run.step(step_id)
        if which == "earlier" and len(step.external_jobs) > 1:
            job = step.external_jobs[0]
        elif which == "other-step":
            others = [j for s in run.steps if s.step_id != step_id for j in s.external_jobs]
            if not others:
                return "runway", "job-nobody", False
            job = others[-1]
        elif which == "unknown":
            return step.external_jobs[-1].provider, "job-nobody", False
        else:
            job = step.external_jobs[-1]
        awaited = step.awaited_job
        waits = (
            not run.is_terminal
            and awaited is not None
            and (awaited.provider, awaited.job_id) == (job.provider, job.job_id)
        )
        return job.provider, job.job_id, waits

    def live(self) -> bool:
        return self.run.status in {PipelineRunStatus.RUNNING, PipelineRunStatus.SUSPENDED}

    def has_running(self) -> bool:
        return not self.run.is_terminal and bool(self.steps_with(StepStatus.RUNNING))

    def has_jobs(self) -> bool:
        return not self.run.is_terminal and any(s.external_jobs for s in self.run.steps)

    # -- rules ----------------------------------------------------------------------------------

    @initialize(
        steps=step_graphs(),
        policy=st.sampled_from(list(FailurePolicy)),
        start=MOSTLY_TRUE,
    )
    def create_run(self, steps: list[dict[str, Any]], policy: FailurePolicy, start: bool) -> None:
        self.store.create(
            {"runId": self.run_id, "pipelineId": "p", "steps": steps, "failurePolicy": policy}
        )
        self.read()
        if start:
            self.run_starts()

    @precondition(lambda self: self.run.status is PipelineRunStatus.PENDING)
    @rule()
    def run_starts(self) -> None:
        before, transition = self.commit("start-run", start_run)
        assert (transition is not None) == (before.status is PipelineRunStatus.PENDING)
        if transition is not None:
            roots = [s for s, needs in dependencies(before.steps).items() if not needs]
            assert [s.step_id for s in transition.enqueue] == roots
            assert [e.kind for e in transition.events] == ["run-started"]

    @precondition(lambda self: self.live())
    @rule(
        pick=PICK,
        among=st.sampled_from(["ready", "ready", "ready", "running", "any"]),
        attempt=st.sampled_from(["next", "next", "same", "older", "newer"]),
        task=st.sampled_from(["recorded", "recorded", "other"]),
    )
    def task_starts(self, pick: int, among: str, attempt: str, task: str) -> None:
        step_id = self.pick(pick, among)
        step = self.run.step(step_id)
        number = {
            "next": step.attempts,
            "same": max(step.attempts - 1, 0),
            "older": max(step.attempts - 2, 0),
            "newer": step.attempts + 1,
        }[attempt]
        task_id = step.task_id if task == "recorded" and step.task_id else "task-other"
        before, transition = self.commit(
            "start",
            lambda run: start_step(run, step_id, attempt=number, task_id=task_id, meta={}),
        )
        if transition is not None:
            needs = dependencies(before.steps)[step_id]
            assert all(before.step(n).status in DONE_STEP_STATUSES for n in needs)
            assert before.step(step_id).status in {StepStatus.PENDING, StepStatus.RUNNING}
        elif before.status is PipelineRunStatus.RUNNING and step_id in {
            s.step_id for s in ready_steps(before.steps)
        }:
            # A ready step's first message starts it, whatever task id it came under.
            raise AssertionError(f"the start of ready step {step_id} was refused")

    @precondition(lambda self: self.has_running())
    @rule(
        pick=PICK,
        among=st.sampled_from(["running", "running", "running", "started"]),
        artifact_ids=ARTIFACTS,
        cost_usd=COST,
        cached=st.integers(0, 3).map(lambda n: n == 0),
    )
    def task_returns(
        self, pick: int, among: str, artifact_ids: list[str], cost_usd: float, cached: bool
    ) -> None:
        step_id = self.pick(pick, among)
        before, transition = self.commit(
            "complete",
            lambda run: complete_step(
                run,
                step_id,
                artifact_ids=artifact_ids,
                cost_usd=0.0 if cached else cost_usd,
                cache_key="ck-1" if cached else None,
                meta={},
            ),
        )
        status = before.step(step_id).status
        assert (transition is not None) == (status is StepStatus.RUNNING), (step_id, status)

    @precondition(lambda self: self.has_running())
    @rule(
        pick=PICK,
        among=st.sampled_from(["running", "running", "running", "started"]),
        code=CODE,
        retryable=MOSTLY_TRUE,
    )
    def task_fails(self, pick: int, among: str, code: str, retryable: bool) -> None:
        step_id = self.pick(pick, among)
        _, transition = self.commit(
            "fail",
            lambda run: fail_step(
                run, step_id, code=code, message="it broke", retryable=retryable, meta={}
            ),
        )
        if transition is not None:
            assert transition.enqueue == ()  # Celery's own retry runs it again

    @precondition(lambda self: self.has_running() and self.operations % 2 == 0)
    @rule(pick=PICK, among=st.sampled_from(["running", "started"]), passed=MOSTLY_TRUE)
    def gate_decides(self, pick: int, among: str, passed: bool) -> None:
        step_id = self.pick(pick, among)
        self.commit(
            "gate",
            lambda run: gate_step(
                run, step_id, gate_type="quality", verdict="v", passed=passed, meta={}
            ),
        )

    @precondition(lambda self: self.has_running())
    @rule(
        pick=PICK,
        among=st.sampled_from(["running", "running", "running", "started"]),
        provider=st.sampled_from(["runway", "replicate"]),
    )
    def task_awaits_a_provider(self, pick: int, among: str, provider: str) -> None:
        step_id = self.pick(pick, among)
        self.jobs += 1
        job_id = f"job-{self.jobs}"
        before, transition = self.commit(
            "suspend",
            lambda run: suspend_step(run, step_id, provider=provider, job_id=job_id, meta={}),
        )
        assert (transition is not None) == (before.step(step_id).status is StepStatus.RUNNING)
        if transition is not None:
            kinds = [e.kind for e in transition.events]
            others_active = [s for s in active_steps(before.steps) if s.step_id != step_id]
            expected = ["step-waiting"] if others_active else ["step-waiting", "run-suspended"]
            assert kinds == expected

    @precondition(lambda self: self.has_jobs())
    @rule(pick=PICK, among=AWAITED, which=WHICH_JOB, artifact_ids=ARTIFACTS, cost_usd=COST)
    def provider_completes(
        self, pick: int, among: str, which: str, artifact_ids: list[str], cost_usd: float
    ) -> None:
        step_id = self.pick_awaited(pick, among)
        provider, job_id, waits = self.job_for(self.run, step_id, which)
        before, transition = self.commit(
            "resume",
            lambda run: resume_step(
                run,
                step_id,
                provider=provider,
                job_id=job_id,
                artifact_ids=artifact_ids,
                cost_usd=cost_usd,
                meta={},
            ),
        )
        assert (transition is not None) == waits, (step_id, which)
        if transition is not None:
            kinds = [e.kind for e in transition.events]
            if before.status is PipelineRunStatus.SUSPENDED:
                assert kinds[:2] == ["run-resumed", "step-completed"]
            else:
                assert "run-resumed" not in kinds

    @precondition(lambda self: self.has_jobs())
    @rule(
        pick=PICK,
        among=AWAITED,
        which=WHICH_JOB,
        code=CODE,
        retryable=MOSTLY_TRUE,
        default_max_retries=MAX_RETRIES,
    )
    def provider_fails(
        self,
        pick: int,
        among: str,
        which: str,
        code: str,
        retryable: bool,
        default_max_retries: int | None,
    ) -> None:
        step_id = self.pick_awaited(pick, among)
        provider, job_id, waits = self.job_for(self.run, step_id, which)
        _, transition = self.commit(
            "provider-fails",
            lambda run: fail_awaiting_step(
                run,
                step_id,
                provider=provider,
                job_id=job_id,
                code=code,
                message="provider said no",
                retryable=retryable,
                default_max_retries=default_max_retries,
                meta={},
            ),
        )
        assert (transition is not None) == waits, (step_id, which)
        if transition is not None:
            (failed,) = [e for e in transition.events if isinstance(e, StepFailed)]
            expected = [step_id] if failed.retryable else []
            assert [s.step_id for s in transition.enqueue] == expected

    # Every third operation only: a recovery that finds nothing stalled is a no-op, but one that
    # fails a step ends most runs, and the other rules have more to say.
    @precondition(
        lambda self: self.run.status is PipelineRunStatus.RUNNING and self.operations % 3 == 0
    )
    @rule(
        picks=st.lists(PICK, min_size=1, max_size=3),
        requeue=MOSTLY_TRUE,
        default_max_retries=MAX_RETRIES,
        stale=st.integers(0, 5).map(lambda n: n == 0),
    )
    def reconciler_recovers(
        self, picks: list[int], requeue: bool, default_max_retries: int | None, stale: bool
    ) -> None:
        # What the reconciler's scan looks at: running and ready steps; and a waiting one, which
        # is never stalled (it waits for a callback), to see it left alone.
        active = {s.step_id for s in active_steps(self.run.steps)}
        candidates = [*active, *self.steps_with(StepStatus.WAITING)]
        step_ids = list(dict.fromkeys(candidates[p % len(candidates)] for p in picks))
        before, transition = self.commit(
            "recover",
            lambda run: recover_steps(
                run,
                step_ids,
                seen_version=run.version - 1 if stale else run.version,
                requeue=requeue,
                retry_limits=dict.fromkeys(step_ids, default_max_retries),
                meta={},
            ),
        )
        repairable = [s for s in step_ids if s in active]
        assert (transition is not None) == (bool(repairable) and not stale)
        if transition is not None:
            repaired = {s.step_id for s in transition.enqueue}
            repaired |= {e.step_id for e in transition.events if isinstance(e, StepFailed)}
            assert repaired == set(repairable) or before.failure_policy is FailurePolicy.FAIL_FAST
            assert repaired <= set(repairable)

    @precondition(lambda self: self.operations >= 12 or self.run.is_terminal)
    @rule(reason=st.sampled_from(["user asked", ""]))
    def run_is_cancelled(self, reason: str) -> None:
        finished = {PipelineRunStatus.COMPLETED, PipelineRunStatus.FAILED}
        try:
            self.store.cancel(self.run_id, reason)
        except InvalidTransitionError:
            assert self.read().status in finished
        else:
            assert self.read().status is PipelineRunStatus.CANCELLED

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def the_run_agrees_with_its_log(self) -> None:
        run = self.store.require(self.run_id)
        assert audit_run(run) == []
        assert log_state(replay_run(run, run.events)) == log_state(run)
        assert run.current_step_index == first_open_index(run.steps)
        needs = dependencies(run.steps)
        for event, done in zip(run.events, done_before(run.events), strict=True):
            if isinstance(event, StepStarted):
                missing = set(needs[event.step_id]) - done
                assert not missing, f"seq {event.seq}: {event.step_id} started before {missing}"

    @invariant()
    def every_ready_step_of_a_live_run_was_published(self) -> None:
        if self.live():
            unpublished = {s.step_id for s in ready_steps(self.run.steps)} - set(self.published)
            assert not unpublished

    @invariant()
    def the_run_status_follows_from_its_steps(self) -> None:
        run = self.run
        steps = run.steps
        active = active_steps(steps)
        waiting = self.steps_with(StepStatus.WAITING)
        failed = self.steps_with(StepStatus.FAILED, StepStatus.GATED)
        fail_fast = run.failure_policy is FailurePolicy.FAIL_FAST
        if run.status is PipelineRunStatus.RUNNING:
            assert active, "running with nothing running or queued"
            assert not run.resumable
            assert not (failed and fail_fast)
        elif run.status is PipelineRunStatus.SUSPENDED:
            assert not active and waiting, "suspended, yet something is active or nothing waits"
            assert run.resumable and run.resume_token
            assert not (failed and fail_fast)
        elif run.status is PipelineRunStatus.COMPLETED:
            assert all(s.status in DONE_STEP_STATUSES for s in steps)
            assert not run.resumable
        elif run.status is PipelineRunStatus.FAILED:
            assert failed
            last = self.store.list_events(self.run_id, since_seq=0)[-1]
            assert isinstance(last, RunFailed)
            if not fail_fast and last.code != "gate-rejected":
                # The other branches ran to their end first.
                assert not active and not waiting


def test_a_run_driven_through_any_transitions_equals_its_replay(
    store: PipelineStateStore,
) -> None:
    run_state_machine_as_test(
        lambda: RunDrivenThroughTransitions(store),
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
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
    run = replayed(started("a"), completed("a"), started("b", attempt=2))

    assert run.status is PipelineRunStatus.RUNNING
    assert run.current_step_index == 1
    assert run.step("b").status is StepStatus.RUNNING
    assert run.step("b").attempts == 3
    assert run.step("a").status is StepStatus.COMPLETED


def test_the_current_step_is_the_first_step_in_definition_order_not_done() -> None:
    # Of parallel steps, one finishing before an earlier one leaves the run's current step on
    # the earlier; a started step is not done, so it does not move it either.
    run = replayed(started("b", attempt=2))
    assert run.current_step_index == 0
    assert run.step("a").status is StepStatus.PENDING

    graph = definition("a", "b", "c")
    run = replay_run(graph, logged(started("a"), started("b"), completed("b", 1.0)))
    assert run.current_step_index == 0
    run = replay_run(graph, logged(started("a"), started("b"), completed("b"), completed("a")))
    assert run.current_step_index == 2


def test_a_step_waiting_for_its_provider_is_waiting_and_the_run_keeps_its_status() -> None:
    waiting = StepWaiting(run_id=RUN, step_id="a", provider="runway", job_id="j1")

    run = replayed(started("a"), waiting)

    assert run.step("a").status is StepStatus.WAITING
    assert run.step("a").attempts == 1
    assert run.status is PipelineRunStatus.RUNNING
    assert run.resumable is False
    assert run.current_step_index == 0

    run = replayed(started("a"), waiting, suspended("tok-2"))
    assert (run.status, run.resume_token, run.resumable) == (
        PipelineRunStatus.SUSPENDED,
        "tok-2",
        True,
    )


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
        StepWaiting(run_id=RUN, step_id="ghost", provider="runway", job_id="j1"),
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
    # The suspension's token died with the cancel: resumable only while a token is live.
    assert replay.resumable is False
    assert run.resumable is False
