"""The transport's own VACUUM (``asynctask_pgsql.vacuum``) and the table locks it shares
with a schema migration: a closed transport leaves no VACUUM behind, and a migration
waiting for a VACUUM's lock never holds up the reserves and submits queued behind it."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from asynctask.testing import unique_queue
from asynctask.testing.contract import open_transport
from asynctask_pgsql import vacuum
from chaos.private_postgres import PrivatePostgres
from tests.support import wait_for

from .conftest import CONNINFO, DATABASE, HOST


def _vacuums(conn: psycopg.Connection[Any], schema: str) -> list[tuple[int, str | None]]:
    """(pid, wait event type) of the sessions running a VACUUM of ``schema``'s tables."""
    rows = conn.execute(
        "SELECT pid, wait_event_type FROM pg_stat_activity"
        " WHERE query LIKE %s AND pid <> pg_backend_pid()",
        (f'VACUUM "{schema}".%',),
    ).fetchall()
    return [(int(pid), event) for pid, event in rows]


def _vacuum_threads(schema: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"asynctask-pgsql-vacuum-{schema}"]


def test_close_stops_a_running_vacuum_and_its_connection(
    own_postgres: PrivatePostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failed before: ``close()`` closed the pool only; the VACUUM thread went on waiting
    (and would have vacuumed) on its own connection after the transport was closed."""
    # Given a server without autovacuum (the transport then vacuums its tables itself)
    # and a transport whose VACUUM is under way: it waits for the lock a long
    # transaction holds on the queue table (as it would work through a large table)
    with psycopg.connect(own_postgres.conninfo, autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET autovacuum = off")
        admin.execute("SELECT pg_reload_conf()")
        wait_for(
            lambda: admin.execute("SHOW autovacuum").fetchone() == ("off",), 10, "autovacuum off"
        )
        schema = "vacuum_close"
        transport = open_transport(own_postgres.uri(schema=schema, vacuum_every="60"))
        blocker = psycopg.connect(own_postgres.conninfo)
        try:
            transport.submit_task(unique_queue(), {})
            assert transport.vacuum is not None
            monkeypatch.setattr(vacuum, "DEAD_TUPLES", 0)  # every table is due
            blocker.execute(f"LOCK TABLE {schema}.asynctask_queue IN SHARE UPDATE EXCLUSIVE MODE")
            transport.vacuum.ask()
            wait_for(lambda: _vacuums(admin, schema), 10, "the transport's VACUUM started")

            # When the transport is closed
            began = time.monotonic()
            transport.close()
            closing = time.monotonic() - began

            # Then its VACUUM is cancelled, its connection closed and its thread ended,
            # while the lock it waited for is still held
            wait_for(lambda: not _vacuums(admin, schema), 5, "the VACUUM's session ended")
            wait_for(lambda: not _vacuum_threads(schema), 5, "the VACUUM thread ended")
            assert closing < 5
            assert blocker.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            # and a closed transport starts none again
            transport.vacuum.ask()
            assert not _vacuum_threads(schema)
        finally:
            blocker.close()
            transport.close()


@pytest.mark.usefixtures("pg_server")
def test_a_migration_waiting_behind_a_vacuum_lets_submits_and_reserves_through() -> None:
    """Failed before: the migration's first statement queued for a lock that conflicts
    with every INSERT, UPDATE and DELETE, and waited there as long as the VACUUM ran;
    every submit and reserve queued behind it (the INSERT below hit its 3 s timeout)."""
    schema = f"asynctask_mig_{uuid.uuid4().hex[:8]}"
    uri = f"pgsql://{HOST}/{DATABASE}?schema={schema}"
    queue = unique_queue()
    blocker: psycopg.Connection[Any] | None = None
    upgraded = open_transport(uri)
    done: list[Any] = []
    thread = threading.Thread(
        target=lambda: done.append(upgraded.submit_task(queue, {"n": 1})), daemon=True
    )
    with psycopg.connect(CONNINFO, autocommit=True) as admin:
        try:
            # Given a schema that needs a migration (an index added since it was made)
            with open_transport(uri) as first:
                first.submit_task(queue, {"n": 0})
            admin.execute(f"DROP INDEX {schema}.asynctask_status_forget")
            # and a VACUUM's lock held on the queue table, for longer than the test
            blocker = psycopg.connect(CONNINFO)
            blocker.execute(f"LOCK TABLE {schema}.asynctask_queue IN SHARE UPDATE EXCLUSIVE MODE")
            table = f"{schema}.asynctask_queue"
            # When a new process's first call migrates the schema (it waits for that lock)
            thread.start()
            wait_for(
                lambda: admin.execute(
                    "SELECT 1 FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                    (table,),
                ).fetchone(),
                10,
                "the migration waiting for the queue table",
            )
            # Then another program's submit (and a reserve, which takes the same lock)
            # goes through while the VACUUM still holds its lock
            with psycopg.connect(CONNINFO, autocommit=True) as other:
                other.execute("SET lock_timeout = '3s'")
                began = time.monotonic()
                other.execute(
                    f"INSERT INTO {table} (queue_name, payload) VALUES (%s, '{{}}')", (queue,)
                )
                assert time.monotonic() - began < 3
            assert thread.is_alive()  # the migration is still waiting its turn
            # and once the VACUUM is over, the migration completes and the submit is stored
            blocker.close()
            thread.join(30)
            assert done and len(done[0]) == 32
            index = f"{schema}.asynctask_status_forget"
            assert admin.execute("SELECT to_regclass(%s)", (index,)).fetchone()[0] is not None
            assert admin.execute(
                f"SELECT count(*) FROM {table} WHERE queue_name = %s", (queue,)
            ).fetchone() == (3,)
        finally:
            if blocker is not None:
                blocker.close()
            if thread.ident is not None:
                thread.join(30)
            upgraded.close()
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
