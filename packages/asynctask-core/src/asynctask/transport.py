"""The Transport base class: the contract every backend keeps (DESIGN.md sections 1-2).

A transport is one object per URI, safe to share between the threads of a process. The
public methods here validate input, encode payloads and retry while the backend is
unreachable; a backend implements only the underscored primitives and a ``Consumer``.

Two ways to take a task:

* ``get_task(queue)`` is the original's at-most-once call: the task is removed and
  returned. Scripts use it; workers do not.
* ``consumer(queue).reserve(timeout)`` is at-least-once: the task stays stored, invisible
  to other consumers, until ``ack`` removes it, ``retry`` puts it back after a delay,
  ``fail`` moves it to the failed store or ``release`` hands it back untouched. A
  consumer whose process dies leaves its reserved tasks to come back within the
  transport's ``features.recovery_seconds``; that delivery counts as an attempt.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from asynctask import events, signing
from asynctask.errors import (
    AsynctaskError,
    ConfigurationError,
    InvalidTaskError,
    NotSupportedError,
    TransportClosed,
    TransportUnavailable,
)
from asynctask.limits import LimitSpec
from asynctask.liveness import LimitOwnerLiveness, Liveness, NoLiveness, check_owner
from asynctask.outage import OutageReport
from asynctask.status import (
    DEFAULT_STATUS_TTL,
    EXPIRES_HEADER,
    NO_OPTIONS,
    NO_OPTIONS_UNRECORDED,
    StartVerdict,
    State,
    StateStore,
    StatusFeed,
    StatusNotKept,
    StatusNotTracked,
    SubmitOptions,
    TaskStatus,
    check_submit_options,
)
from asynctask.untracked import UntrackedQueues
from asynctask.uri import Option, read_options, redact, split_query
from asynctask.validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Payload,
    check_payload_size,
    check_queue_name,
    decode_message,
    encode_payload,
)

logger = logging.getLogger("asynctask.transport")

T = TypeVar("T")

#: Every count a transport can report; ``features.counts`` names the ones it gives.
COUNT_NAMES = ("ready", "delayed", "retrying", "in_flight", "failed")
#: the queue ``check()`` asks about (any valid name: it is only read)
PROBE_QUEUE = "asynctask_probe"


@dataclass(frozen=True)
class TransportFeatures:
    """Facts a transport declares about itself; the contract suite reads them."""

    #: which ``QueueStats`` counts are given (the others are ``None``)
    counts: frozenset[str]
    #: whether several processes can share the backend (``localmem`` cannot)
    multiprocess: bool
    #: seconds within which a dead consumer's reserved tasks are delivered again
    recovery_seconds: float


@dataclass(frozen=True)
class QueueStats:
    """Counts of one queue; a count the backend cannot give is ``None``."""

    name: str
    ready: int | None
    delayed: int | None = 0
    retrying: int | None = 0
    in_flight: int | None = 0
    failed: int | None = 0
    #: the counts above that are estimates, not exact (pgsql counts exactly up to a
    #: bound per count and estimates above it; empty where every count is exact)
    estimated: tuple[str, ...] = ()


@dataclass(frozen=True)
class FailedTask:
    """A task in a queue's failed store, for a person to inspect and requeue."""

    id: str
    queue: str
    payload: Payload | None  # None when the message could not be decoded
    raw: str | None  # the undecodable text, else None
    error: str
    attempts: int
    submitted_at: float | None
    failed_at: float


@dataclass(frozen=True)
class WaitingTask:
    """A ready task as ``peek`` reads it: still in the queue, untouched."""

    id: str
    queue: str
    payload: Payload | None  # None when the message cannot be decoded
    raw: str | None  # the undecodable text, else None
    #: earlier attempts that ended without success (0 for a task never delivered)
    attempts: int
    submitted_at: float | None  # None where the backend does not know (a foreign task)


@dataclass(frozen=True)
class InFlightTask:
    """A task a consumer holds (reserved, running or prefetched), as ``in_flight`` reads
    it: still stored, untouched, to show a person what the workers are doing."""

    id: str
    queue: str
    payload: Payload | None  # None when the message cannot be decoded
    raw: str | None  # the undecodable text, else None
    #: the attempt it is on (1 for the first delivery), as ``Delivery.attempt``
    attempt: int
    #: who holds it: an owner id (``<host>.<random>``, a child of ``asynctask workers``)
    #: or the transport's name for the consumer (with its host or process where known)
    holder: str
    #: when its holder took it (Unix seconds): reserved, or, where the backend records
    #: only that, started; None where the backend cannot tell (see each transport)
    since: float | None
    submitted_at: float | None  # None where the backend does not know (a foreign task)


@dataclass(slots=True)
class Delivery:
    """A reserved task: its payload and what the transport needs to settle it.

    Slotted: one is made for every task a consumer hands out, and without a ``__dict__``
    its ``__init__`` and attribute reads are cheaper (issue 20, see docs/benchmarks.md).
    """

    id: str
    queue: str
    payload: Payload
    #: 1 for the first delivery; every earlier failure or dead worker adds one
    attempt: int
    submitted_at: float | None = None
    #: the transport's own handle (a row id, a raw message, a file path)
    receipt: Any = field(default=None, repr=False)
    #: string headers stored beside the payload (the signature, for one)
    headers: dict[str, str] = field(default_factory=dict)


class PutProgress:
    """How many tasks of each recent ``_put`` call are stored, by the call's first task id.

    The base class retries a ``_put`` that raised ``TransportUnavailable`` with the same
    tasks (and ids), for up to ``retry_timeout`` seconds. A backend with no unique index
    to lean on (files, memory) records here how far each call got, and a retry resumes
    there: tasks already stored are not stored twice. Entries are forgotten once no
    retry can come (``window`` seconds). (localmem's one-task put keeps instead the id
    of each thread's last one-task put: ``_call`` retries in the thread that tried.)
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._lock = threading.Lock()
        #: key -> (recorded at, count), oldest first (a plain dict keeps insertion order
        #: and its lock-free read cost a localmem submit ~3.5k instructions less than an
        #: OrderedDict and a locked read did, callgrind)
        self._done: dict[str, tuple[float, int]] = {}

    def done(self, key: str) -> int:
        """How many tasks of the call keyed ``key`` are stored already (0 for a new one)."""
        entry = self._done.get(key)  # atomic: no lock needed to read one entry
        return 0 if entry is None else entry[1]

    def record(self, key: str, count: int) -> None:
        """``count`` tasks of the call keyed ``key`` are stored."""
        now = time.monotonic()
        done = self._done
        with self._lock:
            done.pop(key, None)  # to the end: the newest
            done[key] = (now, count)
            while done:  # forget the calls no retry can come for, oldest first
                first = next(iter(done))
                if now - done[first][0] <= self.window:
                    break
                del done[first]


#: the last 4 bytes of the id of a task submitted with no status record (its queue's
#: workers keep none, ``asynctask.untracked``) are its first 4 XOR this: ``status`` can
#: then say "not tracked" (DESIGN.md section 6) for an id the store has no record of,
#: rather than "never submitted". ``new_task_id`` never makes such an id; any other id
#: (older ones, a user's) has the mark by chance once in 2**32.
UNRECORDED_MARK = 0xA5C3_5A3C


def _marked(raw: bytes) -> bool:
    return int.from_bytes(raw[12:16]) == int.from_bytes(raw[:4]) ^ UNRECORDED_MARK


#: the mark's first byte (``_marked``'s test of one byte first)
_MARK_HIGH = UNRECORDED_MARK >> 24


def new_task_id() -> str:
    """Return a new task id: 32 random hex digits, unique without coordination."""
    raw = os.urandom(16)
    # once in 2**32 the unrecorded mark: one byte first, the whole test once in 256
    # (3.1k instructions an id against 6.9k for the whole test every time, callgrind)
    if raw[12] == raw[0] ^ _MARK_HIGH and _marked(raw):
        raw = raw[:15] + bytes((raw[15] ^ 1,))
    return raw.hex()


def unrecorded_task_id() -> str:
    """A new task id that says its task was submitted with no status record: 96 random
    bits and the mark (``UNRECORDED_MARK``)."""
    raw = os.urandom(12)
    return (raw + (int.from_bytes(raw[:4]) ^ UNRECORDED_MARK).to_bytes(4)).hex()


def is_unrecorded(task_id: str) -> bool:
    """Whether ``task_id`` was made by ``unrecorded_task_id``."""
    if len(task_id) != 32:
        return False
    try:
        return _marked(bytes.fromhex(task_id))
    except ValueError:
        return False


def format_error(error: BaseException | str) -> str:
    """Return an error's text as stored in the failed store."""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return error


class Consumer(ABC):
    """At-least-once access to one queue, owned by one worker (thread or process).

    A consumer may reserve up to ``prefetch`` tasks ahead. It is used from one thread,
    except that a worker's timeout watchdog may settle the running task (``retry`` or
    ``fail``) from a timer thread while that thread is inside ``process()``; the process
    ends right after, so a consumer needs only to make that one call safe.

    A child running many tasks at once (``child_concurrency``, ``asynctask.eventloop``)
    still makes every consumer call from its main thread: the tasks run on an event loop
    or in threads and hand their outcome back to it. So a consumer holds up to
    ``prefetch`` reserved tasks at once and must accept their ``ack``/``retry``/``fail``/
    ``release`` in any order, while more are reserved; it need not be thread-safe.

    ``tracking`` (set by the run loop from the worker's ``track_status``): when False the
    run loop never calls ``start``, and ``ack``/``retry``/``fail`` write no status (no
    result, no ``running``/``retrying``/``succeeded``); a transport may still drop the
    task's status record with the settle where that costs nothing (it frees a
    ``unique_key``).
    """

    #: whether this consumer writes task statuses (``asynctask.status``)
    tracking: bool = True
    #: (the store, its feed of this queue or None) once asked: see ``start``
    _status_feed: tuple[StateStore, StatusFeed | None] | None = None

    def __init__(self, transport: Transport, queue: str, prefetch: int) -> None:
        self.transport = transport
        self.queue = check_queue_name(queue)
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch!r}")
        self.prefetch = prefetch
        self.closed = False

    @abstractmethod
    def reserve(self, timeout: float) -> Delivery | None:
        """Wait up to ``timeout`` seconds for a ready task and reserve it.

        Blocks on the backend (never a sleep loop). An undecodable message met on the way
        goes to the failed store and the wait goes on. Returns ``None`` on timeout.
        """

    def start(self, delivery: Delivery) -> StartVerdict:
        """The worker is about to run ``delivery``: mark it ``running`` (status tracking,
        ``asynctask.status``) unless it was cancelled or has expired.

        Returns ``"run"``, or the final state the task was given instead; then the task
        is already settled (removed from the queue, never run, not in the failed store).
        A transport keeping its own state does this in one round trip; the default uses
        the store named by ``asynctask_state``, if any, else runs every task.

        That store's answer is waited for, unless the transport says its consumers may
        start without waiting (``Transport.starts_unwaited``) and the store gives a
        ``StatusFeed``: then a task without ``expires`` that the feed knows was not
        cancelled is marked ``running`` without a round trip. A cancel that reaches the
        store after that mark was sent acts as the cancel of a running task.
        """
        store = self.transport.external_state()
        if store is None:
            return "run"
        feed = self._feed_of(store)
        if (
            feed is not None
            and EXPIRES_HEADER not in delivery.headers
            and feed.may_start(delivery.id)
        ):
            feed.started(delivery.id, delivery.attempt)
            return "run"
        verdict = self.transport._call(store.started, self.queue, delivery.id, delivery.attempt)
        if verdict != "run":
            self.ack(delivery)
        return verdict

    def _feed_of(self, store: StateStore) -> StatusFeed | None:
        """This consumer's feed of ``store`` (asked once per store), or None."""
        if not self.transport.starts_unwaited:
            return None
        known = self._status_feed
        if known is not None and known[0] is store:
            return known[1]
        self.close_status_feed()  # asynctask_state changed: a feed of the old store
        feed = store.feed(self.queue)
        self._status_feed = (store, feed)
        return feed

    def record_outcome(
        self,
        delivery: Delivery,
        state: State,
        error: str | None = None,
        result_json: str | None = None,
    ) -> bool | None:
        """Write an outcome to the store named by ``asynctask_state`` (a transport
        keeping its own statuses wrote it with the settle): through this consumer's
        ``StatusFeed`` without waiting when it has one, else waiting for the store.
        True when the feed knows the task was cancelled while it ran (``StatusFeed
        .settled``), else None."""
        store = self.transport.external_state()
        if store is None:
            return None
        known = self._status_feed
        if known is not None and known[0] is store and known[1] is not None:
            return known[1].settled(
                delivery.id, state, delivery.attempt, error=error, result_json=result_json
            )
        settled = functools.partial(store.settled, error=error, result_json=result_json)
        self.transport._call(settled, delivery.queue, delivery.id, state, delivery.attempt)
        return None

    @property
    def fail_writes_failed(self) -> bool:
        """Whether ``fail`` writes ``failed`` to the store of ``asynctask_state`` itself,
        before it tells the broker (AMQP: ``asynctask_amqp.failing``); then the run loop
        writes no second one. False: the run loop writes it after ``fail``."""
        return False

    @property
    def has_status_feed(self) -> bool:
        """Whether this consumer writes its statuses through a ``StatusFeed``, which may
        hold them until ``flush_status_feed``."""
        known = self._status_feed
        return known is not None and known[1] is not None

    def flush_status_feed(self, *, waiting: bool = True) -> None:
        """Send the writes this consumer's ``StatusFeed`` holds (``StatusFeed.flush``).
        A transport with ``starts_unwaited`` calls it before its ``reserve`` waits for a
        task (``waiting``); the run loop calls it with ``waiting=False`` between
        writing an outcome and telling the broker the task is done
        (``asynctask.attempts``). Never raises: a store that cannot be reached keeps
        them to be sent again first with the feed's next write (or its close), and the
        consumer goes on."""
        known = self._status_feed
        if known is not None and known[1] is not None:
            try:
                known[1].flush(waiting=waiting)
            except AsynctaskError as exc:
                logger.warning(
                    "%r: the task statuses held could not be written yet (%s); they are "
                    "sent again with the next ones",
                    self.transport,
                    exc,
                )

    def close_status_feed(self) -> None:
        """Wait for the writes this consumer's ``StatusFeed`` sent, and close it. A
        transport with ``starts_unwaited`` calls it from ``close``."""
        known, self._status_feed = self._status_feed, None
        if known is not None and known[1] is not None:
            try:
                known[1].close()
            except AsynctaskError as exc:  # the consumer's own close must go on
                logger.warning(
                    "%r: the task statuses sent last may be lost (%s)", self.transport, exc
                )

    def note_failing(self, delivery: Delivery, where: str, error: str) -> bool | None:
        """Before ``fail`` moves the task into the failed store at ``where`` (what
        ``Transport._failed_holds`` looks up), note it in the store of
        ``asynctask_state`` (``StateStore.failing``), so that a worker killed between
        the move and ``failed`` leaves a task that reads ``failed`` (the failed window,
        ``asynctask.status``). A transport keeping its own statuses does the same in
        its own way. True when the task was cancelled meanwhile (the caller drops it
        instead), else None."""
        store = self.transport.external_state()
        if store is None or not self.tracking:
            return None
        self.flush_status_feed(waiting=False)  # a start it holds goes first
        noted = functools.partial(store.failing, error=error)
        return self.transport._call(noted, delivery.queue, delivery.id, delivery.attempt, where)

    @abstractmethod
    def ack(self, delivery: Delivery, result_json: str | None = None) -> bool | None:
        """The task is done: remove it for good; ``succeeded`` with its result.

        ``result_json`` is what ``process()`` returned, as JSON text (``None`` for no
        result or one that could not be stored). A transport may send the
        acknowledgement with the consumer's next call (``reserve`` or ``close``), saving
        a round trip; callers make that next call at once.

        Returns True when the task had been cancelled while it ran (it stays
        ``cancelled``, its result discarded) if the transport can tell at no cost, else
        ``None``; the run loop then logs it. With ``transport.own_state`` False (the
        store of ``asynctask_state`` keeps the statuses) it writes no status: the run
        loop writes through that store.
        """

    @abstractmethod
    def retry(self, delivery: Delivery, delay: float, error: str) -> bool | None:
        """The attempt failed: make the task ready again after ``delay`` seconds.

        ``delay`` is checked with ``check_delay`` first (a ``ValueError`` for infinity,
        NaN or a negative number), before anything is written.

        A transport keeping its own statuses drops a task cancelled while it ran
        instead (never retried) and returns True, so that the run loop logs what
        happened; else ``None``.
        """

    @abstractmethod
    def fail(self, delivery: Delivery, error: str) -> bool | None:
        """Give up: move the task to the queue's failed store with ``error``.

        A transport keeping its own statuses drops a task cancelled while it ran
        instead (not in the failed store) and returns True, as ``retry`` does; else
        ``None``.
        """

    @abstractmethod
    def release(self, delivery: Delivery) -> None:
        """Hand the task back untouched (not counted as an attempt)."""

    @abstractmethod
    def close(self) -> None:
        """Release every task still reserved and free the consumer's resources."""

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Transport(ABC):
    """The base of every transport; see the module docstring for the contract."""

    #: URI schemes this transport serves (the first is its name)
    schemes: ClassVar[tuple[str, ...]] = ()
    #: URI query options this transport accepts, beyond ``COMMON_OPTIONS``
    options_accepted: ClassVar[Mapping[str, Option]] = {}
    #: facts about this transport; an instance may refine them from its URI options
    features: TransportFeatures
    #: the largest payload as JSON text, in bytes (``get_transport`` sets it from the
    #: setting ``asynctask_max_payload_bytes``); bigger messages met in a queue fail
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: ``asynctask_signing_key`` as a tuple (the first signs, all verify); empty: unsigned
    signing_keys: tuple[str, ...] = ()
    #: the setting ``asynctask_state``: another transport's URI keeping task statuses
    state_uri: str | None = None
    #: the setting ``asynctask_status_ttl``: seconds a final status is kept
    status_ttl: float = DEFAULT_STATUS_TTL
    #: tasks a worker's child reserves ahead when neither its worker class nor its queue
    #: entry sets ``prefetch``; a transport whose statement per reserve costs most of a
    #: short task raises it (pgsql, see its README)
    default_prefetch: ClassVar[int] = 4
    #: whether this transport's consumers may start a task without waiting for the store
    #: of ``asynctask_state`` (``Consumer.start``): True only where ``_put`` stores
    #: ``EXPIRES_HEADER`` with a task submitted with ``expires``, the consumers'
    #: ``reserve`` calls ``flush_status_feed`` before it waits, and their ``close``
    #: calls ``close_status_feed``
    starts_unwaited: ClassVar[bool] = False

    #: whether ``submit_task`` may take ``_submit_plain`` for a call with no option:
    #: not for a subclass that overrides ``submit_tasks`` (it expects every submit)
    _submits_plainly: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._submits_plainly = cls.submit_tasks is Transport.submit_tasks

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.safe_uri = redact(uri)
        self.location, pairs = split_query(uri)
        self.options, self.driver_options = read_options(
            uri, pairs, self.options_accepted, self.accepts_driver_option
        )
        self.retry_timeout: float = self.options["retry_timeout"]
        #: (asynctask_state, its transport, its store), once looked up
        self._external: tuple[str, Transport, StateStore] | None = None
        self._closed = False
        self._outage = OutageReport(repr(self))
        #: which queues keep no status, to skip their records at submit
        self._untracked = UntrackedQueues()

    # -- what a subclass may override -------------------------------------------------

    def accepts_driver_option(self, name: str) -> bool:
        """Whether a query option unknown to us is passed through to the driver."""
        return False

    # -- the primitives a subclass implements -------------------------------------------

    @abstractmethod
    def _put(
        self,
        queue: str,
        tasks: Sequence[tuple[str, str]],
        delay: float,
        options: SubmitOptions,
    ) -> Sequence[str] | None:
        """Store ``(task_id, payload_json)`` pairs at the tail of ``queue``, in order.

        ``options`` (``asynctask.status``): ``priority`` orders reserve (higher first,
        FIFO within one); ``expires`` is kept with the task; ``unique_key`` (one task)
        makes the put a no-op while a task holding that key on ``queue`` is not final.
        A transport keeping its own state records ``queued``/``delayed`` here, unless
        ``options.record`` is False (a queue whose workers keep no status). Returns
        the ids to give the caller when they differ from the given ones (the existing
        task's id for a unique key already held), else ``None``.
        """

    @abstractmethod
    def _take(self, queue: str) -> Payload | None:
        """Remove and return the head ready task, or ``None`` (never creating the queue)."""

    @abstractmethod
    def _stats(self, queue: str) -> QueueStats:
        """Counts of one queue (zeros for a queue never used)."""

    @abstractmethod
    def _queue_names(self) -> list[str]:
        """Names of every queue with anything stored (ready, delayed, in flight or failed)."""

    def _all_stats(self) -> list[QueueStats]:
        """Counts of every queue with anything stored. A backend that can count them all
        in one round trip overrides this (``queues()`` on 1,000 queues: one call, not
        1,001)."""
        return [self._stats(name) for name in sorted(set(self._queue_names()))]

    @abstractmethod
    def _purge(self, queue: str) -> int:
        """Remove every ready, delayed and retrying task; return how many."""

    @abstractmethod
    def _failed(self, queue: str, limit: int, offset: int) -> list[FailedTask]:
        """The failed store, oldest first: ``limit`` tasks after the first ``offset``.

        Reads no more than ``offset + limit`` records (a page, never the whole store)."""

    @abstractmethod
    def _requeue_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        """Move failed tasks (all, or those ids) back to ready, attempts reset."""

    @abstractmethod
    def _purge_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        """Delete failed tasks (all, or those ids); return how many."""

    @abstractmethod
    def _claim(self, key: str, ttl: float) -> bool:
        """Atomically take ``key`` for ``ttl`` seconds; False if somebody holds it."""

    def _oldest_ready(self, queue: str) -> float | None:
        """Submit time of the oldest ready task; override where the backend can tell."""
        return None

    def _peek(self, queue: str, limit: int, offset: int) -> list[WaitingTask]:
        """``limit`` ready tasks after the first ``offset``, in the order they would be
        taken, read without taking, changing or moving any (an undecodable one is listed
        with its text). Override where the backend can; ``can_peek`` tells whether a
        transport did."""
        raise NotSupportedError(
            f"{self!r} cannot list waiting tasks without taking them (peek); "
            "queue_stats() gives their counts"
        )

    def _in_flight(self, queue: str, limit: int, offset: int) -> list[InFlightTask]:
        """``limit`` tasks held by consumers after the first ``offset``, in an order that
        stays the same while they are held, read without changing any. Override where
        the backend can; ``can_list_in_flight`` tells whether a transport did."""
        raise NotSupportedError(
            f"{self!r} cannot list the tasks its consumers hold (in_flight); "
            "queue_stats() gives their count where the backend can tell"
        )

    @abstractmethod
    def _consumer(self, queue: str, prefetch: int) -> Consumer:
        """A new consumer of ``queue``."""

    @abstractmethod
    def _close(self) -> None:
        """Free connections, threads and files."""

    def _purged_elsewhere(self, queue: str, ids: Sequence[str]) -> None:
        """A purge deleted the tasks ``ids``: the store of ``asynctask_state``, when it is
        not this transport's own, forgets their statuses and frees their unique keys
        (``StateStore.purged``). Called after the tasks are gone: a status forgotten
        first could be read by a worker taking one of them meanwhile (it would run
        untracked). A transport learns the ids only when ``own_state`` is False: its
        own purge forgets its statuses in the same step."""
        if not ids:
            return
        store = self.external_state()
        if store is not None:
            self._call(store.purged, queue, list(ids))

    def _failed_holds(self, queue: str, task_id: str, where: str) -> bool | None:
        """Whether ``queue``'s failed store holds the task a worker noted it was moving
        there, at ``where`` (what its consumer gave ``Consumer.note_failing``): one
        look-up by that, never a scan (the failed window, ``asynctask.status``). None
        (the default): this transport cannot tell by id, and its consumers note nothing."""
        return None

    def _state_store(self) -> StateStore | None:
        """The store of this transport's own task statuses, or ``None`` if it keeps none
        (then ``asynctask_state`` must name one). Fused transports return a store whose
        generic calls match what their queue operations write."""
        return None

    def _owned_consumer(self, queue: str, prefetch: int, owner: str) -> Consumer:
        """A consumer whose liveness ``self.liveness(queue, owner)`` keeps elsewhere.

        The default ignores the owner: for transports whose consumers keep their own
        liveness in a way a busy thread cannot lose (a broker-watched connection).
        """
        return self._consumer(queue, prefetch)

    def _liveness(self, queue: str, owner: str) -> Liveness:
        """The keeper of ``owner``'s liveness on ``queue``; see ``asynctask.liveness``."""
        return NoLiveness(queue, owner, self.features.recovery_seconds / 4)

    #: whether ``limit_take`` keeps global limits (``asynctask.limits``) in this backend
    keeps_limits: ClassVar[bool] = False
    #: whether a transport that keeps no shared state itself (AMQP) keeps its global
    #: limits in the store named by ``asynctask_state``; without either, ``asynctask
    #: workers`` refuses queues that have them
    limits_in_state: ClassVar[bool] = False

    def _state_limits(self) -> Transport | None:
        """With ``limits_in_state``: the transport ``asynctask_state`` names, if it keeps
        global limits; else ``None``."""
        if not self.limits_in_state or self.external_state() is None:
            return None
        assert self._external is not None  # looked up with the store
        other = self._external[1]
        return other if other.keeps_limits else None

    def limits_keeper(self, queue_name: str) -> Transport:
        """The transport keeping the global limits of a queue: this one
        (``keeps_limits``), or the one ``asynctask_state`` names (``limits_in_state``).
        Raises ``ConfigurationError`` saying what to do when there is none."""
        if self.keeps_limits:
            return self
        keeper = self._state_limits()
        if keeper is not None:
            return keeper
        scheme = self.schemes[0] if self.schemes else type(self).__name__
        if self.limits_in_state:
            raise ConfigurationError(
                f"queue {queue_name!r} has global limits (rate_scope 'global' or "
                f"max_running), which the {scheme} transport keeps in the store named by "
                "asynctask_state: set asynctask_state to a redis, pgsql or filesys URI "
                "(e.g. ASYNCTASK_STATE=redis://127.0.0.1:6379/0), or drop those limits"
            )
        raise ConfigurationError(
            f"queue {queue_name!r} has global limits (rate_scope 'global' or max_running), "
            f"kept in the backend, but the {scheme} transport keeps no shared state for "
            "them: use redis, pgsql or filesys as asynctask_transport for that queue, or "
            "drop those limits"
        )

    def _limit_take(self, queue: str, limit: LimitSpec, holder: str, owner: str | None) -> float:
        """See ``limit_take``. This default hands the call to the store of
        ``asynctask_state`` (``limits_in_state``), or raises saying what to do."""
        keeper = self.limits_keeper(queue)
        if keeper is self:  # a subclass that keeps them must override this
            raise NotImplementedError(f"{type(self).__name__} keeps_limits but no _limit_take")
        return keeper._limit_take(queue, limit, holder, owner)

    def _limit_free(self, queue: str, holder: str) -> None:
        """See ``limit_free``. This default hands the call to the store of
        ``asynctask_state`` (``limits_in_state``); elsewhere nothing could be taken."""
        keeper = self._state_limits()
        if keeper is not None:
            keeper._limit_free(queue, holder)

    # -- the public API ---------------------------------------------------------------

    def submit_task(
        self,
        queue_name: str,
        payload: Payload | None = None,
        *,
        delay: float = 0,
        expires: float | None = None,
        unique_key: str | None = None,
        priority: int = 0,
    ) -> str:
        """Add a task at the tail of a queue; return its id.

        ``delay`` (seconds) keeps it invisible until then. The payload must be a JSON
        object (``None`` means ``{}``); anything else is refused before anything is written.
        ``expires``, ``unique_key`` and ``priority``: see ``asynctask.status``.
        """
        if (
            type(delay) is int
            and type(priority) is int
            and delay == 0
            and priority == 0
            and expires is None
            and unique_key is None
            and self._submits_plainly
            and (self.state_uri is None or self.state_uri == self.uri)
        ):
            return self._submit_plain(queue_name, payload)
        return self.submit_tasks(
            queue_name,
            [payload],
            delay=delay,
            expires=expires,
            unique_key=unique_key,
            priority=priority,
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
    ) -> list[str]:
        """Add many tasks in order, in as few round trips as the backend allows.

        Every payload is checked first: one bad payload and none is written. To a queue
        whose workers keep no status, no status record is written unless an option
        needs one (``asynctask.untracked``: known a few seconds late).
        """
        check_queue_name(queue_name)
        delay = check_delay(delay)
        payloads = list(payloads)
        options = check_submit_options(expires, unique_key, priority, len(payloads))
        texts: list[str] = []
        for index, payload in enumerate(payloads):
            try:
                text = encode_payload(payload)
                check_payload_size(text, self.max_payload_bytes)
                texts.append(text)
            except InvalidTaskError as exc:
                if index == 0:
                    raise
                raise InvalidTaskError(f"payload #{index}: {exc}") from exc
        make_id = new_task_id
        store = self.external_state() if texts else None
        if texts and not options.needs_record and self._untracked_queue(queue_name, store):
            options = (
                NO_OPTIONS_UNRECORDED
                if options.priority == 0
                else SubmitOptions(priority=options.priority, record=False)
            )
            make_id = unrecorded_task_id  # so that status() can say why it has none
        tasks = [(make_id(), text) for text in texts]
        ids = [task_id for task_id, _ in tasks]
        if tasks:
            if store is None or not options.record:
                # a fused transport writes the records in _put (unless record=False)
                stored = self._call(self._put, queue_name, tasks, delay, options)
            else:
                # Another transport keeps the statuses: it records them (and takes the
                # unique key) first; a key already held means nothing is stored here.
                known = self._call(store.submitted, queue_name, ids, delay, options)
                if list(known) != ids:
                    return list(known)
                plain = SubmitOptions(options.expires, None, options.priority, record=False)
                try:
                    stored = self._call(self._put, queue_name, tasks, delay, plain)
                except BaseException:
                    # never stored (as far as we know): no status, the unique key free
                    try:
                        store.unsubmitted(queue_name, ids, options)
                    except Exception as exc:  # the submit's own error is the one to see
                        logger.warning("Could not undo the statuses of a failed submit: %s", exc)
                    raise
            if stored is not None:
                ids = list(stored)
        events.task_submitted(queue_name, ids)
        return ids

    def _submit_plain(self, queue: str, payload: Payload | None) -> str:
        """``submit_task`` with no option, to a transport keeping its own statuses: what
        ``submit_tasks`` does for one such task, without its lists and option checks
        (the bench's one-by-one submit, and most applications'). The same ``_put``
        call; this alone took a localmem submit from 80.3k instructions to 69.2k
        tracked, 67.0k to 55.9k untracked (callgrind, ``bench/submitcost.py``)."""
        check_queue_name(queue)
        text = encode_payload(payload)
        check_payload_size(text, self.max_payload_bytes)
        if self._untracked_queue(queue, None):
            task_id, options = unrecorded_task_id(), NO_OPTIONS_UNRECORDED
        else:
            task_id, options = new_task_id(), NO_OPTIONS
        stored = self._call(self._put, queue, [(task_id, text)], 0.0, options)
        if stored is not None:
            task_id = stored[0]
        if events.submit_hooks:
            events.task_submitted(queue, [task_id])
        return task_id

    def _untracked_queue(self, queue: str, external: StateStore | None) -> bool:
        """Whether ``queue``'s workers keep no status, as this object's cache knows it
        (``asynctask.untracked``: one read of the store per queue every few seconds).
        No store, or a store that cannot answer now: False (the records are written, as
        they always were; the submit meets the outage itself)."""
        found = self._untracked.known(queue)
        if found is not None:
            return found
        store = external if external is not None else self._own_store()
        if store is None:  # nothing is recorded anyway
            self._untracked.note(queue, tracked=True)
            return False
        try:
            return self._untracked.untracked(queue, store.untracked)
        except AsynctaskError as exc:
            logger.debug("Could not read whether queue %s is tracked: %s", queue, exc)
            return False

    def _own_store(self) -> StateStore | None:
        """This transport's own status store when it keeps them (``own_state``)."""
        return self._state_store() if self.own_state else None

    def _note_tracking(self, queue: str, tracked: bool) -> None:
        """A run loop of this process recorded ``queue``'s tracking: submits through
        this object follow it at once, not after ``RECHECK_SECONDS``."""
        self._untracked.note(queue, tracked)

    # -- what happened to a task (DESIGN.md section 6, ``asynctask.status``) ----------

    def status(self, task_id: str) -> TaskStatus | None:
        """The task's status, or ``None`` for an id the store never had or has forgotten."""
        return self.statuses([task_id])[0]

    def statuses(self, task_ids: Sequence[str]) -> list[TaskStatus | None]:
        """The status of each id, in one round trip where the backend allows."""
        store = self.state()
        task_ids = list(task_ids)
        found = self._call(store.statuses, task_ids)
        for i, noted in enumerate(found):
            if noted is not None and noted.failing is not None and noted.state == "running":
                found[i] = self._repaired(store, noted, noted.failing)
        unrecorded = [
            i for i, s in zip(task_ids, found, strict=True) if s is None and is_unrecorded(i)
        ]
        if unrecorded:
            raise StatusNotTracked(
                f"task {unrecorded[0]!r} was submitted while its queue's workers ran with "
                "track_status = False: it has no status; set track_status to true in the "
                "worker class or in its asynctask_workers entry to follow its tasks"
            )
        self._refuse_untracked(store, found)
        return found

    def _repaired(self, store: StateStore, noted: TaskStatus, where: str) -> TaskStatus | None:
        """The status of a task noted ``failing`` (the failed window, ``asynctask
        .status``): ``failed`` when this transport's failed store holds it (written by
        this read, since its worker did not: killed between the move and the write),
        else as read (the move has not happened: its worker is on the way, or died
        before it and the task comes back to be run again)."""
        if not self._call(self._failed_holds, noted.queue, noted.id, where):
            return noted
        self._call(store.confirm_failed, noted.queue, noted.id, where)
        return self._call(store.statuses, [noted.id])[0]

    def _refuse_untracked(self, store: StateStore, found: Sequence[TaskStatus | None]) -> None:
        """``StatusNotTracked`` when a status belongs to a queue whose workers keep none
        (it would read ``queued`` forever)."""
        queues = {s.queue for s in found if s is not None and not s.final}
        if not queues:
            return
        untracked = self._call(store.untracked, queues)
        if untracked:
            name = sorted(untracked)[0]
            raise StatusNotTracked(
                f"the workers of queue {name!r} run with track_status = False: its tasks "
                "have no status; set track_status to true in the worker class or in its "
                "asynctask_workers entry to follow them"
            )

    def wait(self, task_id: str, timeout: float | None = None) -> TaskStatus:
        """Block until the task is final and return its status.

        Woken by the backend, not a poll loop. Raises the built-in ``TimeoutError`` after
        ``timeout`` seconds, ``LookupError`` for an id the store does not know, and
        ``StatusNotTracked`` for a task of a queue whose workers keep no status.
        """
        if timeout is not None and (not math.isfinite(timeout) or timeout < 0):
            raise ValueError(f"timeout must be a finite number >= 0 or None, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        store = self.state()
        while True:
            now = self.status(task_id)  # refuses an untracked queue's task at once
            if now is None:
                raise LookupError(f"no task {task_id!r}: never submitted here, or forgotten")
            if now.final:
                return now
            # Waited in slices of the fallback poll, each ended by a read through this
            # transport: a worker killed between the failed store and ``failed`` wrote
            # nothing to wake us, and the read writes it (``_repaired``).
            part = store.fallback_poll
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"task {task_id} is still {now.state}")
                part = min(part, left)
            try:
                found = store.wait(task_id, part)
            except TimeoutError:
                continue
            if found is None:
                raise LookupError(f"no task {task_id!r}: never submitted here, or forgotten")
            return found

    def cancel(self, task_id: str) -> bool:
        """Cancel a task that is not final: True if it was not final and now is
        cancelled (or, running, is being stopped by its supervisor)."""
        return self._call(self.state().cancel, task_id)

    def state(self) -> StateStore:
        """Where this transport's task statuses live (its own, or ``asynctask_state``'s).

        Raises ``StatusNotKept`` naming the setting when there is none.
        """
        if self.own_state:
            own = self._state_store()
            if own is not None:
                own.status_ttl = self.status_ttl
                return own
        store = self.external_state()
        if store is None:
            raise StatusNotKept(
                f"{self!r} keeps no task status: set asynctask_state to the URI of a "
                "transport that does (e.g. ASYNCTASK_STATE=redis://127.0.0.1:6379/0)"
            )
        return store

    @property
    def own_state(self) -> bool:
        """Whether this transport writes task statuses itself, fused with its queue
        operations; False when ``asynctask_state`` names another store (then the base
        class and the run loop write through ``external_state()``, and ``_put`` and the
        consumer write no status)."""
        return self.state_uri is None or self.state_uri == self.uri

    def external_state(self) -> StateStore | None:
        """The store named by ``asynctask_state`` when it is not this transport's own.

        Looked up once and kept (the run loop asks for every task): again only when the
        setting changes or that transport was closed.
        """
        if self.state_uri is None or self.state_uri == self.uri:
            return None
        cached = self._external
        if cached is not None and cached[0] == self.state_uri and not cached[1].closed:
            store = cached[2]
        else:
            from asynctask.api import get_transport  # the store is another transport

            other = get_transport(self.state_uri)
            found = other._state_store()
            if found is None:
                raise StatusNotKept(
                    f"asynctask_state names {other!r}, which keeps no task status itself; "
                    "name a transport that does (filesys, pgsql, redis)"
                )
            store = found
            self._external = (self.state_uri, other, store)
        store.status_ttl = self.status_ttl
        return store

    def get_task(self, queue_name: str) -> Payload | None:
        """Remove the head task of a queue and return its payload (at most once).

        Returns ``None`` when nothing is ready. Workers use ``consumer()`` instead.
        """
        return self._call(self._take, check_queue_name(queue_name))

    def poll_queue(self, queue_name: str) -> int:
        """How many tasks are ready to be taken now (0 for a queue never used)."""
        ready = self.queue_stats(queue_name).ready
        return ready or 0

    def queue_stats(self, queue_name: str) -> QueueStats:
        """The counts of one queue (ready, delayed, retrying, in flight, failed)."""
        return self._call(self._stats, check_queue_name(queue_name))

    def queues(self) -> list[QueueStats]:
        """Every queue holding a task in any state, with its counts, sorted by name.

        The same on every transport: a queue a backend still knows but that holds
        nothing (emptied, or declared and never used) is not listed. A count a backend
        cannot give (``None``: AMQP's in flight) cannot show a queue.
        """
        stats = sorted(self._call(self._all_stats), key=lambda stats: stats.name)
        return [s for s in stats if any(getattr(s, count) for count in COUNT_NAMES)]

    def oldest_ready(self, queue_name: str) -> float | None:
        """When the oldest ready task was submitted (Unix seconds).

        ``None`` when nothing is ready, or when the backend cannot tell without taking a
        task (AMQP). ``asynctask top`` shows its age.
        """
        return self._call(self._oldest_ready, check_queue_name(queue_name))

    def peek(self, queue_name: str, limit: int = 100, offset: int = 0) -> list[WaitingTask]:
        """Up to ``limit`` ready tasks after the first ``offset``, head first, read without
        taking them: ``offset=100`` is the second page of 100.

        Delayed, retrying, in-flight and failed tasks are not listed. Raises
        ``NotSupportedError`` on a backend that cannot read a queue without taking from
        it (AMQP; see ``can_peek``).
        """
        queue = check_queue_name(queue_name)
        limit, offset = check_page(limit, offset)
        if limit == 0 and self.can_peek:
            return []
        return self._call(self._peek, queue, limit, offset)

    @property
    def can_peek(self) -> bool:
        """Whether ``peek`` lists waiting tasks here (the transport implements ``_peek``)."""
        return type(self)._peek is not Transport._peek

    def in_flight(self, queue_name: str, limit: int = 100, offset: int = 0) -> list[InFlightTask]:
        """Up to ``limit`` tasks held by consumers (reserved: running, or prefetched and
        not started yet) after the first ``offset``, with who holds each and since when,
        read without changing them.

        A task is listed while it is held; once settled (acknowledged, retried, failed,
        released) or handed back from a dead worker, it is not (an acknowledgement a
        consumer sends with its next call, see ``Consumer.ack``, leaves it listed until
        that call). Raises
        ``NotSupportedError`` on a backend that cannot read what its consumers hold
        (AMQP; see ``can_list_in_flight``).
        """
        queue = check_queue_name(queue_name)
        limit, offset = check_page(limit, offset)
        if limit == 0 and self.can_list_in_flight:
            return []
        return self._call(self._in_flight, queue, limit, offset)

    @property
    def can_list_in_flight(self) -> bool:
        """Whether ``in_flight`` lists held tasks here (the transport implements
        ``_in_flight``)."""
        return type(self)._in_flight is not Transport._in_flight

    def purge(self, queue_name: str) -> int:
        """Delete every task of a queue that is not in flight or failed; return how many."""
        return self._call(self._purge, check_queue_name(queue_name))

    def failed_tasks(self, queue_name: str, limit: int = 100, offset: int = 0) -> list[FailedTask]:
        """The queue's failed store, oldest first: up to ``limit`` tasks after the first
        ``offset`` (``offset=100`` is the second page of 100)."""
        queue = check_queue_name(queue_name)
        limit, offset = check_page(limit, offset)
        if limit == 0:
            return []
        return self._call(self._failed, queue, limit, offset)

    def requeue_failed(self, queue_name: str, ids: Sequence[str] | None = None) -> int:
        """Move failed tasks back to the queue (all, or the given ids); return how many."""
        return self._call(self._requeue_failed, check_queue_name(queue_name), _ids(ids))

    def purge_failed(self, queue_name: str, ids: Sequence[str] | None = None) -> int:
        """Delete failed tasks (all, or the given ids); return how many."""
        return self._call(self._purge_failed, check_queue_name(queue_name), _ids(ids))

    def claim(self, key: str, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds if nobody holds it: True for the one winner.

        The scheduler uses it so that N schedulers submit each firing once.
        """
        if not key or len(key) > 200:
            raise InvalidTaskError(f"a claim key must be 1-200 characters, got {key!r}")
        if not ttl > 0:
            raise InvalidTaskError(f"a claim ttl must be > 0 seconds, got {ttl!r}")
        return self._call(self._claim, key, float(ttl))

    def check(self) -> None:
        """Reach the backend once, without retrying and creating nothing.

        Returns when it answers; raises ``TransportRefused`` when it refuses us for good
        (credentials, database, vhost, TLS) and ``TransportUnavailable`` when it is away.
        ``asynctask workers`` calls it before starting any child.
        """
        self._check_open()
        self._stats(PROBE_QUEUE)

    def consumer(self, queue_name: str, prefetch: int = 1, *, owner: str | None = None) -> Consumer:
        """An at-least-once consumer of one queue, for one worker; see ``Consumer``.

        With ``owner``, the consumer runs no heartbeat of its own: its tasks stay its own
        for as long as ``liveness(queue_name, owner)``, kept by another process (the
        supervisor of ``asynctask workers``), says so. See ``asynctask.liveness``.
        """
        self._check_open()
        queue = check_queue_name(queue_name)
        if owner is None:
            return self._consumer(queue, prefetch)
        return self._owned_consumer(queue, prefetch, check_owner(owner))

    def limit_take(
        self, queue_name: str, limit: LimitSpec, holder: str, owner: str | None = None
    ) -> float:
        """Count one start of ``holder`` under the queue's global limits if they allow it
        now (0.0); else the seconds until asking again may succeed. See ``asynctask.limits``.
        """
        queue = check_queue_name(queue_name)
        if owner is not None:
            check_owner(owner)
        return self._call(self._limit_take, queue, limit, holder, owner)

    def limit_free(self, queue_name: str, holder: str) -> None:
        """``holder``'s task ended: free its running slot (see ``asynctask.limits``)."""
        self._call(self._limit_free, check_queue_name(queue_name), holder)

    def liveness(self, queue_name: str, owner: str, *, holds_slots: bool = True) -> Liveness:
        """The liveness of ``owner``'s consumers of a queue, for the process that keeps it.

        Call ``beat()`` every ``interval`` seconds while the owner's worker lives and
        ``end(started)`` once it has exited. Transports whose consumers keep their own
        liveness return a ``NoLiveness``; but if their global limits live in the store
        of ``asynctask_state`` (``limits_in_state``, AMQP) and the owner may hold running
        slots (``holds_slots``: its queue has ``max_running``), the owner is kept alive
        in that store, so that its slots come back when it dies. See
        ``asynctask.liveness``.
        """
        self._check_open()
        queue, owner = check_queue_name(queue_name), check_owner(owner)
        kept = self._liveness(queue, owner)
        if holds_slots and isinstance(kept, NoLiveness):
            keeper = self._state_limits()
            if keeper is not None:
                return LimitOwnerLiveness(keeper.liveness(queue, owner))
        return kept

    def close(self) -> None:
        """Free the transport's connections; later calls raise ``TransportClosed``."""
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def __enter__(self: TT) -> TT:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.safe_uri!r})"

    def task_headers(self, queue: str, task_id: str, payload_json: str) -> dict[str, str]:
        """The headers a transport stores beside a new task, natively (never inside the
        payload): those plugins add (``asynctask_submit_headers``, e.g. a trace context)
        and its signature, when signing.

        Every ``_put`` calls it; without plugins or signing keys it costs one list check.
        """
        found = events.submit_headers(queue)
        if not self.signing_keys:
            return found
        # our own text, checked at submit: no limit applies here
        signed = signing.sign(self.signing_keys, queue, task_id, json.loads(payload_json))
        return {**found, **signed}

    def signature_problem(self, delivery: Delivery) -> str | None:
        """Why a delivery must not run (unsigned or badly signed, when this process holds
        signing keys), or None. The run loop sends such a task to the failed store."""
        if not self.signing_keys:
            return None
        return signing.problem(
            self.signing_keys, delivery.queue, delivery.id, delivery.payload, delivery.headers
        )

    def decode(self, data: str | bytes) -> Payload:
        """A stored message's payload; ``UndecodableMessage`` (a ``ValueError``) for any
        failure, a message over ``max_payload_bytes`` included. Every decode path uses it."""
        return decode_message(data, self.max_payload_bytes)

    # -- retrying while the backend is away -------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"{self!r} is closed; get a new one with get_transport()")

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a primitive, retrying with back-off while it raises ``TransportUnavailable``.

        Gives up after ``retry_timeout`` seconds with the last error. Logs once per outage.
        """
        if self._closed:
            self._check_open()
        deadline = time.monotonic() + self.retry_timeout
        pause = 0.05
        while True:
            try:
                result = fn(*args)
            except TransportUnavailable as exc:
                self.note_outage(exc)
                if time.monotonic() + pause > deadline or self._closed:
                    raise TransportUnavailable(
                        f"{exc} (gave up after retrying for {self.retry_timeout:g} s; "
                        "set the URI option retry_timeout to wait longer)"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            if self._outage.in_outage:  # (the common answer without two calls)
                self.note_recovery()
            return result

    def note_outage(self, exc: BaseException) -> None:
        """Log that the backend is unreachable: when it starts, then once a minute
        (consumers call it too)."""
        self._outage.failed(exc)

    def note_recovery(self) -> None:
        """Log that the backend is back, once, if an outage was logged."""
        self._outage.ok()


TT = TypeVar("TT", bound=Transport)


def check_delay(delay: object) -> float:
    """``delay`` as float seconds, or ``InvalidTaskError`` (a ``ValueError``).

    A delay must be a finite number >= 0: infinity would park a task forever (or overflow
    a backend's timestamp), NaN compares false with everything, and a negative delay is
    a mistake. Submits and every consumer's ``retry`` check it before writing anything.
    """
    if (
        isinstance(delay, bool)
        or not isinstance(delay, int | float)
        or not math.isfinite(delay)
        or delay < 0
    ):
        raise InvalidTaskError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    return float(delay)


#: the largest ``limit`` or ``offset`` of a listing: their sum must fit the backends'
#: 64-bit integers (PostgreSQL's ``LIMIT limit + offset``, Redis's ``LRANGE``, ``islice``)
PAGE_INDEX_MAX = 2**62 - 1


def check_page(limit: object, offset: object) -> tuple[int, int]:
    """``(limit, offset)`` of a listing if both are ints from 0 to ``PAGE_INDEX_MAX``, else
    ``InvalidTaskError`` (a ``ValueError``) naming the one that is not, before the backend
    is asked (a larger one was a backend's overflow error, or a bare ``ValueError``)."""
    for name, value in (("limit", limit), ("offset", offset)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= PAGE_INDEX_MAX
        ):
            raise InvalidTaskError(
                f"{name} must be an int from 0 to {PAGE_INDEX_MAX}, got {value!r}"
            )
    assert isinstance(limit, int) and isinstance(offset, int)
    return limit, offset


def _ids(ids: Sequence[str] | None) -> Sequence[str] | None:
    if ids is None:
        return None
    if isinstance(ids, str):
        return [ids]
    return list(ids)
