"""Each backend the suite runs on: its URI, and the faults it can suffer.

A ``Backend`` gives the transport URI (with its short recovery option, so a killed
worker's task comes back in seconds), and knows how to restart its server, drop every
connection of the suite, and write undecodable messages by hand in the transport's
documented storage format. Everything is on loopback:

* filesys: a folder in the scratch space; no server, so no restart nor connection kill.
* pgsql: the shared PostgreSQL on 127.0.0.1:5432 (database ``test``), in a schema of the
  run's own, dropped at the end. Restarted with ``pg_ctlcluster``; the suite's connections
  carry ``application_name=asynctask_chaos``, so only they are terminated.
* redis: a ``redis-server`` of the suite's own on a free port (``appendonly yes``,
  ``appendfsync always`` from its start), shut down and started again on the same files,
  and shut down for good at the end. The shared server is never touched.
* amqp: the shared RabbitMQ on 127.0.0.1:5672, in a vhost of the run's own (deleted at the
  end); ``rabbitmqctl stop_app``/``start_app`` restarts it,
  ``close_all_connections --vhost`` drops the suite's connections only, and
  ``close_connection`` closes one worker's connection, found by its client-provided name
  in the run's vhost (as an operator would).

A backend made with a given URI (``--uri``, as the CI test does) uses that server as it is
and cannot restart it nor drop its connections.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import psycopg

if TYPE_CHECKING:
    import redis

#: the texts written by hand as messages: two are not JSON, three are JSON but not objects
UNDECODABLE = ("this is not JSON", '{"unclosed": ', "[1, 2, 3]", '"just a string"', "null")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
PG_CONNINFO = "host=127.0.0.1 port=5432 dbname=test"
AMQP_BASE = "amqp://guest:guest@127.0.0.1:5672"
APPLICATION_NAME = "asynctask_chaos"


class Unsupported(Exception):
    """This backend cannot suffer this fault (filesys has no server to restart)."""


def with_options(uri: str, options: dict[str, str]) -> str:
    """``uri`` with query options added, unless it sets them already."""
    present = {pair.split("=", 1)[0] for pair in uri.partition("?")[2].split("&") if pair}
    extra = "&".join(f"{k}={v}" for k, v in options.items() if k not in present)
    if not extra:
        return uri
    return uri + ("&" if "?" in uri else "?") + extra


def check_loopback(uri: str) -> None:
    """Refuse a URI whose server is not on this machine's loopback."""
    if uri.startswith(("filesys:", "unix:")):
        return
    host = urlsplit(uri.partition("?")[0]).hostname
    if host not in LOOPBACK:
        raise ValueError(f"the chaos suite talks to loopback only, not to {host!r} ({uri})")


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (bounded) until ``ready()`` is true; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        time.sleep(0.1)


def _run(*command: str, timeout: float = 60) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


class Backend:
    """A transport's server as the suite uses it; see the module docstring."""

    name = ""
    #: whether there is a server at all (filesys has none to restart or cut off)
    has_server: ClassVar[bool] = True
    #: URI options that make a dead worker's task come back within ~2 s
    short_recovery: ClassVar[dict[str, str]] = {}

    def __init__(self, scratch: Path, given_uri: str | None = None) -> None:
        self.scratch = scratch
        self.given_uri = given_uri
        self.uri = ""

    @property
    def controls_server(self) -> bool:
        """Whether the suite may restart this server and drop its connections."""
        return self.has_server and self.given_uri is None

    def start(self) -> None:
        """Make the URI ready (a schema, a server, a vhost of the run's own)."""
        if self.given_uri is not None:
            check_loopback(self.given_uri)
            self.uri = with_options(self.given_uri, self.short_recovery)
        else:
            self.uri = self._own_uri()
        check_loopback(self.uri)

    def stop(self) -> None:
        """Remove what ``start`` made; the server is left as it was found."""

    def version(self) -> str:
        """The server's name and version, for the report."""
        return "-"

    def restart(self) -> None:
        """Stop the server and start it again; return once it answers."""
        raise Unsupported(f"{self.name} has no server to restart")

    def kill_connections(self) -> int:
        """Drop every connection of the suite's processes; return how many."""
        raise Unsupported(f"{self.name} has no connections to drop")

    def close_worker_connection(self, queue: str, rng: random.Random) -> str | None:
        """Close one consumer connection of ``queue``, as an operator would; return its
        name, or None if there was none."""
        raise Unsupported(f"{self.name} has no named connections")

    def write_undecodable(self, queue: str, texts: tuple[str, ...]) -> None:
        """Store ``texts`` as messages of ``queue``, by hand, as another program would."""
        for text in texts:
            self.write_raw(queue, text)

    def write_raw(
        self,
        queue: str,
        data: str | bytes,
        attempts: int | None = None,
        headers: dict[str, str] | None = None,
        task_id: str | None = None,
    ) -> None:
        """Store one message of ``queue`` by hand in the documented storage format: its
        body as given, with an attempt count and headers where the format has them.
        Raises ``Unsupported`` for what the format cannot hold."""
        raise NotImplementedError

    def _own_uri(self) -> str:
        raise NotImplementedError


class FilesysBackend(Backend):
    """Queues in a folder of the scratch space."""

    name = "filesys"
    has_server = False
    short_recovery: ClassVar[dict[str, str]] = {"lease": "2"}

    def _own_uri(self) -> str:
        return with_options(f"filesys:{self.scratch / 'queues'}", self.short_recovery)

    def version(self) -> str:
        return "no server"

    @property
    def root(self) -> Path:
        """The transport's folder."""
        return Path(self.uri.partition("?")[0].split(":", 1)[1])

    def ready_folder(self, queue: str) -> Path:
        """``<root>/<queue>/ready``, made if missing (with ``tmp/``)."""
        for folder in ("tmp", "ready"):
            (self.root / queue / folder).mkdir(parents=True, exist_ok=True)
        return self.root / queue / "ready"

    def write_raw(
        self,
        queue: str,
        data: str | bytes,
        attempts: int | None = None,
        headers: dict[str, str] | None = None,
        task_id: str | None = None,
        name: str | None = None,
    ) -> None:
        # The README's recipe: write under tmp/, then rename into ready/. Attempts live in
        # the name (digits only: a negative count cannot be written); headers in an envelope.
        if attempts is not None and attempts < 0:
            raise Unsupported("a filesys task name holds digits only: no negative attempts")
        ready = self.ready_folder(queue)
        if name is None:
            suffix = f".{attempts}" if attempts else ""
            task_id = task_id or f"chaos-{uuid.uuid4().hex[:8]}"
            name = f"{time.time_ns():019d}-{task_id}{suffix}.json"
        body = data.encode() if isinstance(data, str) else data
        if headers is not None:
            head = f'{{"__asynctask__":1,"headers":{json.dumps(headers)},"payload":'
            body = head.encode() + body + b"}"
        tmp = self.root / queue / "tmp" / name
        tmp.write_bytes(body)
        os.rename(tmp, ready / name)


class PgsqlBackend(Backend):
    """The shared PostgreSQL, in a schema of the run's own."""

    name = "pgsql"
    short_recovery: ClassVar[dict[str, str]] = {"recovery_seconds": "2", "retry_timeout": "30"}

    def __init__(self, scratch: Path, given_uri: str | None = None) -> None:
        super().__init__(scratch, given_uri)
        self.schema = f"chaos_{uuid.uuid4().hex[:8]}"

    def _own_uri(self) -> str:
        options = {"schema": self.schema, "application_name": APPLICATION_NAME}
        return with_options("pgsql://127.0.0.1:5432/test", options | self.short_recovery)

    def stop(self) -> None:
        if self.controls_server:
            self._wait_ready(60)
            with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    def version(self) -> str:
        with psycopg.connect(PG_CONNINFO, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"

    def restart(self) -> None:
        # the cluster on port 5432: "15 main 5432 online postgres ..."
        clusters = [line.split() for line in _run("pg_lsclusters", "-h").splitlines()]
        [(version, cluster)] = [(c[0], c[1]) for c in clusters if len(c) > 2 and c[2] == "5432"]
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster]
        try:
            _run(*command, "restart", timeout=120)
        finally:
            # never leave it stopped: start it if the restart did not
            if not self._ready():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    _run(*command, "start", timeout=120)
            self._wait_ready(120)

    def kill_connections(self) -> int:
        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (APPLICATION_NAME,),
            ).fetchone()
        return int(row[0]) if row else 0

    def write_raw(
        self,
        queue: str,
        data: str | bytes,
        attempts: int | None = None,
        headers: dict[str, str] | None = None,
        task_id: str | None = None,
    ) -> None:
        # JSON goes in the jsonb column (``::jsonb`` as psql would); text that does not
        # parse in payload_text, as the README says a bridge would write it.
        if isinstance(data, bytes):
            try:
                data = data.decode()
            except UnicodeDecodeError:  # the database refuses it, as it would any client
                with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
                    conn.execute("SELECT convert_from(%s, 'UTF8')", (data,))
                raise  # not reached: the database refused it above
        schema = self.schema if self.controls_server else _option(self.uri, "schema", "asynctask")
        table = f"{schema}.asynctask_queue"
        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            try:  # PostgreSQL decides what is JSON (jsonb takes what Python's json refuses)
                self._insert(conn, table, "payload", "::jsonb", queue, data, attempts, headers)
            except psycopg.errors.InvalidTextRepresentation:
                self._insert(conn, table, "payload_text", "", queue, data, attempts, headers)
            if task_id is not None:  # the row just written, by its unique payload
                conn.execute(
                    f"UPDATE {table} SET task_id = %s::uuid WHERE id = "
                    f"(SELECT max(id) FROM {table} WHERE queue_name = %s)".encode(),
                    (task_id, queue),
                )

    @staticmethod
    def _insert(
        conn: psycopg.Connection[Any],
        table: str,
        column: str,
        cast: str,
        queue: str,
        data: str,
        attempts: int | None,
        headers: dict[str, str] | None,
    ) -> None:
        columns, values = ["queue_name", column], ["%s", f"%s{cast}"]
        params: list[Any] = [queue, data]
        if attempts is not None:
            columns.append("attempts")
            values.append("%s")
            params.append(attempts)
        if headers is not None:
            columns.append("headers")
            values.append("%s::jsonb")
            params.append(json.dumps(headers))
        statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(values)})"
        conn.execute(statement.encode(), params)

    @staticmethod
    def _ready() -> bool:
        return (
            subprocess.run(
                ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-t", "2"], check=False
            ).returncode
            == 0
        )

    def _wait_ready(self, timeout: float) -> None:
        wait_until(self._ready, timeout, "PostgreSQL ready (pg_isready)")


class RedisBackend(Backend):
    """A ``redis-server`` of the suite's own, persisting every write (AOF, fsync always)."""

    name = "redis"
    short_recovery: ClassVar[dict[str, str]] = {"recovery_seconds": "2", "retry_timeout": "30"}

    def __init__(self, scratch: Path, given_uri: str | None = None) -> None:
        super().__init__(scratch, given_uri)
        self.port = 0
        self.folder = scratch / "redis"
        self.process: subprocess.Popen[bytes] | None = None

    def _own_uri(self) -> str:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: cannot run a server of our own")
        self.port = _free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._launch()
        return with_options(f"redis://127.0.0.1:{self.port}/0", self.short_recovery)

    def _launch(self) -> None:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--logfile",
            str(self.folder / "redis.log"),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_until(self._answers, 30, f"redis-server on port {self.port} answering")

    def _client(self) -> redis.Redis:
        client: redis.Redis = _redis().Redis.from_url(self.uri.partition("?")[0], socket_timeout=5)
        return client

    def _answers(self) -> bool:
        try:
            client: redis.Redis = _redis().Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
            with contextlib.closing(client):
                return bool(client.info("persistence").get("loading") == 0)
        except _redis().RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._shutdown()
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process = None

    def version(self) -> str:
        with contextlib.closing(self._client()) as client:
            info: dict[str, Any] = client.info("server")
        return f"Redis {info['redis_version']}" + (" (own server)" if self.process else "")

    def restart(self) -> None:
        if self.process is None:
            raise Unsupported("redis: the suite restarts only a server of its own")
        try:
            self._shutdown()
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._launch()  # the same port, folder and append-only file

    def _shutdown(self) -> None:
        assert self.process is not None
        # A plain socket: redis-py would retry the command once the server is gone.
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(b"*1\r\n$8\r\nSHUTDOWN\r\n")
            sock.recv(256)  # the reply is the connection closing, once the AOF is synced
        self.process.wait(30)

    def kill_connections(self) -> int:
        if self.process is None:
            raise Unsupported("redis: the suite drops connections only on a server of its own")
        with contextlib.closing(self._client()) as client:
            return int(client.client_kill_filter(_type="normal", skipme=True))

    def write_raw(
        self,
        queue: str,
        data: str | bytes,
        attempts: int | None = None,
        headers: dict[str, str] | None = None,
        task_id: str | None = None,
    ) -> None:
        # RPUSH of the text; attempts and headers need the envelope of the README.
        prefix = _option(self.uri, "key_prefix", "asynctask")
        if attempts is not None or headers is not None or task_id is not None:
            payload = data.decode() if isinstance(data, bytes) else data
            envelope: dict[str, Any] = {"__asynctask__": 1, "id": task_id or uuid.uuid4().hex}
            envelope["attempts"] = attempts or 0
            if headers is not None:
                envelope["headers"] = headers
            data = json.dumps(envelope)[:-1] + f', "payload": {payload}}}'
        with contextlib.closing(self._client()) as client:
            client.rpush(f"{prefix}_{queue}", data)


class AmqpBackend(Backend):
    """The shared RabbitMQ, in a vhost of the run's own."""

    name = "amqp"
    short_recovery: ClassVar[dict[str, str]] = {"heartbeat": "2", "retry_timeout": "30"}

    def __init__(self, scratch: Path, given_uri: str | None = None) -> None:
        super().__init__(scratch, given_uri)
        self.vhost = f"asynctask_chaos_{uuid.uuid4().hex[:8]}"

    def _own_uri(self) -> str:
        _run("rabbitmqctl", "add_vhost", self.vhost)
        _run("rabbitmqctl", "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        return with_options(f"{AMQP_BASE}/{self.vhost}", self.short_recovery)

    def stop(self) -> None:
        if self.controls_server:
            _run("rabbitmqctl", "await_startup", timeout=120)
            _run("rabbitmqctl", "delete_vhost", self.vhost)

    def version(self) -> str:
        return "RabbitMQ " + _run("rabbitmqctl", "version").strip()

    def restart(self) -> None:
        try:
            _run("rabbitmqctl", "stop_app", timeout=120)
        finally:
            _run("rabbitmqctl", "start_app", timeout=120)  # always, even after a failed stop
            _run("rabbitmqctl", "await_startup", timeout=120)

    def kill_connections(self) -> int:
        listed = _run("rabbitmqctl", "list_connections", "-q", "--no-table-headers", "vhost")
        count = sum(1 for line in listed.splitlines() if line.strip() == self.vhost)
        _run("rabbitmqctl", "close_all_connections", "--vhost", self.vhost, "asynctask chaos")
        return count

    def close_worker_connection(self, queue: str, rng: random.Random) -> str | None:
        # asynctask names each consumer's connection "asynctask consumer <queue> (pid N)"
        listed = _run(
            "rabbitmqctl", "list_connections", "-q", "--no-table-headers",
            "pid", "vhost", "client_properties",
        )  # fmt: skip
        marker = '{"connection_name","asynctask consumer ' + queue + " "
        found = []
        for line in listed.splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and fields[1] == self.vhost and marker in fields[2]:
                name = fields[2].split('{"connection_name","', 1)[1].split('"', 1)[0]
                found.append((fields[0], name))
        if not found:
            return None
        pid, name = rng.choice(found)
        _run("rabbitmqctl", "close_connection", pid, "asynctask chaos: an operator closes it")
        return name

    def write_raw(
        self,
        queue: str,
        data: str | bytes,
        attempts: int | None = None,
        headers: dict[str, str] | None = None,
        task_id: str | None = None,
    ) -> None:
        kombu: Any = importlib.import_module("kombu")  # untyped
        table: dict[str, Any] = dict(headers or {})
        if attempts is not None:
            table["x-asynctask-attempts"] = attempts
        with kombu.Connection(self.uri.partition("?")[0], connect_timeout=5) as conn:
            # content type given, so kombu sends the body as it is (no serializer)
            conn.Producer().publish(
                data,
                exchange=queue,
                routing_key=queue,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                headers=table,
                message_id=task_id or uuid.uuid4().hex,
            )


BACKENDS: dict[str, type[Backend]] = {
    "filesys": FilesysBackend,
    "pgsql": PgsqlBackend,
    "redis": RedisBackend,
    "amqp": AmqpBackend,
}


def other_test_runs(name: str) -> list[str]:
    """Command lines of pytest runs on this machine that may use ``name``'s shared server."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        with contextlib.suppress(OSError):
            words = [
                w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0")
            ]
            if any(w.endswith("pytest") for w in words[:3]) and _may_use(words, name):
                found.append(" ".join(w for w in words if w))
    return found


def _may_use(words: list[str], name: str) -> bool:
    # a run limited to other transports' folders leaves this server alone
    paths = [w.rstrip("/") for w in words if w.startswith("tests")]
    shared = ("tests/workers", "tests/scheduler", "tests/chaos", f"tests/{name}")
    return not paths or any(p == "tests" or p.startswith(shared) for p in paths)


def wait_for_quiet(name: str, say: Callable[[str], None], timeout: float) -> None:
    """Before restarting a shared server: wait (bounded) until no pytest run may be using it."""
    deadline = time.monotonic() + timeout
    noted = False
    while (runs := other_test_runs(name)) and time.monotonic() < deadline:
        if not noted:
            say(f"    waiting up to {timeout:g} s for other test runs to end: {runs[0][:100]}")
            noted = True
        time.sleep(2)
    if runs:
        say("    other test runs go on; disturbing the shared server anyway")


def _redis() -> Any:
    # imported when a redis backend is used: the filesys cases run where redis-py cannot
    # load (an older Python 3.11 without async_timeout), as another user's interpreter may be
    return importlib.import_module("redis")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _option(uri: str, name: str, default: str) -> str:
    for pair in uri.partition("?")[2].split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return default
