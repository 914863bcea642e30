"""Deleting what one test wrote to the suite's Redis: a store prefix, a Celery queue (SCAN + DEL).

The prefix can also be deleted from a Redis Cluster (every master scanned, one DEL per key).

Never FLUSH: with ``MPSTATE_TEST_REDIS_URL`` the server may hold someone else's keys.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from mpstate.redis.keys import RedisKeys

__all__ = ["delete_prefix", "delete_prefix_on_cluster", "delete_queue"]


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


def delete_prefix_on_cluster(client: RedisCluster, prefix: str) -> None:
    """``delete_prefix`` for a Redis Cluster: SCAN every master, DEL key by key.

    One DEL of keys in several slots fails with CROSSSLOT, so each key gets its own DEL, sent in
    a pipeline on the connection to the master that holds it.
    """
    pattern = RedisKeys(prefix).pattern()
    for master in client.get_primaries():  # type: ignore[no-untyped-call]
        node = client.get_redis_connection(master)
        keys = list(node.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 500):
            with node.pipeline(transaction=False) as pipe:
                for key in keys[start : start + 500]:
                    pipe.delete(key)
                pipe.execute()
