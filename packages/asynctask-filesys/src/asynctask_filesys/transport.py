"""``filesys:``: tasks as files in local folders; the embedded default, no server needed.

Features
    Every count (ready, delayed, retrying, in flight, failed) and the whole delivery
    contract, between any processes of one host, with no global lock. Taking a task costs
    the same at any queue depth: each taker lists a folder once, keeps the names in a
    heap and follows new files through inotify. An idle consumer wakes within
    milliseconds of a new file (inotify; a ``poll`` of 50 ms where inotify is missing).
    A killed consumer's tasks come back at the next look for dead consumers (every
    ``min(1, lease/2)`` s); a frozen one's once its heartbeat is ``lease`` s old:
    ``features.recovery_seconds`` = lease + that look (9 s by default).
    ``peek`` and ``failed_tasks`` list a folder's names and read only the page's files;
    ``in_flight`` lists ``claimed/`` (holder: the owner id of a child of ``asynctask
    workers``, else the consumer's folder, pid and host; since: the claim's rename, the
    file's ctime).
URI
    ``filesys:/abs/path``, ``filesys:///abs/path``, ``filesys:relative/path`` (to the
    working folder when the transport is made), ``filesys:~/path``; ``%xx`` escapes
    are decoded. The folder is created when first needed.
Options
    ``lease`` (8 s), ``heartbeat`` (lease/4), ``mode`` (0600), ``fsync`` (true),
    ``notify`` (inotify|poll), ``poll`` (0.05 s), and ``retry_timeout``; see ``OPTIONS``.
Storage
    One folder per queue: ``tmp/``, ``ready/``, ``delayed/``, ``claimed/<owner>/``,
    ``failed/``; a task is one JSON file named ``STAMP-ID[.ATTEMPTS].json``, written
    under ``tmp/``, fsynced, then renamed into place (see ``asynctask_filesys.layout``).
    Claims live in ``<root>/.claims/``. The package README shows how another program
    drops a task in.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import unquote

from asynctask.errors import InvalidURIError
from asynctask.limits import LimitSpec
from asynctask.liveness import Liveness
from asynctask.status import SubmitOptions
from asynctask.transport import (
    Consumer,
    FailedTask,
    InFlightTask,
    PutProgress,
    QueueStats,
    TransportFeatures,
    WaitingTask,
)
from asynctask.uri import Option, boolean, positive_float
from asynctask.validation import Payload, decode_message, is_valid_queue_name
from asynctask_filesys import claims, limits, queued
from asynctask_filesys.consumer import FilesysConsumer, QueueView
from asynctask_filesys.keeper import FilesysLiveness
from asynctask_filesys.layout import (
    META_SUFFIX,
    NotATaskFile,
    QueuePaths,
    StampClock,
    TaskName,
    chmod_needed,
    due_order,
    iter_task_names,
    original_name,
    read_file,
    read_task_file,
    sync_dir,
    task_names,
    write_file,
)
from asynctask_filesys.oserrors import os_errors
from asynctask_filesys.owners import Heartbeats, holder_of
from asynctask_filesys.queues import FilesysBase, TaskOptions, unwrap, wrap
from asynctask_filesys.state import FilesysStateStore
from asynctask_filesys.watch import Watcher

_COUNTS = frozenset({"ready", "delayed", "retrying", "in_flight", "failed"})


def _file_mode(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o777 or value & 0o600 != 0o600:
        raise ValueError("expected an octal mode that lets the owner read and write, e.g. 0660")
    return value


def _record_at(text: str) -> str:
    if text not in ("start", "submit"):
        raise ValueError("expected 'start' or 'submit'")
    return text


def _notify(text: str) -> str:
    if text not in ("inotify", "poll"):
        raise ValueError("expected 'inotify' or 'poll'")
    return text


OPTIONS: dict[str, Option] = {
    "lease": Option(
        positive_float,
        8.0,
        "seconds without a heartbeat after which a consumer counts as dead and its tasks "
        "come back (a killed process is seen at once, by its released lock)",
    ),
    "heartbeat": Option(positive_float, None, "seconds between heartbeats; <= lease/2"),
    "mode": Option(_file_mode, 0o600, "octal mode of task files (folders add x), e.g. 0660"),
    "fsync": Option(boolean, True, "fsync each task file and its folder before it is visible"),
    "notify": Option(_notify, "inotify", "how idle takers learn of new files: inotify or poll"),
    "poll": Option(positive_float, 0.05, "seconds between folder checks without inotify"),
    "record_at": Option(
        _record_at,
        "start",
        "when a tracked task's status record is written: start (a submit writes only the "
        "task file, read as its status until the start) or submit (a record a task at "
        "submit, the layout before issue 20: a cheaper start)",
    ),
}


def root_folder(location: str) -> str:
    """The absolute folder a ``filesys:`` URI (without its query) names."""
    rest = location.split(":", 1)[1]
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise InvalidURIError(
                f"{location!r}: filesys: names a folder on this host, not on {host!r}; "
                "use filesys:/abs/path or filesys:relative/path"
            )
        rest = slash + path
    rest = unquote(rest)
    if not rest:
        raise InvalidURIError(
            f"{location!r} names no folder; use e.g. filesys:/var/lib/asynctask or "
            "filesys:queues (relative to the working folder)"
        )
    return os.path.abspath(os.path.expanduser(rest))


class FilesysTransport(FilesysBase):
    """Queues as folders of task files; see the module docstring."""

    schemes = ("filesys",)
    options_accepted: ClassVar[dict[str, Option]] = OPTIONS
    keeps_limits = True
    features = TransportFeatures(counts=_COUNTS, multiprocess=True, recovery_seconds=9.0)

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.root = root_folder(self.location)
        options = self.options
        self._progress = PutProgress(self.retry_timeout + 5)
        self.lease: float = options["lease"]
        self.heartbeat: float = options["heartbeat"] or self.lease / 4
        if self.heartbeat > self.lease / 2:
            raise InvalidURIError(
                f"{self.safe_uri!r}: heartbeat={self.heartbeat:g} must be at most half of "
                f"lease={self.lease:g}, or a live consumer may be taken for dead"
            )
        self.scan = min(1.0, self.lease / 2)  # seconds between looks for dead consumers
        self.mode: int = options["mode"]
        self.fsync: bool = options["fsync"]
        self.use_inotify = options["notify"] == "inotify"
        self.poll: float = options["poll"]
        #: False: a record a task at submit (``record_at=submit``), as before issue 20
        self.submit_by_file: bool = options["record_at"] == "start"
        self.features = TransportFeatures(_COUNTS, True, self.lease + self.scan)
        self.heartbeats = Heartbeats(self.heartbeat)
        self._clock = StampClock()
        self._made: set[str] = set()
        self._take_lock = threading.Lock()
        self._take_watcher: Watcher | None = None
        self._take_views: dict[str, QueueView] = {}
        self._next_sweep = 0.0
        self._consumers: weakref.WeakSet[FilesysConsumer] = weakref.WeakSet()
        self._store: FilesysStateStore | None = None
        #: a call's first core id -> the stamps and ids it was given (``queued``): a
        #: retry after an error half-way gives the rest the same ones
        self._planned: dict[str, tuple[list[int], list[str]]] = {}

    # -- primitives ----------------------------------------------------------------------

    @os_errors
    def _put(
        self,
        queue: str,
        tasks: Sequence[tuple[str, str]],
        delay: float,
        options: SubmitOptions,
    ) -> Sequence[str] | None:
        # A retried call (after an error half-way) stores only what it had not stored.
        key, stored = tasks[0][0], self._progress.done(tasks[0][0])
        # with asynctask_state, the base class records them; record=False: an
        # untracked queue (asynctask.untracked)
        store = self.own_store() if options.record else None
        # Our own statuses: no record a task, the id names the file (``queued``), but
        # for a unique key, whose holder must read as a task before its file is there
        by_file = store is not None and options.unique_key is None and self.submit_by_file
        plan = self._planned.get(key) if by_file else None
        if by_file and plan is None:
            stamps = self._stamps(len(tasks), delay)
            made = [
                queued.task_id(queue, stamp, options.priority, delay > 0, task_id)
                for stamp, (task_id, _) in zip(stamps, tasks, strict=True)
            ]
            plan = self._planned[key] = (stamps, made)
        all_ids = None if plan is None else plan[1]
        tasks = tasks[stored:]
        if not tasks:
            self._planned.pop(key, None)
            return all_ids
        ids = [task_id for task_id, _ in tasks]
        if store is not None and not by_file:  # the records first: a consumer finds one
            given = store.submitted(queue, ids, delay, options)
            if given != ids:
                return given  # the unique key is held by a task that is not final
        paths = self.ensure_queue(queue)
        target = paths.delayed if delay > 0 else paths.ready
        if plan is not None:
            stamps, made = plan[0][stored:], plan[1][stored:]
            tasks = [(new, text) for new, (_, text) in zip(made, tasks, strict=True)]
        else:
            stamps = self._stamps(len(tasks), delay)
        names = [
            TaskName(stamp, task_id, 0, True, options.priority).format()
            for stamp, (task_id, _) in zip(stamps, tasks, strict=True)
        ]
        expires = None if options.expires is None else time.time() + options.expires
        extra = TaskOptions(expires, options.unique_key)
        moved = 0
        try:
            try:
                self._write_tmp(queue, paths, names, tasks, extra)
            except FileNotFoundError:  # somebody removed the queue's folders: once more
                self.ensure_queue(queue, again=True)
                self._write_tmp(queue, paths, names, tasks, extra)
            for name in names:  # in order, so that takers see them in order
                os.rename(os.path.join(paths.tmp, name), os.path.join(target, name))
                moved += 1
        finally:
            self._progress.record(key, stored + moved)
            for name in names[moved:]:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(paths.tmp, name))
            if store is not None and not by_file and moved < len(names):
                # never stored: no status, and the unique key is free again (a retry of
                # the call takes both anew)
                with contextlib.suppress(OSError):
                    store.unsubmitted(queue, ids[moved:], options)
        if self.fsync:
            sync_dir(target)
        self._planned.pop(key, None)
        return all_ids

    def _stamps(self, count: int, delay: float) -> list[int]:
        return self._clock.due(count, delay) if delay > 0 else self._clock.ready(count)

    def _state_store(self) -> FilesysStateStore:
        store = self._store
        if store is None:
            store = self._store = FilesysStateStore(
                self.root, self.mode, self.use_inotify, self.poll, self.max_payload_bytes
            )
        store.status_ttl = self.status_ttl
        return store

    def own_store(self) -> FilesysStateStore | None:
        """Our own records when this transport keeps its statuses (not elsewhere).
        (The consumer asks twice a task: once made, the store is one attribute away.)"""
        if self.state_uri is None or self.state_uri == self.uri:
            store = self._store
            if store is None:
                return self._state_store()
            store.status_ttl = self.status_ttl
            return store
        return None

    def _write_tmp(
        self,
        queue: str,
        paths: QueuePaths,
        names: list[str],
        tasks: Sequence[tuple[str, str]],
        extra: TaskOptions,
    ) -> None:
        chmod = chmod_needed(paths.tmp, self.mode)
        for name, (task_id, text) in zip(names, tasks, strict=True):
            body = wrap(text, self.task_headers(queue, task_id, text), extra)
            write_file(os.path.join(paths.tmp, name), body.encode(), self.mode, self.fsync, chmod)

    @os_errors
    def _take(self, queue: str) -> Payload | None:
        paths = self.paths(queue)
        if not os.path.isdir(paths.ready):
            return None  # never create a queue here
        with self._take_lock:
            if self._take_watcher is None:
                self._take_watcher = Watcher(self.use_inotify, self.poll)
            view = self._take_views.get(queue)
            if view is None:
                view = QueueView(paths, self._take_watcher, self.lease, self.scan)
                self._take_views[queue] = view
            self._take_watcher.wait(0)
            while (name := view.next_name(None)) is not None:
                payload = self._take_file(queue, paths, name)
                if payload is not None:
                    return payload
            return None

    def _take_file(self, queue: str, paths: QueuePaths, name: str) -> Payload | None:
        # At most once: read, then unlink; whoever unlinks it owns it.
        path = os.path.join(paths.ready, name)
        read = self.read_task(queue, path, name)
        if read is None:
            return None
        try:
            os.unlink(path)
        except FileNotFoundError:
            return None
        own = self.own_store()
        if own is not None:  # taken out of the queue for good: out of tracking too
            own.forget([TaskName.parse(name).id], "live")
        return read[0]

    @os_errors
    def _stats(self, queue: str) -> QueueStats:
        p = self.paths(queue)
        ready, delayed, retrying = len(task_names(p.ready)), 0, 0
        now = time.time_ns()
        for name in task_names(p.delayed):
            task = TaskName.parse(name)
            if task.stamp is None or task.stamp <= now:
                ready += 1  # due: the next taker promotes it
            elif task.attempts:
                retrying += 1
            else:
                delayed += 1
        in_flight = sum(len(task_names(os.path.join(p.claimed, o))) for o in task_names(p.claimed))
        return QueueStats(queue, ready, delayed, retrying, in_flight, len(self._failed_names(p)))

    @os_errors
    def _oldest_ready(self, queue: str) -> float | None:
        # Names start with their nanosecond stamp: the smallest is the head of the queue.
        folder = self.paths(queue).ready
        names = task_names(folder)
        if not names:
            return None
        head = min(names, key=due_order)  # the oldest, whatever its priority
        stamp = TaskName.parse(head).stamp
        if stamp is not None:
            return stamp / 1e9
        try:
            return os.stat(os.path.join(folder, head)).st_mtime  # a foreign file's
        except FileNotFoundError:
            return None

    @os_errors
    def _peek(self, queue: str, limit: int, offset: int) -> list[WaitingTask]:
        # The smallest names first, as takers take them; read as hostile, moved nowhere.
        # A folder has no index: its names are listed (not read), the page's files read.
        folder = self.paths(queue).ready
        found = []
        names = heapq.nsmallest(offset + limit, iter_task_names(folder))[offset:]
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # taken meanwhile
                payload, raw, mtime = self._read_listed(os.path.join(folder, name))
                task = TaskName.parse(name)
                submitted = mtime if task.stamp is None else task.stamp / 1e9
                found.append(WaitingTask(task.id, queue, payload, raw, task.attempts, submitted))
        return found

    def _read_listed(self, path: str) -> tuple[Payload | None, str | None, float]:
        """``(payload, None, mtime)`` of a task file, or ``(None, text, mtime)`` for one
        that cannot be decoded (a FIFO or a symlink is described, never opened)."""
        try:
            data, mtime = read_task_file(path, self.max_payload_bytes)
        except NotATaskFile as exc:
            return None, f"({exc})", os.lstat(path).st_mtime
        try:
            return unwrap(self.decode(data))[0], None, mtime
        except ValueError:  # UndecodableMessage: listed as its text
            return None, data.decode("utf-8", errors="replace"), mtime

    @os_errors
    def _in_flight(self, queue: str, limit: int, offset: int) -> list[InFlightTask]:
        # Every consumer's folder in claimed/: what it holds is bounded by the consumers'
        # prefetch, so all names are listed and sorted by when they were claimed (the
        # rename into the folder sets the file's ctime), then the page's files read.
        claimed = self.paths(queue).claimed
        held: list[tuple[float, str, str]] = []
        for folder in task_names(claimed):  # .live-*, .new-* start with a dot
            path = os.path.join(claimed, folder)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for name in task_names(path):  # .lock starts with a dot
                    with contextlib.suppress(FileNotFoundError):  # settled meanwhile
                        since = os.lstat(os.path.join(path, name)).st_ctime
                        held.append((since, folder, name))
        found = []
        for since, folder, name in heapq.nsmallest(offset + limit, held)[offset:]:
            with contextlib.suppress(FileNotFoundError):
                payload, raw, mtime = self._read_listed(os.path.join(claimed, folder, name))
                task = TaskName.parse(name)
                found.append(
                    InFlightTask(
                        task.id,
                        queue,
                        payload,
                        raw,
                        task.attempts + 1,
                        holder_of(folder),
                        since,
                        mtime if task.stamp is None else task.stamp / 1e9,
                    )
                )
        return found

    @os_errors
    def _queue_names(self) -> list[str]:
        names = []
        for queue in task_names(self.root):
            p = self.paths(queue)
            if not is_valid_queue_name(queue):
                continue
            claimed = task_names(p.claimed)
            if (
                task_names(p.ready)
                or task_names(p.delayed)
                or self._failed_names(p)
                or any(task_names(os.path.join(p.claimed, o)) for o in claimed)
            ):
                names.append(queue)
        return names

    @os_errors
    def _purge(self, queue: str) -> int:
        p = self.paths(queue)
        purged = []
        for folder in (p.ready, p.delayed):
            for name in task_names(folder):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    purged.append(TaskName.parse(name).id)
        own = self.own_store()
        if own is not None:  # a purged task's status is removed with it
            own.forget(purged, "live")
        else:  # or in the store of asynctask_state
            self._purged_elsewhere(queue, purged)
        return len(purged)

    # -- the failed store ----------------------------------------------------------------

    @staticmethod
    def _failed_names(p: QueuePaths) -> list[str]:
        return sorted(n for n in task_names(p.failed) if not n.endswith(META_SUFFIX))

    @os_errors
    def _failed(self, queue: str, limit: int, offset: int) -> list[FailedTask]:
        # Names start with their failure stamp: the smallest are the oldest. Only the
        # names are listed; the page's files (and sidecars) are read.
        p = self.paths(queue)
        found = []
        names = (n for n in iter_task_names(p.failed) if not n.endswith(META_SUFFIX))
        for stored in heapq.nsmallest(offset + limit, names)[offset:]:
            with contextlib.suppress(FileNotFoundError):
                found.append(self._read_failed(queue, p, stored))
        return found

    def _read_failed(self, queue: str, p: QueuePaths, stored: str) -> FailedTask:
        path = os.path.join(p.failed, stored)
        payload: Payload | None = None
        raw: str | None = None
        try:  # a FIFO or a symlink kept here is shown as what it is, never read
            data, mtime = read_task_file(path, self.max_payload_bytes)
        except NotATaskFile as exc:
            data, mtime, raw = b"", os.lstat(path).st_mtime, f"({exc})"
        meta: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(read_file(os.path.join(p.failed, stored + META_SUFFIX))[0])
        task = TaskName.parse(original_name(stored))
        if raw is None:
            try:
                payload = unwrap(decode_message(data, len(data)))[0]
            except ValueError:
                raw = data.decode("utf-8", errors="replace")
        return FailedTask(
            id=task.id,
            queue=queue,
            payload=payload,
            raw=raw,
            error=str(meta.get("error", "unknown (no .meta file beside the task)")),
            attempts=int(meta.get("attempts", task.attempts)),
            submitted_at=mtime,
            failed_at=float(meta.get("failed_at", mtime)),
        )

    def _failed_holds(self, queue: str, task_id: str, where: str) -> bool | None:
        """Whether the failed store holds the file a consumer noted it was moving there
        (``where``: its name in ``failed/``, the stamp it was given and its task name):
        one ``lstat``, never a listing."""
        if os.sep in where or where.startswith(".") or where.endswith(META_SUFFIX):
            return False
        if TaskName.parse(original_name(where)).id != task_id:
            return False
        return os.path.lexists(os.path.join(self.paths(queue).failed, where))

    def _chosen_failed(self, p: QueuePaths, ids: Sequence[str] | None) -> list[tuple[str, str]]:
        stored = self._failed_names(p)
        pairs = [(s, TaskName.parse(original_name(s)).id) for s in stored]
        return [(s, task_id) for s, task_id in pairs if ids is None or task_id in ids]

    @os_errors
    def _requeue_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        p = self.paths(queue)
        chosen = self._chosen_failed(p, ids)
        stamps = self._clock.ready(len(chosen))
        count = 0
        own = self.own_store()
        for (stored, task_id), stamp in zip(chosen, stamps, strict=True):
            priority = TaskName.parse(original_name(stored)).priority
            name = TaskName(stamp, task_id, 0, True, priority).format()
            with contextlib.suppress(FileNotFoundError):
                if own is not None:  # queued again, before a taker can start it
                    own.finish(task_id, "queued", 0)
                os.rename(os.path.join(p.failed, stored), os.path.join(p.ready, name))
                count += 1
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(p.failed, stored + META_SUFFIX))
        return count

    @os_errors
    def _purge_failed(self, queue: str, ids: Sequence[str] | None) -> int:
        p = self.paths(queue)
        count = 0
        own = self.own_store()
        elsewhere: list[str] = []  # ids whose statuses the store of asynctask_state keeps
        for stored, task_id in self._chosen_failed(p, ids):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(p.failed, stored))
                count += 1
                if own is None:
                    elsewhere.append(task_id)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(p.failed, stored + META_SUFFIX))
            if own is not None:  # its status lived as long as its failed record
                own.forget([task_id], "failed")
        self._purged_elsewhere(queue, elsewhere)
        return count

    # -- claims, consumers, closing ------------------------------------------------------

    @os_errors
    def _claim(self, key: str, ttl: float) -> bool:
        taken = claims.claim(self.root, key, ttl, self.mode)
        if time.monotonic() >= self._next_sweep:  # each firing has its own key: clean up
            self._next_sweep = time.monotonic() + 60
            claims.sweep(self.root)
        return taken

    @os_errors
    def _limit_take(self, queue: str, limit: LimitSpec, holder: str, owner: str | None) -> float:
        self.ensure_queue(queue)
        return limits.take(self.paths(queue), limit, holder, owner, self.lease, self.mode)

    @os_errors
    def _limit_free(self, queue: str, holder: str) -> None:
        self.ensure_queue(queue)
        limits.free(self.paths(queue), holder, self.mode)

    def _consumer(self, queue: str, prefetch: int) -> Consumer:
        consumer = FilesysConsumer(self, queue, prefetch)
        self._consumers.add(consumer)
        return consumer

    def _owned_consumer(self, queue: str, prefetch: int, owner: str) -> Consumer:
        consumer = FilesysConsumer(self, queue, prefetch, owner)
        self._consumers.add(consumer)
        return consumer

    def _liveness(self, queue: str, owner: str) -> Liveness:
        return FilesysLiveness(
            queue, owner, self.heartbeat, self.paths(queue), self.mode, self.ensure_queue
        )

    def _close(self) -> None:
        self.heartbeats.stop()
        for consumer in list(self._consumers):
            consumer.close_if_idle()
        with self._take_lock:
            if self._take_watcher is not None:
                self._take_watcher.close()
            self._take_views.clear()
