"""The demo's artifact cache: shared through Redis, and never the reason a step fails."""

from __future__ import annotations

import logging

import pytest
import redis

from celery_app.cache import RedisCache
from mpstate.testing import RedisServer


def test_entries_are_shared_through_redis(redis_url: str, prefix: str) -> None:
    writer = RedisCache(redis.Redis.from_url(redis_url), prefix)
    reader = RedisCache(redis.Redis.from_url(redis_url), prefix)

    writer.put("gen-1", ["img-1"])

    assert reader.get("gen-1") == ["img-1"]
    assert reader.get("gen-2") is None


def test_an_unreachable_cache_is_a_miss_and_a_skipped_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Found by the chaos suite: image.generate read the cache during a Redis restart and the
    # ConnectionError failed the run for good.
    with RedisServer() as server:
        cache = RedisCache(redis.Redis.from_url(server.url, socket_timeout=1), "chaos")
        cache.put("gen-1", ["img-1"])
        server.stop()

        with caplog.at_level(logging.WARNING, logger="celery_app.cache"):
            assert cache.get("gen-1") is None
            cache.put("gen-2", ["img-2"])

    assert len([r for r in caplog.records if "artifact cache unavailable" in r.message]) == 2
