"""Models: both spellings in, camelCase out, UTC millisecond timestamps, the transition table."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from mpstate import ALLOWED_RUN_TRANSITIONS, TERMINAL_RUN_STATUSES, PipelineRun, PipelineRunStatus
from mpstate.fields import epoch_ms, to_utc_ms
from mpstate.models import statuses_that_may_become


def test_a_run_accepts_camel_and_snake_case_and_dumps_camel_case() -> None:
    camel = PipelineRun.model_validate({"runId": "r", "pipelineId": "p", "costUsd": 1.5})
    snake = PipelineRun.model_validate({"run_id": "r", "pipeline_id": "p", "cost_usd": 1.5})
    assert camel.cost_usd == snake.cost_usd == 1.5
    document = camel.to_json_dict()
    assert {"runId", "pipelineId", "costUsd", "externalJobIds", "currentStepIndex"} <= set(document)
    assert "run_id" not in document


def test_timestamps_are_stored_in_utc_at_millisecond_precision() -> None:
    run = PipelineRun(run_id="r", pipeline_id="p", created_at="2024-05-01T14:00:00.123456+02:00")
    assert run.created_at == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert run.to_json_dict()["createdAt"] == "2024-05-01T12:00:00.123Z"
    naive = to_utc_ms(datetime(2024, 5, 1, 12, 0, 0, 999999))
    assert naive == datetime(2024, 5, 1, 12, 0, 0, 999000, tzinfo=UTC)


def test_timestamps_before_year_1000_serialise_as_valid_iso_8601() -> None:
    run = PipelineRun(run_id="r", pipeline_id="p", started_at=datetime(999, 1, 1, tzinfo=UTC))
    assert run.to_json_dict()["startedAt"] == "0999-01-01T00:00:00.000Z"
    assert PipelineRun.model_validate(run.to_json_dict()).started_at == run.started_at


def test_epoch_ms_is_exact_for_millisecond_timestamps() -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for ms in (0, 1, 999, 123_456_789):
        moment = base + timedelta(milliseconds=ms)
        assert epoch_ms(moment) == epoch_ms(base) + ms
    assert epoch_ms(datetime(1970, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 0


def test_a_run_document_round_trips_through_json() -> None:
    run = PipelineRun.model_validate(
        {
            "runId": "r",
            "pipelineId": "p",
            "tenantId": "acme",
            "externalJobIds": {"veo": "job-1"},
            "steps": [{"stepId": "a", "operation": "image.generate", "inputs": {"n": 1}}],
            "budget": {"maxUsd": 3},
        }
    )
    assert PipelineRun.model_validate(run.to_json_dict()) == run


@pytest.mark.parametrize(
    "document",
    [
        {"runId": "", "pipelineId": "p"},
        {"runId": "r", "pipelineId": "p", "costUsd": -1},
        {"runId": "r", "pipelineId": "p", "costUsd": float("nan")},
        {"runId": "r", "pipelineId": "p", "status": "paused"},
        {"runId": "r", "pipelineId": "p", "externalJobId": "no-provider"},
        {"runId": "r", "pipelineId": "p", "unknownField": 1},
        {
            "runId": "r",
            "pipelineId": "p",
            "steps": [{"stepId": "a", "operation": "x"}, {"stepId": "a", "operation": "y"}],
        },
    ],
)
def test_invalid_run_documents_are_refused(document: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PipelineRun.model_validate(document)


def test_terminal_statuses_allow_no_way_out() -> None:
    for status in TERMINAL_RUN_STATUSES:
        assert ALLOWED_RUN_TRANSITIONS[status] == {status}
    assert PipelineRunStatus.PENDING not in ALLOWED_RUN_TRANSITIONS[PipelineRunStatus.RUNNING]
    assert statuses_that_may_become(PipelineRunStatus.PENDING) == {PipelineRunStatus.PENDING}
    assert PipelineRunStatus.COMPLETED not in statuses_that_may_become(PipelineRunStatus.CANCELLED)


def test_a_run_lists_every_external_job_including_the_legacy_one() -> None:
    run = PipelineRun(
        run_id="r", pipeline_id="p", external_job_ids={"veo": "1"}, external_job_id="kling:a:b"
    )
    assert run.external_jobs() == {("veo", "1"), ("kling", "a:b")}
