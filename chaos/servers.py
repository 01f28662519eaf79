"""Each backend the suite runs on: its URI, and the faults it can suffer.

A ``Backend`` gives the transport URI (with its short recovery option, so a killed
worker's task comes back in seconds), and knows how to restart its server, drop every
connection of the suite, and write undecodable messages by hand in the transport's
documented storage format. Everything is on loopback, and every server the suite
restarts or cuts off is one of its own (``chaos.private``): the shared servers on the
standard ports, which other people's test runs use, are never touched.

* filesys: a folder in the scratch space; no server, so no restart nor connection kill.
* pgsql: a PostgreSQL cluster of the suite's own (initdb in a temp folder, a free port),
  in a schema of the run's own; ``pg_ctl restart`` restarts it; the suite's connections
  carry ``application_name=asynctask_chaos``, and only they are terminated.
* redis: a ``redis-server`` of the suite's own on a free port (``appendonly yes``,
  ``appendfsync always`` from its start), shut down and started again on the same files.
* amqp: a RabbitMQ node of the suite's own (its own node name, ports, mnesia and cookie,
  no plugin), vhost ``/``; ``rabbitmqctl stop_app``/``start_app`` restarts it,
  ``close_all_connections`` drops every connection, and ``close_connection`` closes one
  worker's connection, found by its client-provided name (as an operator would).

Each server of the suite's own is stopped and its folder removed at the end of its
transport's scenarios. A backend made with a given URI (``--uri``, as the CI test does)
uses that server as it is and neither restarts it nor drops its connections.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import psycopg

from chaos.private_postgres import PrivatePostgres
from chaos.private_rabbitmq import PrivateRabbitMQ
from chaos.private_redis import PrivateRedis

if TYPE_CHECKING:
    import redis

#: the texts written by hand as messages: two are not JSON, three are JSON but not objects
UNDECODABLE = ("this is not JSON", '{"unclosed": ', "[1, 2, 3]", '"just a string"', "null")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
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
    """A PostgreSQL cluster of the suite's own (``chaos.private``), in a schema of the run's."""

    name = "pgsql"
    short_recovery: ClassVar[dict[str, str]] = {"recovery_seconds": "2", "retry_timeout": "30"}

    def __init__(self, scratch: Path, given_uri: str | None = None) -> None:
        super().__init__(scratch, given_uri)
        self.schema = f"chaos_{uuid.uuid4().hex[:8]}"
        self.server: PrivatePostgres | None = None

    def _own_uri(self) -> str:
        self.server = PrivatePostgres()
        try:
            self.server.create()
        except BaseException:
            self.server.remove()
            self.server = None
            raise
        options = {"schema": self.schema, "application_name": APPLICATION_NAME}
        return self.server.uri(**options, **self.short_recovery)

    @property
    def conninfo(self) -> str:
        """libpq conninfo of the suite's database (for writes past the transport)."""
        if self.server is not None:
            return self.server.conninfo
        return pg_conninfo(self.uri)

    def stop(self) -> None:
        if self.server is not None:
            self.server.remove()
            self.server = None

    def version(self) -> str:
        with psycopg.connect(self.conninfo, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        own = " (own server)" if self.server is not None else ""
        return f"PostgreSQL {row[0] if row else '?'}{own}"

    def restart(self) -> None:
        if self.server is None:
            raise Unsupported("pgsql: the suite restarts only a server of its own")
        self.server.restart()

    def kill_connections(self) -> int:
        if self.server is None:
            raise Unsupported("pgsql: the suite drops connections only on a server of its own")
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
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
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute("SELECT convert_from(%s, 'UTF8')", (data,))
                raise  # not reached: the database refused it above
        schema = _option(self.uri, "schema", "asynctask")
        table = f"{schema}.asynctask_queue"
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
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


def pg_conninfo(uri: str) -> str:
    """libpq conninfo of a ``pgsql://[user@]host[:port]/database`` URI (no password: the
    suite's servers trust loopback)."""
    parts = urlsplit(uri.partition("?")[0])
    words = {
        "host": parts.hostname or "127.0.0.1",
        "port": str(parts.port or 5432),
        "dbname": parts.path.lstrip("/") or "test",
    }
    if parts.username:
        words["user"] = parts.username
    return " ".join(f"{k}={v}" for k, v in words.items())


class RedisBackend(Backend):
    """A ``redis-server`` of the suite's own (``chaos.private``), persisting every write
    (AOF, fsync always)."""

    name = "redis"
    short_recovery: ClassVar[dict[str, str]] = {"recovery_seconds": "2", "retry_timeout": "30"}

    def __init__(self, scratch: Path, given_uri: str | None = None) -> None:
        super().__init__(scratch, given_uri)
        self.server: PrivateRedis | None = None

    def _own_uri(self) -> str:
        self.server = PrivateRedis(appendonly=True)
        try:
            self.server.start()
        except BaseException:
            self.server.remove()
            self.server = None
            raise
        return self.server.uri(**self.short_recovery)

    def _client(self) -> redis.Redis:
        client: redis.Redis = _redis().Redis.from_url(self.uri.partition("?")[0], socket_timeout=5)
        return client

    def stop(self) -> None:
        if self.server is not None:
            self.server.remove()
            self.server = None

    def version(self) -> str:
        with contextlib.closing(self._client()) as client:
            info: dict[str, Any] = client.info("server")
        return f"Redis {info['redis_version']}" + (" (own server)" if self.server else "")

    def restart(self) -> None:
        if self.server is None:
            raise Unsupported("redis: the suite restarts only a server of its own")
        self.server.restart()  # the same port, folder and append-only file

    def kill_connections(self) -> int:
        if self.server is None:
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
    """A RabbitMQ node of the suite's own (``chaos.private``), its vhost ``/``."""

    name = "amqp"
    short_recovery: ClassVar[dict[str, str]] = {"heartbeat": "2", "retry_timeout": "30"}

    def __init__(self, scratch: Path, given_uri: str | None = None) -> None:
        super().__init__(scratch, given_uri)
        self.server: PrivateRabbitMQ | None = None

    def _own_uri(self) -> str:
        self.server = PrivateRabbitMQ()
        try:
            self.server.start()
        except BaseException:
            self.server.remove()
            self.server = None
            raise
        return self.server.uri(**self.short_recovery)

    def _node(self) -> PrivateRabbitMQ:
        if self.server is None:
            raise Unsupported("amqp: the suite disturbs only a node of its own")
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.remove()
            self.server = None

    def version(self) -> str:
        kombu: Any = importlib.import_module("kombu")  # untyped
        with kombu.Connection(self.uri.partition("?")[0], connect_timeout=5) as conn:
            conn.connect()
            number = conn.connection.server_properties.get("version", "?")
        own = " (own server)" if self.server is not None else ""
        return f"RabbitMQ {number}{own}"

    def restart(self) -> None:
        self._node().restart()

    def kill_connections(self) -> int:
        node = self._node()
        listed = node.ctl("list_connections", "-q", "--no-table-headers", "pid")
        count = sum(1 for line in listed.splitlines() if line.strip())
        node.ctl("close_all_connections", "asynctask chaos")
        return count

    def close_worker_connection(self, queue: str, rng: random.Random) -> str | None:
        # asynctask names each consumer's connection "asynctask consumer <queue> (pid N)"
        node = self._node()
        listed = node.ctl(
            "list_connections", "-q", "--no-table-headers", "pid", "client_properties"
        )
        marker = '{"connection_name","asynctask consumer ' + queue + " "
        found = []
        for line in listed.splitlines():
            fields = line.split("\t")
            if len(fields) >= 2 and marker in fields[1]:
                name = fields[1].split('{"connection_name","', 1)[1].split('"', 1)[0]
                found.append((fields[0], name))
        if not found:
            return None
        pid, name = rng.choice(found)
        node.ctl("close_connection", pid, "asynctask chaos: an operator closes it")
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


def _redis() -> Any:
    # imported when a redis backend is used: the filesys cases run where redis-py cannot
    # load (an older Python 3.11 without async_timeout), as another user's interpreter may be
    return importlib.import_module("redis")


def _option(uri: str, name: str, default: str) -> str:
    for pair in uri.partition("?")[2].split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return default
