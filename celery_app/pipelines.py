"""Pipeline definitions: which operations run, in which order, with which defaults."""

from __future__ import annotations

from typing import Any

from mpstate import PipelineRun
from mpstate.celery import MpState

__all__ = ["PRODUCT_PHOTO", "REVIEW_GATE", "start_product_photo"]

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


#: The approval gate ``--reviewed`` puts on the quality step: a person signs off on the image
#: before the video (the expensive step) is made; no verdict within an hour rejects it.
REVIEW_GATE: dict[str, Any] = {"type": "approval", "timeoutS": 3600, "onTimeout": "reject"}


def start_product_photo(
    mp: MpState,
    prompt: str,
    *,
    tenant_id: str,
    idempotency_key: str | None = None,
    reviewed: bool = False,
    budget_usd: float | None = None,
) -> PipelineRun:
    """Start one product-photo run for ``prompt``; both branches' first steps are enqueued.

    ``reviewed``: the quality step's result waits for a person's approval (``REVIEW_GATE``).
    ``budget_usd``: the run's ``maxUsd`` (the video step's estimate is its task's, $0.50).
    """
    steps = [dict(step) for step in PRODUCT_PHOTO]
    steps[0] = {**steps[0], "inputs": {"prompt": prompt}}
    steps[1] = {**steps[1], "inputs": {"script": f"Introducing {prompt}."}}
    if reviewed:
        steps[3] = {**steps[3], "gate": REVIEW_GATE}
    return mp.start_run(
        "product-photo",
        steps,
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        budget=None if budget_usd is None else {"maxUsd": budget_usd},
    )
