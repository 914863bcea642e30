"""The servers the multi-process races run against: a real single Redis and a real Redis Cluster
(``MPSTATE_TEST_CLUSTER``; skipped without it).

Child processes build their own store from ``Target.url`` (``redis+cluster://`` for the cluster);
the parent inspects the outcome through ``Target.client`` and ``Target.store()``.
"""

from __future__ import annotations

import pytest
from race_helpers import Target


@pytest.fixture(params=["redis", "cluster"])
def target(request: pytest.FixtureRequest, prefix: str) -> Target:
    """A real Redis, or a real 3-master cluster; the test's prefix is deleted afterwards."""
    if request.param == "cluster":
        scheme, _, node = request.getfixturevalue("cluster_url").partition("://")
        client = request.getfixturevalue("cluster_client")
        return Target(f"{scheme}+cluster://{node}", client, prefix)
    return Target(
        request.getfixturevalue("redis_url"), request.getfixturevalue("redis_client"), prefix
    )
