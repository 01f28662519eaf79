"""Taking tasks from a queue's folders: the view every taker keeps, and the consumer.

Reserving is one rename, ``ready/<name>`` to ``claimed/<owner>/<name>``: atomic, so of
several processes after one file exactly one gets it, and the others move on to their
next name. Settling is one more: unlink (ack), rename to ``delayed/`` with a new due
stamp and one more attempt (retry), to ``failed/`` (fail) or back to ``ready/`` (release).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from asynctask.errors import TransportClosed
from asynctask.status import StartVerdict
from asynctask.transport import Consumer, Delivery, check_delay, is_unrecorded
from asynctask_filesys.layout import QueuePaths, TaskName, due_order, failed_name, sweep_tmp
from asynctask_filesys.oserrors import os_errors
from asynctask_filesys.owners import OwnerFolder, recover_dead, touch_live
from asynctask_filesys.queues import NO_OPTIONS, FilesysBase, TaskOptions
from asynctask_filesys.state import FilesysStateStore
from asynctask_filesys.watch import Folder, Watcher


class QueueView:
    """One taker's picture of a queue: its ready and delayed names, smallest first, and
    when to look next for dead consumers. Used from one thread at a time."""

    def __init__(self, paths: QueuePaths, watcher: Watcher, lease: float, scan: float) -> None:
        self.paths = paths
        self.ready = Folder(paths.ready, watcher)
        self.delayed = Folder(paths.delayed, watcher, due_order)
        self._lease = lease
        self._scan = scan
        self._next_scan = 0.0

    def next_name(self, owner: str | None) -> str | None:
        """The smallest ready name after promoting due tasks and recovering dead owners'."""
        self._promote_due()
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + self._scan
            p = self.paths
            for name in recover_dead(p.claimed, p.ready, self._lease, owner):
                self.ready.push(name)
        return self.ready.pop()

    def _promote_due(self) -> None:
        now = time.time_ns()
        while (name := self.delayed.peek()) is not None:
            stamp = TaskName.parse(name).stamp
            if stamp is not None and stamp > now:
                return
            self.delayed.pop()
            with contextlib.suppress(FileNotFoundError):  # another taker promoted it
                os.rename(
                    os.path.join(self.paths.delayed, name), os.path.join(self.paths.ready, name)
                )
                self.ready.push(name)

    def idle_wait(self) -> float:
        """Seconds an idle taker may block before something is due to be looked at."""
        waits = [self._next_scan - time.monotonic(), self.ready.idle_wait()]
        waits.append(self.delayed.idle_wait())
        name = self.delayed.peek()
        stamp = None if name is None else TaskName.parse(name).stamp
        if stamp is not None:
            waits.append((stamp - time.time_ns()) / 1e9)
        return max(0.001, min(waits))


class FilesysConsumer(Consumer):
    """Reserves by renaming into its own ``claimed/`` folder, kept alive by a heartbeat.

    ``prefetch`` is accepted; each ``reserve`` claims one task, since taking is local.
    """

    transport: FilesysBase

    def __init__(
        self, transport: FilesysBase, queue: str, prefetch: int, owner: str | None = None
    ) -> None:
        super().__init__(transport, queue, prefetch)
        #: the owner whose keeper keeps this consumer alive; None: its own heartbeat
        self.keeper_owner = owner
        self._paths = transport.paths(queue)
        self._watcher = Watcher(transport.use_inotify, transport.poll)
        self._view = QueueView(self._paths, self._watcher, transport.lease, transport.scan)
        self._owner: OwnerFolder | None = None
        self._owner_lost = False
        self._held: dict[str, str] = {}  # task id -> its path in our claimed folder
        self._options: dict[str, TaskOptions] = {}  # task id -> what its file says
        self._started: dict[str, float] = {}  # task id -> when start() let it run
        #: whether ack/retry/fail write statuses (the worker's ``track_status``)
        self.tracking = True
        self._busy = threading.Lock()  # held while reserving
        self._state = threading.RLock()  # guards the owner between us and the heartbeat

    # -- taking --------------------------------------------------------------------------

    @os_errors
    def reserve(self, timeout: float) -> Delivery | None:
        """Wait up to ``timeout`` seconds for a ready task and claim it (inotify wakes us)."""
        t = self.transport
        t._check_open()
        if self.closed:
            raise TransportClosed(f"the consumer of {self.queue!r} is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        with self._busy:
            if self._owner is None:
                t.ensure_queue(self.queue)
                sweep_tmp(self._paths.tmp)
                self._new_owner()
            while not t.closed:
                self._watcher.wait(0)
                delivery = self._take_one()
                if delivery is not None:
                    return delivery
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._watcher.wait(min(left, self._view.idle_wait()))
        self.close()  # the transport closed while we waited
        return None

    def _new_owner(self) -> None:
        owner = self.keeper_owner
        if owner is not None:
            # Alive from the first claim on, even before the keeper's first beat.
            touch_live(self._paths.claimed, owner, self.transport.mode)
        with self._state:
            if self._owner is not None:
                self._owner.close()
            self._owner = OwnerFolder(self._paths.claimed, self.transport.mode, owner)
            self._owner_lost = False
        if owner is None:
            self.transport.heartbeats.add(self)

    def _take_one(self) -> Delivery | None:
        assert self._owner is not None
        while (name := self._view.next_name(self._owner.name)) is not None:
            if self._owner_lost:  # somebody took us for dead: start a new folder
                self._new_owner()
            target = os.path.join(self._owner.path, name)
            try:
                os.rename(os.path.join(self._paths.ready, name), target)
            except FileNotFoundError:
                if not os.path.isdir(self._owner.path):
                    self.transport.ensure_queue(self.queue, again=True)
                    self._new_owner()
                    self._view.ready.push(name)
                continue  # another taker was first
            delivery = self._open(name, target)
            if delivery is not None:
                return delivery
        return None

    def _open(self, name: str, path: str) -> Delivery | None:
        """The delivery of a claimed file, or None after moving a bad one to failed."""
        task = TaskName.parse(name)
        read = self.transport.read_task(self.queue, path, name, task)
        if read is None:
            return None
        payload, mtime, headers, options = read
        self._held[task.id] = path
        if options is not NO_OPTIONS:
            self._options[task.id] = options
        delivery = Delivery(task.id, self.queue, payload, task.attempts + 1, mtime, name)
        delivery.headers = headers
        return delivery

    # -- settling ------------------------------------------------------------------------

    def _settle(self, delivery: Delivery) -> tuple[str, TaskName] | None:
        path = self._held.pop(delivery.id, None)
        if path is None:
            return None
        return path, TaskName.parse(os.path.basename(path))

    @os_errors
    def start(self, delivery: Delivery) -> StartVerdict:
        """Mark the task's status record started (one appended byte; there is no
        record in ``live/`` for a task cancelled meanwhile), or end it ``expired`` (its
        file says when); a task that must not run is removed."""
        own = self.transport.own_store()
        if own is None:  # asynctask_state keeps the statuses: the base class asks it
            return super().start(delivery)
        options = self._options.get(delivery.id, NO_OPTIONS)
        verdict = own.begin(
            delivery.id,
            delivery.attempt,
            options.expires,
            options.unique_key,
            self.queue,
            delivery.submitted_at,
        )
        if verdict == "run":
            self._started[delivery.id] = time.time()
        else:  # settled by begin(): removed, never run, not in the failed store
            settled = self._settle(delivery)
            self._options.pop(delivery.id, None)
            if settled is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(settled[0])
        return verdict

    def _outcome(
        self, delivery: Delivery, final: bool
    ) -> tuple[FilesysStateStore, float | None, TaskOptions] | None:
        """Our store, when the settled task started and what its file said, if its
        status is ours to write; None otherwise (kept by ``asynctask_state``, or not
        tracking: then a final settle retires a record written at submit, which would
        otherwise stay ``queued`` and hold its unique key for good)."""
        started = self._started.pop(delivery.id, None)
        options = self._options.pop(delivery.id, NO_OPTIONS)
        if not self.tracking:  # (an untracked drain's hot path: no store looked up)
            if started is not None:  # started while tracked: its journal is not needed
                own = self.transport.own_store()
                if own is not None:
                    own.unassign(delivery.id)
            if final and (options.unique_key is not None or not is_unrecorded(delivery.id)):
                own = self.transport.own_store()
                if own is not None:
                    own.retire(delivery.id, self.queue, options.unique_key)
            return None
        own = self.transport.own_store()
        if own is None:
            return None
        return own, started, options

    @os_errors
    def ack(self, delivery: Delivery, result_json: str | None = None) -> bool | None:
        """Delete the task's file; ``succeeded`` (the hot path: a rename of its record).
        True when it had been cancelled while it ran (seen for free: its record was
        moved away under us)."""
        path = self._held.pop(delivery.id, None)  # (``_settle`` less the name's parse)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):  # recovered meanwhile: nothing to do
                os.unlink(path)
        outcome = self._outcome(delivery, final=True)
        if outcome is None:
            return None
        own, started, options = outcome
        if delivery.attempt == 1:  # (the id is a task file's: valid)
            return own.succeed(delivery.id, started, result_json, options.unique_key, self.queue)
        return own.finish(
            delivery.id,
            "succeeded",
            delivery.attempt,
            started_at=started,
            result_json=result_json,
            unique_key=options.unique_key,
            queue=self.queue,
        )

    @os_errors
    def retry(self, delivery: Delivery, delay: float, error: str) -> bool | None:
        """Move the task to ``delayed/``, due in ``delay`` seconds, with one more attempt;
        a task cancelled while it ran is deleted instead (never retried): True then.

        The status is written first: a cancel that came before it is seen there (then
        the task goes), one that comes after it finds ``retrying`` and the next start
        drops the task."""
        delay = check_delay(delay)
        outcome = self._outcome(delivery, final=False)
        cancelled = outcome is not None and outcome[0].finish(
            delivery.id, "retrying", delivery.attempt, error=error
        )
        settled = self._settle(delivery)
        if settled is not None:
            path, task = settled
            with contextlib.suppress(FileNotFoundError):
                if cancelled:
                    os.unlink(path)
                    return True
                due = time.time_ns() + int(delay * 1e9)
                name = task.format(stamp=due, attempts=task.attempts + 1)
                os.rename(path, os.path.join(self._paths.delayed, name))
                self._view.delayed.push(name)
        return True if cancelled else None

    @os_errors
    def fail(self, delivery: Delivery, error: str) -> bool | None:
        """Note the name the task will have in the failed store in its status record
        (``failing``: a worker killed after the move leaves a task that reads
        ``failed``, see ``asynctask.status``), move it there with ``error``, then write
        ``failed`` (a waiter woken by it finds the task there); a task cancelled while
        it ran is deleted instead (it stays ``cancelled``): True then. A cancel between
        the note and the status write leaves the status ``cancelled``: the task leaves
        the failed store (True too)."""
        outcome = self._outcome(delivery, final=True)
        settled = self._settle(delivery)
        if settled is not None:
            path, task = settled
            name = os.path.basename(path)
            stored = failed_name(name, time.time_ns())
            if outcome is not None:  # our own records
                cancelled = outcome[0].failing(
                    self.queue, delivery.id, delivery.attempt, stored, error
                )
            else:  # the store of asynctask_state (or not tracking: nothing noted)
                cancelled = self.note_failing(delivery, stored, error)
            if cancelled:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return True
            self.transport.to_failed(self.queue, path, name, error, task.attempts + 1, stored)
        if outcome is not None and outcome[0].finish(
            delivery.id, "failed", delivery.attempt, error=error
        ):
            self.transport.purge_failed(self.queue, [delivery.id])  # cancelled meanwhile
            return True
        return None

    @os_errors
    def release(self, delivery: Delivery) -> None:
        """Put the task back in ``ready/`` under its old name: at the head, no attempt."""
        settled = self._settle(delivery)
        if settled is not None:
            path, _ = settled
            name = os.path.basename(path)
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, os.path.join(self._paths.ready, name))
                self._view.ready.push(name)
        outcome = self._outcome(delivery, final=False)
        if outcome is not None and outcome[1] is not None:  # started: queued again
            outcome[0].finish(delivery.id, "queued", delivery.attempt - 1)

    def beat(self) -> None:
        """Called by the transport's heartbeat thread."""
        with self._state:
            if self._owner is not None and not self._owner.beat():
                self._owner_lost = True

    def close_if_idle(self) -> None:
        """Close unless a ``reserve`` is under way (that one closes itself when it sees
        the transport closed); called by the transport's ``close()``."""
        if self._busy.acquire(blocking=False):
            try:
                self.close()
            finally:
                self._busy.release()

    @os_errors
    def close(self) -> None:
        """Release what we hold, remove our claimed folder, stop watching."""
        with self._state:
            if self.closed:
                return
            self.closed = True
            for task_id, path in list(self._held.items()):
                self.release(Delivery(task_id, self.queue, {}, 1, None, os.path.basename(path)))
            if self._owner is not None:
                self._owner.close()
                self._owner = None
        self.transport.heartbeats.discard(self)
        self._watcher.close()
