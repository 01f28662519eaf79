"""A ``StatusFeed`` (``asynctask.status``) on Redis: starts that need not wait, for a
transport whose ``asynctask_state`` names this Redis (AMQP).

Cancels. The ``CANCEL`` script makes a task ``cancelled``, adds its id to the queue's
sorted set ``P:Q:cancelled`` (the cancelled tasks no consumer has met yet; the ``STARTED``
script that finds one cancelled removes it, and entries go with the status ttl) and
publishes the id on ``P:Q:cancels``, all at once. A feed subscribes to that channel
(``asynctask_redis.cancelfeed``) and, once subscribed, reads the set (the entries not past
their horizon: the set is trimmed only by the next cancel): a cancel published before the
subscription had added its id before, so one of the two has it. A feed lost
(any error on its connection) is opened again the same way, so it never misses a
cancel; while it is not open, or knows more than ``KEPT`` cancelled ids (it may have
forgotten some), ``may_start`` says False and the consumer's start waits for the store,
as without a feed.

Writes. ``started`` and ``settled`` run the store's ``STARTED`` and ``SETTLED`` scripts
on a connection of the feed's own without waiting for their replies: Redis runs them in
the order sent. Replies are read once ``READ_EVERY`` are due and have arrived, with
later calls, and all of them at ``close``. When that connection fails, every write
whose reply was not read is made again, waited for, in order (a ``started`` whose
task's outcome is among them is dropped: running after the outcome would be a step
back).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import NoScriptError, RedisError, ResponseError

from asynctask.errors import TransportError
from asynctask.status import State, StatusFeed
from asynctask_redis.cancelfeed import KEPT, CancelFeed
from asynctask_redis.connection import call, pack, run
from asynctask_redis.scripts import LIVE_CANCELS, Script
from asynctask_redis.startmarks import warn_late_verdict

if TYPE_CHECKING:
    from asynctask_redis.transport import RedisTransport

logger = logging.getLogger("asynctask.redis")

#: the most cancelled ids a feed loads when it opens; more, and it stays closed (its
#: starts wait) until ``CROWDED_PAUSE`` has passed: it must also hold those cancelled
#: while it is open, within ``KEPT``
LOAD_MOST = KEPT // 2
#: seconds before a feed that could not open tries again (the starts wait meanwhile)
REOPEN_PAUSE = 1.0
#: seconds before a feed that found too many cancelled ids tries again
CROWDED_PAUSE = 60.0
#: writes sent before their replies are looked for (one ``select`` then serves many:
#: each look is a system call, about a tenth of what a write costs the consumer)
READ_EVERY = 32
#: writes unanswered past which a write waits for every reply (Redis lags behind)
MOST_UNREAD = 1000


def registry_key(transport: RedisTransport, queue: str) -> str:
    """The sorted set of the queue's cancelled tasks not met yet (see the docstring)."""
    return transport.key(queue, "cancelled")


class FeedStore(Protocol):
    """What a feed needs of its store (``RedisStateStore``)."""

    transport: RedisTransport

    @property
    def ttl_ms(self) -> int:
        """The status ttl in ms, as the scripts take it."""
        ...


@dataclass(frozen=True)
class _Sent:
    """A write sent without waiting for its reply."""

    script: Script
    args: tuple[Any, ...]
    task_id: str
    outcome: bool  # a ``settled`` (else a ``started``)


class RedisStatusFeed(StatusFeed):
    """A consumer's feed of one queue's cancels and its unwaited writes; see the module
    docstring."""

    def __init__(self, store: FeedStore, queue: str, started: Script, settled: Script) -> None:
        self.store = store
        self.queue = queue
        self._scripts = {"started": started, "settled": settled}
        t = store.transport
        self._cancels = CancelFeed(t.server.pool_for(t.key(queue, "")), t.key(queue, "cancels"))
        self._conn: Any = None
        self._pool: Any = None
        self._sent: deque[_Sent] = deque()
        self._open_after = 0.0  # monotonic time before which no open is tried
        #: whether the feed was polled since it opened (then ``quiet`` is enough)
        self._polled = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisStatusFeed({self.queue!r}, {self.store.transport!r})"

    # -- cancels ------------------------------------------------------------------------

    def may_start(self, task_id: str) -> bool:
        """Whether every cancel of the queue is known here and none names the task."""
        with self._lock:
            feed = self._cancels
            if not feed.live:
                if not self._open():
                    return False
                self._polled = False
            if not (self._polled and feed.quiet()):
                if not feed.poll():
                    return False  # lost: the next call opens it again
                self._polled = True
            if len(feed.cancelled) >= KEPT:  # the oldest may be forgotten: start over
                feed.close()
                return False
            return task_id not in feed.cancelled

    def _open(self) -> bool:
        """Subscribe, then load the cancelled ids (see the module docstring)."""
        if time.monotonic() < self._open_after:
            return False
        t, feed = self.store.transport, self._cancels
        feed.pool = t.server.pool_for(t.key(self.queue, ""))  # after a failover: the new one
        if not feed.open():
            self._open_after = time.monotonic() + REOPEN_PAUSE
            return False
        try:
            queue = t.script_queue(self.queue)
            ids = t.execute(run, LIVE_CANCELS, t.prefix, queue, LOAD_MOST + 1)
        except TransportError as exc:  # a feed's failure only makes the starts wait
            logger.info("%r: could not read the cancelled tasks (%s); starts wait", self, exc)
            return self._closed_for(REOPEN_PAUSE)
        if len(ids) > LOAD_MOST:
            logger.info(
                "%r: over %d tasks of the queue were cancelled within the status ttl; starts "
                "wait for Redis (checked again in %g s)",
                self,
                LOAD_MOST,
                CROWDED_PAUSE,
            )
            return self._closed_for(CROWDED_PAUSE)
        feed.cancelled.update((raw.decode(), None) for raw in ids)
        return True

    def _closed_for(self, seconds: float) -> bool:
        self._cancels.close()
        self._open_after = time.monotonic() + seconds
        return False

    # -- writes -------------------------------------------------------------------------

    def started(self, task_id: str, attempt: int) -> None:
        """``running``, sent without waiting for the verdict."""
        self._send("started", (self.store.ttl_ms, task_id, attempt), task_id)

    def settled(
        self,
        task_id: str,
        state: State,
        attempts: int,
        *,
        error: str | None = None,
        result_json: str | None = None,
    ) -> None:
        """An outcome, sent without waiting."""
        args = (self.store.ttl_ms, task_id, state, attempts, error or "", result_json or "")
        self._send("settled", args, task_id)

    def _send(self, kind: str, args: tuple[Any, ...], task_id: str) -> None:
        t = self.store.transport
        script = self._scripts[kind]
        full = (t.prefix, t.script_queue(self.queue), *args)
        entry = _Sent(script, full, task_id, kind == "settled")
        with self._lock:
            try:
                conn = self._connection()
                if len(self._sent) >= READ_EVERY:  # (a blocking read waits for all sent)
                    self._read(conn, block=len(self._sent) >= MOST_UNREAD)
            except (RedisError, OSError) as exc:
                # Made again, waited for, after the earlier writes. Queued first: a redo
                # that gives up (``TransportUnavailable``) leaves it to the next call or
                # ``close`` with them; queued after, it was lost.
                self._sent.append(entry)
                self._redo(exc)
                return
            self._sent.append(entry)
            try:
                conn.send_packed_command([pack([("EVALSHA", script.sha, 0, *entry.args)])])
            except (RedisError, OSError) as exc:
                self._redo(exc)

    def _connection(self) -> Any:
        """The feed's own connection, with both scripts loaded (no NOSCRIPT reply to
        sort out later: a server that lost them dropped the connection too)."""
        if self._conn is None:
            t = self.store.transport
            pool = t.server.pool_for(t.key(self.queue, ""))
            conn = pool.get_connection()
            try:
                for script in self._scripts.values():
                    call(conn, "SCRIPT", "LOAD", script.text)
            except BaseException:
                conn.disconnect()
                pool.release(conn)
                raise
            self._conn, self._pool = conn, pool
        return self._conn

    def _read(self, conn: Any, block: bool) -> None:
        """Read the replies that have arrived (all of them with ``block``)."""
        while self._sent and (block or conn.can_read(timeout=0)):
            entry = self._sent[0]
            try:
                reply = conn.read_response()
            except NoScriptError:
                raise  # the script cache was flushed: made again, in order, by _redo
            except ResponseError as exc:  # the connection stays in step: read on
                self._sent.popleft()
                logger.warning("%r: writing task %s's status failed: %s", self, entry.task_id, exc)
                continue
            self._sent.popleft()
            if not entry.outcome:
                warn_late_verdict(self, entry.task_id, reply)

    def _redo(self, exc: BaseException) -> None:
        """The feed's connection failed with writes unanswered: make them again, waited
        for, in order, with the transport's retries; what still fails stays to be made
        again by the next call (and raises ``TransportUnavailable`` to this one)."""
        self._drop()
        logger.info("%r: its connection failed (%s); writing the statuses sent again", self, exc)
        t = self.store.transport
        outcomes = {e.task_id for e in self._sent if e.outcome}
        while self._sent:
            entry = self._sent[0]
            if entry.outcome or entry.task_id not in outcomes:
                reply = t._call(t.execute, run, entry.script, *entry.args)
                if not entry.outcome:
                    warn_late_verdict(self, entry.task_id, reply)
            self._sent.popleft()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)

    def close(self) -> None:
        """Read every reply (the writes are then done), and free the connections."""
        with self._lock:
            self._cancels.close()
            try:
                if self._conn is not None:
                    self._read(self._conn, block=True)
            except (RedisError, OSError) as exc:
                self._redo(exc)
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    self._pool.release(conn)
            if self._sent:  # never sent: no connection could be made
                self._redo(RedisError("not sent"))
