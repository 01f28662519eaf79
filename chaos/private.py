"""Where a server of our own runs, and the few waits and runs that start one.

Why. The PostgreSQL, Redis and RabbitMQ on this machine's standard ports are shared with
other people's test runs: a test or a chaos scenario that restarts a server, takes it
away, or changes its configuration must do it to a server of its own, or it breaks
theirs. One starter per server serves ``make test``, ``make chaos`` and the many-hosts
scenarios alike, each a module of its own:

* ``chaos.private_postgres``: ``PrivatePostgres`` (``initdb`` + ``pg_ctl``);
* ``chaos.private_redis``: ``PrivateRedis`` and ``launch_redis`` (``redis-server``);
* ``chaos.private_rabbitmq``: ``PrivateRabbitMQ`` (a RabbitMQ node of its own name).

A ``Place`` says where: by default this namespace, on loopback, on a free port; in a
many-hosts scenario (``chaos.hosted``) the server namespace of ``chaos.hosts``, on its
bridge address, at the server's usual port (that namespace has ports of its own)::

    with private_redis() as server:                      # 127.0.0.1:<free port>
        server.restart()
    PrivateRedis(place=Place("10.1.2.1", network.server))  # 10.1.2.1:6379, inside

Nothing here imports a driver at module level: ``chaos.private`` loads wherever the
standard library does. A missing program raises ``ServerUnavailable`` naming it, which
tests turn into a skip (or a failure under ``ASYNCTASK_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from chaos.hosts import Namespace

LOOPBACK = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """A server of our own cannot be started here (a program is missing); says which."""


class PrivateServer(Protocol):
    """What every server of our own offers (the many-hosts scenarios use only this)."""

    def uri(self, **options: str) -> str:
        """Its transport URI, with ``options`` as the query."""

    def remove(self) -> None:
        """Stop it (at once if need be) and remove its folder."""

    def version(self) -> str:
        """Its name and version, for a report."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Place:
    """Where a server of our own runs: ``address`` to listen on, inside ``namespace``
    (None: here, where the caller runs)."""

    address: str = LOOPBACK
    namespace: Namespace | None = None

    def port(self, usual: int) -> int:
        """The port to listen on: ``usual`` inside a namespace of its own, else a free one."""
        return usual if self.namespace is not None else free_port()

    def command(self, command: Sequence[str], cwd: Path | None = None) -> list[str]:
        """``command`` as run at this place."""
        if self.namespace is None:
            return list(command)
        return [*self.namespace.enter(cwd), *command]

    def run(
        self,
        command: Sequence[str],
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> str:
        """Run ``command`` here; its output, or ``RuntimeError`` with its message."""
        done = subprocess.run(
            self.command(command, cwd),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd=cwd,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}"
            )
        return done.stdout


def with_query(uri: str, options: Mapping[str, str]) -> str:
    """``uri`` with ``options`` as its query."""
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return uri + ("?" + query if query else "")


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (bounded) until ``ready()`` is true; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        time.sleep(0.05)
