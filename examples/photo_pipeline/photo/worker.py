"""The worker's entry point: ``celery -A photo.worker worker``. Binds MpState as it starts, to
the store at ``app.conf.mpstate_store_url`` (``PHOTO_STORE_URL``)."""

from __future__ import annotations

from mpstate.celery import MpState
from photo.tasks import app

__all__ = ["app", "mp"]

mp = MpState(app)
