"""``RunFilter``: what ``list_runs`` selects, and the one function that decides a match."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from mpstate.errors import InvalidInputError
from mpstate.fields import CamelModel, Identifier, UtcDatetime
from mpstate.models import PipelineRun, PipelineRunStatus

__all__ = ["MAX_PAGE_SIZE", "RunFilter", "build_filter"]

#: Largest ``limit`` accepted; page through bigger result sets with ``offset``.
MAX_PAGE_SIZE = 10_000


class RunFilter(CamelModel):
    """Runs to list. Every field is optional and they combine with AND.

    ``status`` is one status or several (any of them); ``since``/``until`` bound ``created_at``,
    both inclusive. Results are sorted by ``created_at`` then ``run_id``, both ascending, or
    both descending with ``newest_first`` (``offset`` then counts from the newest).
    """

    status: frozenset[PipelineRunStatus] | None = None
    tenant_id: Identifier | None = None
    idempotency_key: Identifier | None = None
    since: UtcDatetime | None = None
    until: UtcDatetime | None = None
    limit: int | None = Field(default=None, ge=1, le=MAX_PAGE_SIZE)
    offset: int = Field(default=0, ge=0)
    newest_first: bool = False

    model_config = ConfigDict(frozen=True)

    @field_validator("status", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset({value})
        if isinstance(value, list | tuple | set | frozenset):
            if not value:
                raise ValueError("status needs at least one value")
            try:
                return frozenset(value)
            except TypeError as exc:  # unhashable members: report as a validation error
                raise ValueError(f"status must be status names, not {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _window_is_ordered(self) -> RunFilter:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since is after until")
        return self

    def matches(self, run: PipelineRun) -> bool:
        """Whether ``run`` is selected (paging aside)."""
        return (
            (self.status is None or run.status in self.status)
            and (self.tenant_id is None or run.tenant_id == self.tenant_id)
            and (self.idempotency_key is None or run.idempotency_key == self.idempotency_key)
            and (self.since is None or run.created_at >= self.since)
            and (self.until is None or run.created_at <= self.until)
        )

    def sort(self, runs: list[PipelineRun]) -> None:
        """Sort matched runs in place into the filter's order."""
        runs.sort(key=sort_key, reverse=self.newest_first)

    def page(self, runs: list[PipelineRun]) -> list[PipelineRun]:
        """Apply ``offset`` and ``limit`` to runs already matched and sorted."""
        end = None if self.limit is None else self.offset + self.limit
        return runs[self.offset : end]


def sort_key(run: PipelineRun) -> tuple[Any, str]:
    """The order of ``list_runs``: ``created_at``, then ``run_id``."""
    return (run.created_at, run.run_id)


def build_filter(
    run_filter: RunFilter | Mapping[str, Any] | None, fields: Mapping[str, Any]
) -> RunFilter:
    """Merge a filter object and keyword fields into one validated ``RunFilter``."""
    try:
        if run_filter is None:
            return RunFilter.model_validate(dict(fields))
        if isinstance(run_filter, RunFilter):
            base = run_filter.model_dump(exclude_unset=True)
        elif isinstance(run_filter, Mapping):
            base = RunFilter.model_validate(dict(run_filter)).model_dump(exclude_unset=True)
        else:
            raise InvalidInputError(f"filter must be a RunFilter or a mapping, not {run_filter!r}")
        return RunFilter.model_validate({**base, **fields})
    except PydanticValidationError as exc:
        raise InvalidInputError(f"invalid run filter: {exc}") from exc
