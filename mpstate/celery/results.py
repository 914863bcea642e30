"""``StepResult``: what a step task returns, and how other return values are read."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from mpstate.errors import InvalidInputError
from mpstate.fields import CamelModel

__all__ = ["StepResult", "as_step_result"]


class StepResult(CamelModel):
    """A step's outcome: the artifacts it produced, what it cost, and optional outputs.

    ``cache_key`` is set by ``PipelineTask.cached`` (the step is logged as step-cached) and
    ``suspended`` by ``PipelineTask.await_external`` (the step finishes when the provider calls
    back).
    """

    artifact_ids: list[str] = Field(default_factory=list)
    cost_usd: float = Field(default=0.0, ge=0)
    outputs: dict[str, Any] = Field(default_factory=dict)
    cache_key: str | None = None
    suspended: bool = False

    @model_validator(mode="after")
    def _cache_hits_cost_nothing(self) -> StepResult:
        # step-cached logs no cost, so a cost here could not be rebuilt from the log.
        if self.cache_key is not None and self.cost_usd:
            raise ValueError("a cached result costs nothing: drop cost_usd or cache_key")
        return self


def as_step_result(value: Any, *, strict: bool) -> StepResult:
    """Read a task's return value as a step result.

    ``None`` is an empty result; a ``StepResult`` or a mapping is validated. Anything else is an
    empty result for a plain task (``strict=False``: its return value is its own business) and an
    ``InvalidInputError`` for a ``PipelineTask`` (``strict=True``).
    """
    if value is None:
        return StepResult()
    if isinstance(value, StepResult):
        return value
    if isinstance(value, dict):
        try:
            return StepResult.model_validate(value)
        except PydanticValidationError as exc:
            if strict:
                raise InvalidInputError(f"invalid step result: {exc}") from exc
            return StepResult()
    if strict:
        raise InvalidInputError(
            f"a step task returns a StepResult, a dict or None, not {type(value).__name__}"
        )
    return StepResult()
