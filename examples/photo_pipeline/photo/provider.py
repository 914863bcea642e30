"""A stand-in for a video provider's client: replace ``submit`` with your provider's SDK call.

The provider renders the video and later POSTs the outcome to the receiver (``photo.receiver``),
``{"jobId": ..., "status": "succeeded", "artifactIds": [...], "costUsd": ...}``, signed with the
secret you share with it (``PHOTO_VIDEO_SECRET``).
"""

from __future__ import annotations

import logging
import uuid

log = logging.getLogger(__name__)


def submit(image_id: str) -> str:
    """Ask for a video of ``image_id``; returns the provider's job id."""
    job_id = f"vid-{uuid.uuid4().hex[:12]}"
    log.info("video job %s submitted for %s", job_id, image_id)
    return job_id
