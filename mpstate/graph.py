"""A run's steps as a graph: which step waits for which, what is ready, and whether it is sound.

A run is linear unless one of its steps names ``depends_on``: then each step waits for the step
before it, exactly as runs did before graphs existed. Once any step names ``depends_on`` the graph
is explicit, and a step that names none starts at once. Every other module asks this one, so a
linear run is only the simplest graph, never a second code path.

A step is *done* when it completed or was cached; it is *ready* when it is pending and every step
it depends on is done. Pure functions, no I/O: the transitions decide with them and the reducer
replays with them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

from mpstate.errors import InvalidPipelineError
from mpstate.models import DONE_STEP_STATUSES, StepState, StepStatus

__all__ = [
    "active_steps",
    "dependencies",
    "dependents",
    "first_open_index",
    "is_explicit",
    "newly_ready",
    "ready_steps",
    "upstream",
    "validate_graph",
]

#: A step that is executing or queued to execute: the run has work in flight.
_ACTIVE = frozenset({StepStatus.RUNNING})


def is_explicit(steps: Sequence[StepState]) -> bool:
    """Whether any step names its dependencies (otherwise the run is linear)."""
    return any(step.depends_on is not None for step in steps)


def dependencies(steps: Sequence[StepState]) -> dict[str, tuple[str, ...]]:
    """Each step's id mapped to the ids of the steps it waits for."""
    if not is_explicit(steps):
        return {
            step.step_id: (() if index == 0 else (steps[index - 1].step_id,))
            for index, step in enumerate(steps)
        }
    return {step.step_id: tuple(step.depends_on or ()) for step in steps}


def validate_graph(steps: Sequence[StepState]) -> None:
    """Refuse duplicate ids, unknown or self dependencies, and cycles, naming the steps.

    Raises ``InvalidPipelineError`` (an ``InvalidInputError``); checked before a run is created,
    so a bad graph never becomes a run.
    """
    counts = Counter(step.step_id for step in steps)
    duplicates = sorted(step_id for step_id, count in counts.items() if count > 1)
    if duplicates:
        raise InvalidPipelineError(
            f"duplicate step ids: {', '.join(duplicates)}", step_ids=tuple(duplicates)
        )
    graph = dependencies(steps)
    for step_id, needs in graph.items():
        if step_id in needs:
            raise InvalidPipelineError(f"step {step_id} depends on itself", step_ids=(step_id,))
        unknown = [need for need in needs if need not in graph]
        if unknown:
            raise InvalidPipelineError(
                f"step {step_id} depends on unknown steps: {', '.join(unknown)}",
                step_ids=(step_id, *unknown),
            )
        if len(set(needs)) != len(needs):
            raise InvalidPipelineError(
                f"step {step_id} names a dependency twice", step_ids=(step_id,)
            )
    cycle = _find_cycle(graph)
    if cycle:
        raise InvalidPipelineError(
            f"steps form a cycle: {' -> '.join(cycle)}", step_ids=tuple(dict.fromkeys(cycle))
        )


def _find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str]:
    """One cycle as a path that ends where it starts, or [] (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in graph:
        if root in state:
            continue
        path: list[str] = [root]
        pending: list[Iterator[str]] = [iter(graph[root])]
        state[root] = 1
        while pending:
            need = next(pending[-1], None)
            if need is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(need) == 1:
                return [*path[path.index(need) :], need]
            elif need not in state:
                state[need] = 1
                path.append(need)
                pending.append(iter(graph[need]))
    return []


def ready_steps(steps: Sequence[StepState]) -> list[StepState]:
    """Pending steps whose dependencies are all done, in definition order."""
    status = {step.step_id: step.status for step in steps}
    graph = dependencies(steps)
    return [
        step
        for step in steps
        if step.status is StepStatus.PENDING
        and all(status.get(need) in DONE_STEP_STATUSES for need in graph[step.step_id])
    ]


def newly_ready(before: Sequence[StepState], after: Sequence[StepState]) -> list[StepState]:
    """Steps ready in ``after`` that were not ready in ``before``: what one commit made ready.

    A step is enqueued by exactly the commit that made it ready, so of two commits that race on
    one run only the one that wins enqueues, and a step made ready earlier (already queued) is
    never enqueued again.
    """
    was_ready = {step.step_id for step in ready_steps(before)}
    return [step for step in ready_steps(after) if step.step_id not in was_ready]


def active_steps(steps: Sequence[StepState]) -> list[StepState]:
    """Steps that are executing, or ready and so queued: the run has work in flight."""
    ready = {step.step_id for step in ready_steps(steps)}
    return [step for step in steps if step.status in _ACTIVE or step.step_id in ready]


def first_open_index(steps: Sequence[StepState]) -> int:
    """Index of the first step (definition order) not done: the run's ``current_step_index``.

    For a linear run this is the step being worked on; ``len(steps)`` once every step is done.
    """
    for index, step in enumerate(steps):
        if step.status not in DONE_STEP_STATUSES:
            return index
    return len(steps)


def upstream(steps: Sequence[StepState], step_id: str) -> list[StepState]:
    """Every step ``step_id`` waits for, directly or through others, in definition order."""
    graph = dependencies(steps)
    found: set[str] = set()
    todo = list(graph.get(step_id, ()))
    while todo:
        need = todo.pop()
        if need not in found:
            found.add(need)
            todo.extend(graph.get(need, ()))
    return [step for step in steps if step.step_id in found]


def dependents(steps: Sequence[StepState], step_id: str) -> list[StepState]:
    """Every step that waits for ``step_id``, directly or through others, in definition order."""
    graph = dependencies(steps)
    found = {step_id}
    changed = True
    while changed:
        changed = False
        for other, needs in graph.items():
            if other not in found and found.intersection(needs):
                found.add(other)
                changed = True
    found.discard(step_id)
    return [step for step in steps if step.step_id in found]
