"""Fixtures of the pgsql tests: the server check, a probe that reads the table with plain
psycopg, throw-away databases for tests that need an empty one, and a PostgreSQL of a
test's own for the tests that restart it (the shared server is never restarted)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from asynctask.testing import require_service
from asynctask.testing.contract import open_transport
from chaos.private_postgres import PrivatePostgres

HOST = "127.0.0.1"
DATABASE = "test"
CONNINFO = f"host={HOST} dbname={DATABASE}"
#: the shared server's transport as the tests of this folder open it
URI = f"pgsql://{HOST}/{DATABASE}?recovery_seconds=1"


def _check_server() -> None:
    psycopg.connect(CONNINFO, connect_timeout=3).close()


@pytest.fixture
def pg_server() -> None:
    """Skip (or fail under ASYNCTASK_REQUIRE_SERVICES=1) when PostgreSQL is down."""
    require_service("PostgreSQL", _check_server)


@pytest.fixture
def transport(pg_server: None) -> Iterator[Any]:
    """A transport on the shared server (``URI``), closed after the test."""
    transport = open_transport(URI)
    yield transport
    transport.close()


@pytest.fixture
def own_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own (``chaos.private``: initdb and pg_ctl, as the
    ``postgres`` user when run as root), to restart at will; removed after the test.
    Skipped (or failed under ASYNCTASK_REQUIRE_SERVICES=1) where it cannot start."""
    servers: list[PrivatePostgres] = []

    def start() -> None:
        servers.append(PrivatePostgres())
        servers[0].create()

    try:
        require_service("a PostgreSQL server of the test's own (initdb, pg_ctl)", start)
        yield servers[0]
    finally:
        for server in servers:
            server.remove()


class PgsqlProbe:
    """Reads and writes the queue table past the transport, as psql would."""

    def __init__(
        self, conninfo: str = CONNINFO, schema: str = "asynctask", application_name: str = ""
    ) -> None:
        self.conninfo = conninfo
        self.table = f"{schema}.asynctask_queue"
        self.application_name = application_name

    def drop_connections(self) -> None:
        """``pg_terminate_backend`` on every connection with the transport's own
        application_name (never anybody else's), and wait until they are gone."""
        assert self.application_name, "drop_connections needs the transport's application_name"
        with self._conn() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (self.application_name,),
            )
            for _ in range(200):
                left = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (self.application_name,),
                ).fetchone()[0]
                if not left:
                    return
                time.sleep(0.01)

    def _conn(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True)

    def stored(self, queue: str) -> int:
        """Rows of ``queue`` in any state but failed."""
        with self._conn() as conn:
            if conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()[0] is None:
                return 0
            row = conn.execute(
                f"SELECT count(*) FROM {self.table} WHERE queue_name = %s AND state <> 'failed'",
                (queue,),
            ).fetchone()
            return row[0]

    def inject(self, queue: str, text: str) -> None:
        """The documented INSERT; text that jsonb refuses goes to the documented text column.

        PostgreSQL text cannot hold a NUL character at all, so no producer can store one;
        the probe writes it escaped as the six characters ``\\u0000`` (still not JSON).
        """
        with self._conn() as conn:
            try:
                conn.execute(
                    f"INSERT INTO {self.table} (queue_name, payload) VALUES (%s, %s)",
                    (queue, text),
                )
            except psycopg.DataError:
                conn.execute(
                    f"INSERT INTO {self.table} (queue_name, payload_text) VALUES (%s, %s)",
                    (queue, text.replace("\x00", "\\u0000")),
                )


@pytest.fixture
def fresh_database(pg_server: None) -> Iterator[str]:
    """The name of a new, empty database, dropped after the test."""
    name = f"asynctask_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", autouse=True)
def _vacuum_after_the_run() -> Iterator[None]:
    """Leave the shared table compact: this server may run without autovacuum."""
    yield
    try:
        with psycopg.connect(CONNINFO, autocommit=True, connect_timeout=3) as conn:
            if conn.execute("SELECT to_regclass('asynctask.asynctask_queue')").fetchone()[0]:
                conn.execute("VACUUM asynctask.asynctask_queue")
    except psycopg.Error:
        pass  # the server is down: the tests that needed it were skipped or failed already
