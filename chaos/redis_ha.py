"""Replicated Redis of our own: a master and its replica, a Sentinel group, a Cluster.

Why. ``wait_replicas`` (``asynctask_redis.replication``) and the failover scenarios
(``chaos.failover``) need replicas, and they kill, stop or pause servers: that is only
ever done to these, on free loopback ports in temp folders, never to the shared Redis on
6379. Tests, ``make chaos`` and ``make bench`` all start them from here::

    with private_replicated_redis() as pair:     # a master, one replica attached
        uri = pair.uri(wait_replicas="1")
        with paused(pair.replica_port):          # SIGSTOP: it acknowledges nothing
            ...
    with private_sentinel() as group:            # the pair and one Sentinel, service "svc"
        group.uri(); group.kill_master()
    with private_cluster() as cluster:           # 3 masters, 3 replicas
        cluster.uri; cluster.master_of(key); cluster.kill(port)

No persistence (``--save ""``, no AOF): a failover, not a restart, is what these test.
Like ``chaos.private_redis`` this imports no driver at module level, apart from what a cluster
needs (redis-py), loaded when one starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from chaos.private import LOOPBACK, free_port, wait_until
from chaos.private_redis import launch_redis, redis_command

#: the shared server's port: never paused nor killed from here
SHARED_PORT = 6379
_COMMON = ["--save", "", "--appendonly", "no"]


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` of the server on ``port``, its values as strings (OSError: down)."""
    import redis

    client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=5, socket_connect_timeout=2)
    try:
        found = client.info(section)
    except redis.RedisError as exc:
        raise OSError(f"redis on {port}: {exc}") from exc
    finally:
        client.close()
    return {str(k): str(v) for k, v in found.items()}


def server_pid(port: int) -> int:
    """The pid of the redis-server on ``port`` (refuses the shared one)."""
    if port == SHARED_PORT:
        raise ValueError("refusing to touch the shared Redis on 6379: use a private server")
    return int(info(port, "server")["process_id"])


@contextlib.contextmanager
def paused(port: int) -> Iterator[int]:
    """The server on ``port`` stopped (SIGSTOP) for the block: it reads nothing, so it
    acknowledges no replication; continued however the block ends. Yields its pid."""
    pid = server_pid(port)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _linked(master: int, replica: int) -> bool:
    try:
        return (
            info(replica, "replication").get("master_link_status") == "up"
            and int(info(master, "replication").get("connected_slaves", "0")) >= 1
        )
    except OSError:
        return False


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate (a paused one continued first), then kill what outlives 10 s."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # a paused one cannot act on SIGTERM
            process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ReplicatedRedis:
    """A master on ``master_port`` and one replica of it on ``replica_port``."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="asynctask-replicated-"))
        self.master_port, self.replica_port = free_port(), free_port()
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.args: dict[int, list[str]] = {}

    def start(self) -> None:
        """Start both; return once the replica is in sync."""
        for port, extra in (
            (self.master_port, ["--repl-diskless-sync-delay", "0"]),
            (self.replica_port, ["--replicaof", LOOPBACK, str(self.master_port)]),
        ):
            args = [*_COMMON, "--dir", str(self.folder), "--dbfilename", f"dump-{port}.rdb"]
            self.args[port] = [*args, *extra]
            self.revive(port)
        wait_until(lambda: _linked(self.master_port, self.replica_port), 30, "the replica in sync")

    def revive(self, port: int) -> None:
        """Start the server of ``port`` (again) with its arguments; return once it answers
        (a killed master comes back as it was: Sentinel makes it a replica)."""
        log = self.folder / f"redis-{port}.log"
        self.processes[port] = launch_redis(port, self.args[port], None, log)

    def uri(self, **options: str) -> str:
        """A ``redis://`` URI of the master's database 0, with ``options``."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"redis://{LOOPBACK}:{self.master_port}/0" + ("?" + query if query else "")

    def remove(self) -> None:
        """Stop both and remove the folder."""
        stop_processes(list(self.processes.values()))
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_replicated_redis() -> Iterator[ReplicatedRedis]:
    """A started ``ReplicatedRedis``; stopped and removed however the block ends."""
    pair = ReplicatedRedis()
    try:
        pair.start()
        yield pair
    finally:
        pair.remove()


class SentinelGroup(ReplicatedRedis):
    """The pair and one Sentinel watching it as service ``svc`` (down after 1 s)."""

    service = "svc"

    def __init__(self) -> None:
        super().__init__()
        self.sentinel_port = free_port()

    def start(self) -> None:
        """The pair, then the Sentinel; return once it names the master."""
        super().start()
        conf = self.folder / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind {LOOPBACK}\ndir {self.folder}\n"
            f"sentinel monitor {self.service} {LOOPBACK} {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n"
        )
        self.processes[self.sentinel_port] = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.master() is not None, 30, "the Sentinel to name the master")
        # it learns of the replica from the master's INFO (every 10 s at first): a master
        # killed before that has no replica to promote
        wait_until(self._knows_replica, 30, "the Sentinel to know the replica")

    def _knows_replica(self) -> bool:
        try:
            reply = redis_command(self.sentinel_port, None, "SENTINEL", "replicas", self.service)
        except OSError:
            return False
        return str(self.replica_port).encode() in reply

    def master(self) -> int | None:
        """The port of the master the Sentinel names now (None: it cannot say yet)."""
        try:
            reply = redis_command(
                self.sentinel_port, None, "SENTINEL", "get-master-addr-by-name", self.service
            )
        except OSError:
            return None
        words = [w for w in reply.decode(errors="replace").split("\r\n") if w.isdigit()]
        return int(words[-1]) if words and reply.startswith(b"*2") else None

    def uri(self, **options: str) -> str:
        """A ``redis+sentinel://`` URI of the service, with ``options``."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        base = f"redis+sentinel://{LOOPBACK}:{self.sentinel_port}/{self.service}"
        return base + ("?" + query if query else "")

    def kill_master(self) -> int:
        """SIGKILL the master (no goodbye to the replica); return its port."""
        port = self.master_port
        self.processes[port].kill()
        self.processes[port].wait()
        return port


@contextlib.contextmanager
def private_sentinel() -> Iterator[SentinelGroup]:
    """A started ``SentinelGroup``; stopped and removed however the block ends."""
    group = SentinelGroup()
    try:
        group.start()
        yield group
    finally:
        group.remove()


class RedisCluster:
    """Six ``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``:
    3 masters, each with one replica; a node is thought down after 1 s."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="asynctask-cluster-"))
        self.ports: list[int] = []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.args: dict[int, list[str]] = {}

    @property
    def uri(self) -> str:
        """``redis+cluster://`` naming three of the nodes."""
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{p}" for p in self.ports[:3])

    def start(self, nodes: int = 6) -> None:
        """Start the nodes and join them; return once every node says cluster_state:ok."""
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed")
        self.ports = []
        while len(self.ports) < nodes:
            self.ports.append(self._port())
        for port in self.ports:
            self.args[port] = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"{self.folder}/nodes-{port}.conf",
                "--cluster-node-timeout", "1000",
                "--dir", str(self.folder), "--dbfilename", f"dump-{port}.rdb",
                "--repl-diskless-sync-delay", "0", *_COMMON,
            ]  # fmt: skip
            self.revive(port)
        subprocess.run(
            [
                "redis-cli", "--cluster", "create", *(f"{LOOPBACK}:{p}" for p in self.ports),
                "--cluster-replicas", "1", "--cluster-yes",
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        wait_until(lambda: all(self.ok(p) for p in self.ports), 30, "cluster_state:ok")
        wait_until(self._replicas_linked, 30, "every replica in sync")

    def revive(self, port: int) -> None:
        """Start the node of ``port`` (again) on its files: a killed master rejoins as
        the replica of the node promoted in its place."""
        self.processes[port] = launch_redis(port, self.args[port], None)

    def _replicas_linked(self) -> bool:
        try:
            found = [info(p, "replication") for p in self.ports]
        except OSError:
            return False
        linked = [i for i in found if i.get("master_link_status") == "up"]
        return len(linked) == len(self.ports) // 2

    def _port(self) -> int:
        """A free port whose cluster bus port (port + 10000) is free and valid too."""
        import socket

        while True:
            port = free_port()
            if port + 10000 > 65535 or port in self.ports:
                continue
            with socket.socket() as s:
                try:
                    s.bind((LOOPBACK, port + 10000))
                except OSError:
                    continue
            return port

    def ok(self, port: int) -> bool:
        """Whether the node on ``port`` says ``cluster_state:ok``."""
        try:
            return b"cluster_state:ok" in redis_command(port, None, "CLUSTER", "INFO")
        except OSError:  # not up yet
            return False

    def master_of(self, key: str) -> int:
        """The port of the master owning ``key``'s slot now."""
        import redis

        client = redis.RedisCluster(host=LOOPBACK, port=self._live_port())
        try:
            node = client.nodes_manager.get_node_from_slot(
                client.keyslot(key)  # type: ignore[no-untyped-call]
            )
            return int(node.port)
        finally:
            client.close()

    def replica_of(self, master: int) -> int:
        """The port of ``master``'s replica."""
        for port in self.ports:
            if port == master or self.processes[port].poll() is not None:
                continue
            found = info(port, "replication")
            if found.get("role") == "slave" and int(found.get("master_port", "0")) == master:
                return port
        raise LookupError(f"no replica of {master}")

    def _live_port(self) -> int:
        return next(p for p in self.ports if self.processes[p].poll() is None)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        self.processes[port].kill()
        self.processes[port].wait()

    def remove(self) -> None:
        """Stop every node and remove the folder."""
        stop_processes(list(self.processes.values()))
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[RedisCluster]:
    """A started ``RedisCluster``; stopped and removed however the block ends."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
