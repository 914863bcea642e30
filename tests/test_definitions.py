"""mpstate.definitions: a new run from a pipeline definition, checked as a graph and hashed."""

from __future__ import annotations

from hashlib import sha256

import pytest

from mpstate import InvalidInputError, InvalidPipelineError
from mpstate.definitions import definition_hash, fresh_step, new_run
from mpstate.models import (
    ExternalJob,
    FailurePolicy,
    PipelineRunStatus,
    StepError,
    StepState,
    StepStatus,
)


def short_sha(text: str) -> str:
    return sha256(text.encode()).hexdigest()[:16]


# -- the graph is checked before a run exists -----------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message", "step_ids"),
    [
        (
            [{"stepId": "a", "operation": "x"}, {"stepId": "a", "operation": "y"}],
            "duplicate step ids: a",
            ("a",),
        ),
        (
            [{"stepId": "a", "operation": "x", "dependsOn": ["ghost"]}],
            "step a depends on unknown steps: ghost",
            ("a", "ghost"),
        ),
        (
            [{"stepId": "a", "operation": "x", "dependsOn": ["a"]}],
            "step a depends on itself",
            ("a",),
        ),
        (
            [
                {"stepId": "a", "operation": "x", "dependsOn": ["b"]},
                {"stepId": "b", "operation": "y", "dependsOn": ["a"]},
            ],
            "steps form a cycle: a -> b -> a",
            ("a", "b"),
        ),
    ],
    ids=["duplicate", "unknown", "self", "cycle"],
)
def test_a_run_of_a_bad_graph_is_refused_naming_its_steps(
    steps: list[dict[str, object]], message: str, step_ids: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidPipelineError) as info:
        new_run("p", steps)
    assert str(info.value) == message
    assert info.value.step_ids == step_ids


def test_a_run_of_no_steps_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="at least one step"):
        new_run("p", [])


@pytest.mark.parametrize("steps", ["ab", b"ab", None, 3])
def test_steps_that_are_not_a_sequence_of_steps_are_refused(steps: object) -> None:
    with pytest.raises(InvalidInputError):
        new_run("p", steps)  # type: ignore[arg-type]


def test_a_step_with_a_bad_field_is_refused_as_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="invalid run"):
        new_run("p", [{"stepId": "a", "operation": "x", "maxRetries": -1}])


def test_an_unknown_failure_policy_is_refused_as_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="invalid run"):
        new_run("p", [{"stepId": "a", "operation": "x"}], failure_policy="keep-going")


# -- the run built --------------------------------------------------------------------------------


def test_a_new_run_is_pending_with_its_steps_defaults_and_policy() -> None:
    run = new_run(
        "p",
        [
            {"stepId": "a", "operation": "x", "inputs": {"size": 2}},
            StepState(step_id="b", operation="y", depends_on=["a"]),
        ],
        inputs={"size": 1, "seed": 7},
        run_id="r1",
        tenant_id="t1",
        idempotency_key="k1",
        budget={"maxUsd": 3},
        failure_policy="finish-branches",
        rerun_of="r0",
    )
    assert run.status is PipelineRunStatus.PENDING
    assert (run.run_id, run.pipeline_id, run.tenant_id, run.idempotency_key) == (
        "r1",
        "p",
        "t1",
        "k1",
    )
    assert run.failure_policy is FailurePolicy.FINISH_BRANCHES
    assert run.rerun_of == "r0"
    assert run.budget == {"maxUsd": 3}
    assert run.step("a").inputs == {"size": 2, "seed": 7}  # the step's own inputs win
    assert run.step("b").inputs == {"size": 1, "seed": 7}
    assert run.step("b").depends_on == ["a"]
    assert run.pipeline_def_hash == definition_hash(run.steps)


def test_a_new_run_without_an_id_gets_a_fresh_one_and_fails_fast() -> None:
    steps = [{"stepId": "a", "operation": "x"}]
    one, other = new_run("p", steps), new_run("p", steps)
    assert one.run_id != other.run_id
    assert one.failure_policy is FailurePolicy.FAIL_FAST


# -- definition_hash ------------------------------------------------------------------------------


def test_a_linear_run_hashes_its_step_ids_and_operations_as_before_graphs_existed() -> None:
    run = new_run("p", [{"stepId": "a", "operation": "x"}, {"stepId": "b", "operation": "y"}])
    assert run.pipeline_def_hash == short_sha("a\tx\nb\ty")


def test_an_explicit_graph_hashes_each_steps_dependencies_too() -> None:
    run = new_run(
        "p",
        [
            {"stepId": "a", "operation": "x", "dependsOn": []},
            {"stepId": "b", "operation": "y", "dependsOn": ["a"]},
            {"stepId": "c", "operation": "z", "dependsOn": ["a", "b"]},
        ],
    )
    assert run.pipeline_def_hash == short_sha("a\tx\t\nb\ty\ta\nc\tz\ta,b")


def test_the_same_steps_as_a_linear_run_and_as_a_parallel_graph_hash_differently() -> None:
    linear = [StepState(step_id="a", operation="x"), StepState(step_id="b", operation="y")]
    parallel = [s.model_copy(update={"depends_on": []}) for s in linear]
    chained = [linear[0].model_copy(update={"depends_on": []}), *linear[1:]]
    chained[1] = chained[1].model_copy(update={"depends_on": ["a"]})
    hashes = {definition_hash(linear), definition_hash(parallel), definition_hash(chained)}
    assert len(hashes) == 3


def test_the_hash_ignores_inputs_and_state() -> None:
    plain = [StepState(step_id="a", operation="x")]
    busy = [
        StepState(
            step_id="a",
            operation="x",
            inputs={"k": 1},
            status=StepStatus.COMPLETED,
            attempts=2,
            cost_usd=1.0,
        )
    ]
    assert definition_hash(plain) == definition_hash(busy) == short_sha("a\tx")


# -- fresh_step -----------------------------------------------------------------------------------


def test_a_fresh_step_keeps_the_definition_and_drops_what_a_run_did_to_it() -> None:
    used = StepState(
        step_id="b",
        operation="y",
        inputs={"k": 1},
        max_retries=2,
        depends_on=["a"],
        status=StepStatus.FAILED,
        attempts=3,
        artifact_ids=["x"],
        cost_usd=1.5,
        error="broke",
        task_id="t-9",
        cache_key="ck",
        last_error=StepError(code="E"),
        outputs={"o": 1},
        external_jobs=[ExternalJob(provider="vid", job_id="j1")],
    )
    fresh = fresh_step(used)
    assert fresh == StepState(
        step_id="b", operation="y", inputs={"k": 1}, max_retries=2, depends_on=["a"]
    )
    fresh.inputs["k"] = 2
    fresh.depends_on = ["z"]
    assert used.inputs == {"k": 1}  # copies, not the original's lists
    assert used.depends_on == ["a"]


def test_a_fresh_step_of_a_linear_run_stays_linear() -> None:
    assert fresh_step(StepState(step_id="a", operation="x")).depends_on is None
