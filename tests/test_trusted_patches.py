"""The lifecycle's trusted patches: the same stored run as validation, and user input validated.

``trusted_patch`` skips pydantic's round trip for the patches ``mpstate.celery.transitions``
builds from validated models. These tests drive every kind of transition through two twin runs,
one committed with the trusted patch and one with the same patch as a mapping (which the store
validates), and require the same document from both paths and the same stored runs on every
backend. Generated step results (any JSON, NaN, lone surrogates) must be accepted or refused
alike. And a mapping given to the store is validated whatever it holds, including the patches
the trusted path would take as built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpstate import InvalidInputError, PipelineRun, PipelineStateStore, StepProgress
from mpstate import patches as patches_module
from mpstate.celery.commits import Decide
from mpstate.celery.transitions import (
    Transition,
    await_approval,
    complete_step,
    decide_gate,
    expire_gate,
    fail_awaiting_step,
    fail_step,
    gate_step,
    progress_step,
    recover_steps,
    release_held,
    resume_step,
    start_run,
    start_step,
    suspend_step,
)
from mpstate.definitions import new_run
from mpstate.events import EventMeta
from mpstate.models import GateTimeout, PipelineRunStatus, StepState, StepStatus
from mpstate.patches import trusted_patch, validate_patch

META: EventMeta = {"taskId": "t-1", "worker": "w@host"}


class Twins:
    """Two runs of one definition in one store: ``trusted`` takes each transition as
    ``trusted_patch`` builds it, ``checked`` the same patch as a mapping, validated by the store.
    Every transition is decided on ``trusted``'s run and committed to both."""

    def __init__(
        self, store: PipelineStateStore, steps: list[dict[str, Any]], name: str = "", **run: Any
    ):
        self.store = store
        self.trusted = store.create(new_run("twins", steps, run_id=f"{name}trusted", **run)).run_id
        self.checked = store.create(new_run("twins", steps, run_id=f"{name}checked", **run)).run_id
        #: How many commits validation had to take (budget, re-runs, refused values).
        self.validated = 0

    @property
    def run(self) -> PipelineRun:
        return self.store.require(self.trusted, include_events=False)

    def apply(self, decide: Decide, *, trusted_path: bool = True) -> Transition:
        """Decide, check both paths give one document, commit to both twins (the trusted one with
        ``base``, as the lifecycle does), compare them."""
        run = self.run
        transition = decide(run)
        assert transition is not None
        with mock.patch.object(
            patches_module, "validate_patch", side_effect=validate_patch
        ) as validating:
            built = trusted_patch(transition.patch) if transition.patch else None
        assert validating.called is not trusted_path, validating.call_args_list
        self.validated += validating.called
        if transition.patch:
            assert built is not None
            validated = validate_patch(transition.patch)
            # The JSON text a Redis store writes, encoded once from the models, byte for byte.
            assert built.encoded == validated.encoded
            assert built.document == validated.document
        returned = self.store.commit(
            self.trusted, built, transition.events, expected_version=run.version, base=run
        ).run
        # Built from the run it was decided on and the patch (as the lifecycle commits), not
        # read back: it must be the stored run, field for field.
        assert returned == self.run
        twin = self.store.require(self.checked, include_events=False)
        self.store.commit(
            self.checked,
            transition.patch or None,
            [e.model_copy(update={"run_id": self.checked}) for e in transition.events],
            expected_version=twin.version,
        )
        self.assert_same()
        return transition

    def assert_same(self) -> None:
        """The twins' stored documents and logs differ in nothing but their own ids and times."""
        trusted, checked = (self.store.require(r) for r in (self.trusted, self.checked))
        mine = {"runId", "createdAt", "updatedAt", "events"}
        assert trusted.model_dump(exclude={"run_id", "created_at", "updated_at", "events"}) == (
            checked.model_dump(exclude={"run_id", "created_at", "updated_at", "events"})
        )
        assert set(trusted.to_json_dict()) - mine == set(checked.to_json_dict()) - mine
        # run-created is each twin's own (its time too); the rest are the same events.
        assert [e.model_dump(exclude={"run_id", "at"}) for e in trusted.events] == [
            e.model_dump(exclude={"run_id", "at"}) for e in checked.events
        ]

    def task_id(self, step_id: str) -> str:
        task_id = self.run.step(step_id).task_id
        assert task_id is not None
        return task_id

    def start(self, step_id: str, attempt: int = 0) -> Transition:
        task_id = self.task_id(step_id)
        return self.apply(
            lambda run: start_step(run, step_id, attempt=attempt, task_id=task_id, meta=META)
        )

    def complete(self, step_id: str, **result: Any) -> Transition:
        result.setdefault("artifact_ids", [])
        result.setdefault("cost_usd", 0.0)
        result.setdefault("cache_key", None)
        return self.apply(lambda run: complete_step(run, step_id, meta=META, **result))


def step(step_id: str, *needs: str, **fields: Any) -> dict[str, Any]:
    return {"stepId": step_id, "operation": f"op.{step_id}", "dependsOn": [*needs], **fields}


LINEAR = [{"stepId": f"s{i}", "operation": "op.step"} for i in range(3)]


def test_a_linear_run_with_a_retry_and_a_cache_hit_is_stored_alike(
    store: PipelineStateStore,
) -> None:
    twins = Twins(store, LINEAR, tenant_id="acme")
    twins.apply(start_run)
    twins.start("s0")
    twins.complete("s0", artifact_ids=["a-1"], cost_usd=0.25, outputs={"k": [1, "x", None]})
    twins.start("s1")
    progress = StepProgress(run_id="trusted", step_id="s1", pct=40, cost_usd_accrued=0.1)
    twins.apply(lambda run: progress_step(run, "s1", progress))
    twins.apply(
        lambda run: fail_step(
            run, "s1", code="Timeout", message="slow: \u00e9\u4e2d", retryable=True, meta=META
        )
    )
    twins.start("s1", attempt=1)
    twins.complete("s1", artifact_ids=["b-1"], cache_key="cache:s1")
    twins.start("s2")
    twins.complete("s2", outputs={"deep": {"list": [{"x": 1.5}], "none": None}})

    assert twins.run.status is PipelineRunStatus.COMPLETED
    assert twins.validated == 0


def test_a_final_failure_under_fail_fast_is_stored_alike(store: PipelineStateStore) -> None:
    twins = Twins(store, [step("a"), step("b"), step("c", "a", "b")])
    twins.apply(start_run)
    twins.start("a")
    twins.start("b")
    failed = twins.apply(
        lambda run: fail_step(run, "a", code="Boom", message="no", retryable=False, meta=META)
    )

    assert failed.revoke
    assert twins.run.status is PipelineRunStatus.FAILED


def test_gates_and_approvals_are_stored_alike(store: PipelineStateStore) -> None:
    gate = {"type": "approval", "timeoutS": 60, "onTimeout": "reject"}
    twins = Twins(store, [step("a", gate=gate), step("b", "a"), step("c", "b")])
    twins.apply(start_run)
    twins.start("a")
    twins.complete("a", artifact_ids=["a-1"], cost_usd=1.5, outputs={"n": 1})
    assert twins.run.status is PipelineRunStatus.SUSPENDED
    token = twins.run.step("a").approval.token  # type: ignore[union-attr]
    twins.apply(lambda run: decide_gate(run, token, approved=True, meta={"by": "ana"}))
    twins.start("b")
    twins.apply(
        lambda run: gate_step(run, "b", gate_type="qc", verdict="fine", passed=True, meta=META)
    )
    twins.apply(
        lambda run: await_approval(
            run,
            "b",
            gate_type="review",
            details={"url": "https://x/1"},
            artifact_ids=["b-1"],
            cost_usd=0.5,
            outputs={"o": True},
            timeout_s=30,
            on_timeout=GateTimeout.APPROVE,
            meta=META,
        )
    )
    waiting = twins.run.step("b").approval
    assert waiting is not None and waiting.deadline is not None
    later = waiting.deadline + timedelta(seconds=1)
    twins.apply(lambda run: expire_gate(run, "b", token=waiting.token, now=later, meta=META))
    twins.start("c")
    twins.apply(
        lambda run: gate_step(run, "c", gate_type="qc", verdict="ugly", passed=False, meta=META)
    )

    assert twins.run.status is PipelineRunStatus.FAILED


def test_a_rejected_approval_is_stored_alike(store: PipelineStateStore) -> None:
    twins = Twins(store, [step("a", gate={"type": "approval"})])
    twins.apply(start_run)
    twins.start("a")
    twins.complete("a", artifact_ids=["a-1"])
    token = twins.run.step("a").approval.token  # type: ignore[union-attr]
    twins.apply(lambda run: decide_gate(run, token, approved=False, meta={"by": "bo"}))

    assert twins.run.status is PipelineRunStatus.FAILED


def test_provider_jobs_their_answers_and_recovery_are_stored_alike(
    store: PipelineStateStore,
) -> None:
    twins = Twins(store, [step("a"), step("b")])
    twins.apply(start_run)
    twins.start("a")
    twins.start("b")
    for step_id, job in (("a", "job-a"), ("b", "job-b")):
        twins.apply(
            lambda run, s=step_id, j=job: suspend_step(
                run, s, provider="fal", job_id=j, meta=META, timeout_s=60
            )
        )
    assert twins.run.status is PipelineRunStatus.SUSPENDED
    twins.apply(
        lambda run: fail_awaiting_step(
            run,
            "a",
            provider="fal",
            job_id="job-a",
            code="provider-error",
            message="try again",
            retryable=True,
            default_max_retries=3,
            meta=META,
        )
    )
    twins.apply(
        lambda run: resume_step(
            run,
            "b",
            provider="fal",
            job_id="job-b",
            artifact_ids=["b-1"],
            cost_usd=0.1,
            meta=META,
            outputs={"url": "https://x"},
        )
    )
    twins.start("a", attempt=1)
    lost = twins.task_id("a")
    seen = twins.run.version
    twins.apply(
        lambda run: recover_steps(
            run, ["a"], seen_version=seen, requeue=True, retry_limits={"a": 5}, meta=META
        )
    )

    recovered = twins.run.step("a")
    assert recovered.last_error is not None and recovered.last_error.code == "worker-lost"
    assert recovered.task_id not in (None, lost)


def test_budget_and_re_run_patches_are_stored_alike(store: PipelineStateStore) -> None:
    """``budget`` holds the caller's keys and ``reruns`` ids whose length only validation
    checks: a patch that sets either is validated. A re-run's start is trusted."""
    twins = Twins(
        store,
        [step("a", estimatedCostUsd=0.8), step("b", estimatedCostUsd=0.8)],
        budget={"maxUsd": 1.0},
    )
    twins.apply(start_run)
    twins.start("a")
    twins.complete("a", cost_usd=0.9)
    assert twins.run.status is PipelineRunStatus.SUSPENDED
    token = twins.run.resume_token
    assert token is not None
    twins.apply(
        lambda run: release_held(run, token, budget={"maxUsd": 5.0, "note": "raised"}, meta=META),
        trusted_path=False,
    )
    assert twins.run.step("b").status is StepStatus.PENDING

    twins.apply(
        lambda run: Transition({"reruns": [*run.reruns, "trusted-rerun1"]}, []),
        trusted_path=False,
    )
    assert twins.validated == 2

    carried = StepState(step_id="s0", operation="op.step", artifact_ids=["x"], outputs={"o": 1})
    rerun = Twins(store, LINEAR[:2], name="re-", rerun_of="trusted")
    rerun.apply(lambda run: start_run(run, {"s0": carried}))
    assert rerun.run.step("s0").status is StepStatus.CACHED
    assert rerun.validated == 0


# -- generated step results -------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _running_run() -> PipelineRun:
    run = new_run("gen", LINEAR, run_id="gen")
    run.version = 1
    started = start_run(run)
    assert started is not None
    steps = list(started.patch["steps"])
    return run.model_copy(
        update={"status": PipelineRunStatus.RUNNING, "steps": steps, "version": 2}
    )


def _same_outcome(patch: Mapping[str, Any]) -> None:
    """Both paths give one document, or both refuse the patch with ``InvalidInputError``."""
    try:
        validated = validate_patch(patch)
    except InvalidInputError:
        with pytest.raises(InvalidInputError):
            trusted_patch(patch)
        return
    trusted = trusted_patch(patch)
    assert trusted.encoded == validated.encoded
    assert trusted.document == validated.document


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    artifact_ids=st.lists(st.text(max_size=6), max_size=3),
    cost_usd=st.floats(min_value=0, max_value=1e9),
    outputs=st.dictionaries(st.text(max_size=6), VALUES, max_size=4),
    cached=st.booleans(),
)
def test_any_step_result_is_accepted_or_refused_alike(
    artifact_ids: list[str], cost_usd: float, outputs: dict[str, Any], cached: bool
) -> None:
    transition = complete_step(
        _running_run(),
        "s0",
        artifact_ids=artifact_ids,
        cost_usd=0.0 if cached else cost_usd,
        cache_key="k" if cached else None,
        outputs=outputs,
        meta=META,
    )
    assert transition is not None
    _same_outcome(transition.patch)


@settings(max_examples=100)
@given(code=st.text(max_size=10), message=st.text(max_size=20), retryable=st.booleans())
def test_any_failure_is_accepted_or_refused_alike(code: str, message: str, retryable: bool) -> None:
    transition = fail_step(
        _running_run(), "s0", code=code, message=message, retryable=retryable, meta=META
    )
    assert transition is not None
    _same_outcome(transition.patch)


@pytest.mark.parametrize("reason", ["operator said so", "\u00e9t\u00e9 \u4e2d", "\udc80"])
def test_the_stores_own_cancel_patch_is_built_as_validation_builds_it(
    store: PipelineStateStore, reason: str
) -> None:
    """``cancel`` builds its patch with ``trusted_patch``: stored as validation would have it,
    and a reason no backend can store is refused before anything is written."""
    store.create(new_run("c", LINEAR, run_id="c"))
    patch = {"status": PipelineRunStatus.CANCELLED, "error": reason, "resumable": False}
    if reason == "\udc80":
        with pytest.raises(InvalidInputError):
            store.cancel("c", reason)
        assert store.require("c").status is PipelineRunStatus.PENDING
        return
    assert trusted_patch(patch).document == validate_patch(patch).document
    cancelled = store.cancel("c", reason)
    assert cancelled.error == reason
    assert cancelled.completed_at is not None
    assert store.require("c", include_events=False) == cancelled


def test_a_lone_surrogate_or_nan_is_refused_by_both_paths() -> None:
    for bad in ({"error": "\udc80"}, {"costUsd": float("nan")}, {"costUsd": -1.0}):
        with pytest.raises(InvalidInputError):
            validate_patch(bad)
        with pytest.raises(InvalidInputError):
            trusted_patch(bad)


# -- user input -------------------------------------------------------------------------------


def _dumped(**fields: Any) -> dict[str, Any]:
    return StepState(step_id="a", operation="op.a").model_dump(mode="json", by_alias=True) | fields


@pytest.mark.parametrize(
    "patch",
    [
        {"steps": [_dumped(), _dumped()]},
        {"steps": [_dumped(stepId="")]},
        {"steps": [_dumped(attempts=-1)]},
        {"steps": [_dumped(status="sideways")]},
        {"steps": [{"stepId": "a"}]},
        {"status": "sideways"},
    ],
    ids=[
        "duplicate-step-ids",
        "empty-step-id",
        "negative-attempts",
        "unknown-step-status",
        "step-without-operation",
        "unknown-status",
    ],
)
def test_a_mapping_given_to_the_store_is_validated_whatever_it_holds(
    store: PipelineStateStore, patch: dict[str, Any]
) -> None:
    """The store validates every mapping, also one of the fields the trusted path takes as
    built (which is why that path is the lifecycle's alone): refused, and nothing changes."""
    before = store.create(new_run("user", LINEAR, run_id="user"))

    with pytest.raises(InvalidInputError):
        store.commit("user", patch, expected_version=before.version)
    with pytest.raises(InvalidInputError):
        store.update("user", patch)

    after = store.require("user")
    assert after.version == before.version
    assert after.model_dump(exclude={"events"}) == before.model_dump(exclude={"events"})
    assert [event.kind for event in after.events] == ["run-created"]


def test_a_step_list_the_lifecycle_did_not_build_is_validated() -> None:
    """Only a list of ``StepState`` models with distinct ids is taken as built: dumped steps, or
    models with a duplicate id, go through validation, which refuses the duplicate."""
    for duplicated in (
        {"steps": [_dumped(), _dumped()]},
        {"steps": [StepState.model_validate(_dumped())] * 2},
    ):
        with pytest.raises(InvalidInputError, match="duplicate step id"):
            trusted_patch(duplicated)
    single = {"steps": [StepState.model_validate(_dumped())]}
    assert trusted_patch(single).document == validate_patch(single).document


def test_a_valid_patch_cannot_be_built_around_validation(store: PipelineStateStore) -> None:
    # commit() takes a ValidPatch as it is, so only validate_patch and trusted_patch make one.
    with pytest.raises(TypeError, match="validate_patch"):
        patches_module.ValidPatch({"status": "bogus"})
    run = store.create({"runId": "r1", "pipelineId": "p"})
    with pytest.raises(InvalidInputError):
        store.commit("r1", {"status": "bogus"})
    assert store.require("r1", include_events=False).version == run.version


@pytest.mark.parametrize(
    "base",
    [
        pytest.param(lambda run: run.model_copy(update={"run_id": "other"}), id="another-run"),
        pytest.param(lambda run: run.model_copy(update={"version": 7}), id="another-version"),
        pytest.param(lambda run: run.to_json_dict(), id="not-a-run"),
    ],
)
def test_a_base_that_is_not_the_run_the_commit_expects_is_refused_and_nothing_is_written(
    store: PipelineStateStore, base: Callable[[PipelineRun], Any]
) -> None:
    run = store.create({"runId": "r1", "pipelineId": "p"})
    with pytest.raises(InvalidInputError, match="base"):
        store.commit("r1", {"costUsd": 1.0}, expected_version=run.version, base=base(run))
    with pytest.raises(InvalidInputError, match="base"):
        store.commit("r1", {"costUsd": 1.0}, base=run)  # no expected_version to guard it
    assert store.require("r1", include_events=False) == run
