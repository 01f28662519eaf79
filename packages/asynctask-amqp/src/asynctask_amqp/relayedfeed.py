"""``RelayedFeed``: a relay consumer's status writes, made by its relay before the acks.

With statuses in another store (``asynctask_state``), the run loop writes a task's
outcome and has it answered before the broker is told the task is done
(``asynctask.attempts.record``): once the broker forgets a task, only the store knows it
succeeded, and a killed worker must not leave it ``running``. Done in the worker, that
is a round trip to the store a task, waited for between two tasks (the AMQP drain with
tracking read 0.62x the drain without, against 0.79x while the writes were not waited
for).

A worker whose connection lives in a relay (``asynctask_amqp.relay``) already sends its
acknowledgements to the relay, unanswered, before it starts its next task. So the writes
go the same way, in the same frames, before the acks: the relay makes them with a feed
of its own on the same store (``StatusFeed.relayable``), waits for their replies, and
only then acknowledges the tasks (``Relay._write``). The worker waits for nothing; the
relay, a process of its own, waits while the worker runs the next task, and frames read
together are written together (one script call and one ``basic.ack`` for several
tasks). A worker killed after it sent a frame leaves the frame in the socket: the relay
reads it before it sees the socket closed, writes, then acks. A relay that dies with it
acks nothing: the broker delivers those tasks again.

The worker's own feed still hears the cancels (``may_start``, ``cancel_heard``) and
makes the writes no ack waits for, at once, as without a relay: the first start after
the consumer waited (it reads ``running`` as soon), and an outcome that is not a success
(``retrying``, ``failed``: what is held goes first, moved there in order; the run
loop's flush before a retry waits for it, as before). The relay gets the rest: a busy
consumer's starts, held (a short task's start and success are one write), and the
successes, which go with the next frame (the ack before the next task, a reserve), or
within ``HOLD`` seconds from a thread (``asynctask.flusher.MarkFlusher``) while the task
runs on. A held start carries its ``time.monotonic()`` (the host's clock, the relay's
too), so ``started_at`` is when the task started. A start made here that reaches Redis
after the outcome the relay made leaves that outcome (the ``WRITES`` script).
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Protocol

from asynctask.errors import AsynctaskError
from asynctask.flusher import MarkFlusher
from asynctask.status import State, StatusFeed

logger = logging.getLogger("asynctask.amqp")

#: the longest a write is held for the next frame before it is sent (seconds)
HOLD = 0.02

#: a write as it crosses the relay's socket: ``["s", id, attempt, began]`` (a start, its
#: ``time.monotonic()``), ``["o", id, state, attempts, error, result_json]`` (an outcome),
#: ``["b", id, attempt, began, result_json]`` (a start held and its success: one write)
Write = list[Any]


def replay(feed: Relayable, writes: list[Write]) -> None:
    """Make ``writes`` (as they cross the socket) with ``feed``, in order: the relay's
    feed (``Relay._write``), or the worker's own when a non-success must go after them."""
    for write in writes:
        kind = write[0]
        if kind == "s":
            feed.started(str(write[1]), int(write[2]), began=float(write[3]))
        elif kind == "b":
            task_id, attempt = str(write[1]), int(write[2])
            feed.started(task_id, attempt, began=float(write[3]))
            feed.settled(task_id, "succeeded", attempt, result_json=write[4] or None)
        else:
            _, task_id, state, attempts, error, result = write
            feed.settled(
                str(task_id), state, int(attempts), error=error or None, result_json=result or None
            )


class Relayable(Protocol):
    """What the worker keeps of the store's own feed: the cancels it hears, and the
    writes that need no ack after them (a first start, an outcome that is not a
    success), made at once as without a relay."""

    relayable: ClassVar[bool]

    def may_start(self, task_id: str) -> bool: ...

    def cancel_heard(self, task_id: str) -> bool: ...

    def started(self, task_id: str, attempt: int, began: float | None = None) -> None: ...

    def settled(
        self,
        task_id: str,
        state: State,
        attempts: int,
        *,
        error: str | None = None,
        result_json: str | None = None,
    ) -> bool | None: ...

    def flush(self, *, waiting: bool = True) -> None: ...

    def close(self) -> None: ...


class Relaying(Protocol):
    """What the feed needs of its consumer (``RemoteConsumer``)."""

    #: held with every call on the relay's socket (reentrant: ``reserve`` flushes the
    #: feed while it holds it)
    _lock: Any
    #: the writes not sent yet, carried by the consumer's next frame (before its acks)
    _writes: list[Write]
    #: the acks not sent yet (by receipt)
    _acks: list[int]

    def _settled(self) -> None:
        """Send the acks and writes waiting in one unanswered frame (the lock held)."""


class RelayedFeed(StatusFeed):
    """A relay consumer's status feed: cancels from the store's feed of this process,
    writes made by the relay; see the module docstring."""

    def __init__(self, inner: Relayable, consumer: Relaying) -> None:
        self.inner = inner
        self._consumer = consumer
        #: whether the consumer waited for a task since its last settle: its next start
        #: is then sent at once, else held for its success
        self._waited = True
        self._held_since = 0.0
        self._flusher: MarkFlusher | None = None

    def __repr__(self) -> str:
        return f"RelayedFeed({self.inner!r})"

    def may_start(self, task_id: str) -> bool:
        """The store's feed of this process knows every cancel and none names it."""
        return self.inner.may_start(task_id)

    def started(self, task_id: str, attempt: int) -> None:
        """``running``: for the consumer's first task since it waited, sent at once by
        the store's feed of this process (the mark reads ``running`` as soon as without
        a relay); else held for the relay (with its success: one write there)."""
        consumer = self._consumer
        with consumer._lock:
            if consumer._writes or not self._waited:
                consumer._writes.append(["s", task_id, attempt, time.monotonic()])
                self._hold()
                return
        self.inner.started(task_id, attempt)

    def settled(
        self,
        task_id: str,
        state: State,
        attempts: int,
        *,
        error: str | None = None,
        result_json: str | None = None,
    ) -> bool | None:
        """An outcome: a success held for the relay (the frame of its ack); any other
        made at once by the store's feed of this process, after what is held (moved
        there, in order: a start made by the relay after a ``retrying`` would undo
        it). True for a success whose cancel the store's feed has heard."""
        consumer = self._consumer
        if state == "succeeded":
            with consumer._lock:
                writes = consumer._writes
                last = writes[-1] if writes else None
                if last is not None and last[0] == "s" and last[1] == task_id:
                    # its start is held: one write (less to frame, decode and make)
                    writes[-1] = ["b", task_id, attempts, last[3], result_json or ""]
                else:
                    writes.append(["o", task_id, state, attempts, "", result_json or ""])
                    self._hold()
            return self.inner.cancel_heard(task_id) or None
        with consumer._lock:
            held, consumer._writes = consumer._writes, []
            inner = self.inner
            replay(inner, held)
            inner.settled(task_id, state, attempts, error=error, result_json=result_json)
            # answered before the ack or retry that follows (and the acks waiting, whose
            # outcomes were among those held): a failure's ``failed`` must be in the
            # store before its original is acknowledged (``asynctask_amqp.failing``)
            inner.flush(waiting=False)
        return None

    def _hold(self) -> None:
        """A write was added to the consumer's (the lock held): time the first."""
        if len(self._consumer._writes) == 1:
            self._held_since = time.monotonic()
            if self._flusher is None:
                self._flusher = MarkFlusher(self, "asynctask-amqp-statuses")
            self._flusher.wake()

    def flush(self, *, waiting: bool = True) -> None:
        """``waiting``: the consumer is about to wait for a task, what is held goes now
        (its next start is sent at once). Else it is about to acknowledge a task: the
        outcome goes in the frame that carries the ack, before it (the relay makes the
        writes, answered, then the acks), so nothing is sent here."""
        consumer = self._consumer
        with consumer._lock:
            self._waited = waiting
            if waiting:
                if consumer._writes:
                    self._post()
                self.inner.flush(waiting=True)  # (its next start goes at once)

    def flush_marks(self, now: float) -> float | None:
        """The thread's look: send what is held once the oldest is ``HOLD`` old; None
        when nothing is held, else the seconds until then."""
        lock = self._consumer._lock
        if not lock.acquire(blocking=False):
            return HOLD / 4  # a call of the consumer is under way: it may send them
        try:
            if not self._consumer._writes:
                return None
            due = self._held_since + HOLD - now
            if due > 0:
                return due
            self._post()
            return None
        finally:
            lock.release()

    def close(self) -> None:
        """Send what is held (the relay makes it before the consumer's close), and close
        the store's feed."""
        if self._flusher is not None:
            self._flusher.close()
            self._flusher = None
        consumer = self._consumer
        with consumer._lock:
            if consumer._writes:
                self._post()
        self.inner.close()

    def _post(self) -> None:
        """Send the consumer's acks and writes waiting, unanswered (the lock held). A
        relay that cannot be reached is the consumer's failure: its next call raises
        it, and the broker delivers its tasks again; the feed never raises."""
        try:
            self._consumer._settled()
        except AsynctaskError as exc:
            logger.info("%r: the statuses held could not reach the relay (%s)", self, exc)
