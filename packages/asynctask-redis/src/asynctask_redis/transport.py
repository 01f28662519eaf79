"""``redis://``: tasks in Redis lists, taken with a blocking move, at least once.

Features
    Every count (ready, delayed, retrying, in flight, failed); the whole delivery
    contract across processes and hosts. An idle consumer blocks in ``BLMOVE`` and wakes
    on the push; a consumer proves it lives with a heartbeat key, refreshed by a thread,
    so a slow task is never taken twice, and a dead consumer's tasks come back within
    ``recovery_seconds`` (counted as an attempt). Promotion of due tasks, recovery,
    retry, failure and release are Lua scripts, atomic on the server, run by whichever
    consumer is waiting (no polling loop, no extra process). A task costs one round
    trip (its ack rides with the next move); a batch submit is one ``RPUSH``. Task
    statuses (``asynctask.status``), results, cancel, ``expires``, ``unique_key`` and
    ``priority`` are kept beside the queue and written by the same scripts (see
    ``asynctask_redis.statestore`` and README.md).
URI
    As redis-py reads it (``redis.ConnectionPool.from_url``): ``redis://host``,
    ``redis://host:port``, ``redis://host:port?db=2``, ``redis://:password@host:port/2``
    (the path is the database number), ``redis://user:password@host``, ``rediss://...``
    (TLS), ``unix:///path/to/redis.sock?db=1``.
Options
    ``key_prefix`` (``asynctask``; no ``_``), ``pool_size`` (50), ``socket_timeout``
    (10 s), ``connect_timeout`` (5 s), ``recovery_seconds`` (8), ``heartbeat_seconds``
    (``recovery_seconds / 8``), ``retry_timeout`` (15 s), ``wait_replicas`` (0: off) and
    ``wait_timeout_ms`` (1000; see ``asynctask_redis.replication``). Passed on to redis-py: ``db``,
    ``client_name``, ``health_check_interval``, ``socket_keepalive``, ``ssl_*``.
Storage
    With prefix ``P`` and queue ``Q``: ``P_Q`` is the list of ready tasks (head first).
    Each is our envelope ``{"__asynctask__":1,"id":..,"attempts":..,"submitted_at":..,
    "payload":{..}}``, or any JSON object another program pushed, which is the payload
    itself: ``RPUSH asynctask_Q '{"foo": 1}'`` submits a task. Beside it: ``P:Q:delayed``
    and ``P:Q:retrying`` (sorted sets of envelopes, scored by due time in ms),
    ``P:Q:failed`` (list of JSON records), ``P:Q:consumers`` (set of consumer ids),
    ``P:Q:processing:<id>`` (list, what a consumer holds), ``P:Q:heartbeat:<id>``
    (expiring key), ``P:Q:recovery`` (throttles dead-consumer checks), ``P:queues`` (set
    of queue names), ``P:claim:<key>`` (scheduler claims). Task status:
    ``P:Q:urgent`` (ready tasks of priority 1-9), ``P:Q:task:<id>`` (a status hash),
    ``P:@id:<id>`` (the id's queue), ``P:Q:unique:<key>``, ``P:Q:done:<id>`` (``wait``,
    whose waiter marks the status's field ``waiting``, and ``P:Q:waiting:<id>``, which
    a move's successes look for), ``P:Q:uniques`` (once a unique key was held),
    ``P:Q:untracked``. See README.md.
    ``peek``, ``failed_tasks`` and ``in_flight`` read one page (a script walks to it);
    ``in_flight``'s holder is the consumer's owner id under ``asynctask workers``, else
    its id (``<host>.<random>``); ``since`` is when the running attempt started (its
    status; None for a prefetched task not started yet, or an untracked queue's).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import redis
from redis.exceptions import RedisError, ResponseError

from asynctask.errors import InvalidURIError, TransportError
from asynctask.limits import SLOT_LEASE, LimitSpec
from asynctask.liveness import Liveness
from asynctask.status import EXPIRES_HEADER, StateStore, StatusNotTracked, SubmitOptions
from asynctask.transport import (
    Consumer,
    FailedTask,
    InFlightTask,
    QueueStats,
    Transport,
    TransportFeatures,
    WaitingTask,
)
from asynctask.validation import Payload
from asynctask_redis import scripts
from asynctask_redis.connection import (
    DRIVER_OPTIONS,
    OPTIONS,
    MultiRefused,
    SentinelServer,
    Server,
    call,
    exec_packed,
    pack,
    pipeline,
    run,
    run_packed,
)
from asynctask_redis.consumer import RedisConsumer
from asynctask_redis.keeper import RedisLiveness
from asynctask_redis.messages import (
    envelope,
    failed_record,
    read_failed,
    read_message,
    requeue_text,
)
from asynctask_redis.replication import Replication, ReplicationTimeout, Waited
from asynctask_redis.statestore import RedisStateStore

logger = logging.getLogger("asynctask.redis")

T = TypeVar("T")

#: tasks a purge script deletes per call (scripts.PURGE): a few milliseconds of the server
PURGE_CHUNK = 1000


class _PushHeads(NamedTuple):
    """What ``RedisTransport._push_heads_made`` makes once a queue."""

    guard_ms: int
    #: ``EVALSHA PUSH`` up to the id, then from it to the envelope's length
    push_head: bytes
    push_after: str
    #: ``MULTI`` to the guard key's id, from it to the envelope's length, after it
    multi_head: bytes
    multi_mid: str
    multi_tail: bytes


def _bulk(value: str | int) -> str:
    """One argument in the Redis protocol (RESP), as text (``_push_heads_made``)."""
    text = str(value)
    return f"${len(text.encode())}\r\n{text}\r\n"


def _push_first(
    conn: Any,
    tries: list[int],
    t: RedisTransport,
    queue: str,
    guard_ms: int,
    task_id: str,
    text: str,
) -> None:
    """A one-task submit sent for the first time: a transaction, ``SET`` of the guard key
    with the push (the key cannot be there yet: the id is new), for 26.6k instructions
    of the server against ``PUSH``'s 50k (redis-server under callgrind). Any later try
    (``execute``'s, on a fresh connection, or ``_call``'s) may follow a first that was
    stored, its reply lost: it runs ``PUSH``, which stores nothing when the key is there."""
    if tries:
        run_packed(conn, scripts.PUSH, t._push_one(queue, guard_ms, task_id, text))
        return
    tries.append(1)
    try:
        exec_packed(conn, t._push_first_try(queue, guard_ms, task_id, text), 3, _PUSHED)
    except MultiRefused as exc:
        # The SET, RPUSH and SADD behind a refused MULTI ran alone: RPUSH's reply says
        # whether the task is stored (its error is the submit's). This transport sends
        # PUSH from now on (a server that refuses MULTI once always does).
        t.multi_submits = False
        pushed = exc.replies[1]
        if isinstance(pushed, ResponseError):
            raise pushed from None


#: what the first try's transaction answers when it stored the task: MULTI's OK, three
#: QUEUED, then EXEC's SET OK, RPUSH's length and SADD's count
_PUSHED = re.compile(rb"\+OK\r\n(?:\+QUEUED\r\n){3}\*3\r\n\+OK\r\n:\d+\r\n:\d+\r\n")


class RedisTransport(Transport):
    """Tasks in Redis; see the module docstring."""

    schemes = ("redis", "rediss", "unix")
    options_accepted = OPTIONS
    keeps_limits = True
    features = TransportFeatures(
        counts=frozenset({"ready", "delayed", "retrying", "in_flight", "failed"}),
        multiprocess=True,
        recovery_seconds=8.0,
    )
    #: the longest a consumer blocks in one BLMOVE before it looks at the sorted sets
    #: and dead consumers again (a delayed task submitted during a wait is that late)
    idle_wait: ClassVar[float] = 1.0
    #: the longest a busy consumer goes without the maintenance script (promoting due
    #: tasks, recovering dead consumers' ones); between, it takes with plain LMOVEs
    maintain_interval: ClassVar[float] = 0.05
    #: whether a plain one-task submit is packed and read by our own code (``_push_one``,
    #: ``connection.reply_to``): not where ``execute`` routes a call by its arguments
    packs_submits: ClassVar[bool] = True

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.prefix: str = self.options["key_prefix"]
        recovery: float = self.options["recovery_seconds"]
        beat = self.options["heartbeat_seconds"] or recovery / 8
        if beat > recovery / 4:
            raise InvalidURIError(
                f"{self.safe_uri!r}: heartbeat_seconds={beat:g} must be at most "
                f"recovery_seconds / 4 ({recovery / 4:g}), so a live consumer never "
                "looks dead"
            )
        self.features = TransportFeatures(
            counts=type(self).features.counts, multiprocess=True, recovery_seconds=recovery
        )
        # A dead consumer's heartbeat expires within ttl; some waiting consumer looks
        # within recheck after that: recovery takes at most 0.75 * recovery_seconds.
        self.heartbeat_seconds = beat
        self.heartbeat_ttl_ms = int(recovery * 500)
        self.recheck_ms = int(recovery * 250)
        self.server = self._make_server()
        #: the replicas every submit, ack, retry and fail waits for (None: none)
        self.replication: Replication | None = (
            Replication(self.options["wait_replicas"], self.options["wait_timeout_ms"])
            if self.options["wait_replicas"]
            else None
        )
        self.key_queues = f"{self.prefix}:queues"
        self._idle: list[Any] = []  # connections that served a call, last in first out
        #: queue -> (guard_ms, the packed PUSH of one task before its id, after its id)
        self._push_heads: dict[str, _PushHeads] = {}
        #: queue -> the packed ``EVALSHA PUT_ONE`` of one task up to its id (``_put_one``)
        self._put_one_heads: dict[str, bytes] = {}
        #: the id of the last one-task submit sent by each thread (``_push_first``)
        self._last_push = threading.local()
        #: False once the server refused a first try's MULTI (``_push_first``)
        self.multi_submits = True
        self._pid = os.getpid()
        self._consumers: weakref.WeakSet[RedisConsumer] = weakref.WeakSet()
        self._beat_lock = threading.Lock()
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        #: (queue, consumer id, pending acks) of owned consumers whose close could not
        #: reach Redis: their tasks would stay theirs while their owner lives
        self.leftovers: list[tuple[str, str, list[bytes]]] = []
        #: the generic side of the statuses its scripts write (one object, so that its
        #: ``fallback_poll`` can be set)
        self._statuses = RedisStateStore(self)

    def _make_server(self) -> Server:
        """The server(s) the URI names (a cluster or Sentinel transport: its own)."""
        return Server(self.location, self.driver_options, self.options)

    def task_queues(self, ids: Sequence[str]) -> list[str | None]:
        """Each id's queue, by its pointer ``P:@id:<id>`` (None: not known)."""
        if not ids:
            return []
        found = self.execute(call, "MGET", *(f"{self.prefix}:@id:{task_id}" for task_id in ids))
        return [None if q is None else q.decode() for q in found]

    def accepts_driver_option(self, name: str) -> bool:
        """``db``, TLS and socket settings go on to redis-py."""
        return name in DRIVER_OPTIONS

    # -- keys ---------------------------------------------------------------------------

    def ready_key(self, queue: str) -> str:
        """The list of ready tasks of ``queue``: ``<prefix>_<queue>``."""
        return f"{self.prefix}_{queue}"

    def key(self, queue: str, kind: str) -> str:
        """Any other key of ``queue``: ``<prefix>:<queue>:<kind>``."""
        return f"{self.prefix}:{queue}:{kind}"

    # -- connections --------------------------------------------------------------------

    def execute(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on a connection of this transport, errors mapped.

        A connection that served a call waits on a stack for the next one, skipping
        redis-py's health check at every checkout: 17,724 calls/s against 12,995/s
        with a pool checkout per call (``python -m bench.drivers``, same run). One found
        closed (a server restart, ``CLIENT KILL``) is replaced and the call made again
        at once, so a stale connection is not an outage. ``health_check_interval`` in
        the URI still applies: redis-py's ``send_packed_command`` runs that check.
        """
        pool = self.server.pool
        if self._pid != os.getpid():  # forked: those sockets belong to the parent
            self._idle, self._pid = [], os.getpid()
        try:
            conn: Any = self._idle.pop()
        except IndexError:
            conn = None
        stale_ok = conn is not None
        while True:
            if conn is None:
                try:
                    conn = pool.get_connection()
                except (RedisError, OSError) as exc:
                    raise self.server.error(exc) from exc
            try:
                result = fn(conn, *args)
            except (RedisError, OSError) as exc:
                conn.disconnect()  # its replies may be out of step now
                pool.release(conn)
                dropped = isinstance(exc, redis.ConnectionError | OSError)
                if stale_ok and dropped and not isinstance(exc, TimeoutError):
                    stale_ok, conn = False, None
                    continue
                raise self.server.error(exc) from exc
            self._idle.append(conn)
            return result

    def script_queue(self, queue: str) -> str:
        """The queue as the scripts take it (``ARGV[2]``); a cluster's is a hash tag."""
        return queue

    def _script(self, script: scripts.Script, queue: str, *args: Any) -> Any:
        return self.execute(run, script, self.prefix, self.script_queue(queue), *args)

    # -- primitives ---------------------------------------------------------------------

    def _put(
        self,
        queue: str,
        tasks: Sequence[tuple[str, str]],
        delay: float,
        options: SubmitOptions,
    ) -> Sequence[str] | None:
        now = time.time()
        texts = [
            envelope(task_id, 0, now, text, self._headers(queue, task_id, text, options))
            for task_id, text in tasks
        ]
        # One script, atomic: the tasks, their statuses, the queue's name in P:queues (so
        # that pruning that set never hides a queue) and a guard that makes a retry write
        # nothing. A unique key held by a task that is not final writes nothing at all.
        # The plain case (ready now, priority 0, no record written here) runs PUSH, a
        # script of a few lines: PUT's shared helpers are most of its cost. One such task
        # goes, the first time, as a transaction (``_push_first``) packed and read by our
        # own code: a submit cost the client 129.3k instructions through redis-py and
        # ``pack`` (00bd0fa's 127.9k), 84.4k this way (callgrind, bench/submitcost.py).
        guard_ms = int((self.retry_timeout + 5) * 1000)
        own = self.own_state and options.record  # record=False: an untracked queue
        plain = not (own or delay > 0 or options.priority)
        one = len(texts) == 1 and len(tasks[0][0]) == 32
        fast = self.packs_submits and self.multi_submits and self.replication is None
        if plain and one and fast:
            task_id, local = tasks[0][0], self._last_push
            if getattr(local, "id", None) == task_id:  # ``_call`` tries this submit again
                command = self._push_one(queue, guard_ms, task_id, texts[0])
                self.execute(run_packed, scripts.PUSH, command)
            else:
                local.id = task_id
                self.execute(_push_first, [], self, queue, guard_ms, task_id, texts[0])
            return None
        # One tracked task with none of PUT's options: PUT_ONE, written whole (PUT's
        # helpers were most of its cost: 175k instructions of redis-server a call).
        bare = not (delay > 0 or options.priority or options.unique_key)
        bare = bare and options.expires is None
        if own and bare and len(texts) == 1 and self.packs_submits and not self.replication:
            if len(tasks[0][0]) == 32:
                command = self._put_one(queue, guard_ms, tasks[0][0], texts[0])
                self.execute(run_packed, scripts.PUT_ONE, command)
            else:
                ttl = self.status_ttl_ms
                self._script(scripts.PUT_ONE, queue, tasks[0][0], guard_ms, ttl, texts[0])
            return None
        script = scripts.PUSH
        args: tuple[str | int, ...] = (tasks[0][0], guard_ms)
        if own or delay > 0 or options.priority:
            script = scripts.PUT
            delay_ms = f"{delay * 1000:.3f}" if delay > 0 else "0"
            expires = "" if options.expires is None or not own else f"{options.expires * 1000:.0f}"
            unique = (options.unique_key or "") if own else ""
            args += (delay_ms, self.status_ttl_ms, "1" if own else "0", expires, unique)
        args += tuple(texts)
        if self.replication is None:
            reply = self._script(script, queue, *args)
        else:
            reply, acked = self.execute(
                Waited(run, self.replication),
                script,
                self.prefix,
                self.script_queue(queue),
                *args,
            )
            code = reply if script is scripts.PUSH else reply[0]
            if code in (0, 1) and not self.replication.confirmed(acked):
                self._not_replicated(queue, [task_id for task_id, _ in tasks], acked)
        if script is scripts.PUSH:  # 1 stored, 0 a retry that wrote nothing
            return None
        if reply[0] == 2:
            return [reply[1].decode()]
        if reply[0] == 3:
            raise StatusNotTracked(
                f"queue {queue!r} runs its worker with track_status = False, so it keeps "
                "no status: expires and unique_key need one; set track_status = True on "
                "that worker, or submit without them"
            )
        return None

    def _push_heads_made(self, queue: str, guard_ms: int) -> _PushHeads:
        """The parts of the one-task submit's commands made once a queue (``_push_one``,
        ``_push_first_try``): the key names are ``scripts.PUSH``'s."""
        if len(self._push_heads) >= 1024:  # queues named on the fly: bounded
            self._push_heads.clear()
        q = self.script_queue(queue)
        base = f"{self.prefix}:{q}:"
        known = f"{base}known" if q.startswith("{") else f"{self.prefix}:queues"
        guard = f"{base}put:".encode()
        found = self._push_heads[queue] = _PushHeads(
            guard_ms,
            pack([("EVALSHA", scripts.PUSH.sha, 0, self.prefix, q)]).replace(b"*5", b"*8", 1)
            + b"$32\r\n",
            f"\r\n{_bulk(guard_ms)}$",
            pack([("MULTI",)]) + b"*5\r\n$3\r\nSET\r\n$%d\r\n%b" % (len(guard) + 32, guard),
            f"\r\n{_bulk(1)}{_bulk('PX')}{_bulk(guard_ms)}*3\r\n$5\r\nRPUSH\r\n"
            f"{_bulk(f'{self.prefix}_{q}')}$",
            b"\r\n" + pack([("SADD", known, q), ("EXEC",)]),
        )
        return found

    def _push_one(self, queue: str, guard_ms: int, task_id: str, text: str) -> bytes:
        """``EVALSHA PUSH`` of one task (a 32-digit id) packed: all but the id and the
        envelope made once a queue. ``pack`` of the whole command cost 27.5k
        instructions a call (callgrind, 2,000 calls), this 4.8k."""
        heads = self._push_heads.get(queue)
        if heads is None or heads.guard_ms != guard_ms:
            heads = self._push_heads_made(queue, guard_ms)
        data = text.encode()
        after = f"{task_id}{heads.push_after}{len(data)}\r\n".encode()
        return b"".join((heads.push_head, after, data, b"\r\n"))

    def _put_one(self, queue: str, guard_ms: int, task_id: str, text: str) -> bytes:
        """``EVALSHA PUT_ONE`` of one tracked task (a 32-digit id) packed as ``_push_one``
        packs ``PUSH``: through redis-py's ``pack`` and reply reading a tracked submit
        cost the client 121.8k instructions, this way 79.4k (callgrind, 2,000 submits)."""
        head = self._put_one_heads.get(queue)
        if head is None:
            if len(self._put_one_heads) >= 1024:  # queues named on the fly: bounded
                self._put_one_heads.clear()
            q = self.script_queue(queue)
            start = pack([("EVALSHA", scripts.PUT_ONE.sha, 0, self.prefix, q)])
            head = self._put_one_heads[queue] = start.replace(b"*5", b"*9", 1) + b"$32\r\n"
        data = text.encode()
        after = f"{task_id}\r\n{_bulk(guard_ms)}{_bulk(self.status_ttl_ms)}${len(data)}\r\n"
        return b"".join((head, after.encode(), data, b"\r\n"))

    def _push_first_try(self, queue: str, guard_ms: int, task_id: str, text: str) -> bytes:
        """The first try of a one-task submit packed: ``MULTI``, ``SET`` of the guard key
        ``PX``, ``RPUSH``, ``SADD`` of the queue's name, ``EXEC`` (``_push_first``)."""
        heads = self._push_heads.get(queue)
        if heads is None or heads.guard_ms != guard_ms:
            heads = self._push_heads_made(queue, guard_ms)
        data = text.encode()
        after = f"{task_id}{heads.multi_mid}{len(data)}\r\n".encode()
        return b"".join((heads.multi_head, after, data, heads.multi_tail))

    def _not_replicated(self, queue: str, ids: list[str], acked: int) -> None:
        r = self.replication
        assert r is not None
        raise ReplicationTimeout(
            f"{len(ids)} task(s) submitted to {queue!r} are on the Redis master "
            f"({self.server.where}), but only {acked} of the wait_replicas={r.replicas} "
            f"replicas confirmed them within wait_timeout_ms={r.timeout_ms}: they run unless "
            "the master fails before a replica copies them, and submitting again may run "
            "them twice (transport.status(id) tells later). Check the replicas "
            "(INFO replication: connected_slaves, lag) or raise wait_timeout_ms",
            ids,
        )

    def _headers(
        self, queue: str, task_id: str, text: str, options: SubmitOptions
    ) -> dict[str, str]:
        """The envelope's headers: plugins' and the signature, the priority (which the
        scripts read to order reserve, also after a delay, a retry or a recovery), and
        ``expires`` in seconds (a consumer's start then waits for Redis's verdict)."""
        found = self.task_headers(queue, task_id, text)
        if options.expires is not None:
            found = {**found, EXPIRES_HEADER: repr(float(options.expires))}
        if options.priority:
            return {"asynctask-priority": str(options.priority), **found}
        return found

    @property
    def status_ttl_ms(self) -> int:
        """``asynctask_status_ttl`` in ms, as the scripts take it."""
        return max(1, int(self.status_ttl * 1000))

    def _state_store(self) -> StateStore | None:
        return self._statuses

    def _take(self, queue: str) -> Payload | None:
        while True:
            raw = self._script(scripts.GET, queue, self.recheck_ms, self.status_ttl_ms)
            if raw is None:
                return None
            try:
                return read_message(raw, self.max_payload_bytes).payload
            except ValueError as exc:  # read_message turns every parser failure into one
                self._store_undecodable(queue, raw, exc)

    def _store_undecodable(self, queue: str, raw: bytes, exc: ValueError) -> None:
        record = failed_record(None, raw, f"undecodable message: {exc}", 0, time.time())
        logger.warning("%r: undecodable message in %r moved to its failed store", self, queue)
        commands = [("RPUSH", self.key(queue, "failed"), record), ("SADD", self.key_queues, queue)]
        self.execute(pipeline, commands)

    def _stats(self, queue: str) -> QueueStats:
        counts = self._script(scripts.STATS, queue, self.recheck_ms)
        ready, delayed, retrying, in_flight, failed = (int(n) for n in counts)
        return QueueStats(queue, ready, delayed, retrying, in_flight, failed)

    def _oldest_ready(self, queue: str) -> float | None:
        head = self.execute(call, "LINDEX", self.ready_key(queue), 0)
        if head is None:
            return None
        try:
            return read_message(head).submitted_at  # None for a foreign producer's task
        except ValueError:
            return None

    def _peek(self, queue: str, limit: int, offset: int) -> list[WaitingTask]:
        found = []
        for raw in self._script(scripts.PEEK, queue, offset, limit):
            try:
                message = read_message(raw, self.max_payload_bytes)
            except ValueError:  # listed as its text; the next taker moves it to failed
                text = raw.decode("utf-8", errors="replace")
                found.append(WaitingTask("", queue, None, text, 0, None))
                continue
            found.append(
                WaitingTask(
                    message.id, queue, message.payload, None, message.attempts, message.submitted_at
                )
            )
        return found

    def _in_flight(self, queue: str, limit: int, offset: int) -> list[InFlightTask]:
        flat = self._script(scripts.IN_FLIGHT, queue, offset, limit)
        found = []
        for i in range(0, len(flat), 3):
            cid, raw, started = flat[i].decode(), flat[i + 1], flat[i + 2].decode()
            # ``<owner>/<random>``: a child of asynctask workers, named by its owner id
            holder = cid.partition("/")[0] if "/" in cid else f"consumer {cid}"
            since = float(started) if started else None
            try:
                message = read_message(raw, self.max_payload_bytes)
            except ValueError:
                text = raw.decode("utf-8", errors="replace")
                found.append(InFlightTask("", queue, None, text, 1, holder, since, None))
                continue
            found.append(
                InFlightTask(
                    message.id,
                    queue,
                    message.payload,
                    None,
                    message.attempts + 1,
                    holder,
                    since,
                    message.submitted_at,
                )
            )
        return found

    def _queue_names(self) -> list[str]:
        return [name.decode() for name in self._script(scripts.QUEUES, "")]

    def _all_stats(self) -> list[QueueStats]:
        flat = self.execute(run, scripts.ALL_STATS, self.prefix, "")
        stats = []
        for i in range(0, len(flat), 6):
            ready, delayed, retrying, in_flight, failed = (int(n) for n in flat[i + 1 : i + 6])
            stats.append(QueueStats(flat[i].decode(), ready, delayed, retrying, in_flight, failed))
        return stats

    def _purge(self, queue: str) -> int:
        return self._in_chunks(scripts.PURGE, queue)

    def _in_chunks(self, script: scripts.Script, queue: str) -> int:
        """Run a deleting ``script`` a chunk per call until what was there at the first
        call is gone (tasks submitted meanwhile may stay: a queue fed faster than a chunk
        a call would otherwise never end); the total it deleted. One script over a whole
        store held the server for every client.

        When another store keeps the statuses (``asynctask_state``), the script returns
        each chunk's ids too, and that store forgets them after each chunk."""
        elsewhere = not self.own_state
        extra = ("1",) if elsewhere else ()
        deleted, present = 0, None
        while True:
            reply = self._script(script, queue, PURGE_CHUNK, *extra)
            count, left = int(reply[0]), int(reply[1])
            if elsewhere:
                self._purged_elsewhere(queue, [task_id.decode() for task_id in reply[2]])
            if present is None:
                present = count + left
            deleted += count
            if not left or deleted >= present:
                return deleted

    def _failed(self, queue: str, limit: int, offset: int) -> list[FailedTask]:
        if limit <= 0:
            return []
        key = self.key(queue, "failed")
        raws = self.execute(call, "LRANGE", key, offset, offset + limit - 1)
        return [read_failed(queue, raw) for raw in raws]

    def _chosen_failed(self, queue: str, ids: Sequence[str] | None) -> list[bytes]:
        """The failed records to act on: every one, or those of ``ids`` (from the index
        by id, so that a few ids cost a few lookups at any size of the store)."""
        if ids is None:
            return list(self.execute(call, "LRANGE", self.key(queue, "failed"), 0, -1))
        found = self._script(scripts.FIND_FAILED, queue, *dict.fromkeys(ids))
        return [record for record in found if record]

    def _failed_holds(self, queue: str, task_id: str, where: str) -> bool | None:
        # (a consumer whose statuses live elsewhere notes the task's id: the failed
        # store's index by id answers, as for a requeue by id)
        return any(self._script(scripts.FIND_FAILED, queue, task_id))

    def _requeue_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        args: list[Any] = []
        for raw in self._chosen_failed(queue, ids):
            task = read_failed(queue, raw)
            # re-signed by whoever requeues: a requeue is theirs to vouch for
            sign = functools.partial(self.task_headers, queue, task.id)
            args += [raw, requeue_text(task, sign)]
        return int(self._script(scripts.TAKE_FAILED, queue, *args)) if args else 0

    def _purge_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        if ids is None:
            return self._in_chunks(scripts.PURGE_ALL_FAILED, queue)
        args: list[Any] = []
        chosen = self._chosen_failed(queue, ids)
        for raw in chosen:
            args += [raw, ""]
        count = int(self._script(scripts.TAKE_FAILED, queue, *args)) if args else 0
        # Another store keeps their statuses: it forgets those chosen. (A record another
        # process took between the read and the script is not counted, yet forgotten:
        # a purge racing with a requeue of the same task.)
        if count and not self.own_state:
            self._purged_elsewhere(queue, [read_failed(queue, raw).id for raw in chosen])
        return count

    def _claim(self, key: str, ttl: float) -> bool:
        claim = f"{self.prefix}:claim:{key}"
        reply = self.execute(call, "SET", claim, "1", "NX", "PX", int(ttl * 1000))
        return reply is not None

    def _limit_take(self, queue: str, limit: LimitSpec, holder: str, owner: str | None) -> float:
        calls, period = limit.rate or (0, 0.0)
        waited = self._script(
            scripts.LIMIT_TAKE,
            queue,
            holder,
            owner or "",
            calls,
            int(period * 1000),
            limit.max_running or 0,
            int(SLOT_LEASE * 1000),
        )
        return int(waited) / 1000

    def _limit_free(self, queue: str, holder: str) -> None:
        self._script(scripts.LIMIT_FREE, queue, holder)

    def _consumer(self, queue: str, prefetch: int) -> Consumer:
        consumer = RedisConsumer(self, self, queue, prefetch)
        with self._beat_lock:
            self._consumers.add(consumer)
            if self._beat_thread is None:
                self._beat_thread = threading.Thread(
                    target=self._beat, name=f"asynctask-redis-heartbeat-{id(self):x}", daemon=True
                )
                self._beat_thread.start()
        return consumer

    def _owned_consumer(self, queue: str, prefetch: int, owner: str) -> Consumer:
        return RedisConsumer(self, self, queue, prefetch, owner)  # its keeper beats, not us

    def _liveness(self, queue: str, owner: str) -> Liveness:
        return RedisLiveness(self, queue, owner)

    def _close(self) -> None:
        self._beat_stop.set()
        if self._beat_thread is not None and self._beat_thread is not threading.current_thread():
            self._beat_thread.join(5)
        # A consumer still open is left to the recovery of the others: it may be in a
        # blocking wait on another thread, and this unblocks it (TransportClosed).
        idle, self._idle = self._idle, []
        for conn in idle:
            self.server.pool.release(conn)
        self.server.pool.disconnect()

    def hand_back_leftovers(self) -> None:
        """Finish the close of consumers that could not reach Redis (see ``leftovers``)."""
        while self.leftovers:
            queue, cid, acks = self.leftovers[0]
            try:
                self._script(
                    scripts.SETTLE,
                    queue,
                    cid,
                    "close",
                    "",
                    "",
                    "0",
                    "1",
                    self.status_ttl_ms,
                    "",
                    len(acks) // 3,
                    *acks,
                )
            except TransportError as exc:
                logger.debug("handing back a closed consumer's tasks: %s", exc)
                return
            self.leftovers.pop(0)

    # -- heartbeats ---------------------------------------------------------------------

    def forget(self, consumer: RedisConsumer) -> None:
        """Stop beating for ``consumer`` (it is closing)."""
        with self._beat_lock:
            self._consumers.discard(consumer)

    def _beat_commands(self) -> list[tuple[Any, ...]]:
        """The commands that refresh every live consumer's heartbeat (none: no consumer)."""
        with self._beat_lock:
            live = [c for c in self._consumers if c.registered and not c.closed]
        commands: list[tuple[Any, ...]] = []
        for consumer in live:
            commands.append(("SET", consumer.heartbeat_key, "1", "PX", self.heartbeat_ttl_ms))
            commands.append(("SADD", self.key(consumer.queue, "consumers"), consumer.id))
        return commands

    def _beat(self) -> None:
        """Refresh the heartbeat of every live consumer of this transport, until close."""
        conn: Any = None
        proven = False
        while not self._beat_stop.wait(self.heartbeat_seconds):
            commands = self._beat_commands()
            if not commands:
                continue
            for last in (False, True):
                try:
                    if conn is None:
                        conn = self.server.pool.get_connection()
                    pipeline(conn, commands)
                    proven = True
                    self.note_recovery()
                    break
                except (RedisError, OSError) as exc:
                    if conn is not None:
                        conn.disconnect()
                    if last or not proven:  # else: a stale connection, try a new one
                        if not self._beat_stop.is_set():
                            self.note_outage(self.server.error(exc))
                        break
                    proven = False
        if conn is not None:
            self.server.pool.release(conn)


class RedisSentinelTransport(RedisTransport):
    """Tasks on the master a Sentinel service names; follows it through a failover.

    ``redis+sentinel://[:password@]host:port[,host:port]/service_name``: the password
    is the master's (the Sentinels are asked without one). Everything else is the
    single-server transport's.
    """

    schemes = ("redis+sentinel",)  # type: ignore[assignment]

    def _make_server(self) -> Server:
        return SentinelServer(self.location, self.driver_options, self.options)
