"""mpstate.graph: a run's steps as a graph (pure functions, no store).

A run is linear unless a step names ``depends_on``; then the graph is explicit. A step is done
when completed or cached, ready when pending with every dependency done.
"""

from __future__ import annotations

import pytest

from mpstate import InvalidInputError, InvalidPipelineError
from mpstate.graph import (
    active_steps,
    dependencies,
    dependents,
    first_open_index,
    is_explicit,
    newly_ready,
    ready_steps,
    upstream,
    validate_graph,
)
from mpstate.models import StepState, StepStatus


def step(
    step_id: str, *needs: str, status: StepStatus = StepStatus.PENDING, explicit: bool = True
) -> StepState:
    return StepState(
        step_id=step_id,
        operation="render",
        status=status,
        depends_on=list(needs) if explicit else None,
    )


def linear(*step_ids: str, **statuses: StepStatus) -> list[StepState]:
    return [step(s, status=statuses.get(s, StepStatus.PENDING), explicit=False) for s in step_ids]


def diamond(**statuses: StepStatus) -> list[StepState]:
    """a -> (b, c) -> d, with the given statuses (pending otherwise)."""
    needs = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    return [step(s, *n, status=statuses.get(s, StepStatus.PENDING)) for s, n in needs.items()]


def ids(steps: list[StepState]) -> list[str]:
    return [s.step_id for s in steps]


def with_status(steps: list[StepState], **statuses: StepStatus) -> list[StepState]:
    return [s.model_copy(update={"status": statuses.get(s.step_id, s.status)}) for s in steps]


# -- linear vs explicit ---------------------------------------------------------------------------


def test_a_run_whose_steps_name_no_dependencies_is_linear_each_waiting_for_the_one_before() -> None:
    steps = linear("a", "b", "c")
    assert not is_explicit(steps)
    assert dependencies(steps) == {"a": (), "b": ("a",), "c": ("b",)}


def test_once_any_step_names_dependencies_a_step_naming_none_starts_at_once() -> None:
    steps = [step("a", explicit=False), step("b", explicit=False), step("c", "a")]
    assert is_explicit(steps)
    assert dependencies(steps) == {"a": (), "b": (), "c": ("a",)}
    assert ids(ready_steps(steps)) == ["a", "b"]


def test_an_empty_dependency_list_makes_the_graph_explicit() -> None:
    steps = [step("a"), step("b", explicit=False)]
    assert is_explicit(steps)
    assert dependencies(steps) == {"a": (), "b": ()}


# -- validate_graph -------------------------------------------------------------------------------


def test_a_sound_graph_is_accepted() -> None:
    validate_graph(diamond())
    validate_graph(linear("a", "b", "c"))
    validate_graph([step("only")])


def test_duplicate_step_ids_are_refused_naming_them() -> None:
    steps = [step("a"), step("b", "a"), step("a"), step("c"), step("c")]
    with pytest.raises(InvalidPipelineError, match="duplicate step ids: a, c") as info:
        validate_graph(steps)
    assert info.value.step_ids == ("a", "c")
    assert isinstance(info.value, InvalidInputError)


def test_a_dependency_on_an_unknown_step_is_refused_naming_both() -> None:
    with pytest.raises(InvalidPipelineError, match="step b depends on unknown steps: x, y") as info:
        validate_graph([step("a"), step("b", "a", "x", "y")])
    assert info.value.step_ids == ("b", "x", "y")


def test_a_step_depending_on_itself_is_refused() -> None:
    with pytest.raises(InvalidPipelineError, match="step b depends on itself") as info:
        validate_graph([step("a"), step("b", "a", "b")])
    assert info.value.step_ids == ("b",)


def test_a_dependency_named_twice_is_refused() -> None:
    with pytest.raises(InvalidPipelineError, match="step b names a dependency twice") as info:
        validate_graph([step("a"), step("b", "a", "a")])
    assert info.value.step_ids == ("b",)


def test_a_cycle_is_refused_naming_its_steps_in_order() -> None:
    steps = [step("a"), step("b", "a", "d"), step("c", "b"), step("d", "c"), step("e", "d")]
    with pytest.raises(InvalidPipelineError) as info:
        validate_graph(steps)
    assert str(info.value) == "steps form a cycle: b -> d -> c -> b"
    assert info.value.step_ids == ("b", "d", "c")
    assert "a" not in info.value.step_ids and "e" not in info.value.step_ids


def test_a_cycle_of_two_steps_is_refused() -> None:
    with pytest.raises(InvalidPipelineError, match="steps form a cycle: a -> b -> a") as info:
        validate_graph([step("a", "b"), step("b", "a")])
    assert set(info.value.step_ids) == {"a", "b"}


def test_a_cycle_reached_only_after_a_finished_branch_is_found() -> None:
    # The search finishes a's branch (x) before it meets the cycle through c and d.
    steps = [step("x"), step("a", "x", "c"), step("c", "d"), step("d", "c")]
    with pytest.raises(InvalidPipelineError, match="cycle") as info:
        validate_graph(steps)
    assert set(info.value.step_ids) == {"c", "d"}


def test_a_long_acyclic_chain_is_accepted_without_recursion() -> None:
    steps = [step("s0"), *(step(f"s{i}", f"s{i - 1}") for i in range(1, 3000))]
    validate_graph(steps)


def test_a_shared_dependency_is_not_a_cycle() -> None:
    # d reaches a twice (through b and through c): visited, but not on the current path.
    validate_graph(diamond())
    validate_graph([step("a"), step("b", "a"), step("c", "a", "b")])


# -- ready_steps / newly_ready / active_steps -----------------------------------------------------


def test_only_the_first_step_of_a_new_linear_run_is_ready() -> None:
    assert ids(ready_steps(linear("a", "b", "c"))) == ["a"]


def test_the_next_linear_step_is_ready_once_the_one_before_is_done() -> None:
    steps = linear("a", "b", "c", a=StepStatus.COMPLETED)
    assert ids(ready_steps(steps)) == ["b"]
    steps = linear("a", "b", "c", a=StepStatus.COMPLETED, b=StepStatus.CACHED)
    assert ids(ready_steps(steps)) == ["c"]


@pytest.mark.parametrize(
    "status",
    [StepStatus.RUNNING, StepStatus.WAITING, StepStatus.FAILED, StepStatus.GATED],
)
def test_a_step_not_done_satisfies_no_dependency(status: StepStatus) -> None:
    assert ids(ready_steps(diamond(a=status))) == []


def test_a_diamond_becomes_ready_step_by_step_in_definition_order() -> None:
    assert ids(ready_steps(diamond())) == ["a"]
    assert ids(ready_steps(diamond(a=StepStatus.COMPLETED))) == ["b", "c"]
    half = diamond(a=StepStatus.COMPLETED, b=StepStatus.COMPLETED)
    assert ids(ready_steps(half)) == ["c"]
    both = diamond(a=StepStatus.COMPLETED, b=StepStatus.COMPLETED, c=StepStatus.CACHED)
    assert ids(ready_steps(both)) == ["d"]


def test_a_step_that_is_not_pending_is_not_ready() -> None:
    steps = diamond(a=StepStatus.COMPLETED, b=StepStatus.RUNNING, c=StepStatus.WAITING)
    assert ids(ready_steps(steps)) == []


def test_newly_ready_names_only_what_the_change_made_ready() -> None:
    before = diamond(a=StepStatus.RUNNING)
    after = with_status(before, a=StepStatus.COMPLETED)
    assert ids(newly_ready(before, after)) == ["b", "c"]

    # b finishing makes nothing ready; c, already ready before, is not ready anew.
    started = with_status(after, b=StepStatus.RUNNING)
    assert ids(newly_ready(started, with_status(started, b=StepStatus.COMPLETED))) == []

    # the second of d's dependencies finishing makes d ready, once.
    last = with_status(after, b=StepStatus.COMPLETED, c=StepStatus.RUNNING)
    done = with_status(last, c=StepStatus.COMPLETED)
    assert ids(newly_ready(last, done)) == ["d"]
    assert ids(newly_ready(done, done)) == []


def test_newly_ready_from_nothing_names_every_ready_step() -> None:
    steps = [step("a"), step("b"), step("c", "a")]
    assert ids(newly_ready([], steps)) == ["a", "b"]


def test_active_steps_are_the_running_steps_and_the_ready_ones() -> None:
    steps = diamond(a=StepStatus.COMPLETED, b=StepStatus.RUNNING)
    assert ids(active_steps(steps)) == ["b", "c"]


def test_waiting_failed_and_done_steps_are_not_active() -> None:
    steps = diamond(a=StepStatus.COMPLETED, b=StepStatus.WAITING, c=StepStatus.FAILED)
    assert active_steps(steps) == []
    assert active_steps(with_status(steps, c=StepStatus.GATED)) == []
    assert active_steps(diamond(**dict.fromkeys("abcd", StepStatus.COMPLETED))) == []


# -- first_open_index -----------------------------------------------------------------------------


def test_the_first_open_index_is_the_first_step_in_definition_order_not_done() -> None:
    assert first_open_index(diamond()) == 0
    assert first_open_index(diamond(a=StepStatus.COMPLETED, c=StepStatus.COMPLETED)) == 1
    assert first_open_index(diamond(a=StepStatus.CACHED, b=StepStatus.COMPLETED)) == 2


@pytest.mark.parametrize(
    "status", [StepStatus.RUNNING, StepStatus.WAITING, StepStatus.FAILED, StepStatus.GATED]
)
def test_a_step_that_is_not_done_keeps_the_first_open_index_on_it(status: StepStatus) -> None:
    assert first_open_index(diamond(a=StepStatus.COMPLETED, b=status)) == 1


def test_the_first_open_index_of_a_finished_run_is_its_step_count() -> None:
    assert first_open_index(diamond(**dict.fromkeys("abcd", StepStatus.COMPLETED))) == 4
    assert first_open_index([]) == 0


# -- upstream / dependents ------------------------------------------------------------------------


def test_upstream_is_every_step_waited_for_directly_or_not_in_definition_order() -> None:
    steps = [*diamond(), step("e", "d"), step("f")]
    assert ids(upstream(steps, "d")) == ["a", "b", "c"]
    assert ids(upstream(steps, "e")) == ["a", "b", "c", "d"]
    assert ids(upstream(steps, "b")) == ["a"]
    assert upstream(steps, "a") == []
    assert upstream(steps, "f") == []


def test_upstream_of_a_linear_step_is_every_step_before_it() -> None:
    steps = linear("a", "b", "c", "d")
    assert ids(upstream(steps, "c")) == ["a", "b"]


def test_dependents_are_every_step_waiting_directly_or_not_in_definition_order() -> None:
    steps = [*diamond(), step("e", "d"), step("f")]
    assert ids(dependents(steps, "a")) == ["b", "c", "d", "e"]
    assert ids(dependents(steps, "b")) == ["d", "e"]
    assert ids(dependents(steps, "e")) == []
    assert dependents(steps, "f") == []


def test_dependents_of_a_linear_step_are_every_step_after_it() -> None:
    assert ids(dependents(linear("a", "b", "c", "d"), "b")) == ["c", "d"]


def test_a_step_is_never_its_own_upstream_or_dependent() -> None:
    steps = diamond()
    for s in ids(steps):
        assert s not in ids(upstream(steps, s))
        assert s not in ids(dependents(steps, s))
