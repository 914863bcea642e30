"""Provider callbacks: payload adapters and the outcome they produce.

A provider's webhook payload becomes a ``WebhookOutcome`` through the adapter registered for that
provider (``MpState.register_adapter``), or through ``default_adapter``, which reads::

    {"jobId": "j-1", "status": "succeeded", "artifactIds": ["vid-1"], "costUsd": 0.5, "outputs": {}}
    {"jobId": "j-1", "status": "failed", "error": {"code": "TIMEOUT", "retryable": true}}
    {"jobId": "j-1", "status": "running", "progressPct": 40, "message": "rendering"}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from mpstate.celery.results import StepResult
from mpstate.errors import InvalidInputError
from mpstate.fields import CamelModel

__all__ = ["PayloadAdapter", "ProviderError", "WebhookOutcome", "default_adapter"]


class ProviderError(CamelModel):
    """Why a provider's job failed."""

    code: str = "PROVIDER_FAILED"
    message: str = ""
    retryable: bool = False


class WebhookOutcome(CamelModel):
    """A provider job's state as one callback (or poll) reports it: a step result when it
    succeeded, an error when it failed, progress while it still runs.

    ``job_id`` is the provider's job id as the adapter found it in the payload (``None``: the
    receiver reads the default shape's ``jobId``). Fields it does not know (the provider's own
    timestamps) are ignored: providers add fields over time, and a callback must not be refused
    for that.
    """

    model_config = ConfigDict(extra="ignore")

    #: ``running``: not finished yet (logged as step-progress; the step keeps waiting).
    status: Literal["succeeded", "failed", "running"]
    job_id: str | None = None
    artifact_ids: list[str] = Field(default_factory=list)
    cost_usd: float = Field(default=0.0, ge=0)
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: ProviderError | None = None
    #: For ``running``: how far the job is (0-100) and what the provider says, if it says.
    progress_pct: float | None = Field(default=None, ge=0, le=100)
    message: str | None = None

    def step_result(self) -> StepResult:
        return StepResult(
            artifact_ids=self.artifact_ids, cost_usd=self.cost_usd, outputs=self.outputs
        )


#: Turns a provider's payload into an outcome; raise ``InvalidInputError`` for a bad payload.
PayloadAdapter = Callable[[Mapping[str, Any]], WebhookOutcome]


def default_adapter(payload: Mapping[str, Any]) -> WebhookOutcome:
    """Read the documented default payload shape."""
    try:
        return WebhookOutcome.model_validate(dict(payload))
    except (PydanticValidationError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"webhook payload does not have the default shape: {exc}") from exc
