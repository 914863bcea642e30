"""Callback bodies as the providers document them, for the payload adapter tests.

Each fixture follows its provider's published example (cited above it); ids, URLs and texts are
the documentation's own where it gives them, and realistic stand-ins where it only names the
field. Every one is a parsed JSON object, as the receiver hands it to an adapter.
"""

from __future__ import annotations

from typing import Any

Payload = dict[str, Any]

# -- Replicate: the prediction object ----------------------------------------------------------
# https://replicate.com/docs/topics/webhooks/receive-webhook (the "unfinished prediction" example)

REPLICATE_STARTING: Payload = {
    "id": "ufawqhfynnddngldkgtslldrkq",
    "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
    "created_at": "2022-04-26T22:13:06.224088Z",
    "started_at": None,
    "completed_at": None,
    "status": "starting",
    "input": {"text": "Alice"},
    "output": None,
    "error": None,
    "logs": None,
    "metrics": {},
}

# The same prediction while predict() runs; the logs end with a tqdm bar, as diffusion models
# print them (https://replicate.com/docs/topics/predictions/lifecycle: "processing").
REPLICATE_PROCESSING: Payload = {
    **REPLICATE_STARTING,
    "started_at": "2022-04-26T22:13:07.014911Z",
    "status": "processing",
    "logs": (
        "Using seed: 31337\n"
        "  0%|          | 0/50 [00:00<?, ?it/s]\r"
        " 44%|████▍     | 22/50 [00:02<00:02, 9.87it/s]\r"
        " 46%|████▌     | 23/50 [00:02<00:02, 9.88it/s]\n"
    ),
}

# The HTTP API's "get a prediction" example (https://replicate.com/docs/reference/http), which
# the webhook body mirrors: a text model, so the output is no URL.
REPLICATE_SUCCEEDED_TEXT: Payload = {
    "id": "gm3qorzdhgbfurvjtvhg6dckhu",
    "model": "replicate/hello-world",
    "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
    "input": {"text": "Alice"},
    "logs": "",
    "output": "hello Alice",
    "data_removed": False,
    "error": None,
    "status": "succeeded",
    "created_at": "2023-09-08T16:19:34.765994Z",
    "started_at": "2023-09-08T16:19:34.779176Z",
    "completed_at": "2023-09-08T16:19:34.791859Z",
    "metrics": {"predict_time": 0.012683},
    "urls": {
        "cancel": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel",
        "get": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu",
    },
}

# An image model's completed prediction: the output is a list of file URLs.
REPLICATE_SUCCEEDED_IMAGES: Payload = {
    "id": "qz7mfxlkw3vdpygt1o8hbnsuae",
    "model": "black-forest-labs/flux-schnell",
    "version": "bf2f2e683d03a9549f484a37a0df1581514b28b1d4ebba0e1b0d8b1d2b4e8c1d",
    "input": {"prompt": "a studio photo of a golden retriever", "num_outputs": 2},
    "logs": "Using seed: 4077\nrunning quantized prediction\n",
    "output": [
        "https://replicate.delivery/xezq/abc123/out-0.webp",
        "https://replicate.delivery/xezq/abc123/out-1.webp",
    ],
    "data_removed": False,
    "error": None,
    "status": "succeeded",
    "created_at": "2025-07-14T09:12:03.221000Z",
    "started_at": "2025-07-14T09:12:03.402000Z",
    "completed_at": "2025-07-14T09:12:05.116000Z",
    "metrics": {"image_count": 2, "predict_time": 1.714, "total_time": 1.895},
}

REPLICATE_FAILED: Payload = {
    **REPLICATE_SUCCEEDED_IMAGES,
    "id": "rrr4z55ocneqzikepnug6xezpe",
    "status": "failed",
    "output": None,
    "error": "CUDA out of memory. Tried to allocate 2.00 GiB",
    "logs": "Using seed: 4077\nTraceback (most recent call last):\n...\n",
    "metrics": {"predict_time": 0.9},
}

# canceled: by the user, or its deadline passed while it ran; aborted: the deadline passed
# before it started (https://replicate.com/docs/topics/predictions/lifecycle,
# https://replicate.com/changelog/2025-10-16-prediction-deadlines).
REPLICATE_CANCELED: Payload = {
    **REPLICATE_FAILED,
    "id": "x5bvpctevdrgc0ckm2y9vm3xwc",
    "status": "canceled",
    "error": None,
    "metrics": {"predict_time": 3.25},
}

REPLICATE_ABORTED: Payload = {
    **REPLICATE_STARTING,
    "id": "q0gd4sh1bxrgc0cm0rxbbfzkyw",
    "status": "aborted",
    "completed_at": "2025-10-16T10:00:15.000000Z",
}

# -- OpenAI: thin events -----------------------------------------------------------------------
# https://developers.openai.com/api/docs/api-reference/webhook-events (shape and the
# response.completed example); video types: https://developers.openai.com/api/docs/guides/
# video-generation; every type: openai-python src/openai/types/webhooks/.

OPENAI_RESPONSE_COMPLETED: Payload = {
    "id": "evt_abc123",
    "type": "response.completed",
    "created_at": 1719168000,
    "data": {"id": "resp_abc123"},
    "object": "event",
}

OPENAI_VIDEO_COMPLETED: Payload = {
    "id": "evt_68f8a2c1b9e48190a3c7d1e2f4b5c6d7",
    "type": "video.completed",
    "created_at": 1760000000,
    "data": {"id": "video_abc123"},
    "object": "event",
}

OPENAI_VIDEO_FAILED: Payload = {
    **OPENAI_VIDEO_COMPLETED,
    "id": "evt_68f8a2c1b9e48190a3c7d1e2f4b5c6d8",
    "type": "video.failed",
    "data": {"id": "video_def456"},
}

OPENAI_RESPONSE_INCOMPLETE: Payload = {
    "id": "evt_abc124",
    "type": "response.incomplete",
    "created_at": 1719168010,
    "data": {"id": "resp_abc124"},
    "object": "event",
}

OPENAI_RESPONSE_CANCELLED: Payload = {
    "id": "evt_abc125",
    "type": "response.cancelled",
    "created_at": 1719168020,
    "data": {"id": "resp_abc125"},
    "object": "event",
}

OPENAI_BATCH_EXPIRED: Payload = {
    "id": "evt_abc126",
    "type": "batch.expired",
    "created_at": 1719254400,
    "data": {"id": "batch_abc123"},
    "object": "event",
}

OPENAI_FINE_TUNING_SUCCEEDED: Payload = {
    "id": "evt_abc127",
    "type": "fine_tuning.job.succeeded",
    "created_at": 1719168030,
    "data": {"id": "ftjob-abc123"},
    "object": "event",
}

OPENAI_EVAL_RUN_CANCELED: Payload = {
    "id": "evt_abc128",
    "type": "eval.run.canceled",
    "created_at": 1719168040,
    "data": {"id": "evalrun_abc123"},
    "object": "event",
}

# Not terminal for anything: an agent session going idle
# (openai-python types/webhooks/agent_session_idle_webhook_event.py).
OPENAI_AGENT_SESSION_IDLE: Payload = {
    "id": "evt_abc129",
    "type": "agent.session.idle",
    "created_at": 1719168050,
    "data": {"id": "sess_abc123", "environment_type": "none"},
    "object": "event",
}

# No job at all: data carries call_id, not id
# (openai-python types/webhooks/realtime_call_incoming_webhook_event.py).
OPENAI_REALTIME_CALL_INCOMING: Payload = {
    "id": "evt_abc130",
    "type": "realtime.call.incoming",
    "created_at": 1719168060,
    "data": {
        "call_id": "rtc_abc123",
        "sip_headers": [{"name": "From", "value": "sip:+142555512112@sip.example.com"}],
    },
    "object": "event",
}

# -- fal: queue webhooks -----------------------------------------------------------------------
# https://docs.fal.ai/model-endpoints/webhooks ("Successful result", "Response errors",
# "Payload errors").

FAL_OK_IMAGES: Payload = {
    "request_id": "123e4567-e89b-12d3-a456-426614174000",
    "gateway_request_id": "123e4567-e89b-12d3-a456-426614174000",
    "status": "OK",
    "payload": {
        "images": [
            {
                "url": "https://url.to/image.png",
                "content_type": "image/png",
                "file_name": "image.png",
                "file_size": 1824075,
                "width": 1024,
                "height": 1024,
            }
        ],
        "seed": 196619188014358660,
    },
    "error": None,
}

# A video model's output is one File under "video" (e.g. fal-ai/kling-video).
FAL_OK_VIDEO: Payload = {
    "request_id": "764cabcf-b745-4b3e-ae38-1200304cf45b",
    "gateway_request_id": "7a3f1e0c-5b2d-4c8e-9f61-0d2b3c4e5f60",
    "status": "OK",
    "payload": {
        "video": {
            "url": "https://v3.fal.media/files/rabbit/output.mp4",
            "content_type": "video/mp4",
            "file_name": "output.mp4",
            "file_size": 3149129,
        }
    },
    "error": None,
}

FAL_ERROR: Payload = {
    "request_id": "123e4567-e89b-12d3-a456-426614174000",
    "gateway_request_id": "123e4567-e89b-12d3-a456-426614174000",
    "status": "ERROR",
    "payload": {
        "detail": [
            {
                "loc": ["body", "prompt"],
                "msg": "field required",
                "type": "value_error.missing",
            }
        ]
    },
    "error": "Invalid status code: 422",
}

FAL_PAYLOAD_ERROR: Payload = {
    "request_id": "123e4567-e89b-12d3-a456-426614174000",
    "gateway_request_id": "123e4567-e89b-12d3-a456-426614174000",
    "status": "OK",
    "payload": None,
    "payload_error": "Response payload is not JSON serializable. Either return a JSON "
    "serializable object or use the queue endpoint to retrieve the response.",
}

# -- ElevenLabs: workspace webhooks ------------------------------------------------------------
# https://elevenlabs.io/docs/eleven-api/guides/how-to/speech-to-text/batch/webhooks (STT) and
# https://elevenlabs.io/docs/eleven-agents/workflows/post-call-webhooks (the agent examples).

ELEVENLABS_STT: Payload = {
    "type": "speech_to_text_transcription",
    "event_timestamp": 1769137174,
    "data": {
        "request_id": "098ba309e53d457db51e35b9449caee0",
        "webhook_metadata": {"run_id": "run-42", "step_id": "transcribe"},
        "transcription": {
            "language_code": "en",
            "language_probability": 0.98,
            "text": "Hello world!",
            "words": [
                {
                    "text": "Hello",
                    "start": 0.0,
                    "end": 0.5,
                    "type": "word",
                    "speaker_id": "speaker_1",
                    "logprob": -0.124,
                },
                {
                    "text": " ",
                    "start": 0.5,
                    "end": 0.5,
                    "type": "spacing",
                    "speaker_id": "speaker_1",
                },
                {
                    "text": "world!",
                    "start": 0.5,
                    "end": 1.2,
                    "type": "word",
                    "speaker_id": "speaker_1",
                    "logprob": -0.051,
                },
            ],
        },
    },
}

ELEVENLABS_POST_CALL_TRANSCRIPTION: Payload = {
    "type": "post_call_transcription",
    "event_timestamp": 1739537297,
    "data": {
        "agent_id": "xyz",
        "conversation_id": "abc",
        "status": "done",
        "user_id": "user123",
        "transcript": [
            {
                "role": "agent",
                "message": "Hey there angelo. How are you?",
                "tool_calls": None,
                "tool_results": None,
                "feedback": None,
                "time_in_call_secs": 0,
                "conversation_turn_metrics": None,
            },
            {
                "role": "user",
                "message": "Hey, can you tell me, like, a fun fact about 11 Labs?",
                "tool_calls": None,
                "tool_results": None,
                "feedback": None,
                "time_in_call_secs": 2,
                "conversation_turn_metrics": None,
            },
        ],
        "metadata": {
            "start_time_unix_secs": 1739537297,
            "call_duration_secs": 22,
            "cost": 296,
            "termination_reason": "",
        },
        "analysis": {
            "evaluation_criteria_results": {},
            "data_collection_results": {},
            "call_successful": "success",
            "transcript_summary": "Angelo asks for a fun fact about ElevenLabs.",
        },
        "conversation_initiation_client_data": {"dynamic_variables": {"user_name": "angelo"}},
    },
}

ELEVENLABS_POST_CALL_AUDIO: Payload = {
    "type": "post_call_audio",
    "event_timestamp": 1739537319,
    "data": {
        "agent_id": "xyz",
        "conversation_id": "abc",
        "full_audio": "SUQzBAAAAAAA...base64_encoded_mp3_data...AAAAAAAAAA==",
    },
}

ELEVENLABS_CALL_FAILURE_SIP: Payload = {
    "type": "call_initiation_failure",
    "event_timestamp": 1759931652,
    "data": {
        "agent_id": "xyz",
        "conversation_id": "abc",
        "failure_reason": "busy",
        "metadata": {
            "type": "sip",
            "body": {
                "from_number": "+441111111111",
                "to_number": "+11111111111",
                "sip_status_code": 486,
                "error_reason": "INVITE failed: sip status: 486: Busy here (SIP 486)",
                "call_sid": "d8e7f6a5-b4c3-4d5e-8f9a-0b1c2d3e4f5a",
                "sip_status": "Busy here",
                "twirp_code": "unavailable",
            },
        },
    },
}

ELEVENLABS_CALL_FAILURE_TWILIO: Payload = {
    "type": "call_initiation_failure",
    "event_timestamp": 1759931652,
    "data": {
        "agent_id": "xyz",
        "conversation_id": "abc",
        "failure_reason": "no-answer",
        "metadata": {
            "type": "twilio",
            "body": {
                "Called": "+441111111111",
                "Direction": "outbound-api",
                "CallSid": "CA8367245817625617832576245724",
                "CallStatus": "no-answer",
                "Duration": "0",
                "From": "+11111111111",
            },
        },
    },
}

# A workspace notice about a shared voice, with no job id at all (event types:
# https://elevenlabs.io/docs/eleven-api/resources/webhooks; the data fields are stand-ins).
ELEVENLABS_VOICE_REMOVAL_NOTICE: Payload = {
    "type": "voice_removal_notice",
    "event_timestamp": 1739537400,
    "data": {"voice_id": "21m00Tcm4TlvDq8ikWAM", "removal_date": "2025-03-01"},
}

# -- Luma: the Generation object, on every update ----------------------------------------------
# https://docs.lumalabs.ai/changelog/callbacks-and-credits-balance (callbacks) and lumaai-python
# src/lumaai/types/generation.py (fields and states).

_LUMA_REQUEST: Payload = {
    "prompt": "A teddy bear in sunglasses playing electric guitar and dancing",
    "aspect_ratio": "16:9",
    "model": "ray-2",
    "resolution": "720p",
    "duration": "5s",
    "generation_type": "video",
    "callback_url": "https://example.com/webhooks/luma?token=opaque",
}

LUMA_QUEUED: Payload = {
    "id": "d1968551-6113-4b46-b567-09210c2e79b0",
    "generation_type": "video",
    "state": "queued",
    "failure_reason": None,
    "created_at": "2025-01-15T10:00:00.000Z",
    "assets": None,
    "model": "ray-2",
    "request": _LUMA_REQUEST,
}

LUMA_DREAMING: Payload = {
    **LUMA_QUEUED,
    "state": "dreaming",
    "assets": {"progress_video": "https://storage.cdn-luma.com/dream_machine/progress.mp4"},
}

LUMA_COMPLETED: Payload = {
    **LUMA_QUEUED,
    "state": "completed",
    "assets": {
        "video": "https://storage.cdn-luma.com/dream_machine/7e4e4a3a/video0_watermarked.mp4",
        "image": "https://storage.cdn-luma.com/dream_machine/7e4e4a3a/video0_thumb.jpg",
    },
}

LUMA_FAILED: Payload = {
    **LUMA_QUEUED,
    "id": "0f8e2c46-3cf8-4d2b-9b8e-8d5f6a7b2c11",
    "state": "failed",
    "failure_reason": "Prompt not allowed because it contains a brand name",
}

#: Every fixture above, by name (the property test mutates them).
ALL: dict[str, Payload] = {
    name: value
    for name, value in dict(globals()).items()
    if name.isupper() and not name.startswith("_") and isinstance(value, dict)
}
