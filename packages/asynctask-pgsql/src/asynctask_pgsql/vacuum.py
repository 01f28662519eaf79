"""The transport's own VACUUM of its tables, for servers that run no autovacuum.

Every task leaves two dead row versions in ``asynctask_queue`` (its reserve and its
delete) and one in ``asynctask_status``; without VACUUM they stay, the indexes keep their
entries, and every reserve walks over more of them (see ``bench.findings``). Autovacuum,
made eager on these tables by the migration, is the first answer. Where it is off
(``autovacuum = off``), each consumer asks, at most every ``vacuum_every`` seconds, for a
look: a thread of the process, on a connection of its own (the consumer does not wait),
takes a session advisory lock (one process at a time per schema; the others skip), reads
the tables' dead tuples from ``pg_stat_user_tables``, and runs ``VACUUM`` on each table
past ``DEAD_TUPLES``. A VACUUM blocks no reserve or submit while it works; at its end,
to give empty pages at the table's tail back, it holds the table's exclusive lock, and
lets go within about 20 ms of a statement waiting for it (PostgreSQL's
``VACUUM_TRUNCATE_LOCK_CHECK_INTERVAL``): a reserve may so wait that long, once a look.
The transport's ``close()`` stops it: a VACUUM under way is cancelled on the server and
its connection closed, and no look starts after; a look still connecting is not waited
for (it closes its connection unused once it has one).
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
        self,
        schema: str,
        every: float,
        connect: Callable[[], psycopg.Connection[Any]],
        *,
        scrub: Callable[[str], str],
    ) -> None:
        self.schema = schema
        #: seconds between looks; 0: never
        self.every = every
        self._connect = connect
        #: the server's text with the password replaced (``Server.scrub``)
        self._scrub = scrub
        self._lock = threading.Lock()
        self._next = 0.0
        self._thread: threading.Thread | None = None
        #: the look's connection while it has one (``close`` cancels its statement)
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        #: how many VACUUMs this process ran (for tests and logs)
        self.runs = 0

    def ask(self) -> None:
        """A look, in a thread, if one is due and none is running."""
        if self.every <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if self._closed or now < self._next:
                return
            if self._thread is not None and self._thread.is_alive():
                return
            self._next = now + self.every
            self._thread = threading.Thread(
                target=self.look, name=f"asynctask-pgsql-vacuum-{self.schema}", daemon=True
            )
            self._thread.start()

    def look(self) -> list[str]:
        """Vacuum the tables past ``DEAD_TUPLES`` unless another process is at it; the
        tables vacuumed. Never raises: a failure (a missing privilege, a lost connection)
        is logged, the password scrubbed."""
        done: list[str] = []
        try:
            with self._connect() as conn:
                with self._lock:
                    if self._closed:
                        return done
                    self._conn = conn
                key = vacuum_lock_key(self.schema)
                [(locked,)] = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchall()
                if not locked:
                    return done
                try:
                    for table, dead in conn.execute(_DEAD, (self.schema, list(_TABLES))).fetchall():
                        if dead >= DEAD_TUPLES and not self._closed:
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
                    if not self._closed:  # else the lock goes with the connection
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except psycopg.Error as exc:
            self._failed(exc)
        finally:
            with self._lock:
                self._conn = None
        return done

    def close(self, timeout: float = 5.0) -> None:
        """Start no look again; cancel a VACUUM under way and wait (up to ``timeout``
        seconds) for its connection to be closed.

        A look still connecting is not waited for (a slow or unreachable server held
        ``close`` for its whole timeout): it sees ``_closed`` once connected and closes
        that connection unused, in its own (daemon) thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        deadline = time.monotonic() + timeout
        # Cancelled again until the connection is gone: a cancel that lands between two
        # of the look's statements cancels nothing, and the next sees ``_closed`` only
        # after it. (``_conn`` is set under the lock only while not ``_closed``, and
        # cleared once the connection is closed: None here means there is none to wait
        # for, now or later.)
        while thread.is_alive() and time.monotonic() < deadline:
            conn = self._conn
            if conn is None:
                return
            try:
                conn.cancel_safe(timeout=max(0.1, deadline - time.monotonic()))
            except psycopg.Error as exc:  # the server went away: the look ends anyway
                logger.debug("cancelling the VACUUM of schema %s: %s", self.schema, exc)
            thread.join(0.1)

    def _failed(self, exc: psycopg.Error) -> None:
        """Log why a look failed, the password scrubbed; quiet for a cancel by ``close``."""
        if self._closed:
            return
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            logger.warning(
                "VACUUM of schema %s refused (%s): autovacuum is off, so the queue table "
                "bloats; let the transport's user own the tables, or VACUUM them yourself",
                self.schema,
                self._scrub(str(exc).strip()),
            )
            return
        # a lost or refused connection: the next look retries
        logger.warning(
            "VACUUM of schema %s not done (%s); tried again in vacuum_every=%g s",
            self.schema,
            self._scrub(str(exc).strip()),
            self.every,
        )
