"""A throwaway Redis Cluster of private ``RedisServer`` nodes on loopback (mpstate's own suite).

``LocalRedisCluster`` starts several servers as a Redis Cluster (slots assigned, replicas
attached) and can fail a master over; the cluster tests of the store, the benchmarks and the
chaos runs use it. Private: not part of ``mpstate.testing``'s public API.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from mpstate.testing._servers import RedisServer, find_redis_server

__all__ = ["LocalRedisCluster", "free_cluster_port"]

CLUSTER_SLOTS = 16384
_BUS_PORT_OFFSET = 10000
_CLUSTER_PORTS = (20000, 55000)
_POLL_SECONDS = 0.02


def free_cluster_port(exclude: Collection[int] = ()) -> int:
    """A port p with p and its cluster bus port p + 10000 both free on 127.0.0.1 right now.

    Not an ephemeral port: the kernel hands those out up to 60999, so their bus twin often lies
    past 65535 or is taken, and the node then fails to start.
    """
    taken = set(exclude) | {port + _BUS_PORT_OFFSET for port in exclude}
    taken |= {port - _BUS_PORT_OFFSET for port in exclude}
    for _ in range(1000):
        port = random.randint(*_CLUSTER_PORTS)
        if {port, port + _BUS_PORT_OFFSET} & taken:
            continue
        if _port_free(port) and _port_free(port + _BUS_PORT_OFFSET):
            return port
    raise RuntimeError("no free port p in 20000..55000 with p + 10000 free too")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class _NodeView:
    """One line of CLUSTER NODES: what the asking node believes about one node."""

    node_id: str
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]

    @classmethod
    def parse(cls, line: str) -> _NodeView:
        fields = line.split()  # id address flags master ping pong epoch link slot...
        slots: set[int] = set()
        for spec in fields[8:]:
            if spec.startswith("["):  # a slot being migrated or imported
                continue
            first, _, last = spec.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        return cls(
            node_id=fields[0],
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3],
            slots=frozenset(slots),
        )


class LocalRedisCluster:
    """A throwaway Redis Cluster of private ``RedisServer`` nodes on loopback.

    For tests and benchmarks of cluster behaviour (CROSSSLOT, MOVED, failover) that fakeredis and
    a single server cannot show. Slots are split evenly over the masters, each master gets
    ``replicas`` replicas; ``start()`` returns once every node agrees on that layout, so a test
    never races the cluster's own gossip.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        binary: str | None = None,
        node_timeout_ms: int = 1000,
        appendonly: bool = False,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replica count")
        self.master_count = masters
        self.replica_count = replicas
        self.binary = binary or find_redis_server()
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.nodes: list[RedisServer] = []
        self.masters: list[RedisServer] = []
        self._node_ids: dict[int, str] = {}  # port -> cluster node id
        self._replica_of: dict[int, RedisServer] = {}  # replica port -> its master
        self._slots: dict[int, frozenset[int]] = {}  # master port -> the slots it should own
        self._admins: dict[int, redis.Redis] = {}

    @property
    def url(self) -> str:
        """A startup node for ``RedisCluster.from_url``: the first master (the promoted one after
        ``failover(0)``, so the URL stays usable)."""
        if not self.masters:
            raise RuntimeError("the cluster is not started")
        return self.masters[0].url

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        """Boot every node, assign slots, join and attach replicas; return once all agree.

        Ready means: every node knows every other, each master owns its slot range in every
        node's view, every node reports ``cluster_state:ok``, and each replica is attached to its
        master in every view with ``master_link_status:up``. On failure every node is killed.
        """
        deadline = time.monotonic() + timeout
        try:
            self._boot_nodes(deadline)
            self._assign_slots()
            first = self.nodes[0].port
            for node in self.nodes[1:]:
                self._run(node, "CLUSTER", "MEET", "127.0.0.1", str(first))
            self._attach_replicas(deadline)
            self._wait_until(deadline, self._layout_problems, "the cluster to form")
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self) -> None:
        """Kill every node and remove its directory (``start()`` may then be called again)."""
        for admin in self._admins.values():
            admin.close()
        self._admins.clear()
        for node in self.nodes:
            node.cleanup()
        self.nodes, self.masters = [], []
        self._node_ids.clear()
        self._replica_of.clear()
        self._slots.clear()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """Live nodes that, by their own cluster config, replicate ``master`` right now."""
        master_id = self._node_ids[master.port]
        found = []
        for node in self._live_nodes():
            mine = self._myself(node)
            if "slave" in mine.flags and mine.master_id == master_id:
                found.append(node)
        return found

    def master_for_key(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now, by CLUSTER KEYSLOT and CLUSTER SLOTS."""
        asked = self._live_nodes()[0]
        slot = int(self._run(asked, "CLUSTER", "KEYSLOT", key))
        for first, last, owner, *_ in self._run(asked, "CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return self._node_at(int(owner[1]))
        raise RuntimeError(f"slot {slot} of {key!r} is not served by any node")

    def failover(self, master_index: int, timeout: float = 30.0) -> RedisServer:
        """SIGKILL ``masters[master_index]`` and promote one of its replicas in its place.

        CLUSTER FAILOVER TAKEOVER needs no vote of the other masters, so the promotion does not
        wait for the node timeout and failure detection; the replica takes the dead master's
        slots with a new config epoch. Returns once every live node reports ``cluster_state:ok``
        and sees the promoted node owning those slots (and any other replicas of the dead master
        follow it). ``masters[master_index]`` is the promoted node afterwards.
        """
        deadline = time.monotonic() + timeout
        old = self.masters[master_index]
        candidates = self.replicas_of(old)
        if not candidates:
            raise ValueError(f"master {master_index} (port {old.port}) has no replica to promote")
        promoted, followers = candidates[0], candidates[1:]
        old.stop()
        admin = self._admins.pop(old.port, None)
        if admin is not None:
            admin.close()

        def promote() -> str | None:
            try:
                self._run(promoted, "CLUSTER", "FAILOVER", "TAKEOVER")
            except redis.ResponseError as error:  # e.g. not a replica any more: check the view
                if "slave" in self._myself(promoted).flags:
                    return f"CLUSTER FAILOVER TAKEOVER refused: {error}"
            return None

        self._wait_until(deadline, promote, "the replica to accept CLUSTER FAILOVER TAKEOVER")
        self.masters[master_index] = promoted
        self._slots[promoted.port] = self._slots.pop(old.port)
        for follower in followers:
            self._replica_of[follower.port] = promoted
        self._replica_of.pop(promoted.port, None)
        self._wait_until(deadline, self._layout_problems, f"failover of master {master_index}")
        return promoted

    # -- start-up steps ---------------------------------------------------------------------

    def _boot_nodes(self, deadline: float) -> None:
        """Launch all nodes at once (boot time is mostly waiting), re-porting any lost race."""
        total = self.master_count * (1 + self.replica_count)
        ports: set[int] = set()
        for _ in range(total):
            node = RedisServer(
                self.binary, port=free_cluster_port(ports), appendonly=self.appendonly
            )
            node.extra_args = self._cluster_args(node)
            ports.add(node.port)
            self.nodes.append(node)
            node.launch()
        for node in self.nodes:
            for attempt in range(3):
                try:
                    node.wait_ready(max(deadline - time.monotonic(), 0.1))
                    break
                except RuntimeError:
                    # Another process took the port (or its bus twin) after we tested it.
                    if attempt == 2 or "in use" not in node.log_tail():
                        raise
                    node.stop()
                    # It wrote nodes.conf before failing to bind; start afresh on the new port.
                    Path(node.directory, "nodes.conf").unlink(missing_ok=True)
                    ports.discard(node.port)
                    node.port = free_cluster_port(ports | {n.port for n in self.nodes})
                    ports.add(node.port)
                    node.launch()
        self.masters = self.nodes[: self.master_count]
        for index, master in enumerate(self.masters):
            self._slots[master.port] = frozenset(range(*self._slot_range(index)))
        for index, node in enumerate(self.nodes[self.master_count :]):
            self._replica_of[node.port] = self.masters[index // self.replica_count]
        for node in self.nodes:
            self._node_ids[node.port] = str(self._run(node, "CLUSTER", "MYID"))

    def _cluster_args(self, node: RedisServer) -> tuple[str, ...]:
        return (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            os.path.join(node.directory, "nodes.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # Replicas sync straight over the socket, at once: 7.0 otherwise waits 5 s for more
            # replicas to share one RDB, and 6.2 writes the RDB to disk first.
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        )

    def _slot_range(self, index: int) -> tuple[int, int]:
        """Master ``index``'s share of the slots, as a half-open range [first, end)."""
        per_master, extra = divmod(CLUSTER_SLOTS, self.master_count)
        first = index * per_master + min(index, extra)
        return first, first + per_master + (1 if index < extra else 0)

    def _assign_slots(self) -> None:
        """Give each master its range, with distinct config epochs set before anyone meets.

        Distinct epochs spare the cluster its epoch-collision resolution (what ``redis-cli
        --cluster create`` does too). ADDSLOTSRANGE is Redis 7; 6.2 needs every slot listed.
        """
        for index, master in enumerate(self.masters):
            self._run(master, "CLUSTER", "SET-CONFIG-EPOCH", str(index + 1))
            first, end = self._slot_range(index)
            try:
                self._run(master, "CLUSTER", "ADDSLOTSRANGE", str(first), str(end - 1))
            except redis.ResponseError as error:
                if "unknown subcommand" not in str(error).lower():
                    raise
                self._run(master, "CLUSTER", "ADDSLOTS", *map(str, range(first, end)))

    def _attach_replicas(self, deadline: float) -> None:
        """CLUSTER REPLICATE each replica once gossip has told it about its master."""
        pending = dict(self._replica_of)

        def attach() -> str | None:
            for port, master in list(pending.items()):
                try:
                    self._run(
                        self._node_at(port), "CLUSTER", "REPLICATE", self._node_ids[master.port]
                    )
                except redis.ResponseError as error:  # "Unknown node" until gossip arrives
                    if "unknown node" not in str(error).lower():
                        raise
                else:
                    del pending[port]
            return f"replicas not yet attached: {sorted(pending)}" if pending else None

        self._wait_until(deadline, attach, "replicas to learn their masters")

    # -- checks ---------------------------------------------------------------------------

    def _layout_problems(self) -> str | None:
        """Why the live cluster is not yet as configured, or None when it is."""
        live = self._live_nodes()
        expected_replicas = {
            self._node_ids[port]: self._node_ids[master.port]
            for port, master in self._replica_of.items()
            if self._node_at(port).running
        }
        for node in live:
            info = str(self._run(node, "CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return f"port {node.port}: cluster_state is not ok"
            view = self._view(node)
            for master in self.masters:
                seen = view.get(self._node_ids[master.port])
                if seen is None or "master" not in seen.flags:
                    return f"port {node.port} does not yet know master {master.port}"
                if seen.slots != self._slots[master.port]:
                    return f"port {node.port} does not yet see master {master.port}'s slots"
            for replica_id, master_id in expected_replicas.items():
                seen = view.get(replica_id)
                if seen is None or "slave" not in seen.flags or seen.master_id != master_id:
                    return f"port {node.port} does not yet see replica {replica_id[:8]} attached"
            if node.port in self._replica_of:
                replication = self._run(node, "INFO", "replication")  # parsed to a dict
                if replication.get("master_link_status") != "up":
                    return f"replica on port {node.port} is not in sync with its master"
        return None

    def _wait_until(self, deadline: float, problem: Callable[[], str | None], what: str) -> None:
        """Poll ``problem`` until it returns None; past the deadline raise with the node logs."""
        while True:
            try:
                found = problem()
            except redis.ConnectionError as error:
                found = f"connection error: {error}"
            if found is None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}: {found}\n{self._log_tails()}")
            time.sleep(_POLL_SECONDS)

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- node {node.port} ({'up' if node.running else 'down'}) ---\n{node.log_tail()}"
            for node in self.nodes
        )

    # -- plumbing ---------------------------------------------------------------------------

    def _admin(self, node: RedisServer) -> redis.Redis:
        """One plain (non-cluster) connection per node, for admin commands to exactly that node."""
        admin = self._admins.get(node.port)
        if admin is None:
            admin = redis.Redis(port=node.port, decode_responses=True, socket_timeout=5)
            self._admins[node.port] = admin
        return admin

    def _run(self, node: RedisServer, *args: str) -> Any:
        """One command on exactly ``node``. Replies come raw (no redis-py parsing callback, as
        the command name is split), except INFO, which redis-py parses to a dict."""
        return self._admin(node).execute_command(*args)  # type: ignore[no-untyped-call]

    def _view(self, node: RedisServer) -> dict[str, _NodeView]:
        text = str(self._run(node, "CLUSTER", "NODES"))
        views = (_NodeView.parse(line) for line in text.splitlines() if line.strip())
        return {view.node_id: view for view in views}

    def _myself(self, node: RedisServer) -> _NodeView:
        return next(v for v in self._view(node).values() if "myself" in v.flags)

    def _live_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.running]

    def _node_at(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)
