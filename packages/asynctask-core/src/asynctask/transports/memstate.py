"""Task statuses in this process's memory: ``localmem``'s ``StateStore``.

The reference for every other store (``asynctask.status``): statuses by id, unique keys
by (queue, key), final statuses forgotten ``status_ttl`` seconds later. Forgetting is
bounded: each final status pushes one entry on a heap ordered by when it is due, and
every call pops at most ``_FORGET_PER_CALL`` due entries, so no call ever scans the
history. ``wait`` sleeps on a ``threading.Condition`` that every final state notifies.

The store shares the lock of the transport that owns it (an ``RLock``), so that the
transport can write a status in the same critical section as the queue operation it
belongs to: the in-memory form of "one round trip".
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from asynctask.status import (
    FINAL_STATES,
    StartVerdict,
    State,
    StateStore,
    SubmitOptions,
    TaskStatus,
)

#: due forget entries handled per call at most: a burst of finals is forgotten over the
#: next calls, never in one long pause
_FORGET_PER_CALL = 8


@dataclass(slots=True)
class _Record:
    id: str
    queue: str
    state: State
    submitted_at: float | None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result_json: str | None = None
    expires_at: float | None = None
    unique_key: str | None = None
    forget_at: float | None = None

    def snapshot(self) -> TaskStatus:
        result = None if self.result_json is None else json.loads(self.result_json)
        return TaskStatus(
            id=self.id,
            queue=self.queue,
            state=self.state,
            attempts=self.attempts,
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
            result=result,
        )


class MemoryStateStore(StateStore):
    """Statuses in memory, under the owner's lock; see the module docstring.

    ``on_drop(queue, task_id)`` is called (lock held) when a task that is still stored
    in the owner's queue must never run: cancelled or expired while waiting. The owner
    removes it from its queue then.
    """

    def __init__(
        self,
        lock: threading.RLock,
        on_drop: Callable[[str, str], None] | None = None,
    ) -> None:
        self._lock = lock
        self._final = threading.Condition(lock)
        self._on_drop = on_drop
        self._records: dict[str, _Record] = {}
        self._unique: dict[tuple[str, str], str] = {}
        self._forget: list[tuple[float, str]] = []
        self._untracked: set[str] = set()
        #: threads blocked in ``wait``: a final state notifies only when there is one
        #: (a notify costs a no-op drain ~15 us a task otherwise)
        self._waiters = 0

    # -- for the owner (lock held) and for tests --------------------------------------

    def known(self) -> int:
        """How many statuses are kept (tests read it to see forgetting at work)."""
        with self._lock:
            return len(self._records)

    def record(self, task_id: str) -> _Record | None:
        """The live record of ``task_id`` (lock held by the caller); one past its
        ``expires`` is made ``expired`` first. (Due forgets are done by every final
        state and every read: each pops a few.)"""
        rec = self._records.get(task_id)
        if rec is not None and rec.expires_at is not None:
            self._expire_if_due(rec, time.time())
        return rec

    def forget(self, ids: Collection[str]) -> None:
        """Drop these statuses now (their tasks were purged), freeing their unique keys;
        a waiter returns (it reads none)."""
        with self._lock:
            for task_id in ids:
                rec = self._records.pop(task_id, None)
                if rec is not None:
                    self._free_key(rec)
            if self._waiters:
                self._final.notify_all()

    def purged(self, queue: str, ids: Sequence[str]) -> None:
        """Forget the statuses of purged tasks (``forget``)."""
        self.forget(ids)

    def retire_held(self, task_id: str) -> None:
        """A task settled for good by a worker that keeps no status (lock held by the
        caller): a record written at its submit, before the queue's workers turned
        ``track_status`` off, keeps its state (``status`` still says the queue keeps
        none) but is forgotten ``status_ttl`` later like a final one, its unique key
        freed now. Without it the record stayed ``queued`` for good (issue 16)."""
        rec = self._records.get(task_id)
        if rec is None or rec.forget_at is not None:
            return
        now = time.time()
        self._free_key(rec)
        rec.forget_at = at = now + self.status_ttl
        heapq.heappush(self._forget, (at, rec.id))
        if self._forget[0][0] <= now:
            self._purge(now)

    def finish(
        self,
        rec: _Record,
        state: State,
        attempts: int,
        error: str | None = None,
        result_json: str | None = None,
    ) -> State:
        """Write an outcome on ``rec`` (lock held); return the state it now has.

        ``cancelled`` and ``expired`` stick: a late outcome changes nothing (its result
        is discarded). ``queued`` (a requeue from the failed store) starts it over.
        """
        if rec.state in ("cancelled", "expired"):
            return rec.state
        now = time.time()
        rec.state = state
        rec.attempts = attempts
        if error is not None:
            rec.error = error
        if state == "queued":
            rec.finished_at = rec.forget_at = None
            return state
        if state == "succeeded":
            rec.result_json = result_json
        if state in FINAL_STATES:
            self._make_final(rec, now)
        return state

    # -- the generic calls ------------------------------------------------------------

    def submitted(
        self,
        queue: str,
        ids: Sequence[str],
        delay: float,
        options: SubmitOptions,
    ) -> list[str]:
        now = time.time()
        with self._lock:
            self._purge(now)
            key = options.unique_key
            if key is not None:
                holder = self._unique.get((queue, key))
                held = holder is not None and holder in self._records
                if held and holder != ids[0]:  # (the same id: a retried submit)
                    assert holder is not None
                    return [holder]
                self._unique[(queue, key)] = ids[0]
            expires_at = None if options.expires is None else now + options.expires
            state: State = "delayed" if delay > 0 else "queued"
            for task_id in ids:
                self._records[task_id] = _Record(
                    task_id, queue, state, now, expires_at=expires_at, unique_key=key
                )
            return list(ids)

    def queued_held(self, queue: str, task_id: str, now: float) -> None:
        """``submitted`` of one task ready now with no option, the lock held by the
        caller (the owner's one-task put, at ``now``): the same record, without the
        lists and the option checks."""
        forget = self._forget
        if forget and forget[0][0] <= now:
            self._purge(now)
        self._records[task_id] = _Record(task_id, queue, "queued", now)

    def started(self, queue: str, task_id: str, attempt: int) -> StartVerdict:
        with self._lock:
            return self.start_held(queue, task_id, attempt)

    def start_held(self, queue: str, task_id: str, attempt: int) -> StartVerdict:
        """``started`` with the lock held by the caller (the owner's consumer): every
        tracked task comes here, so it makes no call it does not need."""
        now = time.time()
        rec = self._records.get(task_id)
        if rec is None:  # written by a foreign producer: followed from here on
            rec = self._records[task_id] = _Record(task_id, queue, "running", None)
        elif rec.expires_at is not None:
            self._expire_if_due(rec, now)
        state = rec.state
        if state == "cancelled" or state == "expired":
            return state
        rec.state = "running"
        rec.attempts = attempt
        rec.started_at = now
        rec.finished_at = None
        return "run"

    def succeed_held(self, task_id: str, attempts: int, result_json: str | None) -> bool:
        """A worker's success, with the lock held by the caller: ``finish`` without a
        call it does not need, since every tracked task comes here. True when the task
        had been cancelled while it ran (it stays so, its result discarded)."""
        rec = self._records.get(task_id)
        if rec is None:
            return False
        if rec.expires_at is not None and rec.started_at is None:
            self._expire_if_due(rec, time.time())  # acked without a start
        state = rec.state
        if state == "cancelled" or state == "expired":
            return state == "cancelled"
        rec.state = "succeeded"
        rec.attempts = attempts
        rec.result_json = result_json
        self._make_final(rec, time.time())
        return False

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
        with self._lock:
            rec = self.record(task_id)
            if rec is None:
                rec = self._records[task_id] = _Record(task_id, queue, state, None)
            self.finish(rec, state, attempts, error, result_json)

    def statuses(self, ids: Sequence[str]) -> list[TaskStatus | None]:
        with self._lock:
            self._purge(time.time())
            found: list[TaskStatus | None] = []
            for task_id in ids:
                rec = self.record(task_id)
                found.append(None if rec is None else rec.snapshot())
            return found

    def wait(self, task_id: str, timeout: float | None) -> TaskStatus | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._purge(time.time())
            while True:
                rec = self.record(task_id)
                if rec is None:
                    return None
                if rec.state in FINAL_STATES:
                    return rec.snapshot()
                pause = self.fallback_poll
                if rec.expires_at is not None and rec.started_at is None:
                    # not a poll: the moment it expires, if nobody starts it first
                    pause = min(pause, max(0.0, rec.expires_at - time.time()) + 0.001)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"task {task_id} is still {rec.state} after {timeout:g} s"
                        )
                    pause = min(pause, left)
                self._waiters += 1
                try:
                    self._final.wait(pause)
                finally:
                    self._waiters -= 1

    def cancel(self, task_id: str) -> bool:
        with self._lock:
            rec = self.record(task_id)
            if rec is None or rec.state in FINAL_STATES:
                return False
            waiting = rec.state != "running"
            rec.state = "cancelled"
            self._make_final(rec, time.time())
            if waiting and self._on_drop is not None:
                self._on_drop(rec.queue, rec.id)
            return True

    def set_tracking(self, queue: str, tracked: bool) -> None:
        with self._lock:
            if tracked:
                self._untracked.discard(queue)
            else:
                self._untracked.add(queue)

    def untracked(self, queues: Collection[str]) -> set[str]:
        with self._lock:
            return {q for q in queues if q in self._untracked}

    # -- inside -----------------------------------------------------------------------

    def _expire_if_due(self, rec: _Record, now: float) -> None:
        """A task not started before its ``expires`` is expired (and never runs)."""
        if (
            rec.expires_at is not None
            and rec.started_at is None
            and rec.state in ("queued", "delayed")
            and now >= rec.expires_at
        ):
            rec.state = "expired"
            self._make_final(rec, now)
            if self._on_drop is not None:
                self._on_drop(rec.queue, rec.id)

    def _make_final(self, rec: _Record, now: float) -> None:
        rec.finished_at = now
        if rec.unique_key is not None:
            self._free_key(rec)
        heap = self._forget
        if rec.state != "failed":  # a failed status lives as long as its failed record
            rec.forget_at = at = now + self.status_ttl
            heapq.heappush(heap, (at, rec.id))
        if heap and heap[0][0] <= now:
            self._purge(now)  # one pushed, up to a few popped: the heap stays bounded
        if self._waiters:
            self._final.notify_all()

    def _free_key(self, rec: _Record) -> None:
        if rec.unique_key is not None and self._unique.get((rec.queue, rec.unique_key)) == rec.id:
            del self._unique[(rec.queue, rec.unique_key)]

    def _purge(self, now: float) -> None:
        """Forget up to ``_FORGET_PER_CALL`` statuses whose time is up."""
        heap = self._forget
        for _ in range(_FORGET_PER_CALL):
            if not heap or heap[0][0] > now:
                return
            at, task_id = heapq.heappop(heap)
            rec = self._records.get(task_id)
            if rec is not None and rec.forget_at == at:
                del self._records[task_id]
