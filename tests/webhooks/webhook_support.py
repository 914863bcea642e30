"""Helpers for the receiver tests: the providers' secrets, signing a body, and reading the queue.

A harness whose worker is not started keeps every published message in its queue, a Redis list
on the suite's broker named after the queue (kombu adds a suffix per priority). ``queued(h)``
decodes them, so a test can say exactly what the receiver published, or that it published
nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery_support import Harness

from mpstate.webhooks import signed_headers

VIDEO_SECRET = "whsec-video-current"
VIDEO_OLD_SECRET = "whsec-video-previous"
IMAGE_SECRET = "whsec-image"

#: Two providers, one of them in the middle of a secret rotation.
SECRETS = {"video": [VIDEO_SECRET, VIDEO_OLD_SECRET], "image": IMAGE_SECRET}

#: ``serve(asgi_app)`` (a fixture): the base URL of the app served on loopback.
Serve = Callable[[Any], str]

SUCCEEDED = {"jobId": "job-1", "status": "succeeded", "artifactIds": ["v1"], "costUsd": 0.5}


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def signed(
    body: bytes, secret: str = VIDEO_SECRET, *, timestamp: int | None = None
) -> dict[str, str]:
    """The headers a provider holding ``secret`` sends with ``body``."""
    return signed_headers(secret, body, timestamp=timestamp)


@dataclass(frozen=True)
class Queued:
    """One task message waiting in the broker."""

    task: str
    task_id: str
    args: tuple[Any, ...]


def queued(h: Harness) -> list[Queued]:
    """The task messages waiting in the harness's queue (only meaningful with no worker)."""
    messages = []
    for key in h.client.scan_iter(match=f"{h.queue}*"):
        if h.client.type(key) != b"list":
            continue
        for raw in h.client.lrange(key, 0, -1):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            headers = message["headers"]
            messages.append(Queued(headers["task"], headers["id"], tuple(args)))
    return messages
