"""Servers of our own: PostgreSQL, Redis and RabbitMQ on free loopback ports, in temp folders.

Why. The PostgreSQL, Redis and RabbitMQ on this machine's standard ports are shared with
other people's test runs: a test or a chaos scenario that restarts a server, takes it
away, or changes its configuration must do it to a server of its own, or it breaks
theirs. ``make chaos`` and the restart tests of ``make test`` start one here, and each
context manager stops it (and removes its folder) however the block ends::

    with private_postgres() as pg:      # initdb + pg_ctl, trust auth, database "test"
        uri = pg.uri(schema="x")         # pgsql://postgres@127.0.0.1:<port>/test?schema=x
        pg.restart(down=1.0)
    with private_redis(appendonly=True) as server:
        server.restart()                 # SHUTDOWN (the AOF synced), then the same files
    with private_rabbitmq() as rabbit:   # node atqchaos<n>@localhost, no plugins
        rabbit.ctl("close_all_connections", "test")

PostgreSQL refuses to run as root, so as root its commands run as the ``postgres`` OS
user (``runuser``), in a folder that user owns. RabbitMQ runs from
``/usr/lib/rabbitmq/bin`` (the ``/usr/sbin`` wrappers switch to the ``rabbitmq`` user and
its cookie) with ``HOME`` in its folder, so the node and its ``rabbitmqctl`` share an
Erlang cookie of their own; it registers with the machine's epmd under a node name of its
own, and reads none of ``/etc/rabbitmq``.

Nothing here imports a driver at module level: ``chaos.private`` loads wherever the
standard library does. A missing program raises ``ServerUnavailable`` naming it, which
tests turn into a skip (or a failure under ``ASYNCTASK_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """A server of our own cannot be started here (a program is missing); says which."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (bounded) until ``ready()`` is true; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        time.sleep(0.05)


def _run(command: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


# -- PostgreSQL ---------------------------------------------------------------------------------


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise ServerUnavailable(
            "PostgreSQL's initdb is not installed (looked in /usr/lib/postgresql/*/bin and PATH)"
        )
    return Path(initdb).parent


def _version_key(path: str) -> tuple[int, ...]:
    part = path.split("/")[4]
    return tuple(int(p) for p in part.split(".") if p.isdigit())


class PrivatePostgres:
    """A PostgreSQL cluster of our own: trust auth, superuser ``postgres``, database
    ``test``, listening on 127.0.0.1:``port`` and a socket in its folder only."""

    user = "postgres"
    database = "test"

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses root
            if shutil.which("runuser") is None:
                raise ServerUnavailable("running as root, and runuser is not installed")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="asynctask-pg-"))
        if self.as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.data = self.folder / "data"
        self.log = self.folder / "postgresql.log"
        self.port = free_port()

    @property
    def conninfo(self) -> str:
        """libpq connection string of the database ``test``."""
        return f"host={LOOPBACK} port={self.port} user={self.user} dbname={self.database}"

    def uri(self, **options: str) -> str:
        """A pgsql transport URI of the database ``test``, with ``options`` as its query."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        base = f"pgsql://{self.user}@{LOOPBACK}:{self.port}/{self.database}"
        return base + ("?" + query if query else "")

    def _pg_ctl(self, *args: str, timeout: float = 120) -> str:
        command = [*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), *args]
        return _run(command, timeout)

    def _options(self) -> str:
        # fsync off: a machine crash is not among our faults, and the disk is shared
        return (
            f"-p {self.port} -c listen_addresses={LOOPBACK} -k {self.folder} -c fsync=off "
            "-c full_page_writes=off -c shared_buffers=32MB -c max_connections=200"
        )

    def create(self) -> None:
        """initdb, start, and create the database ``test``."""
        _run(
            [
                *self.as_postgres, str(self.bin / "initdb"), "-D", str(self.data),
                "--auth=trust", f"--username={self.user}", "--no-sync", "-E", "UTF8",
            ],
            timeout=120,
        )  # fmt: skip
        self.start()
        import psycopg  # the chaos suite and the pgsql tests have it

        with psycopg.connect(
            f"host={LOOPBACK} port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {self.database}")

    def start(self) -> None:
        """Start the server; return once it accepts connections."""
        self._pg_ctl("-l", str(self.log), "-o", self._options(), "-w", "-t", "120", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``fast``: connections cut, a checkpoint; ``immediate``: a crash)."""
        self._pg_ctl("-m", mode, "-w", "-t", "120", "stop")

    def restart(self, down: float = 0.0) -> None:
        """Stop it, stay down ``down`` s, start it again on the same port and files."""
        self.stop()
        time.sleep(down)
        self.start()

    def running(self) -> bool:
        """Whether its postmaster runs."""
        try:
            self._pg_ctl("status", timeout=30)
        except RuntimeError:
            return False
        return True

    def version(self) -> str:
        """``PostgreSQL <version> (own server)``."""
        words = _run([str(self.bin / "postgres"), "--version"], 30).split()
        return f"PostgreSQL {words[2] if len(words) > 2 else '?'} (own server)"

    def remove(self) -> None:
        """Stop it if it runs (at once) and remove its folder."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if self.data.exists() and self.running():
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started ``PrivatePostgres``; stopped and removed at the end, however it ends."""
    server = PrivatePostgres()
    try:
        server.create()
        yield server
    finally:
        server.remove()


# -- Redis --------------------------------------------------------------------------------------


def launch_redis(
    port: int, args: Sequence[str], password: str | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``redis-server`` on 127.0.0.1:``port`` with ``args``; return once it answers
    (its data loaded)."""
    if shutil.which("redis-server") is None:
        raise ServerUnavailable("redis-server is not installed")
    command = ["redis-server", "--port", str(port), "--bind", LOOPBACK, "--daemonize", "no"]
    if log is not None:
        command += ["--logfile", str(log)]
    process = subprocess.Popen(
        [*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: _redis_loaded(port, password), 30, f"redis-server on port {port}")
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.poll() is not None:
        raise RuntimeError(f"redis-server on port {port} exited ({process.returncode})")
    return process


def _redis_command(port: int, password: str | None, *words: str) -> bytes:
    """One command over a plain socket (redis-py would retry once the server is gone)."""
    parts = ([("AUTH", password)] if password else []) + [words]
    data = b""
    for part in parts:
        data += f"*{len(part)}\r\n".encode()
        for word in part:
            data += f"${len(word.encode())}\r\n{word}\r\n".encode()
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(data)
        reply = b""
        wanted = len(parts)
        while reply.count(b"\r\n") < wanted and (chunk := sock.recv(65536)):
            reply += chunk
            if words[0] == "INFO" and b"loading:" in reply:
                break
    return reply


def _redis_loaded(port: int, password: str | None) -> bool:
    try:
        return b"loading:0" in _redis_command(port, password, "INFO", "persistence")
    except OSError:
        return False


class PrivateRedis:
    """A ``redis-server`` of our own; with ``appendonly`` every write is in its AOF
    (``appendfsync always``) before the reply, so a restart keeps every task."""

    def __init__(self, appendonly: bool = True, password: str | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="asynctask-redis-"))
        self.port = free_port()
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
        query = "&".join(f"{k}={v}" for k, v in options.items())
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0" + ("?" + query if query else "")

    def start(self) -> None:
        """Start it on its port and files; return once it has loaded its data."""
        self.process = launch_redis(self.port, self.args, self.password, self.folder / "redis.log")

    def stop(self) -> None:
        """``SHUTDOWN`` (the AOF synced), then wait for the process to end."""
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            _redis_command(self.port, self.password, "SHUTDOWN")
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, down: float = 0.0) -> None:
        """Stop it, stay down ``down`` s, start it again on the same port and files."""
        self.stop()
        time.sleep(down)
        self.start()

    def remove(self) -> None:
        """Stop it (killed if it does not stop) and remove its folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_redis(appendonly: bool = True, password: str | None = None) -> Iterator[PrivateRedis]:
    """A started ``PrivateRedis``; stopped and removed at the end, however it ends."""
    server = PrivateRedis(appendonly, password)
    try:
        server.start()
        yield server
    finally:
        server.remove()


# -- RabbitMQ -----------------------------------------------------------------------------------

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def _rabbitmq_program(name: str) -> str:
    if (RABBITMQ_BIN / name).exists():
        return str(RABBITMQ_BIN / name)
    found = shutil.which(name)
    if found is None:
        raise ServerUnavailable(f"RabbitMQ's {name} is not installed")
    return found


class PrivateRabbitMQ:
    """A RabbitMQ node of our own (``atqchaos<pid>@localhost``): AMQP on 127.0.0.1:``port``,
    its Erlang distribution on ``dist_port``, mnesia, logs, cookie and configuration in its
    folder, no plugin. ``guest``/``guest`` on loopback, vhost ``/``."""

    def __init__(self) -> None:
        self.server = _rabbitmq_program("rabbitmq-server")
        self.rabbitmqctl = _rabbitmq_program("rabbitmqctl")
        self.folder = Path(tempfile.mkdtemp(prefix="asynctask-rabbitmq-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"atqchaos{os.getpid()}x{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = {LOOPBACK}:{self.port}\n"
        )
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(self.folder),  # its own Erlang cookie, shared with its rabbitmqctl
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": LOOPBACK,
        }

    def uri(self, **options: str) -> str:
        """An amqp transport URI of this node's vhost ``/`` (user guest)."""
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}//" + ("?" + query if query else "")

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run ``rabbitmqctl -n <node> args``; return its output (raise if it fails)."""
        return _run([self.rabbitmqctl, "-n", self.node, *args], timeout, self.env)

    def start(self) -> None:
        """Start the node; return once RabbitMQ runs on it."""
        self._log = open(self.folder / "server.log", "ab")  # noqa: SIM115 -- closed in remove()
        self.process = subprocess.Popen(
            [self.server],
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
        """``RabbitMQ <version>``."""
        return "RabbitMQ " + self.ctl("version").strip()

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
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    """A started ``PrivateRabbitMQ``; shut down and removed at the end, however it ends."""
    server = PrivateRabbitMQ()
    try:
        server.start()
        yield server
    finally:
        server.remove()
