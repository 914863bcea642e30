"""Building the example Celery app: production settings, the store, ``MpState``, the operations.

``create_app(settings)`` is what the worker (``celery -A celery_app worker``), Flower, the
receiver and the embedded demo each build; only the settings differ.
"""

from __future__ import annotations

from celery import Celery

from celery_app.cache import cache_for
from celery_app.operations import Services, register_operations
from celery_app.provider import poll_job
from celery_app.settings import Settings
from mpstate import InMemoryPipelineStateStore, PipelineStateStore
from mpstate.celery import MpState

__all__ = ["create_app", "store_for"]


def store_for(settings: Settings) -> PipelineStateStore:
    """The run store the settings name (Redis, or in memory for a single-process demo)."""
    if settings.store_url.startswith("memory://"):
        return InMemoryPipelineStateStore()
    from mpstate.redis import RedisPipelineStateStore  # noqa: PLC0415 - the redis extra

    return RedisPipelineStateStore.from_url(settings.store_url, prefix=settings.prefix)


def _transport_options(settings: Settings) -> dict[str, float]:
    options: dict[str, float] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.broker_url.startswith("memory://"):
        # kombu's in-memory transport polls its queues (every second by default).
        options["polling_interval"] = 0.01
    return options


def create_app(settings: Settings, store: PipelineStateStore | None = None) -> Celery:
    """A Celery app configured as a production pipeline app should be, with mpstate bound."""
    app = Celery("celery_app", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        # A step is acknowledged when it finished, and redelivered when its worker died:
        # mpstate dedupes the second start and the second completion.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # Run state lives in mpstate; Celery's result backend is not needed.
        task_ignore_result=True,
        # Flower and `celery events` see steps (and their PROGRESS) only with events on.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue,
        timezone="UTC",
        mpstate_webhook_retry_interval_s=1.0,
        # The simulated provider answers in seconds: poll it often (real ones: the defaults).
        mpstate_poll_interval_s=0.5,
        mpstate_poll_max_interval_s=2.0,
    )
    mp = MpState(app, store if store is not None else store_for(settings))
    if settings.poll_provider:
        provider_url = settings.provider_url
        mp.register_poller("video", lambda job_id: poll_job(provider_url, job_id))
    register_operations(
        app,
        Services(
            cache=cache_for(settings.store_url, settings.prefix),
            provider_url=settings.provider_url,
            receiver_url=settings.receiver_url,
        ),
    )
    return app
