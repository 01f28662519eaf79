"""What happened to a task: its status, its result, cancel, expiry, uniqueness, priority.

DESIGN.md section 6. A task's status is kept by a ``StateStore``. Every transport that
can keep state gives its own (``Transport._state_store``), usually fused with its queue
operations so that tracking costs no extra round trip: the submit writes ``queued`` in
the same statement or script as the task, the consumer's ``start`` marks it ``running``
and says whether it may run, and ``ack``/``retry``/``fail`` write the outcome with the
settle. A backend that cannot keep state (AMQP) names another transport's URI in the
setting ``asynctask_state`` and uses that one's store through the generic calls below;
any transport may do the same. There each start waits for ``started``'s verdict, unless
the store gives the consumer a ``StatusFeed`` (an optional capability, ``feed``): one
that hears every cancel lets a start, and the outcome after it, go out without waiting.

The life of a task::

    submit ──> queued ─────────────┐        (delayed: submitted with a delay)
      │          │  start()         │ expires passes before a start
      └> delayed ┴──> running ──> succeeded
                         │  └───> failed <── requeue puts it back to queued
                         └──> retrying ──> (start again) running
    cancel(): queued / delayed / retrying / running ──> cancelled
    expired: not started before ``expires``

A queue whose workers run with ``track_status = False`` (``StateStore.set_tracking``)
gets no record at submit either, unless an option lives in it (``expires``,
``unique_key``): ``SubmitOptions.record`` is False then, and such a task reads ``None``.
Submitters learn it through a cache, a few seconds late (``asynctask.untracked``).

``succeeded``, ``failed``, ``cancelled`` and ``expired`` are final. A final status is
forgotten ``asynctask_status_ttl`` seconds after it was reached, by the backend itself
(a key expiry, a bounded delete), never by a scan that grows with history; a ``failed``
status lives as long as its failed record.

The failed window. A failure is two writes in two places: the task moves into its
transport's failed store, then its status becomes ``failed`` (in that order: a waiter
woken by ``failed`` finds the task there). A worker killed between them would leave
the task in the failed store reading ``running`` for good. So before the move the
worker notes where it is moving it (``StateStore.failing``, kept in the status record,
read with it, changing nothing else), and a read of a ``running`` status that
carries such a note (``TaskStatus.failing``) asks the transport whether its failed
store holds the task (``Transport._failed_holds``: one look-up by that note, never a
scan); when it does, the read writes ``failed`` itself (``confirm_failed``, only while
the note is still there), which wakes the waiters. ``Transport.wait`` reads again every
``fallback_poll`` seconds, so a waiter sees it too when nobody else looks. AMQP's failed
store is a queue, which cannot be looked up by id: there the broker keeps the task until
``failed`` is written instead, and a redelivered start reads the status
(``asynctask_amqp.failing``; ``Consumer.fail_writes_failed``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

from asynctask.errors import ConfigurationError, InvalidTaskError

State = Literal[
    "queued", "delayed", "running", "retrying", "succeeded", "failed", "cancelled", "expired"
]
#: every state, in the order a task can meet them
STATES: tuple[State, ...] = (
    "queued",
    "delayed",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
)
#: states after which nothing happens to the task any more
FINAL_STATES: frozenset[State] = frozenset({"succeeded", "failed", "cancelled", "expired"})
#: what ``Consumer.start`` may answer: run it, or it was settled as cancelled/expired
#: (or failed: only an AMQP consumer's start of a task redelivered after its worker was
#: killed in its failure, ``asynctask_amqp.failing``; a store's ``started`` never says it)
StartVerdict = Literal["run", "cancelled", "expired", "failed"]

#: default of the setting ``asynctask_status_ttl``: a final status is kept a day
DEFAULT_STATUS_TTL = 86400.0
#: ``priority`` bounds (DESIGN.md section 6): 0 is the default, 9 the most urgent
MIN_PRIORITY, MAX_PRIORITY = 0, 9
#: a unique key is stored beside the queue name: the same bound as queue names' spirit
MAX_UNIQUE_KEY_LENGTH = 200
#: the header a transport with ``Transport.starts_unwaited`` stores beside a task
#: submitted with ``expires`` (its seconds): such a task's start always asks the store,
#: whose clock decides whether it expired
EXPIRES_HEADER = "asynctask-expires"


@dataclass(frozen=True)
class TaskStatus:
    """What became of one task. Times are Unix seconds; ``None`` where not reached."""

    id: str
    queue: str
    state: State
    attempts: int
    submitted_at: float | None
    started_at: float | None = None
    finished_at: float | None = None
    #: the last error (a retry's or the failure's), else ``None``
    error: str | None = None
    #: the JSON value ``process()`` returned (``None`` when it returned ``None``)
    result: object = None
    #: internal (the failed window, see ``StateStore.failing``): where a worker said it
    #: was moving the task into its transport's failed store, while no ``failed`` has
    #: confirmed it; ``Transport.statuses`` looks there by it. None for everything else.
    failing: str | None = field(default=None, repr=False, compare=False)

    @property
    def final(self) -> bool:
        """Whether nothing will happen to the task any more."""
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, object]:
        """The public fields, as the CLI's and the web's JSON show them (not the
        internal ``failing``)."""
        shown = asdict(self)
        del shown["failing"]
        return shown


@dataclass(frozen=True)
class SubmitOptions:
    """The lifecycle options of one submit call (DESIGN.md section 6)."""

    #: seconds after the submit; a task not started by then is never run
    expires: float | None = None
    #: while a task with this key on this queue is not final, a submit is a no-op
    unique_key: str | None = None
    #: 0-9, higher taken first, FIFO within one priority
    priority: int = 0
    #: whether the submit writes the tasks' status records (``queued``/``delayed``).
    #: False only for a queue whose workers keep no status (``track_status = False``)
    #: and a submit with no option that needs a record (``needs_record``): set by
    #: ``Transport.submit_tasks``, honoured by ``_put`` (``asynctask.untracked``)
    record: bool = True

    @property
    def plain(self) -> bool:
        """Whether no option is set (a transport may take its fastest path)."""
        return self.expires is None and self.unique_key is None and self.priority == 0

    @property
    def needs_record(self) -> bool:
        """Whether an option lives in the status record: ``expires`` is checked against
        it at the start, ``unique_key`` is taken with it (``priority`` lives with the task)."""
        return self.expires is not None or self.unique_key is not None


#: a submit that sets no option, and one to a queue that keeps no status: shared, not
#: built per submit (a frozen dataclass costs ~5k instructions to build, about 5% of a
#: localmem submit)
NO_OPTIONS = SubmitOptions()
NO_OPTIONS_UNRECORDED = SubmitOptions(record=False)


def check_submit_options(
    expires: object, unique_key: object, priority: object, count: int
) -> SubmitOptions:
    """Validate the submit options before anything is written; ``count`` payloads."""
    if expires is None and unique_key is None and priority == 0 and type(priority) is int:
        return NO_OPTIONS
    if expires is not None:
        if isinstance(expires, bool) or not isinstance(expires, (int, float)):
            raise InvalidTaskError(f"expires must be a number of seconds, got {expires!r}")
        if not math.isfinite(expires) or expires <= 0:
            raise InvalidTaskError(f"expires must be a positive number of seconds, got {expires!r}")
    if unique_key is not None:
        if not isinstance(unique_key, str) or not unique_key:
            raise InvalidTaskError(f"unique_key must be a non-empty string, got {unique_key!r}")
        if len(unique_key) > MAX_UNIQUE_KEY_LENGTH:
            raise InvalidTaskError(
                f"unique_key is {len(unique_key)} characters; at most {MAX_UNIQUE_KEY_LENGTH}"
            )
        if count > 1:
            raise InvalidTaskError(
                f"unique_key names one task, but {count} payloads were given: "
                "submit them one by one, each with its own key"
            )
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskError(f"priority must be an integer 0-9, got {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidTaskError(f"priority must be 0-9, got {priority}")
    return SubmitOptions(
        expires=None if expires is None else float(expires),
        unique_key=unique_key,
        priority=priority,
    )


class StatusNotKept(ConfigurationError):
    """This transport keeps no task status: name a store in ``asynctask_state``."""


class StatusNotTracked(ConfigurationError):
    """The queue's worker runs with ``track_status = False``: its tasks have no status."""


class StatusFeed(ABC):
    """One consumer's line to a ``StateStore`` for one queue, so that its starts need
    not wait (``StateStore.feed``).

    It hears the queue's cancels as they are made, and knows those made before it
    opened (the store keeps them for ``status_ttl``): so ``may_start`` can say, without
    a round trip, that a task was not cancelled, and the running mark and the outcome
    are sent without waiting for their replies, in order, on a connection of its own.
    Used from the consumer's thread (and the watchdog's one settle); see
    ``Consumer.start``.
    """

    #: whether another process of this host may make this feed's writes with a feed of
    #: its own on the same store (``started`` then takes ``began``, the task's
    #: ``time.monotonic()``, and ``cancel_heard(task_id)`` tells what ``settled`` would
    #: of a success): an AMQP consumer's relay does, acknowledging each task once its
    #: writes are answered (``asynctask_amqp.relayedfeed``)
    relayable: ClassVar[bool] = False

    @abstractmethod
    def may_start(self, task_id: str) -> bool:
        """True only if every cancel of this queue's tasks made before this call is
        known here and none names ``task_id``. Reads what has arrived without waiting;
        a feed that was lost is opened again (a round trip) at most now and then, and
        says False until then. Never raises for the feed's own failures."""

    @abstractmethod
    def started(self, task_id: str, attempt: int) -> None:
        """``StateStore.started`` sent without waiting for the verdict: only for a task
        ``may_start`` allowed, with no ``expires`` (``EXPIRES_HEADER``). A feed may hold
        it (a few milliseconds at most, with the time the task started), for the
        task's outcome or with other writes, but not the first start after the
        consumer waited (``flush`` with ``waiting``): that one is sent at once."""

    @abstractmethod
    def settled(
        self,
        task_id: str,
        state: State,
        attempts: int,
        *,
        error: str | None = None,
        result_json: str | None = None,
    ) -> bool | None:
        """``StateStore.settled`` sent without waiting, after every earlier write of
        this feed. A write whose connection is lost before its reply is sent again.
        A feed may hold it for its next write, ``flush`` or ``close``, a few
        milliseconds at most: the run loop calls ``flush`` before it tells the broker
        the task is done. Returns True for a success when the feed
        knows, without waiting, that the task was cancelled while it ran (it stays
        ``cancelled``, its result discarded: the run loop says so), else None."""

    def flush(self, *, waiting: bool = True) -> None:  # noqa: B027 (optional)
        """Send the writes held, if any (``Consumer.flush_status_feed``): ``waiting``,
        the consumer is about to wait for a task, so no start would carry them soon;
        else it wrote an outcome and is about to tell the broker the task is done
        (the outcome must not be lost with the process once the broker forgot the
        task), and goes on to the next task at once. A feed that holds nothing has
        nothing to do."""

    @abstractmethod
    def close(self) -> None:
        """Wait for the replies of everything sent (then every write is done) and free
        the feed's connections."""


class StateStore(ABC):
    """Where task statuses live: the generic calls, used by a transport with no state of
    its own (``asynctask_state``) and by tests. A transport keeping its own state fuses
    the same writes into its queue operations instead of calling these.

    Every call may raise ``TransportUnavailable``; the caller retries as for any call.
    """

    #: seconds a final status is kept (the setting ``asynctask_status_ttl``)
    status_ttl: float = DEFAULT_STATUS_TTL
    #: seconds between re-reads of a status while ``wait`` blocks: only a fallback for a
    #: lost notification (the contract sets 10 s and still sees ``wait`` return within
    #: 1 s). A transport's ``_state_store()`` returns the same object every time, so
    #: that this can be set on it.
    fallback_poll: float = 5.0

    def set_tracking(self, queue: str, tracked: bool) -> None:  # noqa: B027 (optional)
        """Record whether ``queue``'s workers keep statuses (``track_status``).

        A worker with ``track_status = False`` calls it with ``False`` when it starts,
        one with tracking on calls it with ``True``; ``untracked`` reads it. Kept until
        changed (a key, a row, a file per queue: a few bytes). The default keeps nothing:
        override it (the contract tests it).
        """

    def feed(self, queue: str) -> StatusFeed | None:
        """A new ``StatusFeed`` of ``queue`` for one consumer, or ``None`` (the default):
        the optional capability that lets a transport keeping its statuses here start a
        task without waiting for ``started`` (``Transport.starts_unwaited``). Without it
        every start waits for the store's verdict, which is always correct."""
        return None

    def untracked(self, queues: Collection[str]) -> set[str]:
        """Which of ``queues`` have workers with ``track_status = False``: their tasks'
        statuses stop at ``queued``, so ``status``/``wait`` raise ``StatusNotTracked``."""
        return set()

    @abstractmethod
    def submitted(
        self,
        queue: str,
        ids: Sequence[str],
        delay: float,
        options: SubmitOptions,
    ) -> list[str]:
        """Record new tasks as ``queued`` (``delayed`` with a delay) before they are
        stored in the queue; return the ids to give the caller.

        With ``options.unique_key`` (one id): if a task holding that key on ``queue`` is
        not final, nothing is written and ``[its_id]`` is returned; the caller then
        stores nothing. The key is taken atomically (a unique index, ``SET NX``, an
        exclusive create) and freed when the task reaches a final state.
        """

    def unsubmitted(self, queue: str, ids: Sequence[str], options: SubmitOptions) -> None:
        """Undo ``submitted`` for tasks that a failed submit never stored (the other
        transport's publish failed after the record): the caller got an error, not
        these ids. The default ends them ``cancelled``, which frees a unique key they
        took; a store that can drop records overrides it."""
        for task_id in ids:
            self.cancel(task_id)

    @abstractmethod
    def started(self, queue: str, task_id: str, attempt: int) -> StartVerdict:
        """A worker is about to run the task: ``running`` unless it was cancelled or
        has expired, in which case that state is made final and returned."""

    @abstractmethod
    def settled(
        self,
        queue: str,
        task_id: str,
        state: State,
        attempts: int,
        *,
        error: str | None = None,
        result_json: str | None = None,
    ) -> None:
        """Record an outcome: ``retrying``, ``succeeded`` (with ``result_json``),
        ``failed``, ``expired``, or ``queued`` (requeued from the failed store, or handed
        back). A task already ``cancelled`` stays cancelled (its result is discarded)."""

    def failing(
        self, queue: str, task_id: str, attempts: int, where: str, error: str
    ) -> bool | None:
        """A worker is about to move the task into its transport's failed store, at
        ``where`` (what ``Transport._failed_holds`` looks up): note it in the task's
        record, which keeps its state (a status read returns it as ``TaskStatus
        .failing``), until the next write of the record (``failed`` after the move, a
        start after the worker died before it, a requeue, a cancel) drops it.

        True when the task was cancelled (then nothing is noted: the caller drops the
        task instead), else None. The default notes nothing: with such a store a worker
        killed between the move and ``failed`` leaves the task reading ``running``."""
        return None

    def confirm_failed(self, queue: str, task_id: str, where: str) -> None:  # noqa: B027
        """The failed store holds the task noted ``failing`` at ``where``, whose worker
        wrote no ``failed`` (killed between the two): write ``failed`` (with the
        error noted, waking the waiters) if the record still carries that note, else
        nothing (a later write won). Only a store that overrides ``failing`` needs it."""

    @abstractmethod
    def statuses(self, ids: Sequence[str]) -> list[TaskStatus | None]:
        """The status of each id, ``None`` for one never known or forgotten.

        A ``queued``/``delayed`` task past its ``expires`` reads ``expired``.
        """

    @abstractmethod
    def wait(self, task_id: str, timeout: float | None) -> TaskStatus | None:
        """Block until the task is final (woken by the backend, not a poll loop) and
        return its status; ``None`` if the id is unknown. Raises the built-in
        ``TimeoutError`` when ``timeout`` seconds pass first."""

    @abstractmethod
    def purged(self, queue: str, ids: Sequence[str]) -> None:
        """Forget the statuses of tasks that a purge deleted (``purge``, ``purge_failed``
        of a transport keeping its statuses here): ``status`` reads ``None``, as for an
        id never known, a ``wait`` returns, and a unique key they held is free."""

    @abstractmethod
    def cancel(self, task_id: str) -> bool:
        """Make a task that is not final ``cancelled``; True if it was not final.

        A waiting task never runs (the consumer's ``start`` drops it, or the store
        removes it at once); a running one is stopped by its supervisor."""
