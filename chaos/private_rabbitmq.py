"""A RabbitMQ node of our own: its node name, ports, cookie, data and configuration.

The restart tests of ``make test``, ``make chaos`` and the many-hosts scenarios start
theirs here (``chaos.private`` says why never the shared one)::

    with private_rabbitmq() as rabbit:   # node atqchaos<n>@localhost, no plugins
        rabbit.ctl("close_all_connections", "test")

It runs from ``/usr/lib/rabbitmq/bin`` (the ``/usr/sbin`` wrappers switch to the
``rabbitmq`` user and its cookie) with ``HOME`` in its folder, so the node and its
``rabbitmqctl`` share an Erlang cookie of their own; it registers with the epmd of its
place under a node name of its own, and reads none of ``/etc/rabbitmq`` (nor the caller's
``RABBITMQ_*`` and ``ERL_*`` variables).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from chaos.private import LOOPBACK, Place, ServerUnavailable, free_port, with_query

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def _rabbitmq_program(name: str) -> str:
    if (RABBITMQ_BIN / name).exists():
        return str(RABBITMQ_BIN / name)
    found = shutil.which(name)
    if found is None:
        raise ServerUnavailable(f"RabbitMQ's {name} is not installed")
    return found


class PrivateRabbitMQ:
    """A RabbitMQ node of our own (``atqchaos<pid>x<port>@localhost``) at ``place``: AMQP
    on its address and ``port``, its Erlang distribution on ``dist_port``, mnesia, logs,
    cookie and configuration in its folder, no plugin. ``guest``/``guest`` (from any
    address: the hosts of a many-hosts scenario are not loopback), vhost ``/``."""

    def __init__(self, place: Place | None = None) -> None:
        self.place = place or Place()
        self.address = self.place.address
        self.server = _rabbitmq_program("rabbitmq-server")
        self.rabbitmqctl = _rabbitmq_program("rabbitmqctl")
        self.folder = Path(tempfile.mkdtemp(prefix="asynctask-rabbitmq-"))
        self.port = self.place.port(5672)
        self.dist_port = free_port()
        self.node = f"atqchaos{os.getpid()}x{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = {self.address}:{self.port}\nloopback_users = none\n"
        )
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq-env.conf").write_text("")
        inherited = os.environ.items()
        self.env = {k: v for k, v in inherited if not k.startswith(("RABBITMQ_", "ERL_"))}
        self.env.update(
            HOME=str(self.folder),  # its own Erlang cookie, shared with its rabbitmqctl
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=self.address,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.folder / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.folder / "log"),
            RABBITMQ_PID_FILE=str(self.folder / "rabbitmq.pid"),
            RABBITMQ_CONF_ENV_FILE=str(self.folder / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.folder / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.folder / "advanced.config"),  # none
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.folder / "enabled_plugins"),
            ERL_EPMD_ADDRESS=LOOPBACK,  # the place's own loopback
        )

    def uri(self, **options: str) -> str:
        """An amqp transport URI of this node's vhost ``/`` (user guest)."""
        return with_query(f"amqp://guest:guest@{self.address}:{self.port}//", options)

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run ``rabbitmqctl -n <node> args``; return its output (raise if it fails)."""
        return self.place.run(
            [self.rabbitmqctl, "-n", self.node, *args], timeout, self.env, self.folder
        )

    def start(self) -> None:
        """Start the node; return once RabbitMQ runs on it."""
        self._log = open(self.folder / "server.log", "ab")  # noqa: SIM115 -- closed in remove()
        self.process = subprocess.Popen(
            self.place.command([self.server], self.folder),
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.folder,
            start_new_session=True,  # its Erlang processes in a group of their own
        )
        self.ctl("wait", self.env["RABBITMQ_PID_FILE"], "--timeout", "120", timeout=150)

    def restart(self, down: float = 0.0) -> None:
        """``stop_app``, stay down ``down`` s, ``start_app`` (always, even after a failed
        stop); return once it runs."""
        try:
            self.ctl("stop_app")
            time.sleep(down)
        finally:
            self.ctl("start_app")
            self.ctl("await_startup")

    def version(self) -> str:
        """``RabbitMQ <version> (own node)``."""
        return "RabbitMQ " + self.ctl("version").strip() + " (own node)"

    def remove(self) -> None:
        """Shut the node down (killed if it does not stop) and remove its folder."""
        if self.process is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.ctl("shutdown", timeout=60)
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_rabbitmq(place: Place | None = None) -> Iterator[PrivateRabbitMQ]:
    """A started ``PrivateRabbitMQ``; shut down and removed at the end, however it ends."""
    server = PrivateRabbitMQ(place)
    try:
        server.start()
        yield server
    finally:
        server.remove()
