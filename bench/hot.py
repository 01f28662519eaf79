"""``python -m bench.hot``: what HOT updates on the reserve/ack path would buy (issue 20).

A prototype measurement, not a layout the transport ships. Each layout is a private
schema of its own (created here, dropped at the end; the shared schemas are never
touched), drained by one in-process consumer (reserve + ack, the statements the worker
child sends) in alternating rounds (A B C C B A ...), each round on a fresh queue of the
same schema, so every layout carries its own dead tuples from round to round:

- ``as_is``: the schema the transport makes today. Reserving a row changes ``state``,
  which the partial indexes' predicates name (not HOT: 3 index entries a row); an
  acknowledgement's ``succeeded`` sets ``date_forget``, which ``asynctask_status_forget``
  indexes (not HOT: 2 index entries a status).
- ``status_hot``: ``asynctask_status_forget`` dropped, so ``succeeded`` is HOT (the
  forget would need another way to find old statuses, see docs/pgsql.md).
- ``all_hot``: that, and no index names ``state``: the head scan reads one index on
  ``(queue_name, date_available, id)`` and skips the reserved rows by a filter (the cost a
  reservation kept in non-indexed columns would pay), the queue table at fillfactor 70.

It reports tasks/s per layout (median and best of the rounds) and the share of
updates that were HOT (``pg_stat_user_tables``); with ``--private``, on a PostgreSQL of
its own (``chaos.private_postgres``, fsync off) that loads ``pg_stat_statements``, also each
layout's RESERVE: server time, buffers and WAL bytes a call, every CTE included
(``EXPLAIN``'s top node leaves out the CTEs nothing reads, such as ``succeeded``).

What it showed (2026-12-07, 2 cores at load 7-14; findings in ``bench/findings.py``):
HOT halves the WAL of a RESERVE and drops its index entries, but neither its server
time nor its buffers went down, and the drains did not get faster.

Example: python -m bench.hot --private --count 3000 --rounds 6 --prefetch 4,10
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import psycopg

from asynctask_pgsql.transport import PgsqlTransport
from bench.ours import consume
from bench.plan import PGSQL
from chaos.private_postgres import PrivatePostgres

_STATUS_HOT = "DROP INDEX {s}.asynctask_status_forget;"

_ALL_HOT = (
    _STATUS_HOT
    + """
DROP INDEX {s}.asynctask_queue_ready;
DROP INDEX {s}.asynctask_queue_reserved;
DROP INDEX {s}.asynctask_queue_failed;
DROP INDEX {s}.asynctask_queue_urgent;
CREATE INDEX asynctask_queue_head ON {s}.asynctask_queue (queue_name, date_available, id);
CREATE INDEX asynctask_queue_urgent_hot ON {s}.asynctask_queue
    (queue_name, priority DESC, date_available, id) WHERE priority > 0;
ALTER TABLE {s}.asynctask_queue SET (fillfactor = 70);
ALTER TABLE {s}.asynctask_status SET (fillfactor = 80);
"""
)

LAYOUTS: dict[str, str] = {"as_is": "", "status_hot": _STATUS_HOT, "all_hot": _ALL_HOT}


class Layout:
    """One private schema, migrated by the transport and then changed by ``ddl``."""

    def __init__(self, name: str, ddl: str, prefetch: int, base: str = PGSQL) -> None:
        self.name = name
        self.schema = f"asynctask_hot_{name.replace('@', '_p')}_{uuid.uuid4().hex[:6]}"
        self.prefetch = prefetch
        self.transport = PgsqlTransport(f"{base}?schema={self.schema}")
        # Migrate first (on this transport only: a new transport would put the dropped
        # indexes back), then change the layout.
        self.transport._ready_pool()
        if ddl:
            with self._conn() as conn:
                conn.execute(ddl.replace("{s}", self.schema))
        # Statistics of a filled queue (autovacuum may be off): without them the planner
        # of an empty table sorts the whole queue where an ordered index scan would do.
        warm = f"bench_hot_warm_{uuid.uuid4().hex[:6]}"
        for _ in range(5):
            self.transport.submit_tasks(warm, [{"n": n} for n in range(1000)])
        with self._conn() as conn:
            conn.execute(f"ANALYZE {self.schema}.asynctask_queue, {self.schema}.asynctask_status")
        self.transport.purge(warm)
        self.rates: list[float] = []

    def _conn(self) -> psycopg.Connection[Any]:
        return self.transport.server.connect()

    def drain(self, count: int) -> float:
        """Tasks/s of one consumer taking ``count`` tasks from a fresh queue."""
        queue = f"bench_hot_{uuid.uuid4().hex[:10]}"

        def fill() -> int:
            for start in range(0, count, 1000):
                self.transport.submit_tasks(
                    queue, [{"n": n} for n in range(start, min(count, start + 1000))]
                )
            return count

        rate = consume(self.transport, queue, [fill], prefetch=self.prefetch)
        self.rates.append(rate)
        return rate

    def statements(self) -> str:
        """The consumer's RESERVE of this schema in ``pg_stat_statements`` (a private
        server only): server time, buffers and WAL per call, every CTE included."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT calls, mean_exec_time, (shared_blks_hit + shared_blks_read)::float8"
                " / calls, shared_blks_dirtied::float8 / calls, wal_bytes::float8 / calls"
                " FROM pg_stat_statements WHERE query LIKE %s AND query LIKE %s"
                " ORDER BY calls DESC LIMIT 1",
                (f"%{self.schema}.asynctask_queue%", "%taken AS%"),
            ).fetchone()
        if row is None:
            return "no RESERVE in pg_stat_statements"
        calls, ms, buffers, dirtied, wal = row
        return (
            f"RESERVE x{calls}: {ms:.3f} ms, {buffers:.0f} buffers ({dirtied:.1f} dirtied),"
            f" {wal:.0f} WAL bytes a call"
        )

    def hot_share(self) -> dict[str, str]:
        """Updates that were HOT, per table, as ``hot/all``."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT relname, n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables"
                " WHERE schemaname = %s AND relname IN ('asynctask_queue', 'asynctask_status')",
                (self.schema,),
            ).fetchall()
        return {name: f"{hot}/{upd}" for name, hot, upd in rows}

    def drop(self) -> None:
        self.transport.close()
        with self._conn() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def main(argv: list[str] | None = None) -> None:
    """Alternating rounds over the layouts; a line per round, a summary at the end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--prefetch", default="4", help="the consumer's prefetch; several (4,10) alternate too"
    )
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument(
        "--private",
        action="store_true",
        help="on a PostgreSQL of its own with pg_stat_statements (fsync off), not the shared one",
    )
    args = parser.parse_args(argv)
    names = args.layouts.split(",")
    layouts: list[Layout] = []
    server: PrivatePostgres | None = None
    base = PGSQL
    try:
        if args.private:
            server = private_server()
            base = server.uri()
        prefetches = [int(p) for p in args.prefetch.split(",")]
        for name in names:
            for prefetch in prefetches:
                label = name if len(prefetches) == 1 else f"{name}@{prefetch}"
                layouts.append(Layout(label, LAYOUTS[name], prefetch, base))
        for n in range(args.rounds):
            order = layouts if n % 2 == 0 else list(reversed(layouts))
            for layout in order:
                rate = layout.drain(args.count)
                print(f"round {n + 1} {layout.name:>10}: {rate:8,.0f} tasks/s", flush=True)
        time.sleep(1.0)  # statistics reach pg_stat_user_tables within a second
        for layout in layouts:
            print(
                f"{layout.name:>10}: median {statistics.median(layout.rates or [0]):8,.0f}/s,"
                f" best {max(layout.rates, default=0):8,.0f}/s, HOT updates {layout.hot_share()}"
            )
            if server is not None:
                print(f"{layout.name:>10}: {layout.statements()}")
    finally:
        for layout in layouts:
            layout.drop()
        if server is not None:
            server.remove()


class _StatementsPostgres(PrivatePostgres):
    """A private server that loads pg_stat_statements (WAL and buffers per statement)."""

    def _options(self) -> str:
        return super()._options() + " -c shared_preload_libraries=pg_stat_statements"


def private_server(kind: type[PrivatePostgres] = _StatementsPostgres) -> PrivatePostgres:
    """A private server of ``kind`` (one that loads pg_stat_statements), started, with
    the extension created."""
    server = kind()
    server.create()
    with psycopg.connect(server.conninfo, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    return server


if __name__ == "__main__":
    main()
