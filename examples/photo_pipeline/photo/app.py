"""The Celery app and its configuration. No MpState here: each process binds it as it starts
(``photo.worker``, ``photo.receiver``, ``start_runs.py``; the tests' plugin binds its own)."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("photo", broker=os.environ.get("PHOTO_BROKER_URL", "redis://localhost:6379/0"))
app.conf.update(
    # Acknowledged when finished, redelivered when the worker died: mpstate dedupes both.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # Run state lives in mpstate: no result backend.
    task_ignore_result=True,
    include=["photo.tasks"],
    mpstate_store_url=os.environ.get("PHOTO_STORE_URL", "redis://localhost:6379/1"),
)
