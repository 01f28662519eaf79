"""A ``redis-server`` of our own: its folder, its port, its append-only file.

The restart tests of ``make test``, ``make chaos`` and the many-hosts scenarios start
theirs here (``chaos.private`` says why never the shared one); ``launch_redis`` is the one
starter of a bare ``redis-server`` with given arguments (the cluster and Sentinel tests)::

    with private_redis(appendonly=True) as server:
        server.restart()                 # SHUTDOWN (the AOF synced), then the same files
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from chaos.private import LOOPBACK, Place, ServerUnavailable, wait_until, with_query


def launch_redis(
    port: int,
    args: Sequence[str],
    password: str | None = None,
    log: Path | None = None,
    place: Place | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``redis-server`` on ``place``'s address (loopback by default) and ``port`` with
    ``args``; return once it answers (its data loaded). Its own session: ``killpg`` ends it
    wherever it runs."""
    place = place or Place()
    if shutil.which("redis-server") is None:
        raise ServerUnavailable("redis-server is not installed")
    command = ["redis-server", "--port", str(port), "--bind", place.address, "--daemonize", "no"]
    if place.namespace is not None:  # the hosts reach it from their subnet, with no password
        command += ["--protected-mode", "no"]
    if log is not None:
        command += ["--logfile", str(log)]
    process = subprocess.Popen(
        place.command([*command, *args]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: _redis_loaded(place.address, port, password),
            30,
            f"redis-server on {place.address}:{port}",
        )
    except BaseException:
        _kill(process)
        raise
    if process.poll() is not None:
        raise RuntimeError(f"redis-server on port {port} exited ({process.returncode})")
    return process


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def redis_command(port: int, password: str | None, *words: str, address: str = LOOPBACK) -> bytes:
    """One command over a plain socket (redis-py would retry once the server is gone)."""
    parts = ([("AUTH", password)] if password else []) + [words]
    data = b""
    for part in parts:
        data += f"*{len(part)}\r\n".encode()
        for word in part:
            data += f"${len(word.encode())}\r\n{word}\r\n".encode()
    with socket.create_connection((address, port), timeout=5) as sock:
        sock.sendall(data)
        reply = b""
        wanted = len(parts)
        while reply.count(b"\r\n") < wanted and (chunk := sock.recv(65536)):
            reply += chunk
            if words[0] == "INFO" and b"loading:" in reply:
                break
    return reply


def _redis_loaded(address: str, port: int, password: str | None) -> bool:
    try:
        return b"loading:0" in redis_command(port, password, "INFO", "persistence", address=address)
    except OSError:
        return False


class PrivateRedis:
    """A ``redis-server`` of our own at ``place``; with ``appendonly`` every write is in
    its AOF (``appendfsync always``) before the reply, so a restart keeps every task."""

    def __init__(
        self, appendonly: bool = True, password: str | None = None, place: Place | None = None
    ) -> None:
        self.place = place or Place()
        self.address = self.place.address
        self.folder = Path(tempfile.mkdtemp(prefix="asynctask-redis-"))
        self.port = self.place.port(6379)
        self.password = password
        self.args = ["--dir", str(self.folder), "--save", ""]
        if appendonly:
            self.args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            self.args += ["--appendonly", "no"]
        if password:
            self.args += ["--requirepass", password]
        self.process: subprocess.Popen[bytes] | None = None

    def uri(self, **options: str) -> str:
        """A redis transport URI of this server's database 0."""
        auth = f":{self.password}@" if self.password else ""
        return with_query(f"redis://{auth}{self.address}:{self.port}/0", options)

    def start(self) -> None:
        """Start it on its port and files; return once it has loaded its data."""
        self.process = launch_redis(
            self.port, self.args, self.password, self.folder / "redis.log", self.place
        )

    def stop(self) -> None:
        """``SHUTDOWN`` (the AOF synced), then wait for the process to end."""
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            redis_command(self.port, self.password, "SHUTDOWN", address=self.address)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            _kill(self.process)
        self.process = None

    def restart(self, down: float = 0.0) -> None:
        """Stop it, stay down ``down`` s, start it again on the same port and files."""
        self.stop()
        time.sleep(down)
        self.start()

    def version(self) -> str:
        """``Redis <version> (own server)``."""
        out = Place().run(["redis-server", "--version"], 30)
        return "Redis " + out.split("v=", 1)[-1].split()[0] + " (own server)"

    def remove(self) -> None:
        """Stop it (killed if it does not stop) and remove its folder."""
        if self.process is not None and self.process.poll() is None:
            _kill(self.process)
        self.process = None
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_redis(
    appendonly: bool = True, password: str | None = None, place: Place | None = None
) -> Iterator[PrivateRedis]:
    """A started ``PrivateRedis``; stopped and removed at the end, however it ends."""
    server = PrivateRedis(appendonly, password, place)
    try:
        server.start()
        yield server
    finally:
        server.remove()
