"""Payload adapters for real providers: Replicate, OpenAI, fal, ElevenLabs and Luma.

Each factory returns a ``PayloadAdapter`` for ``MpState.register_adapter``; ``ADAPTERS`` holds
one of each with default options, by provider name::

    mp.register_adapter("replicate", replicate_adapter(price_per_second=0.000725))
    mp.register_adapter("luma", ADAPTERS["luma"])

Every adapter reads one callback body (already verified and parsed as a JSON object) and follows
the same rules, so a pipeline behaves alike whichever provider runs a step:

- ``job_id`` is always the provider's job id, as the task recorded it with
  ``await_external(provider, job_id)``; a body without one is refused.
- Only a terminal state resumes or fails the step. Anything else is ``running`` (logged as
  step-progress while the step keeps waiting), including a state or event type the adapter does
  not know: providers add them (Replicate added ``aborted`` in 2025). Refusing such a body makes
  the provider retry and then drop it, and failing it would fail a step on an event that ends
  nothing; as progress it shows in the run's events and the step waits for a terminal callback.
- No price is invented: a cost is reported only when the provider reports dollars or the caller
  gives a rate.
- Artifact ids are the ``http(s)`` URLs of the job's outputs; data URIs and plain text are not
  ids.
- Progress and error messages are cut to ``MESSAGE_LIMIT`` characters (provider logs and
  tracebacks run long; the event log keeps them).
- A body that cannot be read raises ``InvalidInputError`` naming what is wrong, and nothing else
  does (the receiver answers 400). Only a user's OpenAI ``fetch`` may raise its own errors: an
  outage there is not a bad body, and the caller's retries must see it as such.

Needs ``pip install 'mpstate[celery]'`` (``WebhookOutcome`` lives in ``mpstate.celery``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from mpstate._checks import check_id, check_positive
from mpstate.celery.webhook import PayloadAdapter, ProviderError, WebhookOutcome
from mpstate.errors import InvalidInputError
from mpstate.fields import ensure_storable

__all__ = [
    "ADAPTERS",
    "MESSAGE_LIMIT",
    "OpenAIFetch",
    "elevenlabs_adapter",
    "fal_adapter",
    "luma_adapter",
    "openai_adapter",
    "replicate_adapter",
]

#: Longest progress or error message an adapter reports (longer ones end with "…").
MESSAGE_LIMIT = 500

#: Turns an OpenAI object id (``resp_…``, ``video_…``, ``batch_…``) into the step's outputs.
OpenAIFetch = Callable[[str], Mapping[str, Any]]

_SHOWN_CHARS = 80
_CODE_CHARS = 100


# -- Replicate ----------------------------------------------------------------------------------

_REPLICATE_RUNNING = frozenset({"starting", "processing"})
#: Terminal failures: code and whether a retry may succeed. ``aborted`` means the prediction's
#: deadline passed before it started (no capacity in time), so running it again may work;
#: ``canceled`` was a user's or a deadline's decision while it ran, not a fault to retry.
_REPLICATE_FAILURES: Mapping[str, tuple[str, bool]] = {
    "failed": ("REPLICATE_FAILED", False),
    "canceled": ("REPLICATE_CANCELED", False),
    "aborted": ("REPLICATE_ABORTED", True),
}
#: A tqdm bar ("45%|████▌     | 23/50 [...]"), what most models print while they run.
_PERCENT_BAR = re.compile(r"(\d{1,3})%\|")


def replicate_adapter(price_per_second: float | None = None) -> PayloadAdapter:
    """Read a Replicate webhook: the prediction object itself, sent on start, on new logs or
    output, and on completion.

    Source: https://replicate.com/docs/topics/webhooks/receive-webhook (body = the prediction
    object ``{id, version, status, input, output, error, logs, metrics, ...}``) and
    https://replicate.com/docs/topics/predictions/lifecycle (statuses ``starting``,
    ``processing``, ``succeeded``, ``failed``, ``canceled``, ``aborted``).

    - ``succeeded``: outputs ``{"output": <output>, "metrics": <metrics>}``; artifact ids are the
      output's URLs when it is a URL or a list of them (a text model's output, a string or a list
      of tokens, gives none).
    - ``failed`` / ``canceled`` / ``aborted``: failed, codes ``REPLICATE_FAILED`` /
      ``REPLICATE_CANCELED`` / ``REPLICATE_ABORTED``, the prediction's ``error`` as message;
      only ``aborted`` is retryable.
    - ``starting`` / ``processing``: running; the message is the last log line, and the percent
      of a progress bar on that line (tqdm's ``45%|``) is the progress.

    Replicate reports ``metrics.predict_time`` in seconds, not dollars: the cost is 0 unless
    ``price_per_second`` (your hardware's rate, in USD) is given, then ``predict_time`` times it.
    """
    price = (
        None
        if price_per_second is None
        else check_positive(price_per_second, "price_per_second", zero_ok=True)
    )

    def adapt_replicate(payload: Mapping[str, Any]) -> WebhookOutcome:
        prediction = _object(payload, "replicate payload")
        job_id = _job_id(prediction.get("id"), "replicate payload field 'id'")
        status = _word(prediction.get("status"), "replicate payload field 'status'")
        if status in _REPLICATE_RUNNING:
            line = _last_line(prediction.get("logs"))
            return _running(
                "replicate", job_id, message=line or status, progress_pct=_bar_percent(line)
            )
        if status != "succeeded" and status not in _REPLICATE_FAILURES:
            return _running("replicate", job_id, message=f"unrecognized status {_show(status)}")
        raw_metrics = prediction.get("metrics")
        metrics = dict(raw_metrics) if isinstance(raw_metrics, Mapping) else {}
        cost = _replicate_cost(metrics, price)
        if status == "succeeded":
            output = prediction.get("output")
            return _outcome(
                "replicate",
                status="succeeded",
                job_id=job_id,
                artifact_ids=_urls(output if isinstance(output, list) else [output]),
                cost_usd=cost,
                outputs={"output": output, "metrics": metrics},
            )
        code, retryable = _REPLICATE_FAILURES[status]
        message = _describe(prediction.get("error")) or f"prediction {status}"
        return _failed("replicate", job_id, code, message, retryable=retryable, cost_usd=cost)

    return adapt_replicate


def _replicate_cost(metrics: Mapping[str, Any], price: float | None) -> float:
    predict_time = metrics.get("predict_time")
    if price is None or isinstance(predict_time, bool):
        return 0.0
    if not isinstance(predict_time, int | float) or predict_time < 0:
        return 0.0  # no usable duration: report no cost rather than refuse a finished job
    try:
        cost = float(predict_time) * price
    except OverflowError:  # an integer beyond any float
        cost = math.inf
    if not math.isfinite(cost):
        raise InvalidInputError(
            f"replicate payload field 'metrics.predict_time' is out of range: {predict_time!r}"
        )
    return cost


def _bar_percent(line: str | None) -> float | None:
    match = _PERCENT_BAR.search(line) if line else None
    return min(float(match.group(1)), 100.0) if match else None


# -- OpenAI -------------------------------------------------------------------------------------

_OPENAI_SUCCESSES = frozenset({"completed", "succeeded"})
#: Terminal failures by the type's suffix, and whether a retry may succeed: an ``expired`` batch
#: ran out of its completion window (capacity), the others ended for a reason a rerun repeats.
_OPENAI_FAILURES: Mapping[str, bool] = {
    "failed": False,
    "cancelled": False,
    "canceled": False,  # eval.run.canceled is spelled with one l
    "incomplete": False,
    "expired": True,
}


def openai_adapter(fetch: OpenAIFetch | None = None) -> PayloadAdapter:
    """Read an OpenAI webhook event: a thin ``{id: "evt_…", type, created_at, data: {id}}``.

    Source: https://developers.openai.com/api/docs/api-reference/webhook-events (shape, types
    ``response.*``, ``batch.*``, ``fine_tuning.job.*``, ``eval.run.*``),
    https://developers.openai.com/api/docs/guides/video-generation (``video.completed``,
    ``video.failed``) and openai-python ``src/openai/types/webhooks/`` (one model per type).

    The job id is ``data.id`` (the response, video, batch or job); the event's own ``id`` is a
    delivery id. The type's last segment decides:

    - ``completed`` / ``succeeded``: succeeded. The payload carries no result, so the outputs
      are ``fetch(data.id)`` when a ``fetch`` is given (e.g. ``lambda id:
      client.videos.retrieve(id).model_dump(mode="json")``), else ``{"id": data.id}``; the
      artifact id is ``data.id`` either way (the handle to download the result).
    - ``failed`` / ``cancelled`` / ``canceled`` / ``incomplete`` / ``expired``: failed, code
      ``OPENAI_`` + the type in capitals (``video.failed`` → ``OPENAI_VIDEO_FAILED``); only
      ``expired`` is retryable. The message names the type and id (the event has no reason;
      fetch the object for it).
    - anything else (``agent.session.idle``, types OpenAI adds later): running, the type as
      message. Events without ``data.id`` (``realtime.call.incoming`` carries ``call_id``) are
      not about a job and are refused.

    ``fetch`` runs wherever the adapter runs, so keep it quick; its own errors (an outage)
    propagate unchanged, and a result that is not a JSON-like mapping is an
    ``InvalidInputError``.
    """
    if fetch is not None and not callable(fetch):
        raise InvalidInputError(f"fetch must be callable, not {_show(fetch)}")

    def adapt_openai(payload: Mapping[str, Any]) -> WebhookOutcome:
        event = _object(payload, "openai event")
        kind = _word(event.get("type"), "openai event field 'type'")
        data = _object(event.get("data"), "openai event field 'data'")
        job_id = _job_id(data.get("id"), "openai event field 'data.id'")
        suffix = kind.rpartition(".")[2]
        if suffix in _OPENAI_SUCCESSES:
            outputs = {"id": job_id} if fetch is None else _fetched(fetch, job_id)
            return _outcome(
                "openai", status="succeeded", job_id=job_id, artifact_ids=[job_id], outputs=outputs
            )
        retryable = _OPENAI_FAILURES.get(suffix)
        if retryable is not None:
            code = "OPENAI_" + re.sub(r"[^A-Z0-9]+", "_", kind.upper()).strip("_")
            return _failed(
                "openai", job_id, code[:_CODE_CHARS], f"{kind} for {job_id}", retryable=retryable
            )
        return _running("openai", job_id, message=kind)

    return adapt_openai


def _fetched(fetch: OpenAIFetch, job_id: str) -> dict[str, Any]:
    result = fetch(job_id)
    if not isinstance(result, Mapping) or not all(isinstance(key, str) for key in result):
        raise InvalidInputError(
            f"fetch({job_id!r}) must return a mapping with string keys, not {_show(result)}"
        )
    outputs = dict(result)
    try:
        ensure_storable(outputs, f"fetch({job_id!r}) result")
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    return outputs


# -- fal ----------------------------------------------------------------------------------------


def fal_adapter() -> PayloadAdapter:
    """Read a fal queue webhook, sent once when the request is done.

    Source: https://docs.fal.ai/model-endpoints/webhooks (body ``{request_id,
    gateway_request_id, status: "OK" | "ERROR", payload, error}``, and ``payload: null`` with
    ``payload_error`` when the result is not JSON-serializable).

    The job id is ``request_id`` (what the queue returned at submit; ``gateway_request_id``
    changes when fal retried internally).

    - ``OK``: succeeded, outputs = ``payload`` (the model's output). Artifact ids are the URLs of
      fal File objects at the top of it: ``images[].url``, ``image.url``, ``video.url``,
      ``audio.url``.
    - ``OK`` with ``payload: null`` and a ``payload_error``: failed, ``FAL_PAYLOAD_ERROR``, not
      retryable. The model ran, but its result never reached us and a rerun would produce the
      same unserializable output; the step must not complete with no outputs.
    - ``ERROR``: failed, ``FAL_ERROR``, not retryable (fal already retried; the example error is
      a 422 validation error); the message is ``error`` plus the payload's ``detail``.
    """

    def adapt_fal(payload: Mapping[str, Any]) -> WebhookOutcome:
        body = _object(payload, "fal payload")
        job_id = _job_id(body.get("request_id"), "fal payload field 'request_id'")
        status = _word(body.get("status"), "fal payload field 'status'")
        result = body.get("payload")
        if status == "OK":
            payload_error = _describe(body.get("payload_error"))
            if result is None and payload_error:
                return _failed("fal", job_id, "FAL_PAYLOAD_ERROR", payload_error, retryable=False)
            if isinstance(result, Mapping):
                outputs = dict(result)
            else:  # not an object: kept whole, under a name
                outputs = {} if result is None else {"payload": result}
            return _outcome(
                "fal",
                status="succeeded",
                job_id=job_id,
                artifact_ids=_fal_files(result),
                outputs=outputs,
            )
        if status == "ERROR":
            message = _describe(body.get("error")) or "fal reported an error"
            detail = result.get("detail") if isinstance(result, Mapping) else None
            if detail is not None:
                message = f"{message}: {_describe(detail)}"
            return _failed("fal", job_id, "FAL_ERROR", message, retryable=False)
        return _running("fal", job_id, message=f"unrecognized status {_show(status)}")

    return adapt_fal


def _fal_files(result: object) -> list[str]:
    if not isinstance(result, Mapping):
        return []
    images = result.get("images")
    files = [*(images if isinstance(images, list) else []), *(result.get(k) for k in _FAL_FILES)]
    return _urls(file.get("url") for file in files if isinstance(file, Mapping))


_FAL_FILES = ("image", "video", "audio")


# -- ElevenLabs ---------------------------------------------------------------------------------

#: Events that deliver a finished job's result.
_ELEVENLABS_RESULTS = frozenset({"speech_to_text_transcription", "post_call_transcription"})
#: Fields too big to keep in a run's state (``post_call_audio``'s base64 MP3).
_ELEVENLABS_BULKY = frozenset({"full_audio"})


def elevenlabs_adapter() -> PayloadAdapter:
    """Read an ElevenLabs workspace webhook: ``{type, event_timestamp, data}``.

    Sources: https://elevenlabs.io/docs/eleven-agents/workflows/post-call-webhooks
    (``post_call_transcription``, ``post_call_audio``, ``call_initiation_failure`` with
    ``data.failure_reason`` and ``data.metadata``) and
    https://elevenlabs.io/docs/eleven-api/guides/how-to/speech-to-text/batch/webhooks
    (``speech_to_text_transcription``: ``data.request_id``, ``data.transcription``,
    ``data.webhook_metadata``).

    The job id is ``data.request_id`` (async speech to text: what the request returned), or
    ``data.conversation_id`` when there is no request id (agent calls).

    - ``speech_to_text_transcription`` / ``post_call_transcription``: succeeded, outputs = ``data``
      (``transcription`` or ``transcript`` and ``analysis``, and ``webhook_metadata`` as sent);
      no artifact ids, the result is the text itself.
    - ``call_initiation_failure``: failed, ``ELEVENLABS_CALL_INITIATION_FAILED``, the failure
      reason (``busy``, ``no-answer``, ``unknown``; plus the SIP error when given) as message.
      Not retryable: a retry would place the call again, which is the pipeline's decision.
    - anything else (``post_call_audio``, which follows the transcription; types added later):
      running, the type as message; ``full_audio`` is never kept.
    """

    def adapt_elevenlabs(payload: Mapping[str, Any]) -> WebhookOutcome:
        event = _object(payload, "elevenlabs event")
        kind = _word(event.get("type"), "elevenlabs event field 'type'")
        data = _object(event.get("data"), "elevenlabs event field 'data'")
        raw_id = data.get("request_id")
        job_id = _job_id(
            data.get("conversation_id") if raw_id is None else raw_id,
            "elevenlabs event field 'data.request_id' (or 'data.conversation_id')",
        )
        if kind in _ELEVENLABS_RESULTS:
            outputs = {key: value for key, value in data.items() if key not in _ELEVENLABS_BULKY}
            return _outcome("elevenlabs", status="succeeded", job_id=job_id, outputs=outputs)
        if kind == "call_initiation_failure":
            message = _describe(data.get("failure_reason")) or "call initiation failed"
            metadata = data.get("metadata")
            body = metadata.get("body") if isinstance(metadata, Mapping) else None
            reason = _describe(body.get("error_reason")) if isinstance(body, Mapping) else None
            if reason:
                message = f"{message}: {reason}"
            return _failed(
                "elevenlabs",
                job_id,
                "ELEVENLABS_CALL_INITIATION_FAILED",
                message,
                retryable=False,
            )
        return _running("elevenlabs", job_id, message=kind)

    return adapt_elevenlabs


# -- Luma ---------------------------------------------------------------------------------------

_LUMA_RUNNING = frozenset({"queued", "dreaming"})
_LUMA_ASSETS = ("video", "image")


def luma_adapter() -> PayloadAdapter:
    """Read a Luma Dream Machine callback: the Generation object, sent on every update.

    Sources: https://docs.lumalabs.ai/changelog/callbacks-and-credits-balance (``callback_url``;
    "any and all the updates are sent (status, video url, failure reason)") and lumaai-python
    ``src/lumaai/types/generation.py`` (``id``, ``state`` ∈ ``queued`` / ``dreaming`` /
    ``completed`` / ``failed``, ``failure_reason``, ``assets: {video, image, progress_video}``).

    - ``completed``: succeeded, outputs = ``assets``; artifact ids are ``assets.video`` and
      ``assets.image`` (``progress_video`` is a preview, not a result).
    - ``failed``: failed, ``LUMA_FAILED``, ``failure_reason`` as message, not retryable.
    - ``queued`` / ``dreaming``: running, the state as message (Luma reports no percentage).
    """

    def adapt_luma(payload: Mapping[str, Any]) -> WebhookOutcome:
        generation = _object(payload, "luma generation")
        job_id = _job_id(generation.get("id"), "luma generation field 'id'")
        state = _word(generation.get("state"), "luma generation field 'state'")
        if state == "completed":
            raw_assets = generation.get("assets")
            assets = dict(raw_assets) if isinstance(raw_assets, Mapping) else {}
            return _outcome(
                "luma",
                status="succeeded",
                job_id=job_id,
                artifact_ids=_urls(assets.get(key) for key in _LUMA_ASSETS),
                outputs=assets,
            )
        if state == "failed":
            message = _describe(generation.get("failure_reason")) or "generation failed"
            return _failed("luma", job_id, "LUMA_FAILED", message, retryable=False)
        if state in _LUMA_RUNNING:
            return _running("luma", job_id, message=state)
        return _running("luma", job_id, message=f"unrecognized state {_show(state)}")

    return adapt_luma


#: One adapter per provider with default options (no Replicate price, no OpenAI fetch).
ADAPTERS: Mapping[str, PayloadAdapter] = MappingProxyType(
    {
        "replicate": replicate_adapter(),
        "openai": openai_adapter(),
        "fal": fal_adapter(),
        "elevenlabs": elevenlabs_adapter(),
        "luma": luma_adapter(),
    }
)


# -- shared -------------------------------------------------------------------------------------


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be a JSON object, not {_show(value)}")
    return value


def _job_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} must be a non-empty string, not {_show(value)}")
    return check_id(value, what)


def _word(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} must be a non-empty string, not {_show(value)}")
    return value


def _urls(values: Iterable[object]) -> list[str]:
    """The distinct http(s) URLs among ``values``, in order."""
    found = [v for v in values if isinstance(v, str) and v.startswith(("https://", "http://"))]
    return list(dict.fromkeys(found))


def _last_line(logs: object) -> str | None:
    if not isinstance(logs, str):
        return None
    # Progress bars rewrite their line with "\r"; the newest state is after the last one.
    for line in reversed(re.split(r"[\r\n]+", logs)):
        if line.strip():
            return line.strip()
    return None


def _describe(value: object) -> str | None:
    """A provider's error or reason as text (``None`` when it gives none)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):  # not JSON after all (a caller's own mapping)
        return repr(value)


def _show(value: object) -> str:
    """A short form of a bad value for an error message (a body may hold anything, at length)."""
    if value is None:
        return "null"
    if isinstance(value, Mapping | list):
        return f"a {type(value).__name__} of {len(value)}"
    return _clip(repr(value), _SHOWN_CHARS)


def _clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _running(
    provider: str, job_id: str, *, message: str, progress_pct: float | None = None
) -> WebhookOutcome:
    return _outcome(
        provider,
        status="running",
        job_id=job_id,
        message=_clip(message),
        progress_pct=progress_pct,
    )


def _failed(
    provider: str,
    job_id: str,
    code: str,
    message: str,
    *,
    retryable: bool,
    cost_usd: float = 0.0,
) -> WebhookOutcome:
    error = ProviderError(code=code, message=_clip(message), retryable=retryable)
    return _outcome(provider, status="failed", job_id=job_id, error=error, cost_usd=cost_usd)


def _outcome(provider: str, **fields: Any) -> WebhookOutcome:
    # The last guard of "InvalidInputError and nothing else": whatever slipped past the checks
    # above (a non-string key in a caller's mapping) is still a payload that cannot be read.
    try:
        return WebhookOutcome(**fields)
    except PydanticValidationError as exc:
        raise InvalidInputError(f"{provider} payload gives no valid outcome: {exc}") from exc
