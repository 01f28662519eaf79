"""The transport's own VACUUM of its tables, for servers that run no autovacuum.

Every task leaves two dead row versions in ``asynctask_queue`` (its reserve and its
delete) and one in ``asynctask_status``; without VACUUM they stay, the indexes keep their
entries, and every reserve walks over more of them (see ``bench.findings``). Autovacuum,
made eager on these tables by the migration, is the first answer. Where it is off
(``autovacuum = off``), each consumer asks, at most every ``vacuum_every`` seconds, for a
look: a thread of the process, on a connection of its own (the consumer does not wait),
takes a session advisory lock (one process at a time per schema; the others skip), reads
the tables' dead tuples from ``pg_stat_user_tables``, and runs ``VACUUM`` on each table
past ``DEAD_TUPLES``. A VACUUM takes no lock that blocks reserves or submits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from asynctask_pgsql.schema import vacuum_lock_key

logger = logging.getLogger("asynctask.pgsql")

#: dead tuples in a table past which the transport vacuums it (autovacuum off only)
DEAD_TUPLES = 10_000

_TABLES = ("asynctask_queue", "asynctask_status")

_DEAD = """
SELECT relname, n_dead_tup FROM pg_stat_user_tables
WHERE schemaname = %s AND relname = ANY(%s)
"""


class Vacuumer:
    """Vacuums a schema's tables from a thread, when asked and due (see the module)."""

    def __init__(
        self, schema: str, every: float, connect: Callable[[], psycopg.Connection[Any]]
    ) -> None:
        self.schema = schema
        #: seconds between looks; 0: never
        self.every = every
        self._connect = connect
        self._lock = threading.Lock()
        self._next = 0.0
        self._thread: threading.Thread | None = None
        #: how many VACUUMs this process ran (for tests and logs)
        self.runs = 0

    def ask(self) -> None:
        """A look, in a thread, if one is due and none is running."""
        if self.every <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if now < self._next or (self._thread is not None and self._thread.is_alive()):
                return
            self._next = now + self.every
            self._thread = threading.Thread(
                target=self.look, name=f"asynctask-pgsql-vacuum-{self.schema}", daemon=True
            )
            self._thread.start()

    def look(self) -> list[str]:
        """Vacuum the tables past ``DEAD_TUPLES`` unless another process is at it; the
        tables vacuumed. Never raises: a failure (a missing privilege) is logged."""
        done: list[str] = []
        try:
            with self._connect() as conn:
                key = vacuum_lock_key(self.schema)
                [(locked,)] = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchall()
                if not locked:
                    return done
                try:
                    for table, dead in conn.execute(_DEAD, (self.schema, list(_TABLES))):
                        if dead >= DEAD_TUPLES:
                            began = time.monotonic()
                            name = sql.Identifier(self.schema, table)
                            conn.execute(sql.SQL("VACUUM {}").format(name))
                            done.append(table)
                            self.runs += 1
                            logger.info(
                                "vacuumed %s (%d dead tuples) in %.1f s",
                                table,
                                dead,
                                time.monotonic() - began,
                            )
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except psycopg.Error as exc:
            logger.warning(
                "VACUUM of schema %s failed (%s): autovacuum is off, so the queue table "
                "bloats; let the transport's user own the tables, or VACUUM them yourself",
                self.schema,
                str(exc).strip(),
            )
        return done
