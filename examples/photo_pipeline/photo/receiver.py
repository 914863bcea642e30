"""The webhook receiver: ``uvicorn --factory photo.receiver:create_app``.

The video provider POSTs its outcome to ``/webhooks/video``; the receiver checks the signature,
applies it to the waiting step (the run resumes and completes) and answers 202.
"""

from __future__ import annotations

import os

from celery import Celery
from starlette.applications import Starlette

from mpstate.webhooks import webhook_app

__all__ = ["create_app", "receiver_for"]


def receiver_for(app: Celery, video_secret: str) -> Starlette:
    """The receiver for ``app`` (with MpState bound to it: callbacks are applied inline)."""
    return webhook_app(app, {"video": video_secret})


def create_app() -> Starlette:
    from photo.worker import app  # noqa: PLC0415 - binds MpState, as the process starts

    return receiver_for(app, os.environ["PHOTO_VIDEO_SECRET"])
