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

Writes. ``started`` and ``settled`` go to the store's ``WRITES`` script (the work of its
``STARTED`` and ``SETTLED``, several writes a call) on a connection of the feed's own,
without waiting for the reply: Redis runs them in the order sent. A consumer busy with
task after task has its writes held and sent together, one message and one script call
(each call costs the worker a send and Redis a wake-up, a script's set-up and a reply, on
cores they share; a start held with its task's success is one write, one read and one
write in Redis): a start is sent at once for the consumer's first task since it waited
(it reads ``running`` from its start on), else held; a success is held; any other
outcome is sent at once with what is held. What is held goes with ``flush``, which the
consumer calls before it waits for a task (``Consumer.flush_status_feed``) and, the
outcome written, before it tells the broker a task is done (``asynctask.attempts``: an
outcome held must not die with the worker while the broker forgets the task), with
``close``, once ``MOST_HELD`` are held, or, at the latest, ``HOLD`` seconds after the
first was held, from a thread of the feed (``asynctask.flusher.MarkFlusher``); a held start
carries its age, so ``started_at`` is when the task started, on the server's clock.
Replies are read once ``READ_EVERY`` are due and have arrived, with later calls, and all
of them, waited for, by a ``flush`` before an ack or a retry (``waiting`` False: an
outcome sent but not read by Redis dies with a killed worker, see ``_settle_sent``) and
at ``close`` (replies that are all ``0``, every start allowed, are taken from the socket
without a parser). When that connection fails, every write whose reply was not
read is made again, waited for, in order, with the transport's retries (a start whose
task's outcome is among them is dropped: running after the outcome would be a step
back); the thread tries once, not holding the consumer's calls for ``retry_timeout``.
What still fails is kept, and made again first by the next write, ``flush`` or ``close``
(Redis away longer than ``retry_timeout``), before a new connection carries anything.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from asynctask.errors import AsynctaskError, TransportError
from asynctask.flusher import MarkFlusher
from asynctask.status import State, StatusFeed
from asynctask_redis.cancelfeed import KEPT, CancelFeed
from asynctask_redis.connection import call, own_reading, pack, run
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
#: the reply of a ``WRITES`` call whose starts may all run
ALL_RUN = b":0\r\n"
#: the longest a write is held for the next ones before it is sent (seconds)
HOLD = 0.02
#: writes held past which they are sent at once (one message stays small)
MOST_HELD = 64


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


@dataclass(frozen=True, slots=True)
class _Write:
    """One status write, as the ``WRITES`` script takes it: a start (``kind`` 's'), an
    outcome ('o'), or a start not sent yet with its success ('b')."""

    kind: str
    task_id: str
    attempt: int  # the start's; an outcome's ``attempts``
    began: float = 0.0  # a start's ``time.monotonic()``
    state: str = ""
    error: str = ""
    result: str = ""

    @property
    def outcome(self) -> bool:
        """Whether it writes the task's outcome."""
        return self.kind != "s"

    def args(self, now: float) -> tuple[str | int, ...]:
        """The script's arguments, sent at ``now`` (a start's age in ms is measured
        then: the script writes ``started_at`` as its own time less that age)."""
        if self.kind == "o":
            return ("o", self.task_id, self.state, self.attempt, self.error, self.result)
        ago = max(0, int((now - self.began) * 1000))
        if self.kind == "s":
            return ("s", self.task_id, self.attempt, ago)
        return ("b", self.task_id, self.attempt, ago, self.result)


def _bulk(args: Sequence[str | int]) -> bytes:
    """``args`` as bulk strings of the Redis protocol (text as ``connection.pack`` sends
    it: UTF-8)."""
    data = [a.encode() if isinstance(a, str) else b"%d" % a for a in args]
    return b"".join([b"$%d\r\n%b\r\n" % (len(d), d) for d in data])


@dataclass(frozen=True)
class _Sent:
    """A ``WRITES`` call sent without waiting for its reply."""

    writes: tuple[_Write, ...]


class RedisStatusFeed(StatusFeed):
    """A consumer's feed of one queue's cancels and its unwaited writes; see the module
    docstring."""

    #: its writes may be made by another feed of the same store in another process of
    #: this host (``started`` takes ``began``; ``cancel_heard`` tells what ``settled``
    #: would): an AMQP consumer's relay makes them (``asynctask_amqp.relayedfeed``)
    relayable: ClassVar[bool] = True

    def __init__(self, store: FeedStore, queue: str, writes: Script) -> None:
        self.store = store
        self.queue = queue
        self._script = writes
        t = store.transport
        self._cancels = CancelFeed(t.server.pool_for(t.key(queue, "")), t.key(queue, "cancels"))
        self._conn: Any = None
        self._pool: Any = None
        self._sent: deque[_Sent] = deque()
        #: successes held for the next write (see the module docstring), and since when
        self._held: list[_Write] = []
        self._held_since = 0.0
        #: whether the consumer waited for a task since its last settle (``flush``): its
        #: next start is then sent at once, else held for its success
        self._waited = True
        self._flusher: MarkFlusher | None = None
        #: (ttl_ms, the packed head of a ``WRITES`` call for it), see ``_packed_head``
        self._head_for: tuple[int, bytes] | None = None
        self._open_after = 0.0  # monotonic time before which no open is tried
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisStatusFeed({self.queue!r}, {self.store.transport!r})"

    # -- cancels ------------------------------------------------------------------------

    def may_start(self, task_id: str) -> bool:
        """Whether every cancel of the queue is known here and none names the task."""
        with self._lock:
            feed = self._cancels
            if not feed.live and not self._open():
                return False
            if not feed.heard():  # (one ``poll`` of the socket once it was emptied)
                return False  # lost: the next call opens it again
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

    def started(self, task_id: str, attempt: int, began: float | None = None) -> None:
        """``running``, sent without waiting for the verdict: at once for the
        consumer's first task since it waited (nothing held), else held with the rest
        (for its success: one write). ``began``: the ``time.monotonic()`` the task
        started at, when another process of this host relays the write (the clock is
        the host's); now by default."""
        write = _Write("s", task_id, attempt, time.monotonic() if began is None else began)
        with self._lock:
            if self._held or not self._waited:
                self._hold(write)
            else:
                self._send((write,))

    def settled(
        self,
        task_id: str,
        state: State,
        attempts: int,
        *,
        error: str | None = None,
        result_json: str | None = None,
    ) -> bool | None:
        """An outcome, sent without waiting: a success held for the next write (at most
        ``HOLD`` seconds; with its start, if that is held, as one write), any other
        sent at once with those held. True for a success whose cancel the feed has
        heard (read without waiting, as ``may_start`` reads; the script keeps it
        ``cancelled``, its result discarded), so that the run loop says so."""
        with self._lock:
            held = self._held
            if state == "succeeded":
                last = held[-1] if held else None
                if last is not None and last.kind == "s" and last.task_id == task_id:
                    held[-1] = _Write("b", task_id, attempts, last.began, result=result_json or "")
                else:
                    self._hold(_Write("o", task_id, attempts, 0.0, state, "", result_json or ""))
                return self._cancel_heard(task_id)
            write = _Write("o", task_id, attempts, 0.0, state, error or "", result_json or "")
            self._held = []
            self._send((*held, write))
            return None

    def cancel_heard(self, task_id: str) -> bool:
        """Whether the feed has heard, without waiting, that ``task_id`` was cancelled
        (then forgotten here): what ``settled`` tells of a success, for a caller that
        has the write made elsewhere (``relayable``)."""
        with self._lock:
            return self._cancel_heard(task_id)

    def _cancel_heard(self, task_id: str) -> bool:
        # (a cancel heard before the start stopped it there: one heard now came after;
        # one poll(2), as the redis consumer's ack pays for the same line; the lock held)
        feed = self._cancels
        if feed.live and feed.heard() and task_id in feed.cancelled:
            del feed.cancelled[task_id]
            return True
        return False

    def _hold(self, write: _Write) -> None:
        """Keep ``write`` for the next send (the lock held)."""
        held = self._held
        held.append(write)
        if len(held) == 1:
            self._held_since = time.monotonic()
            self._flusher_for().wake()
        elif len(held) >= MOST_HELD:
            self._held = []
            self._send(tuple(held))

    def flush(self, *, waiting: bool = True) -> None:
        """Send the writes held, and those kept by an outage (``_kept``): the consumer
        is about to wait for a task (``waiting``: its next start is sent at once), or
        to acknowledge the task whose outcome it just wrote (then its next start is
        held for that task's success: one write a short task)."""
        with self._lock:
            self._waited = waiting
            if self._held:
                held, self._held = self._held, []
                self._send(tuple(held))
            elif self._kept():
                self._redo("writes kept since an outage")
            if not waiting:
                self._settle_sent()

    def _settle_sent(self) -> None:
        """Wait for the replies of every write sent (the lock held): the outcome just
        sent is stored before the broker is told the task is done. Sent, not read, it
        could die with the worker (SIGKILL, OOM) in the socket: closing a socket with a
        reply unread resets the connection, and Redis drops what it had not read yet
        (an acknowledged success read ``queued`` 1 run in 13). One round trip for all
        the writes of the flush and those sent before it, not one a write: a worker's
        run loop went from 536,912 to 564,156 instructions a task with it and the
        cancel look of ``settled`` (``bench/loopcost.py --instructions``, amqp
        relay=false, statuses in Redis, 1,000 tasks; load 23-25), plus the wait."""
        conn = self._conn
        if conn is None or not self._sent:
            return  # nothing unanswered, or kept (``_redo`` waited, or raised)
        try:
            self._read(conn, block=True)
        except (RedisError, OSError) as exc:
            self._redo(f"its connection failed ({exc})")
        except BaseException:
            self._drop()  # out of step: the writes unanswered are made again later
            raise

    def flush_marks(self, now: float) -> float | None:
        """The flusher thread's look (``MarkFlusher``): send the successes held once the
        oldest is ``HOLD`` old; None when none is held, else the seconds until then."""
        if not self._lock.acquire(blocking=False):
            return HOLD / 4  # a call of the consumer is under way: it may send them
        try:
            if not self._held:
                return None
            due = self._held_since + HOLD - now
            if due > 0:
                return due
            held, self._held = self._held, []
            # One try, no retries: the consumer's calls wait for this lock, and a retry
            # runs up to retry_timeout (what fails is kept for the consumer's next call)
            self._send(tuple(held), retry=False)
            return None
        except AsynctaskError as exc:  # kept to be made again by the next call or close
            logger.info("%r: the writes held could not be written yet (%s)", self, exc)
            return None
        finally:
            self._lock.release()

    def _flusher_for(self) -> MarkFlusher:
        if self._flusher is None:
            self._flusher = MarkFlusher(self, f"asynctask-statusfeed-{self.queue}")
        return self._flusher

    def _send(self, writes: tuple[_Write, ...], retry: bool = True) -> None:
        """Send ``writes`` in one ``WRITES`` call, unanswered (the lock held); on a
        failure they are made again (``_redo``: with the transport's retries unless
        ``retry`` is False)."""
        entry = _Sent(writes)
        if self._kept():
            # Writes a redo gave up on (Redis away past retry_timeout) come first, and
            # waited for: on a new connection, the replies to come would be taken for
            # theirs, and they would never be made
            self._sent.append(entry)
            self._redo("writes kept since an outage", retry)
            return
        try:
            conn = self._connection()
            if len(self._sent) >= READ_EVERY:  # (a blocking read waits for all sent)
                self._read(conn, block=len(self._sent) >= MOST_UNREAD)
        except (RedisError, OSError) as exc:
            # Made again, waited for, after the earlier writes. Queued first: a redo
            # that gives up (``TransportUnavailable``) leaves it to the next call or
            # ``close`` with them; queued after, it was lost.
            self._sent.append(entry)
            self._redo(f"its connection failed ({exc})", retry)
            return
        except BaseException:
            self._sent.append(entry)
            self._drop()  # (see below: redis-py dropped the socket under a reply cut)
            raise
        self._sent.append(entry)
        now = time.monotonic()
        args = [a for w in writes for a in w.args(now)]
        data = b"".join([b"*%d\r\n" % (6 + len(args)), self._packed_head(), _bulk(args)])
        try:
            # straight to the socket: redis-py's send_packed_command and pack cost a
            # worker more than the rest of the write (see ``_read``)
            sock = conn._sock
            if sock is None:
                conn.connect()
                sock = conn._sock
            sock.sendall(data)
        except (RedisError, OSError) as exc:
            self._redo(f"its connection failed ({exc})", retry)
        except BaseException:
            # (an interrupt, a signal's exception) mid-send: part of the call may be on
            # the wire, so the connection is out of step. Dropped, as redis-py does;
            # the writes unanswered are kept, made again by the next call or close.
            self._drop()
            raise

    def _kept(self) -> bool:
        """Whether writes are kept to be made again: unanswered, with no connection (a
        redo gave up, or a send was cut)."""
        return self._conn is None and bool(self._sent)

    def _packed_head(self) -> bytes:
        """``EVALSHA <sha> 0 <prefix> <queue> <ttl_ms>`` packed, made once (per ttl)."""
        ttl = self.store.ttl_ms
        known = self._head_for
        if known is None or known[0] != ttl:
            command = ("EVALSHA", self._script.sha, 0, *self._head())
            packed = pack([command])
            known = self._head_for = (ttl, packed[packed.index(b"\r\n") + 2 :])
        return known[1]

    def _connection(self) -> Any:
        """The feed's own connection, with its script loaded (no NOSCRIPT reply to sort
        out later: a server that lost it dropped the connection too)."""
        if self._conn is None:
            t = self.store.transport
            pool = t.server.pool_for(t.key(self.queue, ""))
            conn = pool.get_connection()
            try:
                call(conn, "SCRIPT", "LOAD", self._script.text)
            except BaseException:
                conn.disconnect()
                pool.release(conn)
                raise
            self._conn, self._pool = conn, pool
        return self._conn

    def _read(self, conn: Any, block: bool) -> None:
        """Read the replies that have arrived (all of them with ``block``)."""
        if not self._sent or self._read_all_run(conn, wait=block):
            return  # (nothing owed: a blocking read would wait for good)
        while self._sent and (block or conn.can_read(timeout=0)):
            entry = self._sent[0]
            try:
                reply = conn.read_response()
            except NoScriptError:
                raise  # the script cache was flushed: made again, in order, by _redo
            except ResponseError as exc:  # the connection stays in step: read on
                self._sent.popleft()
                ids = ", ".join(w.task_id for w in entry.writes)
                logger.warning("%r: writing the statuses of tasks %s failed: %s", self, ids, exc)
                continue
            self._sent.popleft()
            self._verdicts(entry.writes, reply)

    def _read_all_run(self, conn: Any, wait: bool = False) -> bool:
        """Take the replies that have arrived straight from the socket when they are all
        ``0`` (every start may run: the common case), as ``connection.reply_to`` reads a
        submit's; whether that was all (else what came is left to redis-py's parser).
        With ``wait``, wait for the reply of every write sent. Reading them one by one
        through redis-py (``can_read`` and ``read_response``, a reply each) cost a
        worker as much as sending them."""
        buffer = own_reading(conn)
        sock = conn._sock
        if buffer is None or type(sock) is not socket.socket:  # (TLS: redis-py reads)
            return False
        size, flags = buffer.socket_read_size, 0 if wait else socket.MSG_DONTWAIT
        data = b""
        while True:
            try:
                more = sock.recv(size, flags)
            except BlockingIOError:
                return True  # nothing has arrived
            if not more:
                raise RedisConnectionError("Connection closed by server.")
            data += more
            n, odd = divmod(len(data), len(ALL_RUN))
            if data != ALL_RUN * n + ALL_RUN[:odd] or n > len(self._sent):
                break  # another reply: the parser reads it
            if not odd and (not wait or n == len(self._sent)):
                for _ in range(n):
                    self._sent.popleft()
                return True
            if not wait:
                break  # a reply in pieces: the parser reads on
        kept = buffer._buffer  # empty (``own_reading``): the parser reads it first
        kept.write(data)
        kept.seek(0)
        return False

    def _verdicts(self, writes: Sequence[_Write], reply: Any) -> None:
        """Warn of each start the reply says was not ``run`` (a cancel came meanwhile)."""
        if reply == 0:
            return
        starts = [w for w in writes if w.kind != "o"]
        for write, verdict in zip(starts, reply or (), strict=False):
            warn_late_verdict(self, write.task_id, verdict)

    def _redo(self, why: str, retry: bool = True) -> None:
        """The feed's writes unanswered cannot be read back (``why``): make them again,
        waited for, in order, with the transport's retries (one try each without
        ``retry``); what still fails stays, kept, to be made again first by the next
        call (and raises ``TransportUnavailable`` to this one). A start whose task's
        outcome is among them is dropped: running after the outcome would be a step
        back."""
        self._drop()
        logger.info("%r: %s; writing the statuses sent again", self, why)
        t = self.store.transport
        outcomes = {w.task_id for e in self._sent for w in e.writes if w.outcome}
        while self._sent:
            writes = [w for w in self._sent[0].writes if w.outcome or w.task_id not in outcomes]
            if writes:
                now = time.monotonic()
                args = [a for w in writes for a in w.args(now)]
                head = self._head()
                if retry:
                    reply = t._call(t.execute, run, self._script, *head, *args)
                else:
                    reply = t.execute(run, self._script, *head, *args)
                self._verdicts(writes, reply)
            self._sent.popleft()

    def _head(self) -> tuple[Any, ...]:
        t = self.store.transport
        return (t.prefix, t.script_queue(self.queue), self.store.ttl_ms)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)

    def close(self) -> None:
        """Send the successes held, read every reply (the writes are then done), and
        free the connections and the flusher thread."""
        if self._flusher is not None:
            self._flusher.close()
            self._flusher = None
        with self._lock:
            self._cancels.close()
            try:
                if self._held:
                    held, self._held = self._held, []
                    self._send(tuple(held))
                if self._conn is not None:
                    self._read(self._conn, block=True)
            except (RedisError, OSError) as exc:
                self._redo(f"its connection failed ({exc})")
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    self._pool.release(conn)
            if self._sent:  # never sent: no connection could be made
                self._redo("writes kept since an outage")
