"""The demo's artifact cache: the same generation input twice gives the stored artifact.

A hit makes ``image.generate`` return ``self.cached(...)``, which logs step-cached instead of
step-completed. In memory for the embedded demo; in Redis (shared by every worker) otherwise.
An unreachable cache is a miss, never a failed step (the chaos suite's Redis restart failed a
run through this cache before).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Protocol

import redis
from redis.cluster import RedisCluster

from mpstate.redis.urls import cluster_url

__all__ = ["ArtifactCache", "MemoryCache", "RedisCache", "cache_for"]

log = logging.getLogger("celery_app.cache")


class ArtifactCache(Protocol):
    def get(self, key: str) -> list[str] | None:
        """The artifact ids stored under ``key``, or None."""

    def put(self, key: str, artifact_ids: list[str]) -> None:
        """Remember ``artifact_ids`` under ``key``."""


class MemoryCache:
    """A process-local cache (the embedded demo runs its worker in the same process)."""

    def __init__(self) -> None:
        self._entries: dict[str, list[str]] = {}
        self._mutex = threading.Lock()

    def get(self, key: str) -> list[str] | None:
        with self._mutex:
            found = self._entries.get(key)
            return None if found is None else list(found)

    def put(self, key: str, artifact_ids: list[str]) -> None:
        with self._mutex:
            self._entries[key] = list(artifact_ids)


class RedisCache:
    """Entries under ``{prefix}:demo-cache:{key}``, expiring after ``ttl_s``."""

    def __init__(
        self, client: redis.Redis | RedisCluster, prefix: str, ttl_s: int = 86_400
    ) -> None:
        self.client = client
        self.prefix = f"{prefix}:demo-cache:"
        self.ttl_s = ttl_s

    def get(self, key: str) -> list[str] | None:
        """The cached artifacts; a miss when Redis is unreachable (a cache never fails a step)."""
        try:
            raw = self.client.get(self.prefix + key)
        except redis.RedisError as exc:
            log.warning("artifact cache unavailable, treated as a miss: %s", exc)
            return None
        return None if raw is None else list(json.loads(raw))

    def put(self, key: str, artifact_ids: list[str]) -> None:
        """Remember the artifacts; skipped with a warning when Redis is unreachable."""
        try:
            self.client.set(self.prefix + key, json.dumps(artifact_ids), ex=self.ttl_s)
        except redis.RedisError as exc:
            log.warning("artifact cache unavailable, entry not stored: %s", exc)


def cache_for(store_url: str, prefix: str) -> ArtifactCache:
    """A cache living where the store lives."""
    if store_url.startswith("memory://"):
        return MemoryCache()
    node_url = cluster_url(store_url)
    if node_url is not None:  # single-key commands only: any cluster client serves them
        return RedisCache(RedisCluster.from_url(node_url, socket_timeout=5.0), prefix)
    return RedisCache(redis.Redis.from_url(store_url, socket_timeout=5.0), prefix)
