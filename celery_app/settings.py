"""The example application's configuration, read from the environment (twelve-factor style).

Every setting but the webhook secrets has an embedded default, so ``make demo`` needs no server:
``memory://`` for the broker and the store. The secrets have none: the embedded demo makes one for
each run, and a deployment sets them with the variables below (docker-compose.yml does), or the
simulated provider refuses to start (as ``mpstate webhooks serve`` does).

=============================  ============================================================
``MPSTATE_BROKER_URL``         Celery broker (``redis://...``, ``amqp://...``, ``memory://``)
``MPSTATE_STORE_URL``          run store: ``redis://...``, ``redis+cluster://...`` or ``memory://``
``MPSTATE_PREFIX``             key prefix of the store (and of the demo's artifact cache)
``MPSTATE_TENANT``             tenant the example's runs belong to
``MPSTATE_QUEUE``              queue the step tasks are published to
``MPSTATE_FLOWER_URL``         where Flower is served (for links from the CLI)
``MPSTATE_VISIBILITY_TIMEOUT`` seconds before Redis redelivers an unacknowledged message
``MPSTATE_PROVIDER_URL``       the (simulated) video provider's base URL
``MPSTATE_RECEIVER_URL``       the webhook receiver's base URL, as the provider reaches it
``MPSTATE_WEBHOOK_SECRETS``    ``provider=secret[,provider=secret...]``, shared with providers
``MPSTATE_POLL_PROVIDER``      ``1``: also poll the video provider for its jobs (a provider
                               that never calls back, or a safety net for lost callbacks)
=============================  ============================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from mpstate.webhooks import parse_secrets

__all__ = ["Settings"]

#: The environment variable of each setting.
ENVIRONMENT = {
    "broker_url": "MPSTATE_BROKER_URL",
    "store_url": "MPSTATE_STORE_URL",
    "prefix": "MPSTATE_PREFIX",
    "tenant_id": "MPSTATE_TENANT",
    "queue": "MPSTATE_QUEUE",
    "flower_url": "MPSTATE_FLOWER_URL",
    "visibility_timeout_s": "MPSTATE_VISIBILITY_TIMEOUT",
    "provider_url": "MPSTATE_PROVIDER_URL",
    "receiver_url": "MPSTATE_RECEIVER_URL",
    "webhook_secrets": "MPSTATE_WEBHOOK_SECRETS",
    "poll_provider": "MPSTATE_POLL_PROVIDER",
}


class Settings(BaseModel):
    """What the example app needs to know about its deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker_url: str = "memory://"
    store_url: str = "memory://"
    prefix: str = Field(default="mp", min_length=1)
    tenant_id: str = Field(default="demo", min_length=1)
    queue: str = Field(default="mpstate", min_length=1)
    flower_url: str | None = None
    #: Longer than the longest step: Redis redelivers an unacked message after this long, and a
    #: step still running would then run twice (the store makes that harmless, not free).
    visibility_timeout_s: int = Field(default=3600, ge=1)
    provider_url: str = "http://127.0.0.1:8001"
    receiver_url: str = "http://127.0.0.1:8000"
    #: No default: a deployment names its own (the embedded demo makes one per run).
    webhook_secrets: str = ""
    #: Poll the video provider for its jobs too (``GET /jobs/{id}``), besides its callbacks.
    poll_provider: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from the environment (``os.environ`` by default), then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            field: env[name] for field, name in ENVIRONMENT.items() if env.get(name)
        }
        values.update(overrides)
        return cls.model_validate(values)

    def secret_for(self, provider: str) -> str:
        """The first (current) signing secret of ``provider``."""
        secrets = parse_secrets(self.webhook_secrets).get(provider)
        if not secrets:
            raise LookupError(f"MPSTATE_WEBHOOK_SECRETS has no secret for provider {provider!r}")
        return secrets[0]
