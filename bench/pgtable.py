"""The pgsql queue table's own costs (issue 20): what each index and the NOTIFY trigger
cost a committed INSERT, and a table that has seen many tasks pass with no VACUUM since.

``index_costs`` times one-row committed INSERTs (autocommit, prepared, the row a submit
writes) into copies of ``asynctask.asynctask_queue``: bare (columns and defaults only),
bare plus each one of its indexes, all its indexes, all plus the trigger; rounds
alternate, the best of each kept. ``churn`` passes tasks through a schema's tables as
workers would (inserted ``queued`` with a status row, updated ``reserved``, deleted, the
status ``succeeded`` and kept for a day), and through a raw table (inserted, deleted),
in set-based statements: the dead tuples and index entries are those of that many tasks,
in seconds rather than the hours a real run takes.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from typing import Any

from bench.raw import PG_QUEUE_TABLE, pg_queue_copy

#: tasks per statement while churning (one transaction each, so the WAL stays bounded)
CHUNK = 100_000


def _indexes(conn: Any) -> list[tuple[str, str]]:
    """(name, definition) of every index of the transport's queue table."""
    rows = conn.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
        " WHERE indrelid = %s::regclass ORDER BY indexrelid",
        (PG_QUEUE_TABLE,),
    ).fetchall()
    return [(name.split(".")[-1], definition) for name, definition in rows]


def _copy_index(conn: Any, definition: str, table: str) -> None:
    """Create the index ``definition`` describes on ``table`` (a new name)."""
    on = re.sub(r" ON \S+ ", f" ON {table} ", definition, count=1)
    named = re.sub(r"INDEX \S+ ON", f"INDEX {table}_{uuid.uuid4().hex[:6]} ON", on, count=1)
    conn.execute(named)


def _variants(conn: Any, prefix: str) -> dict[str, str]:
    """Label -> table, each a copy of the queue table: ``bare`` (columns and defaults),
    ``bare`` plus one index (the index's name past ``asynctask_queue_``: ``pkey``,
    ``ready``...), ``indexes`` (all of them), ``trigger`` (all and the NOTIFY trigger)."""
    tables: dict[str, str] = {}

    def bare(label: str) -> str:
        table = f"{prefix}_{len(tables)}"
        pg_queue_copy(conn, table, indexes=False, trigger=False)
        tables[label] = table
        return table

    bare("bare")
    for name, definition in _indexes(conn):
        _copy_index(conn, definition, bare(name.removeprefix("asynctask_queue_")))
    table = f"{prefix}_{len(tables)}"
    pg_queue_copy(conn, table, indexes=True, trigger=False)
    tables["indexes"] = table
    table = f"{prefix}_{len(tables)}"
    pg_queue_copy(conn, table, indexes=True, trigger=True)
    tables["trigger"] = table
    return tables


def index_costs(
    conninfo: str, count: int, rounds: int, budget: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Committed one-row INSERTs per second into each variant of the queue table, and
    the microseconds one row costs the server in one ``INSERT ... SELECT`` of ``count``
    rows x 10 (at least 10,000): no round trip, no commit per row, the work of the table, its
    indexes and the trigger's transition table alone (steadier than the committed rate,
    which the fsync rules)."""
    import psycopg

    best: dict[str, float] = {}
    inside: dict[str, float] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = _variants(conn, f"bench_cost_{uuid.uuid4().hex[:8]}")
        try:
            labels = list(tables)
            for round_number in range(rounds):
                for label in labels if round_number % 2 == 0 else labels[::-1]:
                    insert = (
                        f"INSERT INTO {tables[label]} (task_id, queue_name, payload)"
                        " VALUES (%s, %s, %s)"
                    )
                    started, done = time.perf_counter(), 0
                    while done < count and time.perf_counter() - started < budget:
                        conn.execute(insert, (uuid.uuid4(), "cost", '{"n": 1}'), prepare=True)
                        done += 1
                    rate = done / (time.perf_counter() - started)
                    best[label] = max(best.get(label, 0.0), rate)
                    started = time.perf_counter()
                    conn.execute(
                        f"INSERT INTO {tables[label]} (task_id, queue_name, payload)"
                        " SELECT gen_random_uuid(), 'cost', '{\"n\": 1}'"
                        f" FROM generate_series(1, {max(count * 10, 10_000)})"
                    )
                    micros = (time.perf_counter() - started) / max(count * 10, 10_000) * 1e6
                    inside[label] = min(inside.get(label, micros), micros)
        finally:
            for table in tables.values():
                conn.execute(f"DROP TABLE IF EXISTS {table}")
    return best, inside


def vacuum(conn: Any, tables: list[str]) -> None:
    """A fresh table: VACUUM (ANALYZE) each."""
    for table in tables:
        conn.execute(f"VACUUM (ANALYZE) {table}")


def churn(conn: Any, schema: str, raw_table: str, tasks: int, name: str) -> None:
    """Pass ``tasks`` tasks through ``schema``'s tables and ``raw_table``, no VACUUM.

    They pass through the queue ``name``, the one the churned round then measures (and
    the raw table's queue name is the raw client's own, its table's name): every index
    leads with the queue name, so dead entries of another queue sit outside the measured
    queue's scans, and the round would measure a table only as churned as its size."""
    queue, status = f"{schema}.asynctask_queue", f"{schema}.asynctask_status"
    for first in range(0, tasks, CHUNK):
        n = min(CHUNK, tasks - first)
        with conn.transaction():
            conn.execute(
                f"CREATE TEMP TABLE churn ON COMMIT DROP AS SELECT gen_random_uuid() AS id"
                f" FROM generate_series(1, {n})"
            )
            conn.execute(
                f"INSERT INTO {status} (task_id, queue_name, state) SELECT id, %s, 'queued'"
                " FROM churn",
                (name,),
            )
            conn.execute(
                f"INSERT INTO {queue} (task_id, queue_name, payload) SELECT id, %s,"
                " '{\"n\": 1}' FROM churn",
                (name,),
            )
        conn.execute(
            f"UPDATE {queue} SET state = 'reserved', owner = 0 WHERE queue_name = %s", (name,)
        )
        conn.execute(f"DELETE FROM {queue} WHERE queue_name = %s", (name,))
        conn.execute(
            f"UPDATE {status} SET state = 'succeeded', date_finished = now(),"
            " date_forget = now() + interval '1 day' WHERE queue_name = %s"
            " AND date_finished IS NULL",
            (name,),
        )
        conn.execute(
            f"INSERT INTO {raw_table} (task_id, queue_name, payload) SELECT gen_random_uuid(),"
            f" %s, '{{\"n\": 1}}' FROM generate_series(1, {n})",
            (raw_table,),
        )
        conn.execute(f"DELETE FROM {raw_table}")


def dead_tuples(conn: Any, tables: list[str]) -> dict[str, int]:
    """Each table's dead tuples, as the server counts them. The counts of this session's
    own statements reach the server's statistics when the session is idle, at most once
    a second: on PostgreSQL 15 and later they are flushed first (the churn's last chunk
    read as missing without it)."""
    import psycopg

    with contextlib.suppress(psycopg.errors.UndefinedFunction):
        conn.execute("SELECT pg_stat_force_next_flush()")
    found: dict[str, int] = {}
    for table in tables:
        row = conn.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass", (table,)
        ).fetchone()
        found[table] = int(row[0]) if row else 0
    return found
