"""``localmem:``: the in-process reference transport, and the test double.

Features
    Every count; the whole delivery contract, within one process only. ``peek``,
    ``in_flight`` (holder: the consumer's thread; since: when it reserved the task) and
    ``failed_tasks`` page through memory. A consumer
    belongs to the thread that reserves with it; when that thread ends without settling
    its tasks, they come back (counted as an attempt) within ``recovery_seconds``.
    Task status (``asynctask.status``), kept in memory (``asynctask.transports.memstate``)
    and written in the same critical section as each queue operation: priority lanes
    0-9 (FIFO within each), ``expires``, ``unique_key``, results, ``cancel`` (a waiting
    task is removed at once), ``wait`` woken by a condition variable, final statuses
    forgotten after ``status_ttl`` by a bounded heap.
URI
    ``localmem:`` or ``localmem://`` (anything after the colon names a separate store).
Options
    ``retry_timeout`` only (nothing here can be unreachable).
Storage
    Python objects in the transport instance; nothing survives the process. The
    ``asynctask workers`` command refuses it, since its children are other processes.
    ``get_task`` (at most once) skips cancelled and expired tasks and leaves the task it
    hands over ``succeeded``, without a result; ``purge`` forgets the purged tasks'
    statuses (in the store of ``asynctask_state`` when that keeps them).
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from asynctask import events
from asynctask.limits import LimitBook, LimitSpec
from asynctask.status import MAX_PRIORITY, StartVerdict, SubmitOptions
from asynctask.transport import (
    Consumer,
    Delivery,
    FailedTask,
    InFlightTask,
    PutProgress,
    QueueStats,
    Transport,
    TransportFeatures,
    WaitingTask,
    check_delay,
)
from asynctask.transports.memstate import MemoryStateStore
from asynctask.validation import Payload, decode_message, decode_payload

_RECOVERY_SECONDS = 1.0


#: the headers of a task submitted without any (shared: a task's headers are replaced,
#: never changed in place)
_NO_HEADERS: dict[str, str] = {}


class _Task:
    """A stored task. A plain class with slots, not a dataclass: made at every submit,
    2.6k instructions against the dataclass's 4.6k (its headers' ``default_factory``
    dict, its keyword arguments; callgrind). Compared by identity."""

    __slots__ = (
        "attempts",
        "due",
        "headers",
        "holder",
        "id",
        "owner",
        "priority",
        "reserved_at",
        "retrying",
        "submitted_at",
        "text",
    )

    def __init__(
        self,
        id: str,
        text: str,
        submitted_at: float,
        priority: int = 0,
        headers: dict[str, str] = _NO_HEADERS,
    ) -> None:
        self.id = id
        self.text = text
        self.submitted_at = submitted_at
        self.priority = priority
        self.headers = headers
        self.attempts = 0  # deliveries that ended without success
        self.due = 0.0
        self.retrying = False
        self.owner: threading.Thread | None = None
        self.reserved_at: float | None = None  # when ``owner`` took it (Unix seconds)
        #: the consumer holding it (its thread is ``owner``), for ``in_flight``
        self.holder = ""


class _LastPut(threading.local):
    """Per thread: the id of its last one-task put."""

    id = ""


class _Ready:
    """Ready tasks: one FIFO lane per priority, the highest non-empty lane first."""

    def __init__(self) -> None:
        self.lanes = [deque[_Task]() for _ in range(MAX_PRIORITY + 1)]
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[_Task]:
        """In the order takers take them (``peek``): the highest lane first, FIFO within."""
        for lane in reversed(self.lanes):
            yield from lane

    def append(self, task: _Task) -> None:
        self.lanes[task.priority].append(task)
        self.count += 1

    def appendleft(self, task: _Task) -> None:
        self.lanes[task.priority].appendleft(task)
        self.count += 1

    def popleft(self) -> _Task:
        first = self.lanes[0]
        if len(first) == self.count:  # every ready task in the default lane (a drain)
            self.count -= 1
            return first.popleft()
        for lane in reversed(self.lanes):
            if lane:
                self.count -= 1
                return lane.popleft()
        raise IndexError("no ready task")

    def remove(self, task_id: str) -> bool:
        """Remove one task by id (a cancel: rare, so a scan of its queue is fine)."""
        for lane in self.lanes:
            for task in lane:
                if task.id == task_id:
                    lane.remove(task)
                    self.count -= 1
                    return True
        return False

    def oldest(self) -> float | None:
        heads = [lane[0].submitted_at for lane in self.lanes if lane]
        return min(heads) if heads else None

    def clear(self) -> list[str]:
        ids = [task.id for lane in self.lanes for task in lane]
        for lane in self.lanes:
            lane.clear()
        self.count = 0
        return ids


@dataclass
class _Queue:
    ready: _Ready = field(default_factory=_Ready)
    # (due, sequence, task): delayed and retrying tasks, soonest first
    waiting: list[tuple[float, int, _Task]] = field(default_factory=list)
    in_flight: dict[str, _Task] = field(default_factory=dict)
    failed: dict[str, FailedTask] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.ready or self.waiting or self.in_flight or self.failed)


class LocalMemTransport(Transport):
    """Tasks held in this process's memory; see the module docstring."""

    schemes = ("localmem",)
    keeps_limits = True
    features = TransportFeatures(
        counts=frozenset({"ready", "delayed", "retrying", "in_flight", "failed"}),
        multiprocess=False,
        recovery_seconds=_RECOVERY_SECONDS,
    )

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self._queues: dict[str, _Queue] = {}
        self._claims: dict[str, float] = {}
        self._limits: dict[str, LimitBook] = {}
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._sequence = itertools.count()
        self._progress = PutProgress(self.retry_timeout + 5)
        #: the id of each thread's last one-task put (``_put``'s retry guard for them)
        self._last_put = _LastPut()
        #: consumers waiting on ``_cond`` (lock held to change it): a put with none
        #: notifies nobody (``notify_all`` cost a submit 1.8k instructions)
        self._sleepers = 0
        self._statuses = MemoryStateStore(self._lock, self._drop)

    # -- for tests: what another program would write ------------------------------------

    def inject(self, queue: str, text: str) -> None:
        """Store raw ``text`` as a task, as a foreign producer would (may be garbage)."""
        with self._cond:
            self._queue(queue).ready.append(
                _Task("raw-" + str(next(self._sequence)), text, time.time())
            )
            self._cond.notify_all()

    def stored(self, queue: str) -> int:
        """Tasks stored for ``queue`` in any state but failed (read past the API)."""
        with self._cond:
            q = self._queues.get(queue)
            return 0 if q is None else len(q.ready) + len(q.waiting) + len(q.in_flight)

    # -- primitives ---------------------------------------------------------------------

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    @property  # (a plain attribute in the base class)
    def status_ttl(self) -> float:
        """The setting ``asynctask_status_ttl``, kept by the status store itself (it may
        change after the transport was made): the consumer's hot path passes no TTL."""
        return self._statuses.status_ttl

    @status_ttl.setter
    def status_ttl(self, value: float) -> None:
        self._statuses.status_ttl = value

    def _state_store(self) -> MemoryStateStore:
        return self._statuses

    def _store(self) -> MemoryStateStore:
        """The status store (with this transport's ``status_ttl``)."""
        return self._statuses

    def _drop(self, queue: str, task_id: str) -> None:
        """A waiting task was cancelled or expired: remove it from its queue (lock held)."""
        q = self._queues.get(queue)
        if q is None or q.ready.remove(task_id):
            return
        for index, entry in enumerate(q.waiting):
            if entry[2].id == task_id:
                q.waiting[index] = q.waiting[-1]
                q.waiting.pop()
                heapq.heapify(q.waiting)
                return

    def _put(
        self,
        queue: str,
        tasks: Sequence[tuple[str, str]],
        delay: float,
        options: SubmitOptions,
    ) -> Sequence[str] | None:
        now = time.time()
        headers = events.submit_hooks or self.signing_keys
        with self._lock:  # the condition's lock, taken without its Python-level wrapper
            own = options.record and (self.state_uri is None or self.own_state)
            if len(tasks) == 1 and delay <= 0 and not options.needs_record:
                # A plain one-task put (most submits: ``Transport._submit_plain``). A
                # retry of it by ``_call`` comes from this thread with the same new id,
                # and the last one-task put of this thread tells whether it was stored:
                # 2 attribute accesses where ``PutProgress`` cost 5-9k instructions.
                task_id, text = tasks[0]
                if self._last_put.id == task_id:
                    return None  # stored by the try whose reply was lost
                if own:
                    self._statuses.queued_held(queue, task_id, now)
                q = self._queues.get(queue) or self._queue(queue)
                task = _Task(task_id, text, now, options.priority)
                if headers:
                    task.headers = self.task_headers(queue, task_id, text)
                q.ready.append(task)
                self._last_put.id = task_id
                if self._sleepers:
                    self._cond.notify_all()
                return None
            if own:
                # in the same critical section as the store: the unique key is atomic
                ids = [task_id for task_id, _ in tasks]
                known = self._statuses.submitted(queue, ids, delay, options)
                if known != ids:
                    return known
            q = self._queue(queue)
            # a retried call (after an error) does not store its tasks twice
            stored = self._progress.done(tasks[0][0])
            self._progress.record(tasks[0][0], len(tasks))
            for task_id, text in tasks[stored:]:
                task = _Task(task_id, text, now, options.priority)
                if headers:
                    task.headers = self.task_headers(queue, task_id, text)
                if delay > 0:
                    task.due = time.monotonic() + delay
                    heapq.heappush(q.waiting, (task.due, next(self._sequence), task))
                else:
                    q.ready.append(task)
            self._cond.notify_all()
        return None

    def _maintain(self, q: _Queue) -> float | None:
        """Promote due tasks, recover dead owners' tasks; return seconds to the next due."""
        now = time.monotonic()
        while q.waiting and q.waiting[0][0] <= now:
            task = heapq.heappop(q.waiting)[2]
            task.retrying = False
            q.ready.append(task)
        for task_id, task in list(q.in_flight.items()):
            if task.owner is not None and not task.owner.is_alive():
                del q.in_flight[task_id]
                task.owner = None
                task.attempts += 1
                q.ready.append(task)
                rec = self._statuses.record(task_id)
                if rec is not None and rec.state == "running":
                    rec.state = "queued"  # its worker died: waiting for another start
        return q.waiting[0][0] - now if q.waiting else None

    def _pop_ready(
        self, queue: str, q: _Queue, owner: threading.Thread | None, holder: str = ""
    ) -> Delivery | None:
        """Take the head ready task; an undecodable one goes to the failed store."""
        while q.ready:
            task = q.ready.popleft()
            try:
                payload = decode_message(task.text, self.max_payload_bytes)
            except ValueError as exc:  # UndecodableMessage: whatever the parser raised
                self._to_failed(queue, q, task, f"undecodable message: {exc}", raw=True)
                continue
            if owner is not None:
                task.owner = owner
                task.reserved_at = time.time()
                task.holder = holder  # (the thread's name is read by in_flight, not here)
                q.in_flight[task.id] = task
            delivery = Delivery(task.id, queue, payload, task.attempts + 1, task.submitted_at, task)
            if task.headers:  # (a copy: the task's own may not change under a worker)
                delivery.headers = dict(task.headers)
            return delivery
        return None

    def _to_failed(self, queue: str, q: _Queue, task: _Task, error: str, raw: bool = False) -> None:
        payload = None if raw else decode_payload(task.text)
        q.failed[task.id] = FailedTask(
            id=task.id,
            queue=queue,
            payload=payload,
            raw=task.text if raw else None,
            error=error,
            attempts=task.attempts + (0 if raw else 1),
            submitted_at=task.submitted_at,
            failed_at=time.time(),
        )

    def _take(self, queue: str) -> Payload | None:
        with self._cond:
            q = self._queues.get(queue)
            if q is None:
                return None
            self._maintain(q)
            while True:
                delivery = self._pop_ready(queue, q, owner=None)
                if delivery is None:
                    return None
                if not self.own_state:
                    return delivery.payload
                # at most once: never a cancelled or expired task; handed over = done
                store = self._store()
                if store.started(queue, delivery.id, delivery.attempt) == "run":
                    store.settled(queue, delivery.id, "succeeded", delivery.attempt)
                    return delivery.payload

    def _stats(self, queue: str) -> QueueStats:
        with self._cond:
            q = self._queues.get(queue)
            if q is None:
                return QueueStats(queue, 0, 0, 0, 0, 0)
            self._maintain(q)
            retrying = sum(1 for _, _, t in q.waiting if t.retrying)
            return QueueStats(
                queue,
                ready=len(q.ready),
                delayed=len(q.waiting) - retrying,
                retrying=retrying,
                in_flight=len(q.in_flight),
                failed=len(q.failed),
            )

    def _oldest_ready(self, queue: str) -> float | None:
        with self._cond:
            q = self._queues.get(queue)
            return None if q is None else q.ready.oldest()

    def _peek(self, queue: str, limit: int, offset: int) -> list[WaitingTask]:
        with self._cond:
            q = self._queues.get(queue)
            if q is None:
                return []
            self._maintain(q)
            page = itertools.islice(q.ready, offset, offset + limit)
            return [self._waiting(queue, task) for task in page]

    def _waiting(self, queue: str, task: _Task) -> WaitingTask:
        payload, raw = self._decoded(task)
        return WaitingTask(task.id, queue, payload, raw, task.attempts, task.submitted_at)

    def _decoded(self, task: _Task) -> tuple[Payload | None, str | None]:
        """``(payload, None)``, or ``(None, text)`` for a task that cannot be decoded."""
        try:
            return self.decode(task.text), None
        except ValueError:  # UndecodableMessage: listed as its text
            return None, task.text

    def _in_flight(self, queue: str, limit: int, offset: int) -> list[InFlightTask]:
        # in the order they were reserved (a dict keeps it)
        with self._cond:
            q = self._queues.get(queue)
            if q is None:
                return []
            self._maintain(q)
            page = itertools.islice(q.in_flight.values(), offset, offset + limit)
            return [self._held(queue, task) for task in page]

    def _held(self, queue: str, task: _Task) -> InFlightTask:
        payload, raw = self._decoded(task)
        return InFlightTask(
            task.id,
            queue,
            payload,
            raw,
            task.attempts + 1,
            f"{task.holder} in thread {'?' if task.owner is None else task.owner.name} "
            f"(pid {os.getpid()} on {socket.gethostname()})",
            task.reserved_at,
            task.submitted_at,
        )

    def _queue_names(self) -> list[str]:
        with self._cond:
            return [name for name, q in self._queues.items() if not q.is_empty()]

    def _purge(self, queue: str) -> int:
        with self._cond:
            q = self._queues.get(queue)
            if q is None:
                return 0
            purged = q.ready.clear() + [task.id for _, _, task in q.waiting]
            q.waiting.clear()
            self._statuses.forget(purged)
        if self.state_uri is not None and not self.own_state:
            self._purged_elsewhere(queue, purged)  # (outside the lock: another store)
        return len(purged)

    def _failed(self, queue: str, limit: int, offset: int) -> list[FailedTask]:
        with self._cond:
            q = self._queues.get(queue)
            if q is None:
                return []
            return list(itertools.islice(q.failed.values(), offset, offset + limit))

    def _requeue_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        with self._cond:
            q = self._queues.get(queue)
            if q is None:
                return 0
            chosen = [i for i in q.failed if ids is None or i in ids]
            for task_id in chosen:
                failed = q.failed.pop(task_id)
                text = failed.raw if failed.raw is not None else _json(failed.payload)
                q.ready.append(_Task(task_id, text, failed.submitted_at or time.time()))
                rec = self._statuses.record(task_id)
                if rec is not None:
                    self._statuses.finish(rec, "queued", 0)
            self._cond.notify_all()
            return len(chosen)

    def _purge_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        with self._cond:
            q = self._queues.get(queue)
            if q is None:
                return 0
            chosen = [i for i in q.failed if ids is None or i in ids]
            for task_id in chosen:
                del q.failed[task_id]
            self._statuses.forget(chosen)  # a failed status lives as long as its record
        if self.state_uri is not None and not self.own_state:
            self._purged_elsewhere(queue, chosen)
        return len(chosen)

    def _claim(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._cond:
            expiry = self._claims.get(key)
            if expiry is not None and expiry > now:
                return False
            self._claims[key] = now + ttl
            return True

    def _limit_take(self, queue: str, limit: LimitSpec, holder: str, owner: str | None) -> float:
        # one process: an owner is alive as long as the transport (no liveness here)
        with self._cond:
            book = self._limits.setdefault(queue, LimitBook.empty())
            return book.take(limit, holder, owner, time.monotonic(), lambda _: True)

    def _limit_free(self, queue: str, holder: str) -> None:
        with self._cond:
            if queue in self._limits:
                self._limits[queue].free(holder)

    def _consumer(self, queue: str, prefetch: int) -> Consumer:
        return LocalMemConsumer(self, queue, prefetch)

    def _close(self) -> None:
        with self._cond:
            self._cond.notify_all()


def _json(payload: Payload | None) -> str:
    import json

    return json.dumps(payload if payload is not None else {}, separators=(",", ":"))


#: numbers of this process's consumers, for ``in_flight``
_CONSUMER_NUMBERS = itertools.count(1)


class LocalMemConsumer(Consumer):
    """A consumer owned by the thread that reserves with it."""

    transport: LocalMemTransport

    def __init__(self, transport: LocalMemTransport, queue: str, prefetch: int) -> None:
        super().__init__(transport, queue, prefetch)
        self._held: dict[str, _Task] = {}
        #: the thread that reserves with it (looked up again if another one does)
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        #: how ``in_flight`` names this consumer
        self.name = f"consumer {next(_CONSUMER_NUMBERS)}"

    def reserve(self, timeout: float) -> Delivery | None:
        t = self.transport
        t._check_open()
        deadline = time.monotonic() + max(0.0, timeout)
        thread = self._thread
        if self._ident != threading.get_ident():  # (a C call; current_thread() is not)
            thread = self._thread = threading.current_thread()
            self._ident = threading.get_ident()
        with t._lock:  # the condition's lock, taken without its Python-level wrapper
            q = t._queue(self.queue)
            while True:
                # (nothing waiting or in flight: nothing to promote or recover, no call)
                next_due = t._maintain(q) if q.waiting or q.in_flight else None
                delivery = t._pop_ready(self.queue, q, thread, self.name)
                if delivery is not None:
                    self._held[delivery.id] = delivery.receipt
                    return delivery
                remaining = deadline - time.monotonic()
                if remaining <= 0 or t.closed:
                    return None
                wait = remaining
                if next_due is not None:
                    wait = min(wait, next_due)
                if q.in_flight:
                    # another thread may die holding tasks: look again soon
                    wait = min(wait, _RECOVERY_SECONDS / 4)
                t._sleepers += 1
                try:
                    t._cond.wait(wait)
                finally:
                    t._sleepers -= 1

    def _settle(self, delivery: Delivery) -> tuple[_Queue, _Task] | None:
        task = self._held.pop(delivery.id, None)
        q = self.transport._queues.get(self.queue)
        # Recovered meanwhile (its attempts went up) and maybe delivered to another
        # consumer: that delivery is not ours to settle.
        if task is None or q is None or task.attempts + 1 != delivery.attempt:
            return None
        if q.in_flight.get(delivery.id) is not task:
            return None
        del q.in_flight[delivery.id]
        task.owner = None
        return q, task

    def _writes(self) -> bool:
        # (``state_uri`` first: the hot path's usual answer without the property's call)
        t = self.transport
        return self.tracking and (t.state_uri is None or t.own_state)

    def start(self, delivery: Delivery) -> StartVerdict:
        t = self.transport
        if t.state_uri is not None and not t.own_state:
            return super().start(delivery)
        with t._lock:  # the condition's lock, taken without its Python-level wrapper
            verdict = t._statuses.start_held(self.queue, delivery.id, delivery.attempt)
            if verdict != "run":
                self._settle(delivery)  # removed, never run, not in the failed store
            return verdict

    def _retire_record(self, delivery: Delivery) -> None:
        """A final settle by a consumer that keeps no status: a record written at submit
        before the queue's workers turned ``track_status`` off is forgotten after the
        TTL (``MemoryStateStore.retire_held``: a dict lookup when there is none). Lock
        held."""
        t = self.transport
        if not self.tracking and (t.state_uri is None or t.own_state):
            t._statuses.retire_held(delivery.id)

    def ack(self, delivery: Delivery, result_json: str | None = None) -> bool | None:
        t = self.transport
        with t._lock:  # the condition's lock, taken without its Python-level wrapper
            if self._settle(delivery) is None:
                return None
            # (_writes() and _retire_record() inline: two calls a task less)
            if t.state_uri is None or t.own_state:
                if self.tracking:
                    return t._statuses.succeed_held(delivery.id, delivery.attempt, result_json)
                t._statuses.retire_held(delivery.id)
            return None

    def _cancelled(self, delivery: Delivery) -> bool:
        """Whether the task was cancelled while it ran: then it is neither retried nor
        failed, only removed (lock held)."""
        if not self._writes():
            return False
        rec = self.transport._statuses.record(delivery.id)
        return rec is not None and rec.state == "cancelled"

    def retry(self, delivery: Delivery, delay: float, error: str) -> bool | None:
        delay = check_delay(delay)
        t = self.transport
        with t._cond:
            settled = self._settle(delivery)
            if settled is None:
                return None
            if self._cancelled(delivery):
                return True  # dropped: never retried
            q, task = settled
            if self._writes():
                rec = t._statuses.record(delivery.id)
                if rec is not None:
                    t._store().finish(rec, "retrying", delivery.attempt, error)
            task.attempts += 1
            task.retrying = True
            task.due = time.monotonic() + delay
            heapq.heappush(q.waiting, (task.due, next(t._sequence), task))
            t._cond.notify_all()
            return None

    def fail(self, delivery: Delivery, error: str) -> bool | None:
        t = self.transport
        with t._cond:
            settled = self._settle(delivery)
            if settled is None:
                return None
            if self._cancelled(delivery):
                return True  # dropped: not in the failed store
            q, task = settled
            t._to_failed(self.queue, q, task, error)
            if not self._writes():
                self._retire_record(delivery)
                return None
            rec = t._statuses.record(delivery.id)
            if rec is not None:
                t._store().finish(rec, "failed", delivery.attempt, error)
            return None

    def release(self, delivery: Delivery) -> None:
        t = self.transport
        with t._cond:
            settled = self._settle(delivery)
            if settled is not None:
                q, task = settled
                q.ready.appendleft(task)
                t._cond.notify_all()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self.transport._cond:
            # each release goes to the head: the last held first keeps the queue's order
            for task_id in reversed(list(self._held)):
                task = self._held[task_id]
                self.release(
                    Delivery(task_id, self.queue, {}, task.attempts + 1, task.submitted_at, task)
                )
