"""A new run from a pipeline definition: its steps checked as a graph, its definition hashed.

Both ``MpState.start_run`` and ``MpState.rerun`` build runs here, so a run is refused for the
same reasons, before anything is created, however it is started.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from hashlib import sha256
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from mpstate.budget import check_budget
from mpstate.errors import InvalidInputError
from mpstate.graph import is_explicit, validate_graph
from mpstate.models import FailurePolicy, PipelineRun, StepState

__all__ = ["definition_hash", "fresh_step", "new_run"]


def definition_hash(steps: Sequence[StepState]) -> str:
    """A short hash of what the run executes: each step's id, operation and, for an explicit
    graph, its dependencies (a linear run hashes as it did before graphs existed)."""
    explicit = is_explicit(steps)
    lines = (
        f"{s.step_id}\t{s.operation}"
        + (f"\t{','.join(sorted(s.depends_on or ()))}" if explicit else "")
        for s in steps
    )
    return sha256("\n".join(lines).encode()).hexdigest()[:16]


def fresh_step(step: StepState) -> StepState:
    """The step's definition alone (id, operation, inputs, retry limit, dependencies, cost
    estimate and gate)."""
    return StepState(
        step_id=step.step_id,
        operation=step.operation,
        inputs=dict(step.inputs),
        max_retries=step.max_retries,
        depends_on=None if step.depends_on is None else list(step.depends_on),
        estimated_cost_usd=step.estimated_cost_usd,
        gate=step.gate,
    )


def new_run(
    pipeline_id: str,
    steps: Sequence[StepState | Mapping[str, Any]],
    *,
    tenant_id: str | None = None,
    idempotency_key: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    budget: Mapping[str, Any] | None = None,
    failure_policy: FailurePolicy | str = FailurePolicy.FAIL_FAST,
    rerun_of: str | None = None,
) -> PipelineRun:
    """A pending run of ``steps`` (``StepState`` or step mappings, either spelling).

    ``inputs`` are defaults for every step's inputs; ``budget``'s ``maxUsd`` must be a
    non-negative number (``mpstate.budget``). Raises ``InvalidInputError`` for bad ids or
    fields and ``InvalidPipelineError`` (naming the steps) for a graph with duplicate ids, unknown
    or self dependencies, or a cycle.
    """
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence) or not steps:
        raise InvalidInputError("a run needs at least one step")
    defaults = dict(inputs or {})
    try:
        states = [
            step if isinstance(step, StepState) else StepState.model_validate(dict(step))
            for step in steps
        ]
        states = [s.model_copy(update={"inputs": {**defaults, **s.inputs}}) for s in states]
        validate_graph(states)
        return PipelineRun(
            run_id=run_id or uuid.uuid4().hex,
            pipeline_id=pipeline_id,
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            steps=states,
            budget=check_budget(budget),
            failure_policy=FailurePolicy(failure_policy),
            pipeline_def_hash=definition_hash(states),
            rerun_of=rerun_of,
        )
    except (PydanticValidationError, TypeError) as exc:
        raise InvalidInputError(f"invalid run: {exc}") from exc
    except ValueError as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"invalid run: {exc}") from exc
