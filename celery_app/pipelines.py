"""Pipeline definitions: which operations run, in which order, with which defaults."""

from __future__ import annotations

from typing import Any

from mpstate import PipelineRun
from mpstate.celery import MpState

__all__ = ["PRODUCT_PHOTO", "start_product_photo"]

#: Two branches that run at once, joined by the video (which waits for the provider's webhook)::
#:
#:     generate -> upscale -> quality gate --+
#:                                           +--> video
#:     voiceover ----------------------------+
PRODUCT_PHOTO: list[dict[str, Any]] = [
    {"stepId": "generate", "operation": "image.generate", "dependsOn": []},
    {
        "stepId": "voiceover",
        "operation": "audio.voiceover",
        "inputs": {"script": "Introducing our new product."},
        "dependsOn": [],
    },
    {
        "stepId": "upscale",
        "operation": "image.upscale",
        "inputs": {"factor": 2},
        "dependsOn": ["generate"],
    },
    {
        "stepId": "quality",
        "operation": "image.quality_gate",
        "inputs": {"min_quality": 0.6},
        "dependsOn": ["upscale"],
    },
    {
        "stepId": "video",
        "operation": "video.generate",
        "inputs": {"seconds": 4},
        "maxRetries": 3,
        "dependsOn": ["quality", "voiceover"],
    },
]


def start_product_photo(
    mp: MpState, prompt: str, *, tenant_id: str, idempotency_key: str | None = None
) -> PipelineRun:
    """Start one product-photo run for ``prompt``; both branches' first steps are enqueued."""
    steps = [dict(step) for step in PRODUCT_PHOTO]
    steps[0] = {**steps[0], "inputs": {"prompt": prompt}}
    steps[1] = {**steps[1], "inputs": {"script": f"Introducing {prompt}."}}
    return mp.start_run(
        "product-photo", steps, tenant_id=tenant_id, idempotency_key=idempotency_key
    )
