"""``pgsql:``: tasks in a PostgreSQL table, through psycopg 3.

Features
    Every count (ready, delayed, retrying, in flight, failed); the whole delivery
    contract across processes and hosts. Consumers take rows with ``FOR UPDATE SKIP
    LOCKED`` and wait on LISTEN/NOTIFY, so an idle worker starts a new task within
    milliseconds of its commit. A consumer's liveness is its held connection (a session
    advisory lock), apart from how long its task runs: a killed worker's tasks come back
    within ``recovery_seconds``, a slow task of a live worker never runs twice.
    ``submit_task(..., connection=conn)`` writes inside the caller's own transaction.
    Task status (``asynctask.status``): kept in ``<schema>.asynctask_status``, written by
    the same statements as the tasks; ``wait`` on LISTEN/NOTIFY; ``priority``,
    ``expires`` and ``unique_key`` (a unique index) honoured by every statement.
    ``peek``, ``failed_tasks`` and ``in_flight`` read one page (``LIMIT``/``OFFSET`` on
    their partial indexes); ``in_flight``'s holder is the owner id of a child of
    ``asynctask workers``, else ``consumer N`` and the address its session came from;
    its ``since`` is when the running attempt started (from its status: None for a
    prefetched task not started yet, or one whose worker keeps no status).
URI
    ``pgsql:dbname``, ``pgsql://host/dbname``, ``pgsql://user:password@host:port/dbname``,
    and libpq's own ``postgresql://...`` / ``postgres://...`` (multi-host lists too).
    Without a host, libpq's defaults and ``PG*`` variables apply.
Options
    ``schema`` (default ``asynctask``): where the tables live. ``pool_size`` (default 4):
    connections shared by the transport's calls (each consumer holds one more of its
    own). ``recovery_seconds`` (default 5): bound on how soon a dead consumer's tasks come
    back. ``durable_acks`` (default false): consumers commit asynchronously unless set.
    ``vacuum_every`` (default 60): on a server with autovacuum off, how often the
    transport looks at its tables' dead tuples and VACUUMs them (0: never).
    ``window_budget`` (default 0.1): with no prefetch set, a consumer's RESERVE takes
    up to 64 rows, fewer as tasks get long, so that the last it holds starts within this
    many seconds of the one running.
    ``retry_timeout`` as everywhere. Any libpq keyword (``sslmode``,
    ``connect_timeout``, ``application_name``...) is passed to libpq.
Storage
    One table, ``<schema>.asynctask_queue`` (the original's name), migrated in place from
    the original's layout; the failed store is its rows with ``state = 'failed'``.
    Statuses in ``<schema>.asynctask_status`` (see ``asynctask_pgsql.state``).
    ``INSERT INTO asynctask.asynctask_queue (queue_name, payload) VALUES ('q', '{"a": 1}')``
    submits a task: every other column has a default, and a trigger sends the NOTIFY. See
    the package README for every column.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar, LiteralString

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from asynctask.errors import TransportError, TransportRefused, TransportUnavailable
from asynctask.limits import POLL, SLOT_LEASE, LimitSpec
from asynctask.liveness import Liveness
from asynctask.status import SubmitOptions
from asynctask.transport import (
    COUNT_NAMES,
    Consumer,
    FailedTask,
    InFlightTask,
    QueueStats,
    Transport,
    TransportFeatures,
    WaitingTask,
)
from asynctask.uri import Option, boolean, non_negative_float, positive_float, positive_int
from asynctask.validation import Payload, decode_message
from asynctask.window import AdaptivePrefetch
from asynctask_pgsql.conninfo import LIBPQ_KEYWORDS, is_refusal, read_server
from asynctask_pgsql.consumer import PgsqlConsumer
from asynctask_pgsql.decoding import load_json_as_text
from asynctask_pgsql.keeper import PgsqlLiveness
from asynctask_pgsql.pooled import PooledConnection, Prepared
from asynctask_pgsql.schema import (
    SchemaBusy,
    check_schema_name,
    consumer_lock_class,
    limit_lock_class,
    migrate,
)
from asynctask_pgsql.state import (
    UNIQUE_TRIES,
    PgsqlStateStore,
    held_by,
    unique_key_busy,
)
from asynctask_pgsql.statements import EXACT_UP_TO, Statements
from asynctask_pgsql.vacuum import DEAD_TUPLES, Vacuumer

logger = logging.getLogger("asynctask.pgsql")

_DEFAULT_RECOVERY = 5.0

# The caller's connection for a transactional submit, seen by ``_put`` in this context only.
_caller_connection: contextvars.ContextVar[psycopg.Connection[Any] | None] = contextvars.ContextVar(
    "asynctask_pgsql_caller_connection", default=None
)


# Pools inherited through fork(): kept referenced so that collecting them never closes the
# parent's connections from the child.
_forked_away: list[ConnectionPool[PooledConnection]] = []


class PgsqlTransport(Transport):
    """Tasks in PostgreSQL; see the module docstring."""

    schemes = ("pgsql", "postgresql", "postgres")
    #: a child's RESERVE is one statement per batch, and its fixed cost (about half of
    #: a RESERVE of 4 on the server) dominated a drain of short tasks: 16 drains 1.3-1.6x
    #: faster than 4 (README, "Prefetch"). With no prefetch set, each RESERVE takes up
    #: to 64, sized from the tasks' run time so that the last one held starts within
    #: ``window_budget`` (``asynctask.window``; the first takes 16: no run time known)
    default_prefetch = AdaptivePrefetch(64)
    options_accepted: ClassVar[dict[str, Option]] = {
        "schema": Option(check_schema_name, "asynctask", "the schema that holds the tables"),
        "pool_size": Option(positive_int, 4, "connections the transport's pool may open"),
        "recovery_seconds": Option(
            positive_float,
            _DEFAULT_RECOVERY,
            "seconds within which a dead consumer's reserved tasks are delivered again",
        ),
        "durable_acks": Option(
            boolean,
            False,
            "whether a consumer's reserves and acknowledgements wait for the WAL flush",
        ),
        "vacuum_every": Option(
            non_negative_float,
            60.0,
            "seconds between the transport's looks at its tables' dead tuples when the "
            "server's autovacuum is off (0: never)",
        ),
        "window_budget": Option(
            positive_float,
            0.1,
            "seconds within which the last task a consumer holds should start, when no "
            "prefetch is set: each RESERVE takes up to 64, fewer as tasks get long",
        ),
    }
    keeps_limits = True
    features = TransportFeatures(
        counts=frozenset(COUNT_NAMES), multiprocess=True, recovery_seconds=_DEFAULT_RECOVERY
    )

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.schema: str = self.options["schema"]
        self.server = read_server(uri, self.location, self.driver_options, self.retry_timeout)
        self.sql = Statements.for_schema(self.schema)
        #: the one-task submit, sent through libpq (see ``asynctask_pgsql.pooled``)
        self._put_one = Prepared("asynctask_put_one", self.sql.put_one)
        self._put_one_untracked = Prepared(
            "asynctask_put_one_untracked", self.sql.put_one_untracked
        )
        recovery: float = self.options["recovery_seconds"]
        self.features = TransportFeatures(
            counts=frozenset(COUNT_NAMES), multiprocess=True, recovery_seconds=recovery
        )
        #: how often a consumer looks for dead consumers' tasks
        self.sweep_interval = max(0.1, recovery / 3)
        #: (numbers, held row ids, pending acks) of owned consumers whose close could not
        #: reach the server: their rows would stay theirs while their owner lives
        self.leftovers: list[tuple[list[int], list[int], list[int]]] = []
        #: seconds an owner's row stays alive after its last beat (asynctask.liveness):
        #: a sweep within ``sweep_interval`` after that keeps the bound
        self.owner_lease = max(0.1, recovery - self.sweep_interval)
        self.consumer_connect_kwargs = _keepalive_kwargs(recovery, self.driver_options)
        #: a consumer's statements commit asynchronously unless this is set: see the
        #: README's "Commits" (a lost commit only makes a task run again)
        self.durable_acks: bool = self.options["durable_acks"]
        #: seconds within which the last task an adaptive consumer holds should start
        self.window_budget: float = self.options["window_budget"]
        #: VACUUMs the tables when the server does not (asked by the consumers' sweeps)
        self.vacuum: Vacuumer | None = None
        self._vacuum_every: float = self.options["vacuum_every"]
        #: what the first call did to the schema ("created", "current", "adopted ...")
        self.schema_action: str | None = None
        self._pool: ConnectionPool[PooledConnection] | None = None
        self._pid = os.getpid()
        self._ready_lock = threading.Lock()
        self._store: PgsqlStateStore | None = None

    def accepts_driver_option(self, name: str) -> bool:
        """Every libpq keyword is passed through to libpq."""
        return name in LIBPQ_KEYWORDS

    # -- connections --------------------------------------------------------------------

    def _ready_pool(self) -> ConnectionPool[PooledConnection]:
        """The pool, after the first call has migrated the schema on a direct connection."""
        if self._pool is not None and self._pid == os.getpid():
            return self._pool
        self._check_open()  # a closed transport opens nothing again
        with self._ready_lock:
            if self._pool is not None and self._pid != os.getpid():
                # A forked child must not touch (or close) its parent's connections.
                _forked_away.append(self._pool)
                self._pool = None
            if self._pool is None:
                # A direct first connection reports the real reason a server is unreachable
                # (refused, unknown database, password); the pool would only time out.
                with self._mapped_errors(), self.server.connect() as conn:
                    self.schema_action = migrate(conn, self.schema, wait=self.retry_timeout)
                    [(autovacuum,)] = conn.execute("SHOW autovacuum").fetchall()
                if self.schema_action != "current":
                    logger.info("%r: schema %s: %s", self, self.schema, self.schema_action)
                if autovacuum != "on" and self._vacuum_every > 0:
                    logger.warning(
                        "%r: autovacuum is off on this server: the transport vacuums its "
                        "tables itself once %d dead tuples are seen (looked at every %g s)",
                        self,
                        DEAD_TUPLES,
                        self._vacuum_every,
                    )
                    self.vacuum = Vacuumer(
                        self.schema,
                        self._vacuum_every,
                        self.server.connect,
                        scrub=self.server.scrub,
                    )
                elif autovacuum != "on":
                    logger.warning(
                        "%r: autovacuum is off on this server and vacuum_every=0: the queue "
                        "table bloats and slows down; run VACUUM %s.asynctask_queue regularly",
                        self,
                        self.schema,
                    )
                pool = ConnectionPool(
                    self.server.conninfo,
                    connection_class=PooledConnection,
                    kwargs={"autocommit": True},
                    configure=_configure,
                    min_size=0,
                    max_size=self.options["pool_size"],
                    open=False,
                    name=f"asynctask-pgsql-{id(self):x}",
                    reconnect_timeout=max(30.0, self.retry_timeout),
                )
                pool.open(wait=False)
                self._pool, self._pid = pool, os.getpid()
            return self._pool

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """Map psycopg's errors to ours, naming the server and never the password."""
        try:
            yield
        except SchemaBusy as exc:  # the server is there; its tables are busy for a while
            raise TransportUnavailable(f"{self.server.describe()}: {exc}") from exc
        except (psycopg.OperationalError, PoolTimeout) as exc:
            text = str(exc).strip()
            if is_refusal(text):
                raise TransportRefused(
                    f"{self.server.describe()} refused the connection: "
                    f"{self.server.scrub(text)}; check the user, password, database and "
                    "TLS options (sslmode) of the URI"
                ) from exc
            pool = self._pool
            if pool is not None and not self.closed and isinstance(exc, psycopg.OperationalError):
                # Drop every idle connection that broke with this one. psycopg_pool's own
                # check= would test each connection at every checkout instead: a round
                # trip per call, 4,455 pooled calls/s against 8,875/s without it
                # (python -m bench.drivers, same run, 2 cores): so only after an error.
                pool.check()
            raise TransportUnavailable(
                f"{self.server.describe()} is not reachable: {self.server.scrub(str(exc).strip())}"
            ) from exc
        except psycopg.Error as exc:
            raise TransportError(
                f"{self.server.describe()}: {self.server.scrub(str(exc).strip())}"
            ) from exc

    def _stored(self) -> bool:
        """Whether the schema exists, asked without creating it.

        Reads (counts, listings, takes, purges) call it until the pool is ready: on a
        schema nobody made (a typo in ``?schema=``) they answer "nothing" and create
        nothing, so looking never changes anything. Writes and consumers migrate.
        """
        if self._pool is not None and self._pid == os.getpid():
            return True
        self._check_open()
        with self._mapped_errors(), self.server.connect() as conn:
            query = "SELECT to_regnamespace(%s) IS NOT NULL"
            [(found,)] = conn.execute(query, (self.schema,)).fetchall()
        return bool(found)

    def _query(self, query: LiteralString, params: Any) -> list[tuple[Any, ...]]:
        """Run one statement on a pooled autocommit connection; return its rows."""
        pool = self._ready_pool()
        with self._mapped_errors():
            # getconn/putconn, not pool.connection(): the context manager's commit of an
            # autocommit connection does nothing but costs 23k instructions a call
            # (callgrind); putconn rolls back whatever a failure left open.
            conn = pool.getconn(timeout=self.retry_timeout)
            try:
                cursor = conn.kept_cursor().execute(query, params)
                return cursor.fetchall() if cursor.description else [(cursor.rowcount,)]
            finally:
                pool.putconn(conn)

    # -- transactional submit -----------------------------------------------------------

    def submit_task(
        self,
        queue_name: str,
        payload: Payload | None = None,
        *,
        delay: float = 0,
        expires: float | None = None,
        unique_key: str | None = None,
        priority: int = 0,
        connection: psycopg.Connection[Any] | None = None,
    ) -> str:
        """Add a task; with ``connection``, inside that connection's open transaction.

        The task then exists only if the caller commits, and nothing is retried here.
        """
        return self.submit_tasks(
            queue_name,
            [payload],
            delay=delay,
            expires=expires,
            unique_key=unique_key,
            priority=priority,
            connection=connection,
        )[0]

    def submit_tasks(
        self,
        queue_name: str,
        payloads: Iterable[Payload | None],
        *,
        delay: float = 0,
        expires: float | None = None,
        unique_key: str | None = None,
        priority: int = 0,
        connection: psycopg.Connection[Any] | None = None,
    ) -> list[str]:
        """Add many tasks in one statement; ``connection`` as for ``submit_task``."""
        lifecycle: dict[str, Any] = {
            "expires": expires,
            "unique_key": unique_key,
            "priority": priority,
        }
        if connection is None:
            return super().submit_tasks(queue_name, payloads, delay=delay, **lifecycle)
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(f"connection must be a psycopg.Connection, not {connection!r}")
        self._ready_pool()  # the schema must exist before the caller's transaction uses it
        token = _caller_connection.set(connection)
        try:
            return super().submit_tasks(queue_name, payloads, delay=delay, **lifecycle)
        finally:
            _caller_connection.reset(token)

    # -- primitives ---------------------------------------------------------------------

    def _put(
        self,
        queue: str,
        tasks: Sequence[tuple[str, str]],
        delay: float,
        options: SubmitOptions,
    ) -> Sequence[str] | None:
        params: dict[str, Any] = {
            "queue": queue,
            "delay": delay,
            "priority": options.priority,
            "expires": options.expires,
            "unique_key": options.unique_key,
            # Statuses are ours unless asynctask_state names another store (which the
            # base class has written to already) or the queue keeps none (record=False).
            "track": self.own_state and options.record,
            "ttl": self.status_ttl,
        }
        # jsonb cannot hold a NUL character (\u0000): such a payload travels as text.
        if len(tasks) > 1:
            params.update(
                ids=[task_id for task_id, _ in tasks],
                payloads=[None if _NUL in text else text for _, text in tasks],
                texts=[text if _NUL in text else None for _, text in tasks],
                headers=[
                    _json_or_none(self.task_headers(queue, task_id, text))
                    for task_id, text in tasks
                ],
            )
            self._put_statement(self.sql.put, params)
            return None
        [(task_id, text)] = tasks
        nul = _NUL in text
        params.update(
            id=task_id,
            payload=None if nul else text,
            text=text if nul else None,
            headers=_json_or_none(self.task_headers(queue, task_id, text)),
        )
        if options.unique_key is None:
            self._put_one_task(params)
            return None
        for _ in range(UNIQUE_TRIES):
            [(written, holder, known, _)] = self._put_statement(self.sql.put_unique, params)
            answer = held_by(written, holder, known, [task_id])
            if answer is not None:
                return None if answer == [task_id] else answer
        raise unique_key_busy(options.unique_key, queue)

    def _put_one_task(self, params: dict[str, Any]) -> None:
        """The one-task submit: through libpq on the pool (``asynctask_pgsql.pooled``),
        or through psycopg in the caller's transaction (``connection=``)."""
        if _caller_connection.get() is not None:
            self._put_statement(self.sql.put_one, params)
            return
        pool = self._ready_pool()
        with self._mapped_errors():
            conn = pool.getconn(timeout=self.retry_timeout)
            try:
                conn.run_prepared(
                    self._put_one if params["track"] else self._put_one_untracked, params
                )
            finally:
                pool.putconn(conn)

    def _put_statement(self, query: LiteralString, params: Any) -> list[tuple[Any, ...]]:
        """Run a put on the pool, or in the caller's transaction (``connection=``)."""
        caller = _caller_connection.get()
        if caller is None:
            return self._query(query, params)
        try:
            return caller.execute(query, params).fetchall()
        except psycopg.Error as exc:
            # Not TransportUnavailable: the caller's transaction is broken, a retry is theirs.
            raise TransportError(
                f"{self.server.describe()}: submit in the caller's transaction failed: "
                f"{self.server.scrub(str(exc).strip())}"
            ) from exc

    def _take(self, queue: str) -> Payload | None:
        if not self._stored():
            return None
        # One transaction: a row deleted by TAKE that turns out undecodable is kept in the
        # failed store by the same commit, or by neither (it is never lost in between).
        pool = self._ready_pool()
        with (
            self._mapped_errors(),
            pool.connection(timeout=self.retry_timeout) as conn,
            conn.transaction(),
        ):
            return self._take_in(conn, queue)

    def _take_in(self, conn: psycopg.Connection[Any], queue: str) -> Payload | None:
        while True:
            params = {"queue": queue, "limit": 1, "ttl": self.status_ttl, "floor": None}
            rows = conn.execute(self.sql.take, params).fetchall()
            if not rows:
                return None
            bad, task_id, payload, text, attempts, submitted = rows[0]
            if bad:
                continue  # a JSON value that is not an object: now in the failed store
            raw = payload if text is None else text
            try:
                return self.decode(raw)
            except ValueError as exc:  # UndecodableMessage, whatever the parser raised
                error = f"undecodable message: {exc}"
                row = (task_id, queue, raw, max(attempts, 0), submitted, error)
                conn.execute(self.sql.keep_failed, row)

    def _stats(self, queue: str) -> QueueStats:
        if not self._stored():
            return QueueStats(queue, 0, 0, 0, 0, 0)
        [row] = self._query(self.sql.stats, {"q": queue})
        return self._estimated([QueueStats(queue, *row)])[0]

    def _oldest_ready(self, queue: str) -> float | None:
        rows = self._query(self.sql.oldest_ready, (queue,))
        return None if not rows else rows[0][0]

    def _peek(self, queue: str, limit: int, offset: int) -> list[WaitingTask]:
        if not self._stored():
            return []
        rows = self._query(self.sql.peek, {"queue": queue, "limit": limit, "offset": offset})
        return [self._waiting(queue, *row) for row in rows]

    def _in_flight(self, queue: str, limit: int, offset: int) -> list[InFlightTask]:
        if not self._stored():
            return []
        params = {
            "queue": queue,
            "limit": limit,
            "offset": offset,
            "lock_class": consumer_lock_class(self.schema),
        }
        found = []
        for row in self._query(self.sql.in_flight, params):
            task_id, payload_json, text, attempts, submitted, owner, number, address, since = row
            waiting = self._waiting(queue, task_id, payload_json, text, attempts, submitted)
            if owner is not None:
                holder = str(owner)
            elif address:
                holder = f"consumer {number} (connected from {address})"
            else:
                holder = f"consumer {number}"
            found.append(
                InFlightTask(
                    waiting.id,
                    queue,
                    waiting.payload,
                    waiting.raw,
                    waiting.attempts + 1,
                    holder,
                    since,
                    submitted,
                )
            )
        return found

    def _waiting(
        self,
        queue: str,
        task_id: uuid.UUID,
        payload_json: str,
        text: str | None,
        attempts: int,
        submitted: float | None,
    ) -> WaitingTask:
        raw = payload_json if text is None else text
        try:
            payload: Payload | None = self.decode(raw)
            raw_kept = None
        except ValueError:  # UndecodableMessage: listed as its text
            payload, raw_kept = None, raw
        return WaitingTask(task_id.hex, queue, payload, raw_kept, max(attempts, 0), submitted)

    def _queue_names(self) -> list[str]:
        if not self._stored():
            return []
        return [name for (name,) in self._query(self.sql.queue_names, ())]

    def _all_stats(self) -> list[QueueStats]:
        if not self._stored():
            return []
        return self._estimated([QueueStats(*row) for row in self._query(self.sql.all_stats, ())])

    def _estimated(self, counted: list[QueueStats]) -> list[QueueStats]:
        """``counted`` with each count that reached ``EXACT_UP_TO`` + 1 replaced by an
        estimate from ``SAMPLE`` (sent only then), never below that, and named in
        ``estimated``."""
        kinds = ("ready", "delayed", "retrying", "failed")
        if all((getattr(s, kind) or 0) <= EXACT_UP_TO for s in counted for kind in kinds):
            return counted
        rows = self._query(self.sql.sample, ())
        seen = sum(row[1] for row in rows)
        percent, live = (rows[0][6], rows[0][7]) if rows else (100.0, 0)
        # rows of the table per sampled row
        scale = live / seen if live > 0 and seen > 0 else 100.0 / percent
        sampled = {row[0]: dict(zip(kinds, row[2:6], strict=True)) for row in rows}
        found = []
        for stats in counted:
            over = tuple(k for k in kinds if (getattr(stats, k) or 0) > EXACT_UP_TO)
            shares = sampled.get(stats.name, {})
            guesses = {k: max(EXACT_UP_TO + 1, round(shares.get(k, 0) * scale)) for k in over}
            found.append(replace(stats, **guesses, estimated=over) if over else stats)
        return found

    def _purge(self, queue: str) -> int:
        if not self._stored():
            return 0
        if self.own_state:
            [(count,)] = self._query(self.sql.purge, (queue,))
            return int(count)
        return self._purged_ids(self.sql.purge_ids, (queue,), queue)

    def _purged_ids(self, query: LiteralString, params: Any, queue: str) -> int:
        """Delete with ``query`` (``RETURNING task_id``); the store of
        ``asynctask_state`` forgets those tasks. How many."""
        ids = [task_id.hex for (task_id,) in self._query(query, params)]
        self._purged_elsewhere(queue, ids)
        return len(ids)

    def _failed(self, queue: str, limit: int, offset: int) -> list[FailedTask]:
        if not self._stored():
            return []
        rows = self._query(self.sql.failed, (queue, limit, offset))
        return [_failed_task(queue, *row) for row in rows]

    def _failed_holds(self, queue: str, task_id: str, where: str) -> bool | None:
        # (a consumer whose statuses live elsewhere notes the task's id: its row)
        try:
            key = uuid.UUID(task_id)
        except ValueError:
            return False
        return self._stored() and bool(self._query(self.sql.failed_holds, (key, queue)))

    def _requeue_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        if not self._stored():
            return 0
        [(count,)] = self._query(self.sql.requeue_failed, _id_params(queue, ids))
        return int(count)

    def _purge_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        if not self._stored():
            return 0
        if not self.own_state:
            return self._purged_ids(self.sql.purge_failed_ids, _id_params(queue, ids), queue)
        [(count,)] = self._query(self.sql.purge_failed, _id_params(queue, ids))
        return int(count)

    def _limit_take(self, queue: str, limit: LimitSpec, holder: str, owner: str | None) -> float:
        # four statements in one transaction under the queue's limit lock: taken after
        # the lock, each statement sees every count committed before it
        sql = self.sql
        calls, period = limit.rate or (0, 0.0)
        params = {"queue": queue, "holder": holder, "period": period, "lease": self.owner_lease}
        pool = self._ready_pool()
        with (
            self._mapped_errors(),
            pool.connection(timeout=self.retry_timeout) as conn,
            conn.transaction(),
        ):
            conn.execute(sql.limit_lock, (limit_lock_class(self.schema), queue))
            conn.execute(sql.limit_prune, params)
            row = conn.execute(sql.limit_count, params).fetchone()
            assert row is not None
            running, started, first_leaves, mine_run, mine_start = row
            if mine_run:
                return 0.0  # taken already (a call retried after a lost reply)
            if limit.max_running is not None and running >= limit.max_running:
                return POLL
            if calls and not mine_start:
                if started >= calls:
                    return max(float(first_leaves or 0.0), 0.001)
                conn.execute(sql.limit_add, {**params, "kind": "start", "owner": owner})
            if limit.max_running is not None:
                lease = {"lease": SLOT_LEASE, "kind": "run", "owner": owner}
                conn.execute(sql.limit_add, {**params, **lease})
        return 0.0

    def _limit_free(self, queue: str, holder: str) -> None:
        self._query(self.sql.limit_free, (queue, holder))

    def _state_store(self) -> PgsqlStateStore:
        """The statuses in ``asynctask_status``; the same object every time (its
        ``fallback_poll`` may be set)."""
        with self._ready_lock:
            if self._store is None:
                self._store = PgsqlStateStore(self)
            return self._store

    def _claim(self, key: str, ttl: float) -> bool:
        return bool(self._query(self.sql.claim, {"key": key, "ttl": ttl}))

    def _consumer(self, queue: str, prefetch: int) -> Consumer:
        return PgsqlConsumer(self, self, queue, prefetch)  # it connects on its first call

    def _owned_consumer(self, queue: str, prefetch: int, owner: str) -> Consumer:
        return PgsqlConsumer(self, self, queue, prefetch, owner)

    def _liveness(self, queue: str, owner: str) -> Liveness:
        return PgsqlLiveness(self, queue, owner)

    def _close(self) -> None:
        if self.vacuum is not None:
            self.vacuum.close()  # its own connection, not the pool's
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=1.0)


#: the escape of a NUL character in JSON text, which jsonb cannot hold
_NUL = "\\u0000"


def _json_or_none(headers: dict[str, str]) -> str | None:
    return json.dumps(headers) if headers else None


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Plan each statement once: they are index-driven, and re-planning on every call costs
    more than running them (the planner probes index ends, slow over dead rows). Our
    inserts notify by themselves, so the insert trigger (for other programs) stays quiet."""
    conn.execute("SET plan_cache_mode = force_generic_plan; SET asynctask.notify = off")
    load_json_as_text(conn)


def _failed_task(
    queue: str,
    task_id: uuid.UUID,
    payload_json: str,
    text: str | None,
    error: str | None,
    attempts: int,
    submitted: float | None,
    failed: float | None,
) -> FailedTask:
    raw = payload_json if text is None else text
    try:
        payload: Payload | None = decode_message(raw, len(raw.encode()))
        raw_kept = None
    except ValueError:  # UndecodableMessage: shown as its text
        payload, raw_kept = None, raw
    return FailedTask(
        id=task_id.hex,
        queue=queue,
        payload=payload,
        raw=raw_kept,
        error=error or "",
        attempts=attempts,
        submitted_at=submitted,
        failed_at=failed or 0.0,
    )


def _id_params(queue: str, ids: Sequence[str] | None) -> dict[str, Any]:
    """Ids that are not uuids cannot name a task: they are left out, not an error."""
    chosen: list[uuid.UUID] = []
    for task_id in ids or ():
        try:
            chosen.append(uuid.UUID(task_id))
        except ValueError:
            continue
    return {"queue": queue, "all": ids is None, "ids": chosen}


def _keepalive_kwargs(recovery: float, driver_options: dict[str, str]) -> dict[str, Any]:
    """libpq settings for a consumer's connection: a vanished peer is noticed within
    about ``recovery`` seconds on both ends (server-side keepalives are set on enlisting)."""
    idle = max(1, int(recovery / 3))
    wanted = {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": 1,
        "keepalives_count": 2,
        "tcp_user_timeout": int(recovery * 1000),
        "application_name": "asynctask consumer",
    }
    return {k: v for k, v in wanted.items() if k not in driver_options}
