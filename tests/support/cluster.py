"""A real Redis Cluster for tests and benchmarks: `masters` masters, each with one replica, on
free loopback ports, created with `redis-cli --cluster create`; stopped by PID."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import redis

from tests.support.processes import Process, free_port, port_open, stop_all, wait_for

NODE_TIMEOUT_MS = 1000  # a killed master's replica is promoted within a few seconds


BUS_PORT_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


def cluster_port() -> int:
    """A free port whose cluster bus port is free too (and below 65536)."""
    while True:
        port = free_port()
        if port + BUS_PORT_OFFSET < 65536 and not port_open(port + BUS_PORT_OFFSET):
            return port


class LocalCluster:
    """`ports` of every node; `url` the service's `TICK_BUS_URL` (every node a seed)."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1):
        self.workdir = workdir
        self.ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.servers: dict[int, Process] = {}
        self.frozen: set[int] = set()  # SIGSTOPped: alive, silent

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> LocalCluster:
        for port in self.ports:
            self.servers[port] = self._server(port)
        for port in self.ports:
            wait_for(lambda: port_open(port) or not self.servers[port].alive(), 10, f"redis {port}")  # noqa: B023
        try:
            created = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                      "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                                     capture_output=True, text=True, timeout=60)
            assert created.returncode == 0, created.stdout + created.stderr
        except BaseException:
            self.stop()  # nothing outlives a failed start
            raise
        wait_for(self.healthy, 30, "the cluster to be ok on every node")
        return self

    def _server(self, port: int) -> Process:
        node_dir = self.workdir / f"node-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        return Process(f"redis-cluster-{port}", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--save", "", "--appendonly", "no", "--dir", str(node_dir),
        ], {}, self.workdir)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=2)

    def alive_ports(self) -> list[int]:
        return [port for port, server in self.servers.items() if server.alive() and port not in self.frozen]

    def healthy(self) -> bool:
        """Every live node sees the cluster ok, and every replica is in sync with its master
        (a replica still syncing would not take over from a master that fails)."""
        try:
            return all(self.client(p).cluster("info")["cluster_state"] == "ok" and self._synced(p)
                       for p in self.alive_ports())
        except redis.RedisError:
            return False

    def _synced(self, port: int) -> bool:
        replication = self.client(port).info("replication")
        return replication["role"] == "master" or replication.get("master_link_status") == "up"

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """port -> the hash slot ranges it serves, as a live node sees the cluster now."""
        served: dict[int, list[tuple[int, int]]] = {}
        for start, end, primary, *_ in self.client(self.alive_ports()[0]).execute_command("CLUSTER SLOTS"):
            served.setdefault(int(primary[1]), []).append((int(start), int(end)))
        return served

    def master_of(self, slot: int) -> int:
        return next(port for port, ranges in self.masters().items() if any(a <= slot <= b for a, b in ranges))

    def freeze(self, port: int) -> None:
        """SIGSTOP a node: its connections stay open and nothing answers (a silent peer)."""
        self.frozen.add(port)
        self.servers[port].kill(signal.SIGSTOP)

    def kill(self, port: int) -> None:
        """SIGKILL a node: what a crashed machine looks like to the rest."""
        self.servers[port].kill()
        self.servers[port].proc.wait(10)

    def stop(self) -> None:
        stop_all(self.servers.values())
