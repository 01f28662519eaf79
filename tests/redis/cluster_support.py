"""A Redis Cluster of a test's own: 3 masters and 3 replicas on free loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import redis

from tests.support import free_port, start_redis_server


@dataclass
class LocalCluster:
    """Six ``redis-server --cluster-enabled yes`` processes joined by ``redis-cli``."""

    ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    directory: str = ""

    @property
    def uri(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self, nodes: int = 6) -> None:
        self.directory = tempfile.mkdtemp(prefix="asynctask-cluster-")
        self.ports = [self._port() for _ in range(nodes)]
        for port in self.ports:
            self.processes[port] = start_redis_server(
                port,
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"{self.directory}/nodes-{port}.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--dir",
                    self.directory,
                    "--dbfilename",
                    f"dump-{port}.rdb",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                None,
            )
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(self._ok(p) for p in self.ports):
                return
            time.sleep(0.2)
        raise RuntimeError("the test cluster did not reach cluster_state:ok")

    def _port(self) -> int:
        """A free port whose cluster bus port (port + 10000) is free and valid too."""
        import socket

        while True:
            port = free_port()
            if port + 10000 > 65535 or port in self.ports:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port

    def _ok(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        try:
            info = client.execute_command("CLUSTER INFO")
            if isinstance(info, dict):
                return str(info.get("cluster_state")) == "ok"
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text
        except redis.RedisError:
            return False
        finally:
            client.close()

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
