"""The Celery app ``mpstate webhooks serve --app provider_receiver_app:app`` loads in the
end-to-end test: an ``MpState`` on the test's store (its Redis and prefix) publishing to the
test's queue, all named by the environment the test starts the receiver with."""

from __future__ import annotations

import os

from celery import Celery

from mpstate import RedisPipelineStateStore
from mpstate.celery import MpState

app = Celery(
    "mpstate-test-receiver", broker=os.environ["MPSTATE_TEST_BROKER_URL"], set_as_current=False
)
app.conf.update(
    task_default_queue=os.environ["MPSTATE_TEST_QUEUE"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)
mp = MpState(
    app,
    RedisPipelineStateStore.from_url(
        os.environ["MPSTATE_TEST_STORE_URL"], prefix=os.environ["MPSTATE_TEST_PREFIX"]
    ),
)
