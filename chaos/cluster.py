"""A 3-node RabbitMQ cluster of our own on loopback, for quorum-queue faults.

Each node is a ``rabbitmq-server`` started from the installed package (not its wrapper,
which would run it as the ``rabbitmq`` user with the shared node's cookie), with
everything its own: node name ``atqN_<tag>@localhost``, AMQP and distribution ports
picked free, data and logs in a temporary folder, a config file of its own (the
machine's ``/etc/rabbitmq`` files set the shared node's name and port, so they are
replaced, not read), no plugin, and one Erlang cookie for the three (in ``HOME``, and
given to ``rabbitmqctl`` with ``--erlang-cookie``). Nodes 2 and 3 join node 1. The
shared node (``rabbit@localhost`` on 5672) is never touched: every command names one of
our nodes with ``-n``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from chaos.private import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def available() -> str | None:
    """Why a cluster cannot be started here, or None if it can."""
    if not os.path.exists(SERVER):
        return f"no RabbitMQ server at {SERVER}"
    if not os.path.exists(CTL):
        return "no rabbitmqctl"
    return None


class Node:
    """One node of the cluster: its name, ports and process."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.port = free_port()
        self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None


class RabbitCluster:
    """Three RabbitMQ nodes clustered together; ``close()`` stops them and removes their
    files. Use as a context manager."""

    def __init__(self, size: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="atq-cluster-"))
        self.cookie = secrets.token_hex(16)
        tag = secrets.token_hex(3)
        self.nodes = [Node(f"atq{i}_{tag}@localhost", self.root) for i in range(1, size + 1)]
        home = self.root / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        (self.root / "env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf
        (self.root / "plugins").write_text("[].\n")  # no plugin: no management port

    def __enter__(self) -> RabbitCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands ---------------------------------------------------------------------------

    def ctl(self, node: Node, *args: str, timeout: float = 120) -> str:
        """``rabbitmqctl -n <node> ARGS`` with the cluster's cookie; its output."""
        done = subprocess.run(
            [CTL, "-n", node.name, "--erlang-cookie", self.cookie, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HOME": str(self.root / "home")},
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {node.name} {args[0]} failed: {done.stderr or done.stdout}"
            )
        return done.stdout

    def _environment(self, node: Node) -> dict[str, str]:
        config = self.root / f"{node.name}.conf"
        config.write_text(
            f"listeners.tcp.local = 127.0.0.1:{node.port}\n"
            "loopback_users = none\n"
            # a stopped node's tasks move to the others: no waiting for it at start
            "cluster_partition_handling = ignore\n"
        )
        for folder in ("mnesia", "log"):
            (self.root / folder).mkdir(exist_ok=True)
        return {
            **os.environ,
            "HOME": str(self.root / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "env.conf"),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "none.config"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # the distribution port on loopback too, as the shared node's is
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    # -- life -------------------------------------------------------------------------------

    def start_node(self, node: Node) -> None:
        """Start one node (again) and wait until it serves."""
        with open(self.root / f"{node.name}.out", "ab") as out:
            node.process = subprocess.Popen(
                [SERVER],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(node),
                cwd=self.root,
                start_new_session=True,
            )

    def await_node(self, node: Node, timeout: float = 120) -> None:
        """Wait until ``node`` has booted (its AMQP port answers)."""
        deadline = time.monotonic() + timeout
        while True:
            assert node.process is not None
            if node.process.poll() is not None:
                tail = (self.root / f"{node.name}.out").read_text()[-2000:]
                raise RuntimeError(f"RabbitMQ node {node.name} exited at start:\n{tail}")
            try:
                self.ctl(node, "await_startup", "--timeout", "10", timeout=30)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise

    def start(self) -> None:
        """Boot the nodes (at once), then join nodes 2.. to node 1."""
        for node in self.nodes:
            self.start_node(node)
        for node in self.nodes:
            self.await_node(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        running = self.ctl(first, "cluster_status", "--formatter", "json")
        missing = [n.name for n in self.nodes if n.name not in running]
        if missing:
            raise RuntimeError(f"nodes {missing} did not join the cluster: {running}")

    def stop_node(self, node: Node) -> None:
        """Stop a node for good (``rabbitmqctl stop``): what a crashed host looks like to
        its clients, minus the TCP resets."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.ctl(node, "stop", timeout=60)
        if node.process is not None:
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(node.process.pid, 9)  # ours alone: its own session
                node.process.wait(10)
            node.process = None

    def close(self) -> None:
        """Stop every node still running and remove the cluster's files."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                self.stop_node(node)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what clients see -------------------------------------------------------------------

    def uri(self, vhost: str = "") -> str:
        """An ``amqp://`` URI that lists every node (the transport fails over in turn)."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"amqp://guest:guest@{hosts}/{vhost}"

    def leader(self, queue: str, vhost: str = "/") -> Node:
        """The node that leads quorum queue ``queue`` now."""
        listing = self.ctl(
            self.running()[0],
            "list_queues",
            "-p",
            vhost,
            "-q",
            "--no-table-headers",
            "name",
            "leader",
        )
        for line in listing.splitlines():
            name, _, leader = line.strip().partition("\t")
            if name == queue:
                return next(node for node in self.nodes if node.name == leader.strip())
        raise LookupError(f"no queue {queue!r} in the cluster: {listing}")

    def running(self) -> list[Node]:
        """The nodes not stopped."""
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]
