"""Cutting a replica off its primary, for the tests of replica acknowledgements and failover."""

from __future__ import annotations

import time

import redis

from mpstate.testing import RedisServer

__all__ = ["cut_replication"]


def cut_replication(primary: RedisServer, replica: RedisServer) -> None:
    """Stop the replica from receiving anything more from its primary, for good.

    A wrong ``masterauth`` makes every resync attempt fail, and killing the replica's link on the
    primary ends the current one: writes from now on exist only on the primary.
    """
    with redis.Redis(port=replica.port) as admin:
        admin.config_set("masterauth", "not-the-password")
    with redis.Redis(port=primary.port) as admin:
        admin.client_kill_filter(_type="replica")
        deadline = time.monotonic() + 10
        while int(admin.info("replication")["connected_slaves"]) != 0:
            assert time.monotonic() < deadline, "the replica kept its link"
            time.sleep(0.02)
