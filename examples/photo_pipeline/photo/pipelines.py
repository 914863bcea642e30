"""Starting runs: which steps a product photo (or video) takes."""

from __future__ import annotations

from mpstate import PipelineRun
from mpstate.celery import MpState

__all__ = ["start_product_photo"]


def start_product_photo(
    mp: MpState, prompt: str, *, order_id: str | None = None, video: bool = False
) -> PipelineRun:
    """Start a product-photo run; the same ``order_id`` returns the run already started."""
    steps = [
        {"stepId": "generate", "operation": "photo.generate", "inputs": {"prompt": prompt}},
        {"stepId": "upscale", "operation": "photo.upscale", "dependsOn": ["generate"]},
    ]
    if video:
        steps.append({"stepId": "video", "operation": "photo.video", "dependsOn": ["upscale"]})
    return mp.start_run(
        "product-video" if video else "product-photo",
        steps,
        tenant_id="shop",
        idempotency_key=order_id,
    )
