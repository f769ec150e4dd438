"""A real 3-master Redis Cluster on loopback for tests, and a one-slot migration tool.

Each node is an ``EmbeddedRedis`` started with ``--cluster-enabled yes`` in its own folder;
``redis-cli --cluster create`` (or ``valkey-cli``, next to a bundled ``valkey-server``)
assigns the 16384 slots. ``migrate_slot`` moves one slot the way ``redis-cli --cluster
reshard`` does, one step at a time, so a test can act between the steps.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from stream_app.local.embedded import (
    EmbeddedRedis,
    EmbeddedServerError,
    find_redis_server,
    free_port,
)

MASTERS = 3
CLUSTER_READY_TIMEOUT_S = 30.0


class ClusterNodeServer(EmbeddedRedis):
    """``redis-server`` with cluster mode on; its ``nodes.conf`` lives in its own folder.

    The cluster bus port is picked explicitly: the default (port + 10000) does not exist for
    a free port above 55535.
    """

    def _command(self) -> list[str]:
        flags = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "5000", "--cluster-port", str(free_port())]  # fmt: skip
        return [*super()._command(), *flags]


def find_redis_cli(server_binary: str) -> str:
    """``redis-cli`` from PATH, else the CLI that sits next to the server binary."""
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    folder = Path(server_binary).parent
    for name in ("redis-cli", "valkey-cli"):
        if (folder / name).is_file():
            return str(folder / name)
    raise EmbeddedServerError("redis-cli not found: `apt-get install redis-tools`")


@dataclass
class LocalRedisCluster:
    """Three masters, no replicas, all on 127.0.0.1."""

    base_dir: Path
    start_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        binary = find_redis_server()
        self.cli = find_redis_cli(binary)
        self.nodes = [
            ClusterNodeServer(binary=binary, log_dir=self.base_dir / f"node{i}",
                              start_timeout_s=self.start_timeout_s)
            for i in range(MASTERS)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> LocalRedisCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self._wait_ok()
        return self

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self.client(i).cluster("info").get("cluster_state") == "ok"
                   for i in range(MASTERS)):  # fmt: skip
                return
            time.sleep(0.2)
        raise EmbeddedServerError("cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def client(self, index: int) -> redis.Redis:
        """A plain (non-cluster) client of one node, for admin commands."""
        return redis.Redis(host="127.0.0.1", port=self.nodes[index].port, socket_timeout=5)

    def node_id(self, index: int) -> str:
        raw = self.client(index).execute_command("CLUSTER MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def owner_of(self, slot: int) -> int:
        """Index of the node that serves ``slot``."""
        for start, end, primary, *_ in self.client(0).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                port = int(primary[1])
                return next(i for i, n in enumerate(self.nodes) if n.port == port)
        raise LookupError(f"slot {slot} is not served")

    def migrate_slot(
        self, slot: int, to: int, between: Callable[[str], None] = lambda step: None
    ) -> None:
        """Move ``slot`` (and its keys) to node ``to``; ``between(step)`` runs after each
        of the steps ``migrating``, ``keys_moved``, ``assigned``."""
        source = self.owner_of(slot)
        src, dst = self.client(source), self.client(to)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(to))
        between("migrating")
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command(
                "MIGRATE", "127.0.0.1", self.nodes[to].port, "", 0, 5000, "KEYS", *keys
            )
        between("keys_moved")
        new_owner = self.node_id(to)
        for index in [to] + [i for i in range(MASTERS) if i != to]:  # owner first, as redis-cli
            self.client(index).execute_command("CLUSTER SETSLOT", slot, "NODE", new_owner)
        between("assigned")


class SentinelServer(EmbeddedRedis):
    """``redis-server --sentinel`` watching one primary as ``service`` (quorum 1)."""

    name = "sentinel"

    def __init__(self, primary_port: int, service: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.primary_port = primary_port
        self.service = service

    def _command(self) -> list[str]:
        config = self.log_dir / "sentinel.conf"  # sentinel rewrites its own config file
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 1\n",
            encoding="utf-8",
        )
        return [self.binary, str(config), "--sentinel"]

    def _probe(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            masters = client.execute_command("SENTINEL", "MASTERS")
            if not masters:
                raise EmbeddedServerError("sentinel does not know its primary yet")
        finally:
            client.close()
