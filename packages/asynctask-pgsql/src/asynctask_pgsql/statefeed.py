"""A ``StatusFeed`` (``asynctask.status``) on PostgreSQL, for a transport whose
``asynctask_state`` names a pgsql URI (AMQP): one statement a batch of status writes.

Writes. ``started`` and ``settled`` are held, in order, and sent together as ONE
statement (``state_sql.FEED_WRITES``: an UPDATE from unnest of arrays, one row a task,
its last state in the batch with the age of its start) and ONE commit: without a feed,
each start and each outcome was a statement and a commit of its own (a WAL flush each).
A start is sent at once for the consumer's first task since it waited (it reads
``running`` from then on); the rest are held until ``flush`` (the run loop's, before it
tells the broker a task is done: the statement's commit is waited for, so an acked
success is stored), ``MOST_HELD`` writes, or ``HOLD`` seconds (a thread of the feed).
Every send waits for its commit; a send that fails keeps its writes, first, for the
next one (``flush_status_feed`` logs it and the consumer goes on). The feed's session
commits asynchronously (``synchronous_commit = off``) unless the store's URI sets
``durable_acks``, as a pgsql worker's own session: a committed write is visible and
survives the worker (an acked success reads ``succeeded`` after a SIGKILL), but a
server crash may forget the last fraction of a second of them (they go back to
``running``/``queued``, as pgsql's own acks do).

Cancels. The feed LISTENs, on a connection of its own, on the queue's channel, where
``CANCEL`` announces ``cancel <id>`` for a task that is not in this database's queue
table (another transport's), counting it as told: ``cancel`` then returns
``CANCEL_HEARD`` after its commit. On opening, the feed loads the queue's cancelled
tasks not forgotten (``FEED_CANCELLED``, at most ``LOAD_MOST``; more, and it stays
closed). ``may_start`` says True only when the feed's last round trip began less than
``CANCEL_HEARD`` ago (else it makes one: the writes held, or a bare ``SELECT``): a cancel
committed before the server read it was announced before its answer, and one committed
after has not returned yet (as ``PgsqlConsumer._start_later``). A start that meets a
cancel anyway is late: the row stays ``cancelled`` (never overwritten) and it is logged.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

import psycopg
from psycopg import errors, pq, sql

from asynctask.errors import AsynctaskError, TransportUnavailable
from asynctask.status import FINAL_STATES, State, StatusFeed
from asynctask_pgsql.schema import channel
from asynctask_pgsql.state_sql import CANCEL_HEARD

if TYPE_CHECKING:
    from asynctask_pgsql.state import PgsqlStateStore

logger = logging.getLogger("asynctask.pgsql")

#: the longest a write is held for the next ones before it is sent (seconds)
HOLD = 0.02
#: writes held past which they are sent at once
MOST_HELD = 64
#: the most cancelled ids a feed loads when it opens; more, and its starts wait
LOAD_MOST = 5000
#: seconds before a feed that could not open (or found too many) tries again
REOPEN_PAUSE = 1.0
#: the name ``FEED_WRITES`` is prepared under on the feed's own session
_PREPARED = b"asynctask_feed_writes"


class PgsqlStatusFeed(StatusFeed):
    """One consumer's feed of one queue; see the module docstring."""

    #: its writes may be made by another feed of the same store in another process of
    #: this host (``started`` takes ``began``; ``cancel_heard`` tells what ``settled``
    #: would): an AMQP consumer's relay makes them and acks a batch of tasks after one
    #: commit (``asynctask_amqp.relayedfeed``), so the worker waits for none
    relayable: ClassVar[bool] = True

    def __init__(self, store: PgsqlStateStore, queue: str) -> None:
        self.store = store
        self.queue = queue
        self._conn: psycopg.Connection[Any] | None = None
        self._cancelled: set[str] = set()
        #: (kind 's' or 'o', task id, attempt, monotonic time, state, error, result)
        self._held: list[tuple[str, str, int, float, str, str | None, str | None]] = []
        self._held_since = 0.0
        self._waited = True
        self._asked_at = -CANCEL_HEARD
        self._open_after = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._thread: threading.Thread | None = None
        #: the feed's thread waits with no timeout (nothing held): a new write wakes it
        self._idle = False
        #: writes come relayed (``started`` was given ``began``): their caller flushes
        #: after each group, so the thread has nothing to look for while none is held
        self._relayed = False

    def __repr__(self) -> str:
        return f"PgsqlStatusFeed({self.queue!r})"

    # -- the connection and cancels ---------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any] | None:
        """The feed's connection, listening, with the cancelled ids loaded; None when
        it cannot be opened now (starts then wait for the store)."""
        if self._conn is not None:
            return self._conn
        if time.monotonic() < self._open_after:
            return None
        host = self.store._host
        try:
            host._ready_pool()
            # (the process in the name: an AMQP worker and its relay each hold one, and
            # pg_stat_activity, the server's log, tell them apart by it)
            app = f"asynctask status feed {os.getpid()}"
            conn = host.server.connect(application_name=app)
        except (psycopg.Error, AsynctaskError) as exc:
            logger.info("%r: could not open (%s); starts wait", self, exc)
            self._open_after = time.monotonic() + REOPEN_PAUSE
            return None
        try:
            conn.add_notify_handler(self._heard)
            if not getattr(host, "durable_acks", False):
                # as a pgsql worker's own session (README, Commits): a commit waits for
                # no WAL flush (one fsync a send, most of a tracked drain's time)
                conn.execute("SET synchronous_commit = off")
            name = channel(host.schema, self.queue)
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
            params = {"queue": self.queue, "most": LOAD_MOST + 1}
            ids = [row[0] for row in conn.execute(self.store.sql.feed_cancelled, params)]
            text = self.store.sql.feed_writes.replace("%(rows)s", "$1")
            _check(conn.pgconn.prepare(_PREPARED, text.replace("%(ttl)s", "$2").encode()))
        except psycopg.Error as exc:
            conn.close()
            logger.info("%r: could not open (%s); starts wait", self, exc)
            self._open_after = time.monotonic() + REOPEN_PAUSE
            return None
        if len(ids) > LOAD_MOST:
            conn.close()
            self._open_after = time.monotonic() + REOPEN_PAUSE * 60
            return None
        self._cancelled = set(ids)
        self._asked_at = time.monotonic()
        self._conn = conn
        return conn

    def _heard(self, note: psycopg.Notify) -> None:
        if note.payload.startswith("cancel "):
            self._cancelled.add(note.payload[7:])

    def _take_notes(self, pgconn: pq.abc.PGconn) -> None:
        """Read the announcements libpq holds (a statement sent on ``pgconn`` itself,
        not through psycopg, leaves them there)."""
        while (note := pgconn.notifies()) is not None:
            if note.extra.startswith(b"cancel "):
                self._cancelled.add(note.extra[7:].decode())

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._cancelled = set()

    def may_start(self, task_id: str) -> bool:
        """Whether every cancel returned before this call is known and none names it."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                return False
            if time.monotonic() - self._asked_at >= CANCEL_HEARD:
                try:
                    if self._held:
                        self._send()
                    else:
                        asked = time.monotonic()
                        _check(conn.pgconn.exec_(b"SELECT 1"))
                        self._take_notes(conn.pgconn)
                        self._asked_at = asked
                except AsynctaskError:
                    return False
                except psycopg.Error as exc:
                    logger.info("%r: connection lost (%s); starts wait", self, exc)
                    self._drop()
                    return False
            if len(self._cancelled) > LOAD_MOST:
                self._drop()
                return False
            return task_id not in self._cancelled

    # -- writes -----------------------------------------------------------------------

    def started(self, task_id: str, attempt: int, began: float | None = None) -> None:
        """``running``: at once for the consumer's first task since it waited, else
        held. ``began``: the ``time.monotonic()`` the task started at, when another
        process of this host relays the write (the clock is the host's); now by
        default."""
        with self._lock:
            if began is None:
                began = time.monotonic()
            else:
                self._relayed = True
            self._held.append(("s", task_id, attempt, began, "running", None, None))
            if self._waited and len(self._held) == 1:
                self._waited = False
                self._send()
            else:
                self._after_hold()

    def settled(
        self,
        task_id: str,
        state: State,
        attempts: int,
        *,
        error: str | None = None,
        result_json: str | None = None,
    ) -> bool | None:
        """An outcome, held (``flush``). True for a success whose cancel the feed has
        heard on the queue's channel, read without waiting (what has arrived; as
        ``may_start`` reads it): ``FEED_WRITES`` keeps the task ``cancelled``, its
        result discarded, and the run loop says so. A cancel that arrives later still
        keeps the task ``cancelled``, unannounced."""
        with self._lock:
            self._held.append(("o", task_id, attempts, 0.0, state, error, result_json))
            self._after_hold()
            if state != "succeeded":
                return None
            return self._cancel_heard(task_id) or None

    def cancel_heard(self, task_id: str) -> bool:
        """Whether the feed has heard, without waiting, that ``task_id`` was cancelled:
        what ``settled`` tells of a success, for a caller that has the write made
        elsewhere (``relayable``)."""
        with self._lock:
            return self._cancel_heard(task_id)

    def _cancel_heard(self, task_id: str) -> bool:
        """What has arrived on the queue's channel names ``task_id`` (the lock held)."""
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.pgconn.consume_input()
        except psycopg.Error as exc:  # the next send finds it lost, and says so
            logger.debug("%r: reading the cancels heard: %s", self, exc)
            return False
        self._take_notes(conn.pgconn)
        return task_id in self._cancelled

    def _after_hold(self) -> None:
        if len(self._held) >= MOST_HELD:
            self._send()
        elif len(self._held) == 1:
            self._held_since = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"asynctask-statefeed-{self.queue}", daemon=True
                )
                self._thread.start()
            elif self._idle:
                # (only then: a thread already counting down its HOLD finds this write
                # when it wakes; a wake-up a task cost a GIL hand-over a task)
                self._wake.notify()

    def flush(self, *, waiting: bool = True) -> None:
        with self._lock:
            self._waited = waiting
            if self._held:
                self._send()

    def _send(self) -> None:
        """Send what is held as one statement and wait for its commit (lock held); on
        a failure the writes stay held, first, and ``TransportUnavailable`` is raised.

        The statement was prepared when the connection opened; its rows go as one JSON
        text and its reply is read from libpq directly (no psycopg cursor, adapters or
        row makers: a short task's round trip is most of what tracking costs it)."""
        held = self._held
        if not held:
            return
        conn = self._connection()
        if conn is None:
            raise TransportUnavailable(f"{self!r}: no connection to the state store")
        now = time.monotonic()
        rows: dict[str, dict[str, Any]] = {}
        finals = 0
        for kind, task_id, attempt, began, state, error, result in held:
            row = rows.get(task_id)
            if row is None:
                row = rows[task_id] = {"id": task_id, "state": state, "attempts": attempt}
            if kind == "s":
                row["state"], row["attempts"] = "running", attempt
                row["ago"] = max(0.0, now - began)
            else:
                # the last error stays, as SETTLED's coalesce keeps it
                row["state"], row["attempts"], row["result"] = state, attempt, result
                if error is not None:
                    row["error"] = error
        finals = sum(1 for row in rows.values() if row["state"] in FINAL_STATES)
        params = [json.dumps(list(rows.values())).encode(), repr(self.store.status_ttl).encode()]
        pgconn = conn.pgconn
        try:
            self.store._forget(finals)
            asked = time.monotonic()
            reply = _check(pgconn.exec_prepared(_PREPARED, params))
            late = reply.get_value(0, 1) or b"{}"
        except psycopg.Error as exc:
            self._drop()
            raise TransportUnavailable(f"{self!r}: writing the statuses failed: {exc}") from exc
        self._take_notes(pgconn)
        self._asked_at = asked
        self._held = []
        for task_id in late[1:-1].decode().split(",") if late != b"{}" else ():
            logger.warning(
                "%r: task %s was started after it was cancelled or had expired (a late "
                "cancel): its status stays final",
                self,
                task_id,
            )

    def _run(self) -> None:
        """Send the writes held once the oldest is ``HOLD`` old.

        While the consumer is busy (it has not flushed to wait since its last start)
        the thread looks every ``HOLD`` whatever it finds, rather than sleep until a
        write wakes it: the run loop flushes after each task, so the feed held nothing
        and then something many times a second, and a wake-up each time cost the worker
        its GIL and a context switch (1.3 a task in ``bench/drain_cpu.py amqp``: child
        3.1 times scheduled a task, 1.8 without the thread). A write held at ``t`` is
        still sent by ``t + HOLD``: the thread wakes by then and waits for the rest."""
        with self._lock:
            while not self._closed:
                if not self._held:
                    if self._waited or self._relayed:  # nothing comes until a write
                        self._idle = True
                        self._wake.wait()
                        self._idle = False
                    else:
                        self._wake.wait(HOLD)
                    continue
                due = self._held_since + HOLD - time.monotonic()
                if due > 0:
                    self._wake.wait(due)
                    continue
                try:
                    self._send()
                except TransportUnavailable as exc:
                    logger.info("%r: the writes held could not be written yet (%s)", self, exc)
                    self._wake.wait(REOPEN_PAUSE)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            try:
                self._send()
            finally:
                self._drop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _check(result: pq.abc.PGresult) -> pq.abc.PGresult:
    """``result`` if its statement succeeded, else the psycopg error it carries (a lost
    connection's too), for the caller to map as a statement's error."""
    if result.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        return result
    raise errors.error_from_result(result, encoding="utf-8")
