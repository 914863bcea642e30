"""Deleting what one test wrote to the suite's Redis: a store prefix, a Celery queue (SCAN + DEL).

Never FLUSH: with ``MPSTATE_TEST_REDIS_URL`` the server may hold someone else's keys.
"""

from __future__ import annotations

import redis

from mpstate.redis.keys import RedisKeys

__all__ = ["delete_prefix", "delete_queue"]


def _delete(client: redis.Redis, keys: list[bytes]) -> None:
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Every key under the store prefix ``prefix`` (the demo's artifact cache included)."""
    _delete(client, list(client.scan_iter(match=RedisKeys(prefix).pattern(), count=1000)))


def delete_queue(client: redis.Redis, queue: str) -> None:
    """A kombu Redis queue: its list, its priority lists and its exchange bindings."""
    keys = []
    for key in client.scan_iter(match=f"*{queue}*", count=1000):
        name = key.decode()
        if (
            name == queue
            or name.startswith(f"{queue}\x06\x16")  # priority lists
            or name.endswith(f".{queue}")  # _kombu.binding[_permanent].<queue>
        ):
            keys.append(key)
    _delete(client, keys)
