"""Payload adapters for real providers, on the bodies their documentation shows.

Each documented body (``provider_payloads``) becomes one exact outcome: status, job id, artifact
ids, outputs, error code and message, progress. Around them: what each adapter decided for
bodies the providers do not promise (an unknown status, a type added later, a failure without a
reason), and a property over arbitrary JSON objects and damaged fixtures: an adapter returns an
outcome with a job id, or raises ``InvalidInputError``, never anything else.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import provider_payloads as docs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpstate import InvalidInputError
from mpstate.celery import PayloadAdapter, ProviderError, WebhookOutcome
from mpstate.celery.adapters import (
    ADAPTERS,
    MESSAGE_LIMIT,
    elevenlabs_adapter,
    fal_adapter,
    luma_adapter,
    openai_adapter,
    replicate_adapter,
)

replicate = replicate_adapter()
openai = openai_adapter()
fal = fal_adapter()
elevenlabs = elevenlabs_adapter()
luma = luma_adapter()


def running(job_id: str, message: str, progress_pct: float | None = None) -> WebhookOutcome:
    return WebhookOutcome(
        status="running", job_id=job_id, message=message, progress_pct=progress_pct
    )


def failed(
    job_id: str, code: str, message: str, *, retryable: bool = False, cost_usd: float = 0.0
) -> WebhookOutcome:
    error = ProviderError(code=code, message=message, retryable=retryable)
    return WebhookOutcome(status="failed", job_id=job_id, error=error, cost_usd=cost_usd)


# -- Replicate ----------------------------------------------------------------------------------


def test_a_starting_replicate_prediction_is_running_with_its_status_as_message() -> None:
    assert replicate(docs.REPLICATE_STARTING) == running("ufawqhfynnddngldkgtslldrkq", "starting")


def test_a_processing_prediction_reports_its_last_log_line_and_its_progress_bar_percent() -> None:
    assert replicate(docs.REPLICATE_PROCESSING) == running(
        "ufawqhfynnddngldkgtslldrkq",
        "46%|████▌     | 23/50 [00:02<00:02, 9.88it/s]",
        progress_pct=46.0,
    )


def test_a_processing_prediction_without_a_progress_bar_reports_no_percent() -> None:
    payload = {**docs.REPLICATE_PROCESSING, "logs": "loading weights\nwarming up\n\n"}

    assert replicate(payload) == running("ufawqhfynnddngldkgtslldrkq", "warming up")


def test_a_processing_prediction_without_logs_reports_its_status() -> None:
    payload = {**docs.REPLICATE_PROCESSING, "logs": None}

    assert replicate(payload) == running("ufawqhfynnddngldkgtslldrkq", "processing")


def test_a_long_log_line_is_cut_to_the_message_limit() -> None:
    payload = {**docs.REPLICATE_PROCESSING, "logs": "x" * (MESSAGE_LIMIT * 3)}

    message = replicate(payload).message

    assert message == "x" * (MESSAGE_LIMIT - 1) + "…"


def test_a_succeeded_text_prediction_keeps_its_output_and_metrics_and_has_no_artifact() -> None:
    assert replicate(docs.REPLICATE_SUCCEEDED_TEXT) == WebhookOutcome(
        status="succeeded",
        job_id="gm3qorzdhgbfurvjtvhg6dckhu",
        outputs={"output": "hello Alice", "metrics": {"predict_time": 0.012683}},
    )


def test_a_succeeded_image_prediction_has_its_output_urls_as_artifact_ids() -> None:
    outcome = replicate(docs.REPLICATE_SUCCEEDED_IMAGES)

    assert outcome.status == "succeeded"
    assert outcome.job_id == "qz7mfxlkw3vdpygt1o8hbnsuae"
    assert outcome.artifact_ids == [
        "https://replicate.delivery/xezq/abc123/out-0.webp",
        "https://replicate.delivery/xezq/abc123/out-1.webp",
    ]
    assert outcome.outputs == {
        "output": docs.REPLICATE_SUCCEEDED_IMAGES["output"],
        "metrics": {"image_count": 2, "predict_time": 1.714, "total_time": 1.895},
    }
    assert outcome.cost_usd == 0.0  # Replicate reports seconds, not dollars


def test_a_single_url_output_is_one_artifact_and_a_data_uri_is_none() -> None:
    url = {**docs.REPLICATE_SUCCEEDED_TEXT, "output": "https://replicate.delivery/out.mp4"}
    inline = {**docs.REPLICATE_SUCCEEDED_TEXT, "output": "data:image/png;base64,iVBORw0KGgo="}

    assert replicate(url).artifact_ids == ["https://replicate.delivery/out.mp4"]
    assert replicate(inline).artifact_ids == []


def test_a_price_per_second_turns_predict_time_into_a_cost() -> None:
    priced = replicate_adapter(price_per_second=0.0025)

    assert priced(docs.REPLICATE_SUCCEEDED_IMAGES).cost_usd == pytest.approx(1.714 * 0.0025)
    assert priced(docs.REPLICATE_FAILED).error is not None
    assert priced(docs.REPLICATE_FAILED).cost_usd == pytest.approx(0.9 * 0.0025)


def test_a_priced_prediction_without_predict_time_costs_nothing_rather_than_being_refused() -> None:
    priced = replicate_adapter(price_per_second=0.0025)
    payload = {**docs.REPLICATE_SUCCEEDED_IMAGES, "metrics": {"predict_time": "1.7"}}

    assert priced(payload).status == "succeeded"
    assert priced(payload).cost_usd == 0.0


@pytest.mark.parametrize("price", [-0.01, math.nan, math.inf, True, "0.001"])
def test_a_price_per_second_that_is_no_rate_is_refused(price: Any) -> None:
    with pytest.raises(InvalidInputError, match="price_per_second"):
        replicate_adapter(price_per_second=price)


def test_a_failed_prediction_fails_with_its_error_and_is_not_retryable() -> None:
    assert replicate(docs.REPLICATE_FAILED) == failed(
        "rrr4z55ocneqzikepnug6xezpe",
        "REPLICATE_FAILED",
        "CUDA out of memory. Tried to allocate 2.00 GiB",
    )


def test_a_canceled_prediction_fails_as_canceled() -> None:
    assert replicate(docs.REPLICATE_CANCELED) == failed(
        "x5bvpctevdrgc0ckm2y9vm3xwc", "REPLICATE_CANCELED", "prediction canceled"
    )


def test_an_aborted_prediction_fails_as_retryable_since_it_never_started() -> None:
    assert replicate(docs.REPLICATE_ABORTED) == failed(
        "q0gd4sh1bxrgc0cm0rxbbfzkyw", "REPLICATE_ABORTED", "prediction aborted", retryable=True
    )


def test_a_status_replicate_adds_later_is_progress_that_names_it() -> None:
    payload = {**docs.REPLICATE_STARTING, "status": "paused"}

    assert replicate(payload) == running(
        "ufawqhfynnddngldkgtslldrkq", "unrecognized status 'paused'"
    )


def test_a_prediction_without_an_id_is_refused_naming_the_field() -> None:
    payload = {key: value for key, value in docs.REPLICATE_SUCCEEDED_TEXT.items() if key != "id"}

    with pytest.raises(InvalidInputError, match="replicate payload field 'id' must be"):
        replicate(payload)


def test_a_prediction_without_a_status_is_refused_naming_the_field() -> None:
    payload = {**docs.REPLICATE_SUCCEEDED_TEXT, "status": None}

    with pytest.raises(InvalidInputError, match="'status' must be a non-empty string, not null"):
        replicate(payload)


# -- OpenAI -------------------------------------------------------------------------------------


def test_a_completed_openai_response_succeeds_with_its_id_as_output_and_artifact() -> None:
    assert openai(docs.OPENAI_RESPONSE_COMPLETED) == WebhookOutcome(
        status="succeeded",
        job_id="resp_abc123",
        artifact_ids=["resp_abc123"],
        outputs={"id": "resp_abc123"},
    )


def test_a_fetch_turns_a_completed_video_id_into_the_outputs() -> None:
    asked: list[str] = []
    video = {"id": "video_abc123", "object": "video", "status": "completed", "seconds": "8"}

    def fetch(video_id: str) -> Mapping[str, Any]:
        asked.append(video_id)
        return video

    outcome = openai_adapter(fetch=fetch)(docs.OPENAI_VIDEO_COMPLETED)

    assert asked == ["video_abc123"]
    assert outcome == WebhookOutcome(
        status="succeeded", job_id="video_abc123", artifact_ids=["video_abc123"], outputs=video
    )


def test_a_fetch_is_not_asked_about_a_failed_job() -> None:
    def fetch(object_id: str) -> Mapping[str, Any]:
        raise AssertionError(f"fetched {object_id}")

    assert openai_adapter(fetch=fetch)(docs.OPENAI_VIDEO_FAILED).status == "failed"


@pytest.mark.parametrize(
    ("payload", "job_id", "code", "retryable"),
    [
        (docs.OPENAI_VIDEO_FAILED, "video_def456", "OPENAI_VIDEO_FAILED", False),
        (docs.OPENAI_RESPONSE_INCOMPLETE, "resp_abc124", "OPENAI_RESPONSE_INCOMPLETE", False),
        (docs.OPENAI_RESPONSE_CANCELLED, "resp_abc125", "OPENAI_RESPONSE_CANCELLED", False),
        (docs.OPENAI_EVAL_RUN_CANCELED, "evalrun_abc123", "OPENAI_EVAL_RUN_CANCELED", False),
        (docs.OPENAI_BATCH_EXPIRED, "batch_abc123", "OPENAI_BATCH_EXPIRED", True),
    ],
)
def test_a_failed_cancelled_incomplete_or_expired_openai_job_fails_with_a_code_from_its_type(
    payload: dict[str, Any], job_id: str, code: str, retryable: bool
) -> None:
    message = f"{payload['type']} for {job_id}"

    assert openai(payload) == failed(job_id, code, message, retryable=retryable)


def test_a_succeeded_fine_tuning_job_succeeds_like_a_completed_one() -> None:
    outcome = openai(docs.OPENAI_FINE_TUNING_SUCCEEDED)

    assert (outcome.status, outcome.job_id) == ("succeeded", "ftjob-abc123")


@pytest.mark.parametrize("kind", ["agent.session.idle", "video.upscaled", "image.generated"])
def test_an_openai_event_that_ends_no_job_is_progress_named_by_its_type(kind: str) -> None:
    payload = {**docs.OPENAI_AGENT_SESSION_IDLE, "type": kind}

    assert openai(payload) == running("sess_abc123", kind)


def test_an_openai_event_without_a_data_id_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInputError, match=r"'data\.id' must be a non-empty string"):
        openai(docs.OPENAI_REALTIME_CALL_INCOMING)


def test_an_openai_event_without_data_is_refused() -> None:
    payload = {**docs.OPENAI_RESPONSE_COMPLETED, "data": "resp_abc123"}

    with pytest.raises(InvalidInputError, match="'data' must be a JSON object"):
        openai(payload)


def test_a_fetch_result_that_is_no_mapping_is_refused() -> None:
    adapter = openai_adapter(fetch=lambda object_id: [object_id])  # type: ignore[arg-type,return-value]

    with pytest.raises(InvalidInputError, match="must return a mapping with string keys"):
        adapter(docs.OPENAI_VIDEO_COMPLETED)


def test_a_fetch_outage_propagates_unchanged_so_it_is_retried_not_refused() -> None:
    def fetch(object_id: str) -> Mapping[str, Any]:
        raise ConnectionError(f"cannot reach api.openai.com for {object_id}")

    with pytest.raises(ConnectionError):
        openai_adapter(fetch=fetch)(docs.OPENAI_VIDEO_COMPLETED)


def test_a_fetch_that_is_not_callable_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="fetch must be callable"):
        openai_adapter(fetch="https://api.openai.com/v1/videos")  # type: ignore[arg-type]


# -- fal ----------------------------------------------------------------------------------------


def test_an_ok_fal_request_succeeds_with_its_payload_and_image_urls() -> None:
    assert fal(docs.FAL_OK_IMAGES) == WebhookOutcome(
        status="succeeded",
        job_id="123e4567-e89b-12d3-a456-426614174000",
        artifact_ids=["https://url.to/image.png"],
        outputs=docs.FAL_OK_IMAGES["payload"],
    )


def test_an_ok_fal_video_request_has_the_video_url_as_artifact_id() -> None:
    outcome = fal(docs.FAL_OK_VIDEO)

    assert outcome.job_id == "764cabcf-b745-4b3e-ae38-1200304cf45b"  # request_id, not the gateway's
    assert outcome.artifact_ids == ["https://v3.fal.media/files/rabbit/output.mp4"]
    assert outcome.outputs == docs.FAL_OK_VIDEO["payload"]


def test_fal_files_returned_inline_as_data_uris_are_no_artifacts() -> None:
    image = {"url": "data:image/png;base64,iVBORw0KGgo=", "content_type": "image/png"}
    payload = {**docs.FAL_OK_IMAGES, "payload": {"images": [image], "audio": {"url": 3}}}

    assert fal(payload).artifact_ids == []


def test_an_errored_fal_request_fails_with_its_error_and_the_validation_detail() -> None:
    detail = '[{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]'

    assert fal(docs.FAL_ERROR) == failed(
        "123e4567-e89b-12d3-a456-426614174000", "FAL_ERROR", f"Invalid status code: 422: {detail}"
    )


def test_a_fal_result_that_could_not_be_serialized_fails_the_step_without_retry() -> None:
    assert fal(docs.FAL_PAYLOAD_ERROR) == failed(
        "123e4567-e89b-12d3-a456-426614174000",
        "FAL_PAYLOAD_ERROR",
        docs.FAL_PAYLOAD_ERROR["payload_error"],
    )


def test_a_fal_status_other_than_ok_or_error_is_progress_that_names_it() -> None:
    payload = {**docs.FAL_OK_IMAGES, "status": "IN_PROGRESS"}

    assert fal(payload) == running(
        "123e4567-e89b-12d3-a456-426614174000", "unrecognized status 'IN_PROGRESS'"
    )


def test_a_fal_body_without_a_request_id_is_refused_naming_the_field() -> None:
    payload = {**docs.FAL_OK_IMAGES, "request_id": ""}

    with pytest.raises(InvalidInputError, match="fal payload field 'request_id' must be"):
        fal(payload)


# -- ElevenLabs ---------------------------------------------------------------------------------


def test_an_elevenlabs_transcription_succeeds_with_the_transcription_in_its_outputs() -> None:
    assert elevenlabs(docs.ELEVENLABS_STT) == WebhookOutcome(
        status="succeeded",
        job_id="098ba309e53d457db51e35b9449caee0",
        outputs=docs.ELEVENLABS_STT["data"],
    )


def test_a_post_call_transcription_is_matched_by_its_conversation_id() -> None:
    outcome = elevenlabs(docs.ELEVENLABS_POST_CALL_TRANSCRIPTION)

    assert (outcome.status, outcome.job_id, outcome.artifact_ids) == ("succeeded", "abc", [])
    assert set(outcome.outputs) == {
        "agent_id",
        "conversation_id",
        "status",
        "user_id",
        "transcript",
        "metadata",
        "analysis",
        "conversation_initiation_client_data",
    }


def test_the_post_call_audio_is_progress_and_its_base64_audio_is_not_kept() -> None:
    outcome = elevenlabs(docs.ELEVENLABS_POST_CALL_AUDIO)

    assert outcome == running("abc", "post_call_audio")
    assert "base64" not in json.dumps(outcome.to_json_dict())


def test_a_call_that_could_not_be_placed_fails_with_its_reason_and_the_sip_error() -> None:
    assert elevenlabs(docs.ELEVENLABS_CALL_FAILURE_SIP) == failed(
        "abc",
        "ELEVENLABS_CALL_INITIATION_FAILED",
        "busy: INVITE failed: sip status: 486: Busy here (SIP 486)",
    )


def test_a_twilio_call_that_was_not_answered_fails_with_its_reason() -> None:
    assert elevenlabs(docs.ELEVENLABS_CALL_FAILURE_TWILIO) == failed(
        "abc", "ELEVENLABS_CALL_INITIATION_FAILED", "no-answer"
    )


def test_an_elevenlabs_event_type_added_later_is_progress_named_by_its_type() -> None:
    payload = {**docs.ELEVENLABS_STT, "type": "speech_to_text_diarization"}

    assert elevenlabs(payload) == running("098ba309e53d457db51e35b9449caee0", payload["type"])


def test_an_elevenlabs_event_about_no_job_is_refused_naming_both_id_fields() -> None:
    with pytest.raises(
        InvalidInputError, match=r"'data\.request_id' \(or 'data\.conversation_id'\) must be"
    ):
        elevenlabs(docs.ELEVENLABS_VOICE_REMOVAL_NOTICE)


# -- Luma ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [docs.LUMA_QUEUED, docs.LUMA_DREAMING])
def test_a_queued_or_dreaming_luma_generation_is_running_with_its_state_as_message(
    payload: dict[str, Any],
) -> None:
    assert luma(payload) == running("d1968551-6113-4b46-b567-09210c2e79b0", payload["state"])


def test_a_completed_luma_generation_has_its_assets_as_outputs_and_their_urls_as_artifacts() -> (
    None
):
    assets = docs.LUMA_COMPLETED["assets"]

    assert luma(docs.LUMA_COMPLETED) == WebhookOutcome(
        status="succeeded",
        job_id="d1968551-6113-4b46-b567-09210c2e79b0",
        artifact_ids=[assets["video"], assets["image"]],
        outputs=assets,
    )


def test_a_progress_video_is_not_an_artifact() -> None:
    payload = {**docs.LUMA_COMPLETED, "assets": docs.LUMA_DREAMING["assets"]}

    assert luma(payload).artifact_ids == []


def test_a_failed_luma_generation_fails_with_its_failure_reason() -> None:
    assert luma(docs.LUMA_FAILED) == failed(
        "0f8e2c46-3cf8-4d2b-9b8e-8d5f6a7b2c11",
        "LUMA_FAILED",
        "Prompt not allowed because it contains a brand name",
    )


def test_a_failed_luma_generation_without_a_reason_still_says_it_failed() -> None:
    payload = {**docs.LUMA_FAILED, "failure_reason": None}

    assert luma(payload).error == ProviderError(code="LUMA_FAILED", message="generation failed")


def test_a_luma_state_added_later_is_progress_that_names_it() -> None:
    payload = {**docs.LUMA_QUEUED, "state": "upscaling"}

    assert luma(payload).message == "unrecognized state 'upscaling'"


# -- the presets, and any JSON object -----------------------------------------------------------


def test_the_presets_hold_one_default_adapter_per_provider() -> None:
    assert sorted(ADAPTERS) == ["elevenlabs", "fal", "luma", "openai", "replicate"]
    examples = {
        "replicate": docs.REPLICATE_SUCCEEDED_IMAGES,
        "openai": docs.OPENAI_VIDEO_COMPLETED,
        "fal": docs.FAL_OK_VIDEO,
        "elevenlabs": docs.ELEVENLABS_STT,
        "luma": docs.LUMA_COMPLETED,
    }
    for provider, adapter in ADAPTERS.items():
        assert adapter(examples[provider]).status == "succeeded"


def test_the_presets_cannot_be_replaced_in_place() -> None:
    with pytest.raises(TypeError):
        ADAPTERS["luma"] = fal  # type: ignore[index]


ADAPTERS_UNDER_TEST: list[PayloadAdapter] = [
    *ADAPTERS.values(),
    replicate_adapter(price_per_second=0.0014),
    openai_adapter(fetch=lambda object_id: {"id": object_id, "status": "completed"}),
]


def _keys(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


#: Words the adapters look for, so random bodies reach every branch, not only the refusals.
WORDS = [
    *{v for p in docs.ALL.values() for v in (p.get("status"), p.get("state"), p.get("type")) if v},
    "completed",
    "https://cdn.example.test/out.png",
    "data:image/png;base64,AAAA",
    "",
]
KEYS = st.sampled_from(sorted({key for payload in docs.ALL.values() for key in _keys(payload)}))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
JSON_OBJECTS = st.dictionaries(KEYS | st.text(max_size=6), JSON_VALUES, max_size=5)
DELETE = object()


def _paths(value: object, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _paths(inner, (*prefix, index))


@st.composite
def damaged_fixtures(draw: st.DrawFn) -> dict[str, Any]:
    """A documented body with one field, at any depth, replaced by any JSON value or removed."""
    payload = copy.deepcopy(draw(st.sampled_from(list(docs.ALL.values()))))
    *parents, last = draw(st.sampled_from(list(_paths(payload))))
    container: Any = payload
    for step in parents:
        container = container[step]
    replacement = draw(JSON_VALUES | st.just(DELETE))
    if replacement is DELETE:
        del container[last]
    else:
        container[last] = replacement
    return payload


@settings(max_examples=300)
@given(
    adapter=st.sampled_from(ADAPTERS_UNDER_TEST),
    payload=JSON_OBJECTS | damaged_fixtures() | st.sampled_from(list(docs.ALL.values())),
)
def test_any_json_object_gives_an_outcome_with_a_job_id_or_an_invalid_input_error(
    adapter: PayloadAdapter, payload: dict[str, Any]
) -> None:
    try:
        outcome = adapter(payload)
    except InvalidInputError:
        return
    assert isinstance(outcome, WebhookOutcome)
    assert isinstance(outcome.job_id, str)
    assert outcome.job_id
    assert (outcome.error is not None) == (outcome.status == "failed")
    json.dumps(outcome.to_json_dict(), allow_nan=False)  # storable as it stands
