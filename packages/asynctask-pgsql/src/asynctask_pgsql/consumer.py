"""The pgsql consumer: one held connection that is at once its liveness, its wake-up and its
way to take and settle tasks.

On connecting, a consumer takes a number from the sequence ``asynctask_consumer_id`` and
holds the session advisory lock ``(class, number)``; the rows it reserves carry the number
in ``owner``. A consumer whose process dies, or whose connection is cut, loses the lock at
once, and the periodic sweep of a live consumer of the same queue (one at a time per
queue) puts its rows back, counting an attempt. A slow task keeps its row for as long as
its consumer's connection lives, however long it runs. TCP keepalives on both ends bound
how long a vanished host keeps its lock.

A consumer made with an ``owner`` (``asynctask.liveness``: a child of ``asynctask
workers``) also marks its rows with ``keeper``, the id of the owner's row in
``asynctask_owner``, which the supervisor beats; the sweep then reads that row, not the
lock. Its connection may be cut, by a server that aborts it (a LISTEN socket left unread
through a long task fills up), by ``pg_terminate_backend`` or a failover: it reconnects
and its rows are still its own (it takes back those it does not know of, see
``_connect``).

Every call is at most one round trip: ``reserve`` takes up to ``prefetch`` rows with
``FOR UPDATE SKIP LOCKED`` and, in the same statement, deletes the rows acknowledged since
the previous statement, so ``ack`` itself sends nothing. An acknowledged task therefore
stays stored until the consumer's next statement: its next ``reserve`` with ``prefetch``
1 (the default), once its prefetched tasks are used up otherwise, or a settle or
``close``. A process killed before that runs the task again (at least once, never lost):
with ``prefetch`` N, at most N tasks run twice, as the reserved ones of any transport.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, LiteralString, Protocol

import psycopg
from psycopg import Notify, abc, pq, sql
from psycopg.adapt import Transformer
from psycopg.generators import fetch, send

from asynctask.errors import (
    TransportClosed,
    TransportError,
    TransportRefused,
    TransportUnavailable,
)
from asynctask.status import StartVerdict
from asynctask.transport import Consumer, Delivery, Transport, check_delay
from asynctask.window import AdaptivePrefetch, Window
from asynctask_pgsql.conninfo import Server, is_refusal
from asynctask_pgsql.decoding import load_json_as_text, read_headers
from asynctask_pgsql.forget import FORGET_EVERY, forget_limit
from asynctask_pgsql.pooled import Prepared, exec_prepared
from asynctask_pgsql.schema import channel, consumer_lock_class, sweep_lock_class
from asynctask_pgsql.state_sql import CANCEL_HEARD, StateStatements
from asynctask_pgsql.statements import Statements
from asynctask_pgsql.vacuum import Vacuumer


class ConsumerHost(Protocol):
    """What a consumer needs of its transport beyond ``Transport``: the transport passes
    itself as this, so this module never imports the transport module (which imports it)."""

    sql: Statements
    schema: str
    server: Server
    #: seconds between a consumer's sweeps for dead consumers' rows
    sweep_interval: float
    #: seconds an owner's row stays alive after its last beat (asynctask.liveness)
    owner_lease: float
    #: libpq settings of a consumer's own connection (keepalives, application name)
    consumer_connect_kwargs: dict[str, Any]
    #: (numbers, held row ids, pending acks) of owned consumers whose close failed
    leftovers: list[tuple[list[int], list[int], list[int]]]
    #: whether a consumer's statements wait for the WAL flush (``durable_acks``)
    durable_acks: bool
    #: seconds within which the last task an adaptive consumer holds should start
    window_budget: float
    #: the transport's VACUUM of its tables (autovacuum off), asked at each sweep
    vacuum: Vacuumer | None

    def _ready_pool(self) -> object:
        """Migrate the schema if this is the transport's first call."""
        ...


logger = logging.getLogger("asynctask.pgsql")

#: a wait never spins faster than this when a due row is locked by somebody else
_MIN_WAIT = 0.05

#: a floor past every row (Unix microseconds, year 2112): none waits, none taken since
_NO_FLOOR = 1 << 52

#: microseconds a floor is read from before its row (its text through float8 may round)
_FLOOR_MARGIN = 1000


def _lower(floor: int | None, place: int | None) -> int | None:
    """The floor once a row at ``place`` (None: anywhere) may be waiting."""
    return None if floor is None or place is None else min(floor, place)


def _floor_param(floor: int | None) -> int | None:
    return None if floor is None else floor - _FLOOR_MARGIN


#: rows the first RESERVE of a consumer at the transport's default prefetch takes, before
#: any task's run time is known (a prefetch of long tasks must not start at the largest)
FIRST_TAKE = 16

#: final statuses past their time a sweep deletes at most (asynctask_status_ttl)
FORGET_PER_SWEEP = 1000
#: a prefetched task still running this many seconds after its start is written
#: ``running`` (one that ends sooner goes straight to its outcome, see ``_start_later``)
SYNC_WITHIN = 0.05

#: acknowledgements riding on one statement: row ids, results, start times (Unix
#: microseconds)
_Acks = tuple[list[int], list[str | None], list[int | None]]


class PgsqlConsumer(Consumer):
    """At-least-once access to one queue over one dedicated connection."""

    def __init__(
        self,
        transport: Transport,
        host: ConsumerHost,
        queue: str,
        prefetch: int,
        owner: str | None = None,
    ) -> None:
        super().__init__(transport, queue, prefetch)
        #: the owner whose keeper keeps this consumer alive; None: its advisory lock
        self.keeper_owner = owner
        self._keeper: int | None = None  # the id of the owner's row
        self._host = host
        self._sql = host.sql
        self._channel = channel(host.schema, queue)
        self._lock_class = consumer_lock_class(host.schema)
        self._sweep_class = sweep_lock_class(host.schema)
        # The runner's watchdog may settle from a timer thread while the owner waits.
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        # Our statements' cursor, kept with its connection: a new one per statement looked
        # its dumpers and loaders up again (about 47k instructions a statement, callgrind,
        # see ``asynctask_pgsql.pooled``).
        self._cursor: psycopg.Cursor[Any] | None = None
        # RESERVE, the statement of every ``prefetch`` tasks, goes through libpq as the
        # one-task submit does (``asynctask_pgsql.pooled``): prepared once per connection
        # (the names in ``_prepared``), its rows loaded by psycopg's C loaders (``_rows``).
        # (one statement per tracking: each carries only the status CTE it can reach)
        self._reserve = {
            True: Prepared("asynctask_reserve", self._sql.reserve_tracked),
            False: Prepared("asynctask_reserve_untracked", self._sql.reserve_untracked),
        }
        self._prepared: set[bytes] = set()
        self._rows: abc.Transformer | None = None
        self._owner: int | None = None  # the number whose advisory lock we hold
        self._owners: list[int] = []  # every number this consumer has held
        self._buffer: deque[Delivery] = deque()  # prefetched, not yet handed out
        # With the transport's default prefetch, each RESERVE takes what the tasks' run
        # time allows (``_take``); a prefetch the user set is taken as it is. A RESERVE's
        # fixed cost (a statement of ten CTEs, its round trip and commit) was most of a
        # short task's at 16 (README, "Prefetch").
        self._window: Window | None = None
        if isinstance(prefetch, AdaptivePrefetch):
            self._window = Window(int(prefetch), host.window_budget)
        self._held: dict[int, int] = {}  # row id -> owner number, reserved and not settled
        self._acks: list[int] = []  # acknowledged rows, deleted by the next statement
        self._results: list[str | None] = []  # their results (JSON text), beside them
        self._expires: dict[int, float] = {}  # row id -> its date_expires (Unix seconds)
        self._started: list[int | None] = []  # their start times (us), if not written yet
        # prefetched tasks started and not yet written running: row id -> (it, when)
        self._unmarked: dict[int, tuple[Delivery, float]] = {}
        # START_RUNNING sent in pipeline mode, one list per Sync not yet answered: the
        # acknowledgements riding on them (sent again should their transaction fail)
        self._pending: list[list[_Acks]] = []
        self._start_failed = False
        self._marker: threading.Thread | None = None
        self._mark_due: float | None = None  # when the unmarked must be written running
        self._mark_wanted = threading.Condition(self._lock)
        self._cancelled: set[str] = set()  # task ids announced cancelled on our channel
        self._woken = False  # a notification other than a cancel came with a statement
        # The floor (Unix microseconds): every waiting row of our queue that is not
        # urgent and whose ``date_available`` is before it is known to be taken, so the
        # head is read from there (``statements._FLOOR``). None: nothing known, from the
        # head of the index. A table that is not vacuumed keeps the index entries of the
        # taken rows, which every scan from the head walked again: 1,000,000 tasks passed
        # made each RESERVE and NEXT_DUE read 7,300 pages of ``asynctask_queue_ready``
        # (its entries, led by the queue name, are 2.6 times as wide as the raw loop's
        # primary key), three of them a woken idle worker's task. Set by a RESERVE (the
        # last row it took from the head, all before it taken) and by NEXT_DUE (the
        # first waiting row's); lowered by each submit's NOTIFY (``at
        # <microseconds>``, where its row sorts); dropped by any other NOTIFY (another
        # program's insert, a task handed back by a settle, sweep or close), a new
        # connection and each sweep.
        self._floor: int | None = None
        self._since: int | None = _NO_FLOOR  # the same, announced since the last statement
        # when (monotonic) we last sent a statement or Sync whose answer, and the
        # notifications before it, we have read: see ``_start_later``
        self._asked_at = -CANCEL_HEARD
        self._next_sweep = 0.0
        # tasks finished since our last delete of forgotten statuses (see forget.py): the
        # sweep alone deleted at most 1,000 a sweep a queue (600/s at the default bound),
        # below a drain's rate
        self._finished = 0
        self._forget = StateStatements.for_schema(host.schema).forget
        self._outage_since: float | None = None
        self._pause = 0.05

    # -- the Consumer API ---------------------------------------------------------------

    def reserve(self, timeout: float) -> Delivery | None:
        """Take the next task, waiting on LISTEN/NOTIFY up to ``timeout`` seconds."""
        self.transport._check_open()
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._check_open()
            while True:
                if self._buffer:
                    return self._hand_out()
                if self._finished >= FORGET_EVERY:
                    self._run(self._forget, (forget_limit(self._finished),))
                    self._finished = 0
                if time.monotonic() >= self._next_sweep:
                    sweep = {
                        "lock_class": self._lock_class,
                        "sweep_class": self._sweep_class,
                        "lease": self._host.owner_lease,
                        "forget_limit": FORGET_PER_SWEEP,
                    }
                    self._run(self._sql.sweep, {**sweep, "queue": self.queue})
                    # and the next RESERVE reads the queue from its head: a row another
                    # consumer locked and let go without a NOTIFY (its reserve rolled
                    # back), or one made behind a clock set back, waits one sweep at most
                    self._floor = None
                    self._next_sweep = time.monotonic() + self._host.sweep_interval
                    if self._host.vacuum is not None:
                        self._host.vacuum.ask()
                self._cancelled.clear()  # of tasks we do not hold (we hold none now)
                limit = self._take() - len(self._buffer)
                reserve = self._reserve[self._tracked()]
                floor, self._since = self._floor, _NO_FLOOR
                params = {"queue": self.queue, "limit": limit, "floor": _floor_param(floor)}
                rows = self._run(reserve, params)
                self._sent()
                # The head took, in order, every row past the floor up to the last one
                # it took (but those another consumer had locked, whose reserve takes
                # them): the floor moves there, and back to whatever was announced
                # meanwhile. (``at`` is NULL for an urgent row: another index.)
                last = max((row[9] for row in rows if row[9] is not None), default=floor)
                self._floor = _lower(last, self._since)
                self._keep(rows)
                if self._buffer:
                    return self._hand_out()
                if rows:
                    continue  # only undecodable messages, now in the failed store
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return None
                floor, self._since = self._floor, _NO_FLOOR
                next_due = {"queue": self.queue, "floor": _floor_param(floor)}
                [(due, first)] = self._run(self._sql.next_due, next_due)
                # no waiting row before ``first`` (none at all: none before a new one)
                self._floor = _lower(_NO_FLOOR if first is None else first, self._since)
                if due is not None:
                    wait = min(wait, max(due, _MIN_WAIT))
                self._wait(min(wait, max(self._next_sweep - time.monotonic(), _MIN_WAIT)))

    def start(self, delivery: Delivery) -> StartVerdict:
        """``running`` unless cancelled or expired (then its row is gone: never run).

        One round trip (``START``), which also carries the pending acknowledgements, and
        commits without waiting for the disk (see ``asynctask_pgsql.statements``). A
        consumer with ``prefetch`` above 1 answers at once for a task it knows may run,
        and writes ``running`` only if the task runs ``SYNC_WITHIN`` (``_start_later``).
        """
        if not self.transport.own_state:
            return super().start(delivery)
        if not self.tracking:
            return "run"
        with self._lock:
            if delivery.receipt not in self._held:
                return "run"  # taken back after a lost connection: at least once
            expires = self._expires.pop(delivery.receipt, None)
            if (
                self.prefetch > 1
                and (expires is None or time.time() < expires)
                and self._start_later(delivery)
            ):
                return "run"
            rows = self._run(self._sql.start, {"id": delivery.receipt})
            self._sent()
            if not rows:
                return "run"
            _, lapsed, was = rows[0]
            verdict: StartVerdict = (
                "expired" if lapsed else "cancelled" if was == "cancelled" else "run"
            )
            if verdict != "run":
                del self._held[delivery.receipt]  # the statement deleted its row
            return verdict

    def _start_later(self, delivery: Delivery) -> bool:
        """Let a prefetched task run at once, its ``running`` written only if it runs
        ``SYNC_WITHIN`` seconds (by the syncer thread, ``START_RUNNING`` in pipeline
        mode); one that ends sooner gets ``succeeded``/``retrying``/``failed`` with its
        start time from its settle. False (ask the server) when a cancel of it was
        announced on our channel, or the connection is not there. Lock held.

        A drain of short prefetched tasks so pays no statement per start, only the bare
        round trip of ``_hear_cancels``: without it, a cancel that returned before this
        start but whose announcement was still on its way (the listening backend had not
        been scheduled yet: 36 of 100 such starts ran on a loaded 2-core machine) let a
        cancelled waiting task run. That round trip costs a prefetch-4 drain with tracking
        0.81x and 0.89x in two runs (768 against 948, 968 against 1,093 tasks/s, medians
        of 7 alternating rounds of 1,000, load 10 on 2 cores); a START per task instead
        gives 311 and 393/s (``scripts/bench_prefetched_start.py``).

        It is skipped when our last question (that Sync, or any statement: the server
        sends the announcements before each answer) left less than ``CANCEL_HEARD`` (5
        ms) ago: a cancel committed after the server read that question waits that long
        before it returns (``PgsqlStateStore.cancel``), so it has not returned yet, and
        one committed before is in the answer we read. A drain of short tasks so asks
        once per 5 ms, not once per task.
        A cancel that lands after this is seen as the cancel of a running task: the
        status says ``cancelled`` (never overwritten), the supervisor stops the task.
        """
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            if time.monotonic() - self._asked_at >= CANCEL_HEARD:
                self._hear_cancels(conn)
        except psycopg.Error as exc:
            logger.debug("%r: reading notifications failed (%s)", self, exc)
            self._drop_connection()
            return False
        if delivery.id in self._cancelled:
            self._cancelled.discard(delivery.id)
            return False
        self._unmarked[delivery.receipt] = (delivery, time.time())
        if self._mark_due is None:
            self._mark_due = time.monotonic() + SYNC_WITHIN
            self._ensure_marker()
            self._mark_wanted.notify()
        return True

    def _hear_cancels(self, conn: psycopg.Connection[Any]) -> None:
        """Read every notification sent to us before now: one round trip with no
        statement (a bare Sync in pipeline mode, answered by ReadyForQuery); lock held.

        ``cancel`` notifies in its own transaction, which signals our backend before it
        returns; the server sends a backend's pending notifications before the
        ReadyForQuery of the next Sync it reads (PostgreSQL 15: ``PostgresMain``; older
        ones as it waits to read that Sync). So a cancel that returned before this call
        is in ``_cancelled`` after it. The START_RUNNING sent before are answered first.
        """
        pgconn = conn.pgconn
        asked = time.monotonic()
        if pgconn.pipeline_status == pq.PipelineStatus.OFF:
            pgconn.enter_pipeline_mode()
        pgconn.pipeline_sync()
        self._pending.append([])  # a Sync with no acknowledgements riding on it
        conn.wait(send(pgconn))
        self._absorb(conn, block=True)
        self._asked_at = asked

    def _mark_running(self) -> None:
        """Write ``running`` for the tasks started ``SYNC_WITHIN`` ago and still running,
        with the pending acknowledgements, in pipeline mode, unanswered: one statement
        for all of them (``statements.START_RUNNING``); lock held."""
        self._mark_due = None
        conn = self._conn
        if not self._unmarked or conn is None or conn.closed:
            return
        pgconn = conn.pgconn
        group: list[_Acks] = []
        try:
            if pgconn.pipeline_status == pq.PipelineStatus.OFF:
                pgconn.enter_pipeline_mode()
            marks = self._unmarked.values()
            values = [
                ("{" + ",".join([delivery.id for delivery, _ in marks]) + "}").encode(),
                _int_array([delivery.attempt for delivery, _ in marks]).encode(),
                _int_array(self._owners).encode(),
                _int_array(self._acks).encode(),
                json.dumps(self._results).encode(),
                repr(float(self.transport.status_ttl)).encode(),
                _int_array(self._started).encode(),
                ("{" + ",".join([repr(started) for _, started in marks]) + "}").encode(),
            ]
            pgconn.send_query_prepared(b"asynctask_start", values)
            group.append((list(self._acks), list(self._results), list(self._started)))
            self._sent()
            pgconn.pipeline_sync()
            conn.wait(send(pgconn))
        except psycopg.Error as exc:
            logger.debug("%r: writing running failed (%s)", self, exc)
            self._pending.append(group)
            self._drop_connection()
            return
        self._unmarked.clear()
        self._pending.append(group)

    def _ensure_marker(self) -> None:
        """The thread that writes ``running`` for prefetched tasks; lock held."""
        if self._marker is None or not self._marker.is_alive():
            self._marker = threading.Thread(
                target=self._marking, name=f"asynctask-pgsql-start-{self.queue}", daemon=True
            )
            self._marker.start()

    def _marking(self) -> None:
        with self._lock:
            while not self.closed:
                due = self._mark_due
                if due is None:
                    self._mark_wanted.wait()
                    continue
                left = due - time.monotonic()
                if left > 0:
                    self._mark_wanted.wait(left)
                    continue
                self._mark_running()

    def _restore(self, groups: list[list[_Acks]]) -> None:
        """Acknowledgements whose transaction did not commit: sent again, first."""
        for group in reversed(groups):
            for acks, results, started in reversed(group):
                self._acks[:0], self._results[:0], self._started[:0] = acks, results, started

    def _absorb(self, conn: psycopg.Connection[Any], block: bool) -> None:
        """Read the answers of the ``START_RUNNING`` sent (all of them with ``block``,
        else those already here), then the notifications that came with them. A failed
        one's acknowledgements go again with the next statement."""
        pgconn = conn.pgconn
        while self._pending:
            if block:
                result = conn.wait(fetch(pgconn))
            elif pgconn.is_busy():
                break
            else:
                result = pgconn.get_result()
            if result is None:
                continue  # the end of one statement's results
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                group = self._pending.pop(0)
                if self._start_failed:
                    self._start_failed = False
                    self._restore([group])
            elif result.status in (pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.PIPELINE_ABORTED):
                message = (result.error_message or b"").decode(errors="replace")
                logger.warning("%r: writing running failed: %s", self, message.strip())
                self._start_failed = True
        while (note := pgconn.notifies()) is not None:
            self._heard(Notify(note.relname.decode(), note.extra.decode(), note.be_pid))

    def _finish_starts(self) -> None:
        """Before any other statement: every answer read, out of pipeline mode."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        pgconn = conn.pgconn
        if self._pending:
            self._absorb(conn, block=True)
        if pgconn.pipeline_status != pq.PipelineStatus.OFF:
            pgconn.exit_pipeline_mode()

    def _heard(self, note: Notify) -> None:
        """A notification on our channel: a cancel (``cancel <id>``) or new tasks."""
        if note.payload.startswith("cancel "):
            self._cancelled.add(note.payload[7:])
        else:
            self._woken = True
            # a submit of ours says where its row sorts; anything else (another
            # program's insert, a task handed back) may sort anywhere: no floor
            at = note.payload[3:] if note.payload.startswith("at ") else ""
            place = int(at) if at.isdigit() else None
            self._floor = _lower(self._floor, place)
            self._since = _lower(self._since, place)

    def ack(self, delivery: Delivery, result_json: str | None = None) -> bool | None:
        """Done: the row is deleted by this consumer's next statement (no round trip now),
        and its status is ``succeeded`` with ``result_json`` by the same statement (one
        already ``cancelled`` stays so). True when a cancel of the task was announced
        on our channel since it was taken (the notifications that have arrived are read
        without waiting): its result is discarded, and the run loop says so."""
        with self._lock:
            self._expires.pop(delivery.receipt, None)
            unmarked = self._unmarked.pop(delivery.receipt, None)
            if self._held.pop(delivery.receipt, None) is None:
                return None
            if self._window is not None:
                self._timed()
            self._finished += 1
            self._acks.append(delivery.receipt)
            self._results.append(result_json)
            self._started.append(None if unmarked is None else int(unmarked[1] * 1e6))
            return self._cancel_heard(delivery.id) if self._tracked() else None

    def _cancel_heard(self, task_id: str) -> bool | None:
        """Whether a cancel of ``task_id`` that returned before this call was announced
        on our channel (the lock held), as ``_start_later`` knows it of a start: with
        what has arrived, read without waiting, then, unless our last question left
        less than ``CANCEL_HEARD`` ago, a bare Sync (``_hear_cancels``). A drain of
        short tasks asks nothing more (its START or reserve was that question); a task
        that ran longer pays one round trip, a small part of its own time. (Reading
        what had arrived alone missed the announcement in the first run of the test at
        prefetch 1, load ~20: the listening backend had not been scheduled yet.) Its
        cost on a drain: 98,174 -> 102,607 instructions a task (``bench/loopcost.py
        --instructions``, 1,000 tasks, load 12)."""
        conn = self._conn
        if task_id not in self._cancelled and conn is not None and not conn.closed:
            pgconn = conn.pgconn
            try:
                pgconn.consume_input()
                while (note := pgconn.notifies()) is not None:
                    self._heard(Notify(note.relname.decode(), note.extra.decode(), note.be_pid))
                if task_id not in self._cancelled and (
                    time.monotonic() - self._asked_at >= CANCEL_HEARD
                ):
                    self._hear_cancels(conn)
            except psycopg.Error as exc:  # as ``_start_later``: the next statement reconnects
                logger.debug("%r: reading notifications failed (%s)", self, exc)
                self._drop_connection()
                return None
        if task_id in self._cancelled:
            self._cancelled.discard(task_id)
            return True
        return None

    def retry(self, delivery: Delivery, delay: float, error: str) -> bool | None:
        """Back to the queue after ``delay`` seconds, one attempt more; True if it was
        cancelled while it ran (then deleted instead: SETTLE)."""
        return self._settle(delivery, "queued", 1, error, check_delay(delay))

    def fail(self, delivery: Delivery, error: str) -> bool | None:
        """To the failed store with ``error``, one attempt more; True if it was
        cancelled while it ran (then deleted instead). With the statuses in the store
        of ``asynctask_state``, its id is noted there first (the failed window,
        ``asynctask.status``: ``PgsqlTransport._failed_holds`` looks it up)."""
        if not self.transport.own_state and self.note_failing(delivery, delivery.id, error):
            self.ack(delivery)  # cancelled meanwhile: deleted, never failed
            return True
        return self._settle(delivery, "failed", 1, error, None)

    def release(self, delivery: Delivery) -> None:
        """Back at the head of the queue, untouched."""
        self._settle(delivery, "queued", 0, None, None)

    def close(self) -> None:
        """Send pending acknowledgements, hand back every held task, drop the connection."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._mark_wanted.notify_all()  # the marker thread ends
            try:
                if self._held or self._acks:
                    self._run(self._sql.settle, _settle_params(list(self._held), "queued"))
            except TransportError as exc:
                if self.keeper_owner is not None:
                    # Its owner lives on (the supervisor beats for it): nobody would sweep
                    # these, so the transport's next consumer statement hands them back.
                    leftover = (list(self._owners), list(self._held), list(self._acks))
                    self._host.leftovers.append(leftover)
                logger.warning("%r: could not hand back tasks on close (%s)", self, exc)
            finally:
                self._held.clear()
                self._buffer.clear()
                self._drop_connection()

    def __repr__(self) -> str:
        return f"PgsqlConsumer({self.transport.safe_uri!r}, {self.queue!r})"

    # -- inside -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise TransportClosed(f"{self!r} is closed; get a new one with consumer()")

    def _settle(
        self, delivery: Delivery, state: str, attempt: int, error: str | None, delay: float | None
    ) -> bool | None:
        """True when a retry or fail found the task cancelled (deleted instead)."""
        with self._lock:
            self._expires.pop(delivery.receipt, None)
            unmarked = self._unmarked.pop(delivery.receipt, None)
            if delivery.receipt not in self._held:
                return None  # settled already, or taken back after our connection was lost
            params = _settle_params([delivery.receipt], state, attempt, error, delay)
            params["started_at"] = None if unmarked is None else unmarked[1]
            # Still held while the statement runs: a reconnect on the way hands back
            # (``orphans``) only the rows we do not hold, so this one stays ours to settle.
            rows = self._run(self._sql.settle, params)
            self._sent()
            del self._held[delivery.receipt]
            if self._window is not None:
                self._timed()
            cancelled = any(row[-1] for row in rows)
            self._finished += state == "failed"
            return True if cancelled else None

    def _hand_out(self) -> Delivery:
        """The next buffered task; an adaptive take's clock starts if none ran."""
        if self._window is not None:
            self._window.started()
        return self._buffer.popleft()

    def _take(self) -> int:
        """Rows the next RESERVE takes at most: the prefetch the user set, else what the
        tasks' run time allows (``FIRST_TAKE`` until one is known)."""
        window = self._window
        if window is None:
            return self.prefetch
        if window.run_time is None:
            return min(FIRST_TAKE, window.largest)
        return window.target()

    def _timed(self) -> None:
        """A task was settled now: its run time feeds the adaptive take; lock held."""
        assert self._window is not None
        self._window.settled()
        if not self._held:
            self._window.idle()  # the wait for the next RESERVE is no task's run time

    def _sent(self) -> None:
        """The pending acknowledgements went with the statement just run."""
        self._acks.clear()
        self._results.clear()
        self._started.clear()

    def _keep(self, rows: list[tuple[Any, ...]]) -> None:
        """Turn reserved rows (in queue order) into deliveries; undecodable text fails."""
        for row in rows:
            bad, row_id, task_id, payload, text, attempts, submitted, headers, expires, _ = row
            if bad:
                continue
            try:  # jsonb comes as text (see asynctask_pgsql.decoding): one row at a time
                payload = self.transport.decode(payload if text is None else text)
            except ValueError as exc:  # UndecodableMessage, whatever the parser raised
                # One statement moves it: the failed store, with the reason, uncharged.
                error = f"undecodable message: {exc}"
                self._run(self._sql.settle, _settle_params([row_id], "failed", 0, error))
                continue
            assert self._owner is not None
            self._held[row_id] = self._owner
            # A count another program stored may be negative: never more runs for that.
            attempt = max(attempts, 0) + 1
            delivery = Delivery(task_id, self.queue, payload, attempt, submitted, row_id)
            delivery.headers = read_headers(headers)
            if expires is not None:
                self._expires[row_id] = expires
            self._buffer.append(delivery)

    def _run(self, query: LiteralString | Prepared, params: Any) -> list[tuple[Any, ...]]:
        """Run one statement on our connection, reconnecting through an outage."""
        while True:
            try:
                self._finish_starts()
                conn = self._connect()
                # Bound afresh on every try: the owner may change with a reconnect, and the
                # caller's params stay as given (encoding them in place once sent a
                # twice-encoded array after a reconnect). The arrays are text literals
                # (see ``_bound``).
                bound = self._bound(params) if isinstance(params, dict) else params
                asked = time.monotonic()
                if isinstance(query, Prepared):
                    rows = self._run_prepared(conn, query, bound)
                else:
                    cursor = self._cursor
                    if cursor is None or cursor.closed:
                        cursor = self._cursor = conn.cursor()
                    rows = cursor.execute(query, bound, prepare=True).fetchall()
                # psycopg read the notifications that came before its answer
                self._asked_at = asked
            except (psycopg.OperationalError, TransportUnavailable) as exc:
                self._lost(exc)
                continue
            except psycopg.Error as exc:
                raise TransportError(f"{self!r}: {self._host.server.scrub(str(exc))}") from exc
            if self._outage_since is not None:
                self._outage_since = None
                self.transport.note_recovery()
            if self._host.leftovers:
                self._hand_back_leftovers(conn)
            return rows

    def _run_prepared(
        self, conn: psycopg.Connection[Any], statement: Prepared, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """``statement`` through libpq (see ``__init__``); the notifications that came
        before its answer heard. A cursor's ``execute`` costs about 45k instructions a
        call beside libpq's (``asynctask_pgsql.pooled``)."""
        result = exec_prepared(conn, self._prepared, statement, params)
        pgconn = conn.pgconn
        while (note := pgconn.notifies()) is not None:
            self._heard(Notify(note.relname.decode(), note.extra.decode(), note.be_pid))
        loader = self._rows
        if loader is None:
            loader = self._rows = Transformer(conn)
        loader.set_pgresult(result)
        return loader.load_rows(0, result.ntuples, tuple)

    def _bound(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with what every statement of ours may use.

        The acknowledgements' arrays go as the text literals we write (``_int_array``,
        the results as one JSON array), which psycopg sends as they are: its list dumper
        ran a regular expression on every element and wrote each start time with a
        float's shortest ``repr``, 20k of the run loop's 142k instructions a task
        (callgrind, ``bench/loopcost.py``, prefetch 16).
        """
        return {
            **params,
            "owner": self._owner,
            "keeper": self._keeper,
            "owners": _int_array(self._owners),
            "acks": _int_array(self._acks),
            "results": json.dumps(self._results),
            "started": _int_array(self._started),
            "track": self._tracked(),
            "ttl": self.transport.status_ttl,
        }

    def _tracked(self) -> bool:
        """Whether this consumer's statements write statuses."""
        return self.tracking and self.transport.own_state

    def _hand_back_leftovers(self, conn: psycopg.Connection[Any]) -> None:
        """Finish the close of owned consumers that could not reach the server."""
        leftovers = self._host.leftovers
        while leftovers:
            owners, held, acks = leftovers[0]
            params = _settle_params(held, "queued")
            # Their results were lost with that consumer: succeeded, without them.
            params.update(owners=_int_array(owners), acks=_int_array(acks))
            params.update(results=json.dumps([None] * len(acks)))
            params.update(started=_int_array([None] * len(acks)))
            params.update(track=self._tracked(), ttl=self.transport.status_ttl)
            try:
                conn.execute(self._sql.settle, params).fetchall()
            except psycopg.Error as exc:
                logger.debug("handing back a closed consumer's tasks: %s", exc)
                return
            leftovers.pop(0)

    def _wait(self, seconds: float) -> None:
        """Block until a notification on our channel (or one already received) or timeout."""
        try:
            self._finish_starts()
            conn = self._connect()
            if not self._woken:
                ready, _, _ = select.select([conn.fileno()], [], [], seconds)
                if ready:
                    conn.pgconn.consume_input()
                    self._absorb(conn, block=False)
            self._woken = False
        except (psycopg.OperationalError, TransportUnavailable) as exc:
            self._lost(exc)

    def _connect(self) -> psycopg.Connection[Any]:
        """Our connection; a new one holds our advisory lock and listens before use."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        t = self._host
        if self._owner is None:
            t._ready_pool()  # a worker's first call may be its consumer's: migrate first
        conn = t.server.connect(**t.consumer_connect_kwargs)
        load_json_as_text(conn)
        try:
            held_before = self._owner
            number, locked = self._enlist(conn, held_before)
            while not locked:  # our old number is still held by a lingering session
                number, locked = self._enlist(conn, None)
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            conn.add_notify_handler(self._heard)
            conn.execute(self._sql.start_running)
            orphaned = [number] if number == held_before else []
            if self.keeper_owner is not None:
                # Our rows outlive our sessions: every number we held may have some.
                [(keeper,)] = conn.execute(self._sql.own, (self.keeper_owner,)).fetchall()
                self._keeper = int(keeper)
                orphaned = sorted({number, *self._owners})
            for held_number in orphaned:
                # A reserve whose answer the lost connection never delivered left rows
                # reserved under our number that we do not know of: hand them back. Rows
                # acknowledged but not yet deleted stay ours: our next statement deletes them.
                params = {"owner": held_number, "held": [*self._held, *self._acks]}
                conn.execute(self._sql.orphans, params).fetchall()
        except BaseException:
            conn.close()
            raise
        self._owner = number
        if number not in self._owners:
            self._owners.append(number)
        self._conn = conn
        # Look for dead consumers' tasks soon: our own may be among them.
        self._next_sweep = min(self._next_sweep, time.monotonic() + t.sweep_interval / 2)
        return conn

    def _enlist(self, conn: psycopg.Connection[Any], number: int | None) -> tuple[int, bool]:
        recovery = self.transport.features.recovery_seconds
        params = {
            "lock_class": self._lock_class,
            "id": number,
            "idle": str(self._host.consumer_connect_kwargs.get("keepalives_idle", 1)),
            "user_timeout": str(int(recovery * 1000)),
            "synchronous_commit": "on" if self._host.durable_acks else "off",
        }
        row = conn.execute(self._sql.enlist, params).fetchone()
        assert row is not None
        return int(row[0]), bool(row[1])

    def _lost(self, exc: psycopg.OperationalError | TransportUnavailable) -> None:
        """The connection failed: drop it, pause with back-off, give up after retry_timeout.

        A server that answers and refuses us (a dropped role, a changed password) is not an
        outage: ``TransportRefused`` at once."""
        self._drop_connection()
        t = self.transport
        if isinstance(exc, psycopg.OperationalError) and is_refusal(str(exc)):
            server = self._host.server
            raise TransportRefused(
                f"{server.describe()} refused the connection: {server.scrub(str(exc))}"
            ) from exc
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since, self._pause = now, 0.05
            t.note_outage(exc)
        if now - self._outage_since > t.retry_timeout or t.closed:
            self._outage_since = None
            reason = str(exc).strip()
            if not isinstance(exc, TransportUnavailable):
                server = self._host.server
                reason = f"{server.describe()} is not reachable: {server.scrub(reason)}"
            raise TransportUnavailable(
                f"{reason} (gave up after retrying for {t.retry_timeout:g} s)"
            ) from exc
        time.sleep(self._pause)
        self._pause = min(self._pause * 2, 1.0)

    def _drop_connection(self) -> None:
        self._asked_at = -CANCEL_HEARD  # a new connection hears nothing sent before it
        self._floor = self._since = None  # nor the notifications sent meanwhile
        self._restore(self._pending)  # unanswered: sent again
        self._pending.clear()
        self._start_failed = False
        conn, self._conn = self._conn, None
        self._cursor = self._rows = None
        self._prepared.clear()
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # a broken one has nothing to report
                conn.close()


def _settle_params(
    ids: list[int],
    state: str,
    attempt: int = 0,
    error: str | None = None,
    delay: float | None = None,
) -> dict[str, Any]:
    return {
        "ids": _int_array(ids),
        "state": state,
        "attempt": attempt,
        "error": error,
        "delay": delay,
        "started_at": None,
    }


def _int_array(numbers: Sequence[int | None]) -> str:
    """A PostgreSQL array literal of integers (NULL for None), as text parameters take
    it (psycopg sends a ``str`` untyped: the statement's cast reads it)."""
    return "{" + ",".join(["NULL" if n is None else int.__repr__(n) for n in numbers]) + "}"
