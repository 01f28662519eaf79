"""Servers of a many-hosts scenario's own, inside the server namespace (``chaos.hosts``).

(``chaos.private`` starts the suite's servers on loopback ports; these listen on the
server namespace's bridge address, where the hosts reach them.)

Never the shared servers: each is a new process with its data in a temporary folder,
listening on the server namespace's bridge address at the usual port (the namespace has
ports of its own), and stopped, its folder removed, by ``stop()``:

* ``PrivateRedis``: ``redis-server`` persisting every write (AOF, fsync always);
* ``PrivatePostgres``: ``initdb`` and ``pg_ctl`` as the ``postgres`` user, trust auth from
  the subnet, database ``postgres``;
* ``PrivateRabbit``: a RabbitMQ node ``asynctask@localhost`` with its own mnesia and log
  folders, no plugin (no management), ``guest`` allowed from other hosts.

``start_server(name, namespace, address, folder)`` returns the one for a transport name.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from chaos.hosts import Namespace, Network

#: the directory of PostgreSQL's server programs (initdb, pg_ctl)
_PG_BIN = Path("/usr/lib/postgresql")
_RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _wait_port(address: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((address, port), 1):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not answering on {address}:{port} within {timeout:g} s")
        time.sleep(0.1)


class PrivateServer:
    """A server of the scenario's own inside ``namespace``, listening on ``address``."""

    name = ""
    port = 0

    def __init__(self, namespace: Namespace, address: str, folder: Path) -> None:
        self.namespace, self.address = namespace, address
        self.folder = folder / self.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The transport URI of this server, as the hosts reach it."""
        raise NotImplementedError

    def start(self) -> None:
        """Start it; return once it answers."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop it and remove its data."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def version(self) -> str:
        """The server's name and version, for the report."""
        return self.name


class PrivateRedis(PrivateServer):
    """``redis-server`` on ``address:6379``."""

    name = "redis"
    port = 6379

    @property
    def uri(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def start(self) -> None:
        self.process = self.namespace.popen(
            ["redis-server", "--bind", self.address, "--port", str(self.port),
             "--protected-mode", "no", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.folder),
             "--logfile", str(self.folder / "redis.log")],
            cwd=self.folder, start_new_session=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.address, self.port, 30, "redis-server")

    def version(self) -> str:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        return "Redis " + out.stdout.split("v=", 1)[-1].split()[0] + " (own server)"


class PrivatePostgres(PrivateServer):
    """A PostgreSQL cluster of its own on ``address:5432``, run by the ``postgres`` user."""

    name = "pgsql"
    port = 5432

    @property
    def uri(self) -> str:
        return f"pgsql://postgres@{self.address}:{self.port}/postgres"

    def start(self) -> None:
        user = pwd.getpwnam("postgres")
        os.chown(self.folder, user.pw_uid, user.pw_gid)
        for parent in self.folder.parents:  # the postgres user must reach its folder
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        data = self.folder / "data"
        bindir = _pg_bindir()
        as_postgres = ["runuser", "-u", "postgres", "--"]
        self.namespace.run(
            *as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
            "-U", "postgres", "--no-sync", timeout=120,
        )  # fmt: skip
        with open(data / "pg_hba.conf", "a", encoding="utf-8") as hba:
            hba.write("host all all 0.0.0.0/0 trust\n")
        options = (
            f"-c listen_addresses={self.address} -p {self.port} -k {self.folder} "
            "-c fsync=off -c max_connections=200"
        )
        self.namespace.run(
            *as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l",
            str(self.folder / "postgres.log"), "-o", options, "-w", "start", timeout=120,
        )  # fmt: skip
        self._data = data

    def stop(self) -> None:
        data = getattr(self, "_data", None)
        if data is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.namespace.run(
                    "runuser", "-u", "postgres", "--", str(_pg_bindir() / "pg_ctl"),
                    "-D", str(data), "-m", "immediate", "stop", timeout=60,
                )  # fmt: skip
        super().stop()

    def version(self) -> str:
        out = subprocess.run(
            [str(_pg_bindir() / "postgres"), "--version"], capture_output=True, text=True
        )
        return "PostgreSQL " + out.stdout.split()[-1].strip(")") + " (own server)"


class PrivateRabbit(PrivateServer):
    """A RabbitMQ node ``asynctask@localhost`` on ``address:5672``, no plugins."""

    name = "amqp"
    port = 5672
    node = "asynctask@localhost"

    @property
    def uri(self) -> str:
        return f"amqp://guest:guest@{self.address}:{self.port}/"

    def _environment(self) -> dict[str, str]:
        home = self.folder / "home"  # its own Erlang cookie
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(home),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_CONFIG_FILE=str(self.folder / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.folder / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.folder / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.folder / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.folder / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.folder / "log"),
            RABBITMQ_PID_FILE=str(self.folder / "rabbit.pid"),
        )
        return env

    def start(self) -> None:
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.address}:{self.port}\n"
            "loopback_users = none\n"
            "log.console = false\n",
            encoding="utf-8",
        )
        (self.folder / "enabled_plugins").write_text("[].\n", encoding="utf-8")
        (self.folder / "rabbitmq-env.conf").write_text("", encoding="utf-8")
        self.process = self.namespace.popen(
            [str(_RABBIT_BIN / "rabbitmq-server")],
            cwd=self.folder,
            env=self._environment(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "stderr.log", "wb"),  # noqa: SIM115 -- the child's
        )
        self._await_startup(180)
        _wait_port(self.address, self.port, 60, "RabbitMQ")

    def _await_startup(self, timeout: float) -> None:
        # await_startup fails until the node has registered with epmd: try again
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.folder / "stderr.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"RabbitMQ exited {self.process.returncode}: {log}")
            try:
                self.ctl("await_startup", timeout=max(5.0, deadline - time.monotonic()))
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
            time.sleep(1)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl`` on this node."""
        command = [*self.namespace.enter(self.folder), str(_RABBIT_BIN / "rabbitmqctl"),
                   "-n", self.node, *args]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout,
            env=self._environment(), check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.ctl("stop", timeout=60)
        # epmd, started by the node, lives on in the namespace until it is closed
        super().stop()

    def version(self) -> str:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            return "RabbitMQ " + self.ctl("version").strip() + " (own node)"
        return "RabbitMQ (own node)"


SERVERS: dict[str, type[PrivateServer]] = {
    "redis": PrivateRedis,
    "pgsql": PrivatePostgres,
    "amqp": PrivateRabbit,
}


def start_server(name: str, namespace: Namespace, address: str, folder: Path) -> PrivateServer:
    """Start the private server of transport ``name``; stopped on failure."""
    server = SERVERS[name](namespace, address, folder)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


#: URI options of the many-hosts scenarios: a recovery bound of 5 s on redis and pgsql
#: (the other scenarios' 2 s gives an owner's key 1 s to live: on a machine loaded 6x
#: over its cores, a keeper's beat or the server itself lags that long, an owner is
#: taken for dead while it lives, and its tasks and slots are given away), retries for
#: as long as a cut lasts
HOSTED_OPTIONS: dict[str, dict[str, str]] = {
    "redis": {"recovery_seconds": "5", "retry_timeout": "60"},
    "pgsql": {
        "recovery_seconds": "5",
        "retry_timeout": "60",
        "application_name": "asynctask_chaos",
    },
    "amqp": {"heartbeat": "2", "retry_timeout": "60"},
}


def hosted_uri(name: str, server: PrivateServer) -> str:
    """The URI the hosts use for ``server``, with ``HOSTED_OPTIONS``."""
    options = HOSTED_OPTIONS[name]
    return server.uri + "?" + "&".join(f"{k}={v}" for k, v in options.items())


@contextlib.contextmanager
def hosts_with_server(
    name: str, hosts: int, folder: Path
) -> Iterator[tuple[Network, PrivateServer]]:
    """``hosts`` host namespaces and a private server of transport ``name`` in the
    server namespace; everything stopped and removed afterwards."""
    with Network(hosts) as network:
        assert network.server is not None
        server = start_server(name, network.server, network.server_address, folder)
        try:
            yield network, server
        finally:
            server.stop()


def _pg_bindir() -> Path:
    found = sorted(_PG_BIN.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError(f"no PostgreSQL server programs under {_PG_BIN} (initdb, pg_ctl)")
    return found[-1].parent
