"""The redis consumer: tasks moved into a processing list of its own, under a heartbeat.

One ``reserve`` is one round trip while tasks are ready: the acks since the last call
and the move of up to ``prefetch`` tasks into ``P:Q:processing:<id>`` go together (the
``NEXT`` script, which takes the most urgent task first). At least every
``RedisTransport.maintain_interval`` (and whenever the queue looks empty) the ``TAKE``
script runs instead: it also promotes due delayed and retrying tasks and recovers dead
consumers' tasks (at most once per ``recovery_seconds / 4`` for all consumers
together). When nothing is ready the consumer blocks in ``BLMOVE`` no longer than the
time to the next due task or recovery check (at most ``RedisTransport.idle_wait``), so
it wakes on a push within a millisecond and never polls.

An ``ack`` is sent with the consumer's next call (the next ``reserve``, usually at once,
or ``retry``/``fail``/``release``/``close``): that is what makes a task cost one round
trip. A process killed between ``ack`` and that call leaves the acked task to run again,
which at-least-once allows; at most ``prefetch`` tasks are in that state.

Task statuses (``asynctask.status``): the move checks the task it hands out now, which
the run loop starts right after, and marks it ``running``; the others wait in the
buffer, ``queued``, checked by the move only while a cancelled task has not been met
(``P:Q:cancelled``). A task's ``start`` knows whether it was cancelled since the move
when this consumer is subscribed to the queue's cancel channel
(``asynctask_redis.cancelfeed``) and the task has no ``expires``: then its running mark
waits with the pending acks and goes with the next call, or within ``startmarks.DEFER``
from a thread while the task runs on (``asynctask_redis.startmarks``); a drain sends
nothing more a task than without statuses. Otherwise (the feed not live, a cancel
heard, an expiring task) ``start`` runs the ``START`` script and waits for its verdict:
one round trip. A cancel that races with a mark not written yet acts as the cancel of a
running task. An ack carries the result and writes ``succeeded`` with the next call;
``retry``/``fail`` write their state in their own script. With ``tracking`` off none of
this is written, and the move is the plain pipeline it was before statuses.

Each consumer keeps one connection of the pool for itself. After any error on the way
in (a lost reply may hide a move that happened), the next ``TAKE`` puts back everything
in the processing list that was not handed out, so nothing is stranded there.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Concatenate, ParamSpec, Protocol, TypeVar

import redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from asynctask.errors import TransportClosed, TransportError, TransportUnavailable
from asynctask.liveness import new_owner
from asynctask.status import EXPIRES_HEADER, StartVerdict, State
from asynctask.transport import (
    UNRECORDED_MARK,
    Consumer,
    Delivery,
    Transport,
    check_delay,
    new_task_id,
)
from asynctask_redis import scripts
from asynctask_redis.cancelfeed import CancelFeed
from asynctask_redis.connection import Args, Server, call, pack, pipeline, run
from asynctask_redis.messages import Message, canonical_text, failed_record, read_message
from asynctask_redis.replication import Replication, Waited
from asynctask_redis.startmarks import DEFER, MarkFlusher, warn_late_verdict

#: what the scripts push to an empty ready list to wake a blocked consumer for an
#: urgent task (``scripts._BASE``); a consumer that takes it drops it
NUDGE = b'{"__asynctask__":0}'


class ConsumerHost(Protocol):
    """What a consumer needs of its transport beyond ``Transport``: the transport passes
    itself as this, so this module never imports the transport module (which imports it)."""

    prefix: str
    server: Server
    recheck_ms: int
    heartbeat_ttl_ms: int
    #: the longest a busy consumer goes without the maintenance script
    maintain_interval: ClassVar[float]
    #: the longest one blocking wait lasts
    idle_wait: ClassVar[float]

    def key(self, queue: str, kind: str) -> str:
        """``<prefix>:<queue>:<kind>``."""
        ...

    def ready_key(self, queue: str) -> str:
        """``<prefix>_<queue>``."""
        ...

    def script_queue(self, queue: str) -> str:
        """The queue as the scripts take it (a hash tag on a cluster)."""
        ...

    #: (queue, consumer id, pending acks) of owned consumers whose close failed
    leftovers: list[tuple[str, str, list[bytes]]]
    #: the replicas an ack, retry or fail waits for (``wait_replicas``; None: none)
    replication: Replication | None

    @property
    def own_state(self) -> bool:
        """Whether task statuses live in this Redis (else ``asynctask_state``'s store)."""
        ...

    @property
    def status_ttl_ms(self) -> int:
        """``asynctask_status_ttl`` in ms."""
        ...

    def forget(self, consumer: RedisConsumer) -> None:
        """Stop keeping ``consumer``'s heartbeat (it is closing)."""
        ...

    def hand_back_leftovers(self) -> None:
        """Finish the close of owned consumers that could not reach Redis."""
        ...


logger = logging.getLogger("asynctask.redis")

#: the settles that wait for replicas under ``wait_replicas`` (a close or a canonical
#: rewrite loses nothing when a failover undoes it)
_REPLICATED = frozenset({"ack", "retry", "fail"})


P = ParamSpec("P")
R = TypeVar("R")


def _locked(
    method: Callable[Concatenate[RedisConsumer, P], R],
) -> Callable[Concatenate[RedisConsumer, P], R]:
    """Run a consumer's call holding its lock once it has a thread that sends late running
    marks (``asynctask_redis.startmarks``): the thread acts only between calls, never
    during one. Before that (every untracked consumer) no lock is taken (``start`` of a
    tracked task takes it always, uncontended until then): only ``start`` makes the
    thread, and the thread touches nothing until ``DEFER`` after its ``wake``, the
    last thing that ``start`` does."""

    def locked(self: RedisConsumer, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._flusher is None:
            return method(self, *args, **kwargs)
        with self._lock:
            return method(self, *args, **kwargs)

    functools.update_wrapper(locked, method)
    return locked


def taken(reply: list[Any], at: int) -> list[bytes]:
    """The messages a ``TAKE`` or ``NEXT`` reply carries from ``reply[at]`` on (see
    ``scripts.add_taken``): a batch comes as one bulk string, joined by newlines, so that
    redis-py's parser reads one item, not one a task (its Python reader cost about 5 us a
    task under cProfile at a prefetch of 32, tracked)."""
    if len(reply) <= at:
        return []
    if reply[at] == 1:
        parts: list[bytes] = reply[at + 1].split(b"\n")
        return parts
    return reply[at + 1 :]


def _give_back(pool: Any, conn: Any, deferred: list[Any]) -> None:
    """Return a consumer's connection to the pool; one with replies still unread is
    closed first, so that no other caller reads them."""
    if deferred:
        deferred.clear()
        conn.disconnect()
    pool.release(conn)


class RedisConsumer(Consumer):
    """At-least-once access to one queue; see the module docstring."""

    #: a tracked move with this many acks or more sends their status writes in a script
    #: of their own, answered after the move (``_next_then_acks``); 0: never. Off until
    #: a quiet machine shows it faster: it takes Redis's status writes off the child's
    #: wait (the move 404 -> 83 us at prefetch 32) only where Redis has a core of its
    #: own, and on this shared 2-core machine at load 2-2.5 the tracked drain at 32 read
    #: medians 32.5-33.2k/s with it against 34.6-38.4k/s without, at load 3-3.3 23.7k/s
    #: against 20.8k/s (``asynctask workers``, 1 child, ABBA x3, 2026-12-08 02:35-02:44).
    #: ``ASYNCTASK_REDIS_SPLIT_ACKS=8`` turns it on for a comparison on a quiet machine
    #: (the bench's children inherit it).
    split_acks: ClassVar[int] = int(os.environ.get("ASYNCTASK_REDIS_SPLIT_ACKS", "0"))

    def __init__(
        self,
        transport: Transport,
        host: ConsumerHost,
        queue: str,
        prefetch: int,
        owner: str | None = None,
    ) -> None:
        super().__init__(transport, queue, prefetch)
        self._host = host
        # ``<owner>/<random>``: the scripts read the owner off the id and take the owner's
        # key (kept by the supervisor, see asynctask_redis.keeper) as this one's heartbeat.
        # Else ``<host>.<random>`` (``new_owner``), so that ``in_flight`` names the host.
        self.id = new_owner() if owner is None else f"{owner}/{new_task_id()[:16]}"
        #: whether a keeper elsewhere keeps this consumer's liveness (asynctask.liveness)
        self.owned = owner is not None
        self.heartbeat_key = host.key(queue, f"heartbeat:{self.id}")
        self.processing_key = host.key(queue, f"processing:{self.id}")
        self.consumers_key = host.key(queue, "consumers")
        #: whether the server knows this consumer (heartbeat set, in the consumers set)
        self.registered = False
        self._resync = False
        self._conn: Any = None
        self._proven = False  # the connection has served a command since it opened
        self._stale = False
        self._release_conn: weakref.finalize | None = None  # type: ignore[type-arg]
        self._buffer: deque[bytes] = deque()  # taken, not yet handed out
        #: handed out, not yet settled: message -> how many times (a plain dict: a
        #: ``Counter``'s Python-level ``__delitem__`` cost about 1 us a task)
        self._held: dict[bytes, int] = {}
        self._held_count = 0
        #: acked, not yet sent: (message, task id, result) triples (the id spares the
        #: scripts a parse of the message), and starts not sent yet: ('', id, '') whose
        #: third slot ``_pending`` fills from ``_marks``; a task acked right after its
        #: start not sent yet is one triple, its id slot filled the same way
        #: ('<id>:<attempt>:<ms>'): three arguments a task fewer to pack and for the
        #: script to read
        self._acks: list[bytes] = []
        #: the starts not sent yet: (their slot in ``_acks``, what goes before the
        #: attempt there (b'' or b'<id>:'), attempt, when it started,
        #: ``time.monotonic()``): plain tuples, no Python-level constructor
        self._marks: list[tuple[int, bytes, int, float]] = []
        #: when the oldest start in ``_acks`` happened (None: none is there)
        self._marks_since: float | None = None
        #: sends them once DEFER old, if no call did (made at the first one)
        self._flusher: MarkFlusher | None = None
        self._lock = threading.RLock()
        self._maintain_at = 0.0  # when the TAKE script must run again
        #: the queue's cancels (with tracking), and the tasks taken while it was not live
        #: (their start asks Redis: a cancel published then may be missed)
        self._feed: CancelFeed | None = None
        self._unsure: set[bytes] = set()
        #: START calls sent whose replies are unread: (packed command, task id)
        self._deferred: list[tuple[bytes, str]] = []
        #: the acks and late starts those STARTs carry, pending again if a reply is lost
        #: (sent twice, an ack rewrites what it wrote: better than the task run again)
        self._unconfirmed: list[bytes] = []
        #: the task the last move marked running (it hands it out to start at once)
        self._marked: bytes | None = None
        #: ``host.own_state``, read again by every ``TAKE``/``NEXT`` (start and ack, once a
        #: task each, read it here: the property is a Python call)
        self._own = host.own_state

    def __repr__(self) -> str:
        return f"RedisConsumer({self.transport!r}, {self.queue!r}, id={self.id})"

    # -- the connection -----------------------------------------------------------------

    def _connection(self) -> Any:
        """This consumer's connection, taken from the pool when it has none (at first, and
        after a cluster failover moved the queue's slot)."""
        if self._conn is None:
            server = self._host.server
            pool = server.pool_for(self._host.key(self.queue, ""))
            try:
                conn = pool.get_connection()
            except (RedisError, OSError) as exc:
                server.moved(exc)  # a dead node: the slot map is read again next time
                raise server.error(exc) from exc
            try:
                # The mark thread's START goes unanswered (``flush_marks``): on a server
                # without the script its NOSCRIPT would be read only with the next call,
                # after the task. Loaded now and at each reconnect (a restarted server
                # lost it), one round trip a connection.
                conn.register_connect_callback(self._load_start)
                self._load_start(conn)
            except (RedisError, OSError) as exc:
                conn.disconnect()
                pool.release(conn)
                server.moved(exc)
                raise server.error(exc) from exc
            self._conn = conn
            self._release_conn = weakref.finalize(
                self, _give_back, pool, self._conn, self._deferred
            )
        return self._conn

    def _load_start(self, conn: Any) -> None:
        """Load the ``START`` script on a connection with no reply owed (fresh from the
        pool, or just reconnected)."""
        call(conn, "SCRIPT", "LOAD", scripts.START.text)

    def _execute(self, fn: Any, *args: Any, resync: bool = False) -> Any:
        server = self._host.server
        self._connection()
        try:
            if self._deferred:
                self._collect(self._conn)
            result = fn(self._conn, *args)
        except (RedisError, OSError) as exc:
            self._conn.disconnect()  # the next command reconnects
            if self._deferred:  # their replies are lost, and maybe their acks: resync
                self._lost_deferred()
            if self._feed is not None:
                self._feed.close()  # a failover, a restart: what was published is lost
            if server.moved(exc) and self._release_conn is not None:
                self._release_conn()  # a cluster failover: the slot is elsewhere now
                self._conn = None
            if resync:
                self._resync = True
            # a connection that worked before and is now closed: the server restarted or
            # dropped it; the caller may try once more at once, on a new connection
            self._stale = self._proven and isinstance(exc, redis.ConnectionError | OSError)
            self._proven = False
            raise server.error(exc) from exc
        self._proven = True
        return result

    def _once_more(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, run again at once if it failed on a stale connection only."""
        try:
            return fn(*args)
        except TransportUnavailable:
            if not self._stale:
                raise
            self._stale = False
            return fn(*args)

    def _run(self, script: scripts.Script, *args: Any, resync: bool = False) -> Any:
        t = self._host
        queue = t.script_queue(self.queue)
        return self._execute(run, script, t.prefix, queue, self.id, *args, resync=resync)

    # -- taking -------------------------------------------------------------------------

    def reserve(self, timeout: float) -> Delivery | None:
        """Wait up to ``timeout`` seconds for a ready task; see ``Consumer.reserve``."""
        if self._flusher is None:  # no mark thread (every untracked consumer)
            return self._reserve(timeout)
        with self._lock:
            return self._reserve(timeout)

    def _reserve(self, timeout: float) -> Delivery | None:
        if self.closed:
            raise TransportClosed(f"{self!r} is closed")
        t = self.transport
        deadline: float | None = None  # read the clock only when the buffer runs out
        while True:
            while self._buffer:
                delivery = self._deliver(self._buffer.popleft())
                if delivery is not None:
                    return delivery
            if deadline is None:
                deadline = time.monotonic() + max(0.0, timeout)
            wait = t._call(self._take)
            if self._buffer:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            block = min(remaining, self._host.idle_wait, remaining if wait is None else wait)
            if block >= 0.001:
                raw = t._call(self._block, block)
                if raw is not None:
                    self._buffer.append(raw)

    def _take(self) -> float | None:
        wait: float | None = self._once_more(self._take_once)  # the second time, resyncing
        if self._host.leftovers:
            self._host.hand_back_leftovers()
        return wait

    @property
    def fused(self) -> bool:
        """Whether this consumer writes task statuses itself, with its own calls."""
        self._own = own = self._host.own_state
        return self.tracking and own

    def _take_once(self) -> float | None:
        """Send the acks and take up to ``prefetch`` tasks; return seconds worth waiting.

        Between maintenance calls (at most ``maintain_interval`` apart, sooner when a task
        falls due) this is the ``NEXT`` script; the TAKE script runs when that finds
        nothing, when it is due, and to register or resynchronise.
        """
        t = self._host
        if self.fused:
            self._listen()
        fast = self.registered and not self._resync and time.monotonic() < self._maintain_at
        if fast and self._execute(self._next, resync=True):
            return 0.0
        flags = 2 if self._resync else 0 if self.registered else 1
        held = [raw for raw, n in self._held.items() for _ in range(n)] if self._resync else []
        acks = self._pending()
        reply = self._run(
            scripts.TAKE,
            self._want(),
            t.recheck_ms,
            t.heartbeat_ttl_ms,
            flags,
            "1" if self.fused else "0",
            t.status_ttl_ms,
            len(acks) // 3,
            Args(acks + held),
            resync=True,
        )
        self._sent()
        self.registered, self._resync = True, False
        self._took(reply[1], taken(reply, 2))
        wait = None if reply[0] < 0 else reply[0] / 1000
        self._maintain_at = time.monotonic() + min(
            t.maintain_interval, t.maintain_interval if wait is None else wait
        )
        return wait

    def _want(self) -> int:
        # prefetch bounds what is taken at once; a caller holding more still gets one
        return max(1, self.prefetch - self._held_count)

    def _pending(self) -> list[bytes]:
        """The acks (message, task id, result triples) and late starts a script sends now;
        the caller clears them once the script ran (``_sent``)."""
        marks = self._marks
        if not marks:
            return self._acks
        now = time.monotonic()
        acks = self._acks.copy()  # kept as they are: a failed call sends them again
        # '<attempt>:<ms since it started>' made once for each pair: a batch's starts
        # share a few (a ``%`` format a mark cost about 40% more, timeit, 32 marks)
        tails: dict[tuple[int, int], bytes] = {}
        for slot, prefix, attempt, at in marks:  # as the scripts' ``ack_all`` reads them
            pair = (attempt, int((now - at) * 1000))  # monotonic: at <= now, so >= 0
            tail = tails.get(pair)
            if tail is None:
                tail = tails[pair] = b"%d:%d" % pair
            acks[slot] = prefix + tail
        return acks

    def _sent(self) -> None:
        self._acks = []
        self._marks = []
        self._marks_since = None

    def _took(self, marked: int, messages: list[bytes]) -> None:
        """Buffer what a move took (the first marked running if ``marked``); unsure of
        cancels if the feed was not live before the move."""
        if self.fused and not (self._feed is not None and self._feed.live):
            self._unsure.update(messages)
        self._marked = messages[0] if messages and marked else None
        self._buffer.extend(messages)

    def _listen(self) -> None:
        """Have the cancel feed live before a move, if Redis lets it subscribe: what this
        consumer holds from before was taken unheard, so its starts ask Redis."""
        feed = self._feed
        t = self._host
        if feed is None:
            pool = t.server.pool_for(t.key(self.queue, ""))
            feed = self._feed = CancelFeed(pool, t.key(self.queue, "cancels"))
        if feed.live:
            return
        feed.pool = t.server.pool_for(t.key(self.queue, ""))  # after a failover: the new one
        if not feed.open():
            return
        self._unsure.update(self._buffer)
        self._unsure.update(self._held)

    def _lost_deferred(self) -> None:
        """The replies of the STARTs sent without waiting are lost (the connection
        failed): the acks and starts they carried are pending again, ahead of the newer
        ones, and the next ``TAKE`` resynchronises."""
        self._deferred.clear()
        shift = len(self._unconfirmed)  # the marks' slots move along
        self._marks = [(slot + shift, pre, attempt, at) for slot, pre, attempt, at in self._marks]
        self._acks = [*self._unconfirmed, *self._acks]
        self._unconfirmed = []
        self._resync = True

    def _collect(self, conn: Any) -> None:
        """Read the replies of the START calls sent without waiting; one the server did
        not know the script for runs again now."""
        again = []
        for command, task_id in self._deferred:
            try:
                verdict = conn.read_response()
            except NoScriptError:
                again.append((command, task_id))
                continue
            except ResponseError as exc:  # the connection stays in step: read on
                logger.warning("%r: marking task %s running failed: %s", self, task_id, exc)
                continue
            warn_late_verdict(self, task_id, verdict)
        self._deferred.clear()
        if again:
            call(conn, "SCRIPT", "LOAD", scripts.START.text)
            for command, task_id in again:
                conn.send_packed_command([command])
                warn_late_verdict(self, task_id, conn.read_response())
        self._unconfirmed = []  # all of them ran

    def _next(self, conn: Any) -> bool:
        """Acks and non-blocking moves in one round trip; whether anything came."""
        acks = self._pending()
        t, want = self._host, self._want()
        give_back: bytes | str = ""
        plain = not self.fused and want == 1 and len(acks) <= 3 and NUDGE not in acks
        if plain and not (acks and acks[1]):  # an id: a record to retire (scripts.retire_acked)
            # Plain commands cost Redis a fifth of the script (9 us a task against 45,
            # server time, INFO commandstats): without tracking, take this way, and run
            # the script only when urgent tasks wait (it takes those first).
            proc = self.processing_key
            commands: list[tuple[Any, ...]] = [("LREM", proc, 1, raw) for raw in acks[::3]]
            commands.append(("LMOVE", t.ready_key(self.queue), proc, "LEFT", "RIGHT"))
            commands.append(("SADD", self.consumers_key, self.id))  # see scripts.NEXT
            commands.append(("EXISTS", t.key(self.queue, "urgent")))
            replies = pipeline(conn, commands)
            self._acks = acks = []  # not fused: no late start among them
            moved, urgent = replies[-3], replies[-1]
            if not urgent:
                self._buffer.extend([] if moved is None else [moved])
                return moved is not None
            give_back = moved or ""
        elif not self.fused and NUDGE not in acks and not any(acks[1::3]):
            # more than one task (or ack): the plain commands would cost the worker a
            # reply each; the MOVE script one, and Redis a third less than NEXT
            keys = (t.ready_key(self.queue), self.processing_key, self.consumers_key)
            queue_keys = (t.key(self.queue, "urgent"), t.key(self.queue, "nudges"))
            messages = acks[::3]
            if self._holds_only(messages):  # see scripts.whole_acked
                named = Args([b"%d" % len(messages), messages[-1]])
                reply = run(conn, scripts.MOVE, *keys, *queue_keys, self.id, want, named)
                if reply[0] == -2:  # not what it held: name them all
                    named = Args([b"", *messages])
                    reply = run(conn, scripts.MOVE, *keys, *queue_keys, self.id, want, named)
            else:
                named = Args([b"", *messages])
                reply = run(conn, scripts.MOVE, *keys, *queue_keys, self.id, want, named)
            if reply[0] == 0:  # else urgent tasks wait, and nothing was written: NEXT
                self._sent()
                self._took(0, taken(reply, 1))
                return len(reply) > 1
        args = (
            t.prefix,
            t.script_queue(self.queue),
            self.id,
            want,
            "1" if self.fused else "0",
            t.status_ttl_ms,
            give_back,
        )
        messages = acks[::3]
        reply = None
        if self.split_acks and self.fused and not give_back and len(messages) >= self.split_acks:
            return self._next_then_acks(conn, args, acks)
        if not give_back and self._holds_only(messages) and all(messages):
            elided = acks.copy()
            elided[::3] = [b"="] * len(messages)  # see scripts.whole_acked
            reply = run(conn, scripts.NEXT, *args, messages[-1], len(messages), Args(elided))
            if reply[0] == -2:  # not what it held: name them all
                reply = None
        if reply is None:
            reply = run(conn, scripts.NEXT, *args, "", len(acks) // 3, Args(acks))
        self._sent()
        self._took(reply[0], taken(reply, 1))
        return len(reply) > 1

    def _next_then_acks(self, conn: Any, args: tuple[Any, ...], acks: list[bytes]) -> bool:
        """A tracked move of many acks in two scripts: ``NEXT`` takes (and marks the
        first running), and once it has answered, a ``START`` with no task of its own
        removes the acked messages and writes their statuses (``succeeded``, the late
        starts), its reply read with the next call, as the mark thread's are. Redis
        writes the statuses while the child runs the new batch, on the other core: in a
        tracked drain at prefetch 32 they were most of Redis's work a task (12.4 us of a
        move's 12.8 us a task, ``bench.servercost --stats``), all of it waited for. (Sent
        together, the two would run before either reply is written: Redis answers what
        one read brought only after running all of it.) A lost reply puts the acks back
        (``_deferred``, ``_lost_deferred``); until the second has run the acked messages
        stay in the processing list, so a consumer that dies in between has them
        recovered and run again, never gone without their statuses."""
        t = self._host
        messages = acks[::3]
        sent, last = acks, b""
        if self._holds_only(messages) and all(messages):  # the head of the list, after NEXT
            sent, last = acks.copy(), messages[-1]
            sent[::3] = [b"="] * len(messages)  # see scripts.START
        reply = run(conn, scripts.NEXT, *args, "", 0)
        write = (t.prefix, t.script_queue(self.queue), self.id, t.status_ttl_ms, "1", "", 0, last)
        command = pack([("EVALSHA", scripts.START.sha, 0, *write, len(acks) // 3, Args(sent))])
        conn.send_packed_command([command])
        self._deferred.append((command, ""))
        self._unconfirmed += acks
        self._sent()
        self._took(reply[0], taken(reply, 1))
        return len(reply) > 1

    def _holds_only(self, messages: list[bytes]) -> bool:
        """Whether ``messages`` (acks not sent yet) are all this consumer holds in its
        processing list, as far as it knows: none handed out unsettled, none taken and
        not handed out, a nudge not among them. Then a move names only the last and
        their count (``scripts.whole_acked``), which Redis checks against the list."""
        return (
            bool(messages) and not self._held_count and not self._buffer and (NUDGE not in messages)
        )

    def _block(self, seconds: float) -> bytes | None:
        t = self._host
        command = ("BLMOVE", t.ready_key(self.queue), self.processing_key, "LEFT", "RIGHT")
        try:
            raw: bytes | None = self._execute(call, *command, f"{seconds:.3f}", resync=True)
        except TransportUnavailable:
            if not self._stale:
                raise
            self._stale = False
            return None  # the next TAKE resynchronises, on a new connection
        if raw is not None and self.fused and not (self._feed is not None and self._feed.live):
            self._unsure.add(raw)
        return raw

    def _deliver(self, raw: bytes) -> Delivery | None:
        """A Delivery for a taken message; an undecodable one goes to the failed store."""
        if raw == NUDGE:  # taken by BLMOVE: dropped with the next call
            self._acks += [raw, b"", b""]
            return None
        try:
            message = read_message(raw, self.transport.max_payload_bytes)
        except Exception as exc:  # whatever it is, it must not stop the worker
            logger.warning("%r: undecodable message moved to the failed store: %s", self, exc)
            error = f"undecodable message: {exc}"
            self._send("fail", raw, failed_record(None, raw, error, 0, time.time()))
            return None
        if message.rewrite:
            text = canonical_text(message)
            if not self._send("canon", raw, text):
                return None
            message = dataclasses.replace(message, raw=text.encode(), rewrite=False)
        held = self._held  # (``_hold``, inline: once a task)
        held[message.raw] = held.get(message.raw, 0) + 1
        self._held_count += 1
        return Delivery(
            message.id,
            self.queue,
            message.payload,
            message.attempts + 1,
            message.submitted_at,
            receipt=message,
            headers=message.headers,
        )

    # -- settling -----------------------------------------------------------------------

    def _settle_args(
        self, op: str, raw: bytes, argument: str, delay_ms: str, error: str
    ) -> list[Any]:
        """The arguments of SETTLE after the consumer id, with the pending acks."""
        fused = "1" if self.fused else "0"
        acks = self._pending()
        ttl = self._host.status_ttl_ms
        return [op, raw, argument, delay_ms, fused, ttl, error, len(acks) // 3, Args(acks)]

    def _send(
        self, op: str, raw: bytes, argument: str = "", delay_ms: str = "0", error: str = ""
    ) -> Any:
        """Run one SETTLE (with the pending acks), retrying while Redis is away; an ack,
        retry or fail then waits for the replicas (``wait_replicas``), on the same
        connection, and a shortfall is logged: a failover that undoes the settle runs the
        task again, it loses nothing (``asynctask_redis.replication``)."""
        args = self._settle_args(op, raw, argument, delay_ms, error)
        replication = self._host.replication if op in _REPLICATED else None

        def step() -> tuple[Any, int | None]:  # SETTLE is idempotent: safe to run again
            if replication is None:
                return self._run(scripts.SETTLE, *args), None
            t = self._host
            waited = Waited(run, replication)
            queue = t.script_queue(self.queue)
            return self._execute(waited, scripts.SETTLE, t.prefix, queue, self.id, *args)  # type: ignore[no-any-return]

        done, acked = self.transport._call(self._once_more, step)
        self._sent()
        if replication is not None and acked is not None and not replication.confirmed(acked):
            logger.warning(
                "%r: %s confirmed by %d of wait_replicas=%d replicas within %d ms: a failover "
                "now may undo it, and the task would run again",
                self,
                op,
                acked,
                replication.replicas,
                replication.timeout_ms,
            )
        return done

    def _hold(self, raw: bytes) -> None:
        held = self._held
        held[raw] = held.get(raw, 0) + 1
        self._held_count += 1

    def _unhold(self, delivery: Delivery) -> bytes | None:
        """The receipt of a delivery this consumer holds, no longer held; else None."""
        message = delivery.receipt
        if not isinstance(message, Message) or message.raw not in self._held:
            return None  # settled already, or not ours
        raw = message.raw
        left = self._held[raw] - 1
        if left:
            self._held[raw] = left
        else:
            del self._held[raw]
            self._unsure.discard(raw)
        self._held_count -= 1
        return raw

    def _settle(
        self,
        delivery: Delivery,
        op: str,
        argument: str = "",
        delay_ms: str = "0",
        error: str = "",
    ) -> bool | None:
        """True when a retry or fail found the task cancelled (SETTLE dropped it)."""
        raw = self._unhold(delivery)
        if raw is None:
            return None
        try:
            done = self._send(op, raw, argument, delay_ms, error)
        except BaseException:
            self._hold(raw)
            raise
        if not done:
            logger.warning(
                "%r: task %s was handed to another consumer meanwhile (this one's heartbeat "
                "lapsed); it runs again there",
                self,
                delivery.id,
            )
        return True if done == 2 else None

    def start(self, delivery: Delivery) -> StartVerdict:
        """Mark the task ``running`` unless it was cancelled or has expired (then it is
        gone, never run).

        When the cancel feed has been live since the move that took the task, says
        nothing of it, and the task has no ``expires`` (see the module docstring), the
        verdict is known here: the mark waits in the pending acks and goes with this
        consumer's next call, or within ``startmarks.DEFER`` seconds if the task runs
        longer (``asynctask_redis.startmarks``): a drain sends nothing more a task than
        without tracking (the feed is read without blocking: a few microseconds). Nothing
        at all for the task the move handed out first: the move marked it running (the
        run loop starts it right after the reserve). Otherwise one ``START`` call, with
        the pending acks, waits for the verdict.
        """
        if not self.tracking:
            return "run"
        if not self._own:
            return super().start(delivery)  # the store asynctask_state names
        # the lock even before the mark thread exists (uncontended, a C call): the fast
        # path below in one Python frame, where a wrapper taking it only then made two
        with self._lock:
            message = delivery.receipt
            if not isinstance(message, Message) or message.raw not in self._held:
                return "run"
            raw = message.raw
            feed = self._feed
            marked, self._marked = raw == self._marked, None
            if (
                feed is not None
                and raw not in self._unsure
                and EXPIRES_HEADER not in message.headers
                and feed.heard()
                and delivery.id not in feed.cancelled
                and self._conn is not None
            ):
                if marked:  # the move checked it and marked it running: nothing to send
                    return "run"
                acks, now = self._acks, time.monotonic()
                acks += [b"", delivery.id.encode(), b""]
                self._marks.append((len(acks) - 1, b"", delivery.attempt, now))
                if self._marks_since is None:
                    # the thread looks while marks are pending (``flush_marks`` says
                    # so): woken by the first only, not once a task
                    self._marks_since = now
                    if self._flusher is None:
                        self._flusher = MarkFlusher(self, f"asynctask-redis-marks-{self.id}")
                    self._flusher.wake()
                return "run"
            return self._ask_start(delivery, raw, feed)

    def _ask_start(self, delivery: Delivery, raw: bytes, feed: CancelFeed | None) -> StartVerdict:
        """The ``START`` script, waited for: the verdict Redis gives (the lock held)."""
        self._unsure.discard(raw)
        if feed is not None:
            feed.cancelled.pop(delivery.id, None)
        t, acks = self._host, self._pending()

        def step() -> Any:  # safe to run again: a second start finds it running
            return self._run(
                scripts.START,
                t.status_ttl_ms,
                "0",
                delivery.id,
                delivery.attempt,
                raw,
                len(acks) // 3,
                Args(acks),
            )

        verdict = self.transport._call(self._once_more, step)
        self._sent()
        text = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        if text in ("cancelled", "expired"):
            self._unhold(delivery)
            return "cancelled" if text == "cancelled" else "expired"
        return "run"

    def record_outcome(
        self,
        delivery: Delivery,
        state: State,
        error: str | None = None,
        result_json: str | None = None,
    ) -> bool | None:
        """Nothing when this Redis keeps the statuses (the settle wrote the outcome): the
        base class would ask the transport for its other store at every task."""
        if not self._own:
            return super().record_outcome(delivery, state, error, result_json)
        return None

    def flush_marks(self, now: float) -> float | None:
        """Send the late starts (and the acks before them) once the oldest is ``DEFER``
        old, unanswered, in a ``START`` script with no task of its own (the reply is read
        with the next call); None when none wait any more, else the seconds until the
        thread looks again. Called by the ``MarkFlusher`` thread, between the consumer's
        calls only (it never waits for the lock)."""
        since = self._marks_since
        if since is None:
            return None
        if now - since < DEFER:
            return DEFER - (now - since)  # when it is due
        if not self._lock.acquire(blocking=False):
            return DEFER / 2  # in a call, which usually sends them
        try:
            if self._marks_since is None or self.closed:
                return None
            try:
                # none after a failed call that let a cluster's moved slot go: a new one
                # (else the marks waited for the consumer's next call, after the task)
                conn = self._connection()
            except TransportError:
                return DEFER / 2  # Redis is away: look again
            t, acks = self._host, self._pending()
            args = (t.prefix, t.script_queue(self.queue), self.id, t.status_ttl_ms, "1")
            command = pack(
                [("EVALSHA", scripts.START.sha, 0, *args, "", 0, "", len(acks) // 3, Args(acks))]
            )
            try:
                conn.send_packed_command([command])
            except (RedisError, OSError):
                # they stay pending: the next call reconnects, resynchronises and sends them
                conn.disconnect()
                self._lost_deferred()
                return None
            self._deferred.append((command, ""))
            self._unconfirmed += acks
            self._sent()
            return None
        finally:
            self._lock.release()

    def ack(self, delivery: Delivery, result_json: str | None = None) -> bool | None:
        """Done: the task is removed (``succeeded``, with its result, unless it was
        cancelled meanwhile) with this consumer's next call to Redis. True when the
        cancel feed has heard the task cancelled since its start (read without waiting,
        as a start does: the script keeps it cancelled, its result discarded); else
        None (not known here). Under ``wait_replicas`` the ack is sent at once and
        returns once the replicas hold it (or their time ran out: logged)."""
        if self._flusher is None:  # no mark thread (every untracked consumer)
            return self._ack(delivery, result_json)
        with self._lock:
            return self._ack(delivery, result_json)

    def _ack(self, delivery: Delivery, result_json: str | None = None) -> bool | None:
        raw = self._unhold(delivery)
        if raw is None:
            return None
        cancelled = None
        if self.tracking and self._own:
            feed = self._feed
            # (a cancel heard before the start stopped it there: one heard now came after.)
            # Its cost on a drain: one poll(2) and 2 Python calls a task more (strace -c
            # and cProfile of bench/loopcost.py, 2,000 tasks: 10.0 -> 11.0 system calls
            # and 113 -> 115 calls a task), so that the run loop can log the discard.
            if feed is not None and feed.heard() and delivery.id in feed.cancelled:
                del feed.cancelled[delivery.id]
                cancelled = True
            acks, marks = self._acks, self._marks
            task_id, result = delivery.id.encode(), result_json.encode() if result_json else b""
            if marks and marks[-1][0] == len(acks) - 1 and acks[-2] == task_id:
                # its start is the last thing pending: one triple for both
                _, _, attempt, at = marks[-1]
                del acks[-3:]
                marks[-1] = (len(acks) + 1, task_id + b":", attempt, at)
                acks += [raw, b"", result]
            else:
                acks += [raw, task_id, result]
        else:
            retired = self._retired(delivery.id)
            self._acks += [raw, retired.encode() if retired else b"", b""]
        if self._host.replication is not None:
            # sent now, and waited for: the ack is on the replicas when this returns
            try:
                self._send("ack", b"")
            except TransportError as exc:  # it stays pending: it goes with the next call
                logger.warning("%r: ack of %s not sent yet (%s)", self, delivery.id, exc)
        return cancelled

    def _retired(self, task_id: str) -> str:
        """The id a settle for good by this consumer (keeping no status) sends, so that
        the script gives a record written at submit, before the queue turned untracked,
        the status TTL (``scripts`` ``retire``); '' when there is none to look for: the
        task was submitted unrecorded, or the statuses are kept in another store.

        ``is_unrecorded``'s test on one ``int`` of the text, not on its bytes: the
        untracked drain's run loop cost 130.4k instructions a task with
        ``is_unrecorded``, 127.3k this way, 122.8k with no test (callgrind,
        bench/loopcost.py --untracked, private redis). (Looser for an id that is not
        ours, which has no record anyway.)"""
        if not self._own or len(task_id) != 32:
            return "" if not self._own else task_id
        try:
            v = int(task_id, 16)
        except ValueError:
            return task_id
        return "" if (v >> 96) ^ (v & 0xFFFFFFFF) == UNRECORDED_MARK else task_id

    @_locked
    def retry(self, delivery: Delivery, delay: float, error: str) -> bool | None:
        """Back to the queue after ``delay`` seconds, one more attempt counted; True if
        it was cancelled while it ran (dropped instead)."""
        delay = check_delay(delay)
        message = delivery.receipt
        if isinstance(message, Message):
            again = canonical_text(message, attempts=message.attempts + 1)
            return self._settle(delivery, "retry", again, f"{delay * 1000:.3f}", error)
        return None

    @_locked
    def fail(self, delivery: Delivery, error: str) -> bool | None:
        """To the queue's failed store, with ``error``; True if it was cancelled while it
        ran (dropped instead). With the statuses in the store of ``asynctask_state``,
        its id is noted there first (the failed window, ``asynctask.status``:
        ``RedisTransport._failed_holds`` looks it up)."""
        message = delivery.receipt
        if isinstance(message, Message):
            if not self.fused and self.note_failing(delivery, delivery.id, error):
                self.ack(delivery)  # cancelled meanwhile: dropped, never failed
                return True
            record = failed_record(message, None, error, message.attempts + 1, time.time())
            retired = (
                "" if self.fused or message.raw not in self._held else self._retired(delivery.id)
            )
            if retired:
                self._acks += [b"", retired.encode(), b""]  # see scripts.retire_acked
            return self._settle(delivery, "fail", record, error=error)
        return None

    @_locked
    def release(self, delivery: Delivery) -> None:
        """Back at the head of the queue, untouched."""
        self._settle(delivery, "release")

    @_locked
    def close(self) -> None:
        """Hand back everything this consumer holds, in order, and free its connection."""
        if self.closed:
            return
        self.closed = True
        self._host.forget(self)
        if self._flusher is not None:
            self._flusher.close()
        if self._feed is not None:
            self._feed.close()
        self._unsure.clear()
        self._buffer.clear()
        self._held.clear()
        self._held_count = 0
        try:
            if self.registered or self._acks:
                if self.transport.closed:
                    self._run(scripts.SETTLE, *self._settle_args("close", b"", "", "0", ""))
                else:
                    self._send("close", b"")
        except TransportError as exc:
            if self.owned:
                # Its owner lives on (the supervisor beats for it): nobody would recover
                # these, so the transport's next consumer to reach Redis hands them back.
                self._host.leftovers.append((self.queue, self.id, self._pending()))
                when = "when Redis answers again"
            else:
                when = f"within {self.transport.features.recovery_seconds:g} s"
            logger.warning(
                "%r: could not hand back its tasks (%s); they come back %s", self, exc, when
            )
        finally:
            if self._release_conn is not None:
                self._release_conn()
