"""Pipeline definitions: which operations run, in which order, with which defaults."""

from __future__ import annotations

from typing import Any

from mpstate import PipelineRun
from mpstate.celery import MpState

__all__ = ["PRODUCT_PHOTO", "start_product_photo"]

#: generate -> upscale -> quality gate -> video (the video waits for the provider's webhook).
PRODUCT_PHOTO: list[dict[str, Any]] = [
    {"stepId": "generate", "operation": "image.generate"},
    {"stepId": "upscale", "operation": "image.upscale", "inputs": {"factor": 2}},
    {"stepId": "quality", "operation": "image.quality_gate", "inputs": {"min_quality": 0.6}},
    {"stepId": "video", "operation": "video.generate", "inputs": {"seconds": 4}, "maxRetries": 3},
]


def start_product_photo(
    mp: MpState, prompt: str, *, tenant_id: str, idempotency_key: str | None = None
) -> PipelineRun:
    """Start one product-photo run for ``prompt``; the first step is enqueued."""
    steps = [dict(step) for step in PRODUCT_PHOTO]
    steps[0] = {**steps[0], "inputs": {"prompt": prompt}}
    return mp.start_run(
        "product-photo", steps, tenant_id=tenant_id, idempotency_key=idempotency_key
    )
